//! systemd readiness, status and watchdog notifications (`sd_notify`).
//!
//! Why: with `Type=notify` systemd only considers the agent started once it has
//! looked at its machines, `systemctl status` shows what it is doing (STATUS),
//! and the watchdog lets systemd restart an agent that stopped making progress.
//! Outside systemd (no `NOTIFY_SOCKET`) every call is a no-op.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sd_notify::NotifyState;

/// Sends notifications to systemd when it listens, and pings the watchdog from a
/// helper thread while the agent keeps making progress.
#[derive(Debug, Clone)]
pub struct Notifier {
    enabled: bool,
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    start: Instant,
    /// Milliseconds since `start` at which the agent last reported progress.
    alive_ms: AtomicU64,
    stopped: AtomicBool,
}

impl Notifier {
    /// Looks at the environment systemd provides; `enabled` is false outside systemd.
    pub fn from_env() -> Self {
        Self {
            enabled: std::env::var_os("NOTIFY_SOCKET").is_some(),
            inner: Arc::new(Inner {
                start: Instant::now(),
                alive_ms: AtomicU64::new(0),
                stopped: AtomicBool::new(false),
            }),
        }
    }

    /// A notifier that never sends anything (tests, library use).
    pub fn disabled() -> Self {
        let mut n = Self::from_env();
        n.enabled = false;
        n
    }

    fn send(&self, state: &[NotifyState]) {
        if self.enabled {
            if let Err(e) = sd_notify::notify(state) {
                tracing::debug!("sd_notify failed: {e}");
            }
        }
    }

    /// Startup is complete (filesystem checked, leftovers cleaned).
    pub fn ready(&self) {
        self.send(&[NotifyState::Ready]);
    }

    /// What the agent is doing now, shown by `systemctl status`.
    pub fn status(&self, status: &str) {
        self.alive();
        tracing::debug!("status: {status}");
        self.send(&[NotifyState::Status(status)]);
    }

    /// The agent is shutting down.
    pub fn stopping(&self) {
        self.inner.stopped.store(true, Ordering::SeqCst);
        self.send(&[NotifyState::Stopping]);
    }

    /// Records progress so that the watchdog thread keeps pinging.
    pub fn alive(&self) {
        let ms = u64::try_from(self.inner.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.inner.alive_ms.store(ms, Ordering::SeqCst);
    }

    /// Starts the watchdog thread when systemd asked for one (`WatchdogSec=`).
    ///
    /// The thread pings at half the watchdog interval as long as the agent reported
    /// progress within `stall_limit` (which must cover the longest legitimate
    /// blocking step, such as a result upload). Progress is a status update or
    /// any poll of a cancellation token, which long steps (a build, an idle
    /// sleep, a controller request) do several times a second.
    pub fn start_watchdog(&self, stall_limit: Duration) {
        if !self.enabled {
            return;
        }
        let Some(interval) = sd_notify::watchdog_enabled() else {
            return;
        };
        tracing::info!("systemd watchdog enabled, interval {interval:?}");
        self.alive();
        let me = self.clone();
        let spawned = std::thread::Builder::new()
            .name("watchdog".into())
            .spawn(move || loop {
                std::thread::sleep(interval / 2);
                if me.inner.stopped.load(Ordering::SeqCst) {
                    // Still ping while stopping: the stop itself may take a while.
                    me.send(&[NotifyState::Watchdog]);
                    continue;
                }
                let now = me.inner.start.elapsed();
                let last = Duration::from_millis(me.inner.alive_ms.load(Ordering::SeqCst));
                if now.saturating_sub(last) <= stall_limit {
                    me.send(&[NotifyState::Watchdog]);
                } else {
                    tracing::warn!(
                        "no progress for {:?}; letting the watchdog fire",
                        now - last
                    );
                }
            });
        if let Err(e) = spawned {
            tracing::warn!("cannot start watchdog thread: {e}");
        }
    }
}
