//! Signal handling with `signal-hook`: SIGTERM/SIGINT request a clean stop,
//! SIGHUP asks for a re-read of what can be re-read.
//!
//! Why flags: the handlers only set atomics; the work loop and the task runner
//! look at them at safe points (between rounds, while waiting for a guest), so a
//! stop never leaves a half-made subvolume behind. A second SIGINT while the
//! first is being handled exits at once, as an escape hatch at a terminal; a
//! second SIGTERM does not cut the clean-up short.

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};

use crate::cancel::Cancel;

/// Exit status used when a second termination signal forces an immediate exit
/// (128 + SIGINT, as a shell would report it).
const FORCED_EXIT_STATUS: i32 = 128 + 2;

/// Why an interruptible sleep ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wake {
    /// The full duration elapsed.
    Timeout,
    /// SIGTERM/SIGINT: stop.
    Stop,
    /// SIGHUP: re-read and start a new round now.
    Hangup,
}

/// The agent's view of signals: a stop token and a hang-up flag.
#[derive(Debug, Clone)]
pub struct Signals {
    stop: Cancel,
    hup: Arc<AtomicBool>,
}

impl Signals {
    /// Flags not connected to any signal (library use, tests).
    pub fn unregistered() -> Self {
        Self {
            stop: Cancel::new(),
            hup: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Registers the handlers for SIGTERM, SIGINT and SIGHUP.
    pub fn install() -> io::Result<Self> {
        let s = Self::unregistered();
        // A second SIGINT (an impatient ^C at a terminal) exits at once;
        // QEMU dies with the agent and the next start removes the rest.
        // Order matters: the conditional exit must be registered before the
        // flag is set, so that only a *second* signal exits at once.
        signal_hook::flag::register_conditional_shutdown(
            SIGINT,
            FORCED_EXIT_STATUS,
            s.stop.flag(),
        )?;
        // A second SIGTERM (systemd, a script repeating itself) changes
        // nothing: the stop goes on cleaning up its VMs. Only SIGKILL skips
        // that.
        for sig in [SIGTERM, SIGINT] {
            signal_hook::flag::register(sig, s.stop.flag())?;
        }
        signal_hook::flag::register(SIGHUP, Arc::clone(&s.hup))?;
        Ok(s)
    }

    /// The stop token, handed to everything that must react to SIGTERM/SIGINT.
    pub fn stop_token(&self) -> Cancel {
        self.stop.clone()
    }

    /// Tells whether a stop was requested.
    pub fn stop_requested(&self) -> bool {
        self.stop.is_cancelled()
    }

    /// Returns and clears the hang-up flag.
    pub fn take_hangup(&self) -> bool {
        self.hup.swap(false, Ordering::SeqCst)
    }

    /// Requests a stop as if SIGTERM had arrived.
    pub fn request_stop(&self) {
        self.stop.cancel();
    }

    /// Sleeps up to `d`, waking early on a stop or hang-up request.
    pub fn sleep(&self, d: Duration) -> Wake {
        let hup = Arc::clone(&self.hup);
        if self.stop.sleep_until(d, || hup.load(Ordering::SeqCst)) {
            Wake::Stop
        } else if self.hup.load(Ordering::SeqCst) {
            Wake::Hangup
        } else {
            Wake::Timeout
        }
    }
}
