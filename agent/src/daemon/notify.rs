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

/// How often the notification thread looks at the stop flag.
const STOP_TICK: Duration = Duration::from_secs(1);
/// How often a stop in progress extends systemd's stop timeout.
const EXTEND_EVERY: Duration = Duration::from_secs(5);

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
}

impl Notifier {
    /// Looks at the environment systemd provides; `enabled` is false outside systemd.
    pub fn from_env() -> Self {
        Self {
            enabled: std::env::var_os("NOTIFY_SOCKET").is_some(),
            inner: Arc::new(Inner {
                start: Instant::now(),
                alive_ms: AtomicU64::new(0),
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

    /// The agent is shutting down (sent again at exit, in case the stop
    /// came from elsewhere than a signal).
    pub fn stopping(&self) {
        self.send(&[NotifyState::Stopping]);
    }

    /// Records progress so that the watchdog thread keeps pinging.
    pub fn alive(&self) {
        let ms = u64::try_from(self.inner.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.inner.alive_ms.store(ms, Ordering::SeqCst);
    }

    /// Starts the notification thread (under systemd only).
    ///
    /// - Watchdog (`WatchdogSec=`): it pings at half the interval as long as
    ///   the agent made progress within `stall_limit`. Progress is a status
    ///   update or any poll of a cancellation token
    ///   ([`crate::base::cancel::since_last_poll`]), which every long step (a
    ///   build, a bootstrap, an idle sleep, a controller request, an upload)
    ///   does several times a second. A main thread that is genuinely stuck
    ///   polls nothing, so the pings stop and systemd restarts the agent.
    /// - Stop: once `stop` is set (SIGTERM/SIGINT), it sends `STOPPING=1`
    ///   and then `EXTEND_TIMEOUT_USEC` of `stop_budget` every few seconds
    ///   while the stop makes progress (forcing a VM down, uploading the
    ///   interrupt result), so a slow but healthy stop is not killed by
    ///   `TimeoutStopSec=` and a stuck one still is.
    pub fn start(&self, stall_limit: Duration, stop: Arc<AtomicBool>, stop_budget: Duration) {
        if !self.enabled {
            return;
        }
        let watchdog = sd_notify::watchdog_enabled();
        if let Some(interval) = watchdog {
            tracing::info!("systemd watchdog enabled, interval {interval:?}");
        }
        self.alive();
        let me = self.clone();
        let spawned = std::thread::Builder::new()
            .name("sd-notify".into())
            .spawn(move || me.notify_loop(watchdog, stall_limit, &stop, stop_budget));
        if let Err(e) = spawned {
            tracing::warn!("cannot start the sd-notify thread: {e}");
        }
    }

    /// How long ago the agent last made progress.
    fn idle(&self) -> Duration {
        let now = self.inner.start.elapsed();
        let last = Duration::from_millis(self.inner.alive_ms.load(Ordering::SeqCst));
        now.saturating_sub(last)
            .min(crate::base::cancel::since_last_poll())
    }

    fn notify_loop(
        &self,
        watchdog: Option<Duration>,
        stall_limit: Duration,
        stop: &AtomicBool,
        stop_budget: Duration,
    ) {
        let ping_every = watchdog.map(|w| w / 2);
        let tick = ping_every.map_or(STOP_TICK, |p| p.min(STOP_TICK));
        let mut last_ping = Instant::now();
        let mut last_extend: Option<Instant> = None;
        let mut warned = false;
        loop {
            std::thread::sleep(tick);
            let idle = self.idle();
            let healthy = idle <= stall_limit;
            if stop.load(Ordering::SeqCst) && healthy {
                if last_extend.is_none() {
                    self.send(&[NotifyState::Stopping]);
                }
                if last_extend.is_none_or(|t| t.elapsed() >= EXTEND_EVERY) {
                    let usec = u32::try_from(stop_budget.as_micros()).unwrap_or(u32::MAX);
                    self.send(&[NotifyState::ExtendTimeoutUsec(usec)]);
                    last_extend = Some(Instant::now());
                }
            }
            let Some(every) = ping_every else {
                continue;
            };
            if last_ping.elapsed() < every {
                continue;
            }
            if healthy {
                self.send(&[NotifyState::Watchdog]);
                last_ping = Instant::now();
                warned = false;
            } else if !warned {
                tracing::error!("no progress for {idle:?}; letting the watchdog fire");
                warned = true;
            }
        }
    }
}

impl crate::control::process::StatusSink for Notifier {
    fn ready(&self) {
        Notifier::ready(self);
    }

    fn status(&self, status: &str) {
        Notifier::status(self, status);
    }
}
