//! The control layer's seam to the process around it: the flags that
//! signals set (stop, re-read, interrupt the running task) and where the
//! loop reports what it is doing (systemd's status and watchdog).
//!
//! Why a seam: the work loop must react to signals and feed the service
//! manager, but it must not depend on how either is wired up; the daemon
//! layer installs the handlers on these flags and implements
//! [`StatusSink`], and tests drive the same flags by hand.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::base::cancel::Cancel;

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

/// The flags the process's signals set; cloning shares them.
///
/// - `stop`: SIGTERM/SIGINT, the agent stops (and its task is interrupted);
/// - `hangup`: SIGHUP, re-read what can be re-read;
/// - `task`: cancels the running task only: set by a stop, and by a
///   priority monitor's SIGUSR1 that picked this instance's task as its
///   victim (PROTOCOLS.md section 4a). It is cleared when a task begins.
#[derive(Debug, Clone, Default)]
pub struct ProcessEvents {
    stop: Cancel,
    hangup: Arc<AtomicBool>,
    task: Cancel,
}

impl ProcessEvents {
    /// Flags not connected to any signal yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// The stop token, handed to everything that must react to SIGTERM/SIGINT.
    pub fn stop_token(&self) -> Cancel {
        self.stop.clone()
    }

    /// The running task's token: cancelled by a stop or by an interrupt.
    pub fn task_token(&self) -> Cancel {
        self.task.clone()
    }

    /// The SIGHUP flag, for registering with a signal handler.
    pub fn hangup_flag(&self) -> Arc<AtomicBool> {
        Arc::clone(&self.hangup)
    }

    /// Tells whether a stop was requested.
    pub fn stop_requested(&self) -> bool {
        self.stop.is_cancelled()
    }

    /// Requests a stop as if SIGTERM had arrived.
    pub fn request_stop(&self) {
        self.stop.cancel();
        self.task.cancel();
    }

    /// Interrupts the running task only, as a monitor's SIGUSR1 does.
    pub fn interrupt_task(&self) {
        self.task.cancel();
    }

    /// A task begins: an interrupt meant for an earlier one is forgotten
    /// (a stop is not).
    pub fn begin_task(&self) {
        if !self.stop.is_cancelled() {
            self.task.reset();
        }
    }

    /// Tells whether the task that just ended was interrupted by a monitor
    /// (its token is set and no stop was requested).
    pub fn task_interrupted(&self) -> bool {
        self.task.is_cancelled() && !self.stop.is_cancelled()
    }

    /// Returns and clears the hang-up flag.
    pub fn take_hangup(&self) -> bool {
        self.hangup.swap(false, Ordering::SeqCst)
    }

    /// Sleeps up to `d`, waking early on a stop or hang-up request.
    pub fn sleep(&self, d: Duration) -> Wake {
        let hup = Arc::clone(&self.hangup);
        if self.stop.sleep_until(d, || hup.load(Ordering::SeqCst)) {
            Wake::Stop
        } else if self.hangup.load(Ordering::SeqCst) {
            Wake::Hangup
        } else {
            Wake::Timeout
        }
    }
}

/// Where the loop says what it is doing: systemd's `STATUS=` and `READY=1`
/// under the daemon, nothing in tests.
pub trait StatusSink: Send + Sync {
    /// Start-up is complete.
    fn ready(&self);
    /// What the agent is doing now (also proof of progress for the watchdog).
    fn status(&self, status: &str);
}

/// A sink that drops everything (library use, tests).
#[derive(Debug, Default, Clone, Copy)]
pub struct NoStatus;

impl StatusSink for NoStatus {
    fn ready(&self) {}
    fn status(&self, _: &str) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_interrupt_cancels_the_task_only_and_is_forgotten_at_the_next() {
        let ev = ProcessEvents::new();
        ev.interrupt_task();
        assert!(ev.task_interrupted());
        assert!(!ev.stop_requested());
        ev.begin_task();
        assert!(!ev.task_token().is_cancelled());
        ev.request_stop();
        ev.begin_task();
        assert!(ev.task_token().is_cancelled(), "a stop is not forgotten");
        assert!(!ev.task_interrupted(), "a stop is not an interrupt");
    }
}
