//! Leases: how long an agent may hold a task, and the sweeper that takes
//! back tasks whose agent went silent.
//!
//! A bbot agent reports every task it starts — success, failure, a missed
//! guest deadline (`abort`) or its own shutdown (`interrupt`). Only an
//! agent that dies (power, kernel, SIGKILL) or loses the network says
//! nothing; its lease runs out and the task goes back to the queue as the
//! next attempt. Expiry state is in the database, so a controller restart
//! neither forgets a lease nor resets its clock.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use crate::db::{self, DbError, Expired};
use crate::merge::{self, Expiry};
use crate::state::State;

/// Default lease, seconds: the agent's longest silence on a task —
/// `--build-startup` 60 + `--build-timeout` 5400 + `--suspend-time` 600
/// (a guest that missed a deadline is kept for inspection before the
/// `abort` result is sent) + `--request-timeout` 300 for the upload —
/// plus a margin; and well below brep's 3 hours, which agents' timeouts are
/// sized against.
pub const DEFAULT_LEASE_SECS: u64 = 7200;

/// How often the sweeper looks: a tenth of the lease, between 0.1 s (tests
/// use leases of seconds) and 10 s.
pub fn sweep_interval(lease: Duration) -> Duration {
    (lease / 10).clamp(Duration::from_millis(100), Duration::from_secs(10))
}

/// Takes back every task whose lease ran out by now; returns how many.
pub fn sweep(state: &State) -> Result<usize, DbError> {
    let expired: Vec<Expired> = state.db.expire_leases(db::now(), |spec, task, lease| {
        let why = format!(
            "lease expired: agent {} ({}) on {} did not report within {:.0} s",
            lease.agent,
            lease.toolchain,
            lease.machine,
            lease.expires - lease.issued
        );
        let outcome = merge::expiry(spec, &task.cells, task.attempt, &why);
        let note = match &outcome {
            Expiry::Requeue(n) => format!("{why}; queued again as attempt {n}"),
            Expiry::GiveUp(_) => format!("gave up after {} attempt(s): {why}", task.attempt),
        };
        (outcome, note)
    })?;
    for e in &expired {
        let l = &e.lease;
        match &e.outcome {
            Expiry::Requeue(attempt) => tracing::warn!(
                job = e.job_id,
                task = l.task_id,
                agent = %l.agent,
                machine = %l.machine,
                attempt,
                "lease expired; task queued again"
            ),
            Expiry::GiveUp(cells) => tracing::warn!(
                job = e.job_id,
                task = l.task_id,
                agent = %l.agent,
                machine = %l.machine,
                cells = cells.len(),
                "lease expired on the last attempt; cells marked abort"
            ),
        }
    }
    state.metrics.expired(expired.len());
    Ok(expired.len())
}

/// Runs [`sweep`] every [`sweep_interval`] until `stop` is set.
pub fn spawn_sweeper(state: Arc<State>, stop: Arc<AtomicBool>) -> std::io::Result<JoinHandle<()>> {
    let every = sweep_interval(state.config.lease);
    std::thread::Builder::new()
        .name("lease-sweeper".into())
        .spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                if let Err(e) = sweep(&state) {
                    tracing::error!(error = %e, "lease sweep failed");
                }
                // Sleep in small steps so that a stop is not delayed.
                let mut slept = Duration::ZERO;
                while slept < every && !stop.load(Ordering::SeqCst) {
                    let step = (every - slept).min(Duration::from_millis(100));
                    std::thread::sleep(step);
                    slept += step;
                }
            }
        })
}
