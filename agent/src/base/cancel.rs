//! A cancellation token shared between the signal handlers and whatever the
//! agent is doing (polling a controller, bootstrapping, running a task).
//!
//! Why a token rather than a callback: the code that has to react (a VM runner
//! waiting for its guest, an idle sleep) polls at its own safe points, and the
//! signal handler only flips an atomic, which is all a handler may do.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

/// How often sleeping code looks at the token: short enough for a prompt stop,
/// long enough to keep an idle agent idle.
pub const POLL_INTERVAL: Duration = Duration::from_millis(100);

/// Reference point for [`since_last_poll`].
fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

/// Milliseconds after [`epoch`] at which any token was last looked at.
static LAST_POLL_MS: AtomicU64 = AtomicU64::new(0);

/// How long ago any cancellation token was last polled. Code that polls its
/// token is making progress by contract, so this is what the systemd watchdog
/// uses to tell a long build from a hung agent.
pub fn since_last_poll() -> Duration {
    let last = Duration::from_millis(LAST_POLL_MS.load(Ordering::Relaxed));
    epoch().elapsed().saturating_sub(last)
}

/// Cloneable "please stop" flag; cancelling one clone cancels all of them.
#[derive(Debug, Clone, Default)]
pub struct Cancel(Arc<AtomicBool>);

impl Cancel {
    /// A fresh, not yet cancelled token.
    pub fn new() -> Self {
        Self::default()
    }

    /// Wraps an existing flag (the one the signal handlers set).
    pub fn from_flag(flag: Arc<AtomicBool>) -> Self {
        Self(flag)
    }

    /// The underlying flag, for registering it with a signal handler.
    pub fn flag(&self) -> Arc<AtomicBool> {
        Arc::clone(&self.0)
    }

    /// Requests cancellation.
    pub fn cancel(&self) {
        self.0.store(true, Ordering::SeqCst);
    }

    /// Clears the flag, for a token that is reused per task (see
    /// `control::process`).
    pub fn reset(&self) {
        self.0.store(false, Ordering::SeqCst);
    }

    /// Tells whether cancellation was requested.
    pub fn is_cancelled(&self) -> bool {
        let ms = u64::try_from(epoch().elapsed().as_millis()).unwrap_or(u64::MAX);
        LAST_POLL_MS.store(ms, Ordering::Relaxed);
        self.0.load(Ordering::SeqCst)
    }

    /// Sleeps for `d` unless cancelled first. Returns `true` if cancelled.
    pub fn sleep(&self, d: Duration) -> bool {
        self.sleep_until(d, || false)
    }

    /// Sleeps for `d` unless cancelled or `wake()` turns true first. Returns `true`
    /// if it was cancelled (not merely woken).
    pub fn sleep_until(&self, d: Duration, mut wake: impl FnMut() -> bool) -> bool {
        let end = Instant::now() + d;
        loop {
            if self.is_cancelled() {
                return true;
            }
            if wake() {
                return false;
            }
            let now = Instant::now();
            if now >= end {
                return false;
            }
            std::thread::sleep((end - now).min(POLL_INTERVAL));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cancelled_sleep_returns_early() {
        let c = Cancel::new();
        let c2 = c.clone();
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            c2.cancel();
        });
        let start = Instant::now();
        assert!(c.sleep(Duration::from_secs(10)));
        assert!(start.elapsed() < Duration::from_secs(2));
        assert!(t.join().is_ok());
    }
}
