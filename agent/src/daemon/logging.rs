//! Logging setup with `tracing-subscriber`.
//!
//! Why two formats: run by hand, lines carry a timestamp and level; run under
//! systemd (`--systemd-daemon`), journald adds its own timestamp and wants the
//! syslog priority as a `<N>` prefix on every line (sd-daemon(3)), so that
//! `journalctl -p err` finds the agent's errors.

use std::fmt;

use tracing::{Event, Level, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::EnvFilter;

/// Logging could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum LoggingError {
    /// `RUST_LOG` holds an invalid filter, or a subscriber is already installed.
    #[error("cannot initialise logging: {0}")]
    Init(String),
}

/// The syslog priority journald expects for a tracing level.
pub fn journald_priority(level: &Level) -> u8 {
    match *level {
        Level::ERROR => 3,
        Level::WARN => 4,
        Level::INFO => 6,
        Level::DEBUG | Level::TRACE => 7,
    }
}

/// Maps bbot's `--verbose N` (0 quiet .. 6 everything) to a tracing level.
pub fn level_for_verbosity(verbose: u8) -> Level {
    match verbose {
        0 => Level::WARN,
        1 => Level::INFO,
        2 => Level::DEBUG,
        _ => Level::TRACE,
    }
}

/// Formats events as `<N>message key=value`, one journald priority prefix per
/// line (continuation lines of a multi-line message get it too).
#[derive(Debug, Default, Clone, Copy)]
pub struct JournaldFormat;

impl<S, N> FormatEvent<S, N> for JournaldFormat
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let prio = journald_priority(event.metadata().level());
        let mut text = String::new();
        ctx.field_format()
            .format_fields(Writer::new(&mut text), event)?;
        for line in text.lines() {
            writeln!(writer, "<{prio}>{line}")?;
        }
        Ok(())
    }
}

/// Installs the global subscriber, writing to stderr. `RUST_LOG` overrides the
/// level derived from `--verbose` when set.
pub fn init(verbose: u8, systemd: bool) -> Result<(), LoggingError> {
    let level = level_for_verbosity(verbose);
    let filter = match std::env::var("RUST_LOG") {
        Ok(s) if !s.is_empty() => {
            EnvFilter::try_new(s).map_err(|e| LoggingError::Init(e.to_string()))?
        }
        _ => {
            let lvl = level.as_str().to_ascii_lowercase();
            EnvFilter::try_new(format!("warn,bbot_agent={lvl}"))
                .map_err(|e| LoggingError::Init(e.to_string()))?
        }
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let r = if systemd {
        builder.event_format(JournaldFormat).try_init()
    } else {
        use std::io::IsTerminal;
        builder
            .with_target(false)
            .with_ansi(std::io::stderr().is_terminal())
            .try_init()
    };
    r.map_err(|e| LoggingError::Init(e.to_string()))
}
