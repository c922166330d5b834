//! Logs: tracing to stderr (journald under systemd), as text with
//! `key=value` fields or as JSON lines, so that a task can be followed by
//! its `job`, `task`, `agent` and `session` fields across log lines.

use tracing_subscriber::EnvFilter;

/// Sets up logging; `RUST_LOG` wins over `filter`.
pub fn init(filter: &str, json: bool) {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(filter))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false);
    let _ = if json {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}
