//! `bbot-controller serve`: open the database, load the keys, bind, serve
//! until SIGTERM/SIGINT, sweep leases meanwhile.
//!
//! Start-up order matters: the database is migrated and leases that ran
//! out while the controller was down are swept before the first request
//! is accepted, so an agent never gets a task that is still leased to
//! another one. The bound URL is printed on stdout (one line) — with
//! `--listen 127.0.0.1:0` that is how a script learns the port.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

use crate::agents::Agents;
use crate::auth::{AgentKeys, AuthError};
use crate::cli::ServeArgs;
use crate::db::{Db, DbError};
use crate::http::server::{Limits, Server};
use crate::jobs::Defaults;
use crate::lease;
use crate::metrics::Metrics;
use crate::routes::App;
use crate::state::{Config, State};

/// Why the controller could not run.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The database.
    #[error(transparent)]
    Db(#[from] DbError),
    /// The agent keys.
    #[error(transparent)]
    Auth(#[from] AuthError),
    /// The listening address.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// The submit token file.
    #[error("--submit-token-file {}: {message}", path.display())]
    Token {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// A bad option value.
    #[error("{0}")]
    Option(String),
    /// Signal handling or threads could not be set up.
    #[error("cannot start: {0}")]
    Setup(std::io::Error),
}

fn read_token(path: &std::path::Path) -> Result<String, ServeError> {
    let err = |message: String| ServeError::Token {
        path: path.to_path_buf(),
        message,
    };
    let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
    let token = text.trim();
    if token.len() < 16 {
        return Err(err("token shorter than 16 characters".into()));
    }
    Ok(token.to_string())
}

/// Runs the controller until a stop signal.
pub fn serve(args: &ServeArgs) -> Result<(), ServeError> {
    if args.lease == 0 {
        return Err(ServeError::Option(
            "--lease must be at least 1 second".into(),
        ));
    }
    if !(1..=100).contains(&args.max_attempts) {
        return Err(ServeError::Option("--max-attempts must be 1 to 100".into()));
    }
    if !(1..=1000).contains(&args.boards_per_task) {
        return Err(ServeError::Option(
            "--boards-per-task must be 1 to 1000".into(),
        ));
    }
    let keys = args
        .agent_keys
        .as_deref()
        .map(AgentKeys::load)
        .transpose()?;
    let submit_token = args
        .submit_token_file
        .as_deref()
        .map(read_token)
        .transpose()?;
    let db = Db::open(&args.data, args.sync)?;
    let limits = Limits {
        connections: args.max_connections.max(1),
        ..Limits::default()
    };
    let server = Server::bind(&args.listen, limits).map_err(|source| ServeError::Bind {
        addr: args.listen.clone(),
        source,
    })?;
    let local = server.local_addr().map_err(ServeError::Setup)?;
    let base_url = match &args.url {
        Some(u) if u.ends_with('/') => u.clone(),
        Some(u) => format!("{u}/"),
        None => {
            if local.ip().is_unspecified() {
                tracing::warn!(%local, "listening on all addresses without --url: agents will be told a result URL they cannot reach");
            }
            format!("http://{local}/")
        }
    };
    let state = Arc::new(State {
        db,
        keys,
        metrics: Metrics::default(),
        agents: Agents::default(),
        config: Config {
            base_url: base_url.clone(),
            lease: Duration::from_secs(args.lease),
            defaults: Defaults {
                boards_per_task: args.boards_per_task,
                max_attempts: args.max_attempts,
            },
            submit_token,
        },
    });
    // Leases that ran out while we were down, before anyone asks.
    lease::sweep(&state)?;
    let stop = Arc::new(AtomicBool::new(false));
    let sweeper =
        lease::spawn_sweeper(Arc::clone(&state), Arc::clone(&stop)).map_err(ServeError::Setup)?;
    let stopper = server.stopper().map_err(ServeError::Setup)?;
    let mut signals = Signals::new([SIGTERM, SIGINT]).map_err(ServeError::Setup)?;
    let signal_handle = signals.handle();
    let on_signal = stopper.clone();
    let signal_thread = std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            if let Some(sig) = signals.forever().next() {
                tracing::info!(signal = sig, "stopping");
                let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
                on_signal.stop();
            }
        })
        .map_err(ServeError::Setup)?;

    tracing::info!(
        url = %base_url,
        data = %args.data.display(),
        authentication = state.keys.as_ref().map_or(0, AgentKeys::len),
        lease_secs = args.lease,
        max_attempts = args.max_attempts,
        boards_per_task = args.boards_per_task,
        "controller listening"
    );
    println!("{base_url}");
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready]);

    server.run(
        Arc::new(App::new(Arc::clone(&state))),
        &stopper,
        Duration::from_secs(10),
    );

    stop.store(true, Ordering::SeqCst);
    signal_handle.close();
    let _ = signal_thread.join();
    let _ = sweeper.join();
    if let Err(e) = state.db.checkpoint() {
        tracing::warn!(error = %e, "WAL checkpoint at shutdown failed (the WAL is replayed at the next start)");
    }
    tracing::info!("controller stopped");
    Ok(())
}
