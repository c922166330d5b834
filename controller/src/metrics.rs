//! `/metrics` in the Prometheus text format (version 0.0.4).
//!
//! Request counts and latencies are counted here, in memory, per route;
//! the state of the work (tasks, cells, jobs, lease expiries) is counted
//! from the database at scrape time, so it is right after a restart too.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use crate::db::Stats;

/// Histogram bucket bounds, seconds.
const BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

#[derive(Debug, Default, Clone)]
struct Histogram {
    counts: [u64; BUCKETS.len()],
    count: u64,
    sum: f64,
}

/// How results ended, for the counter.
#[derive(Debug, Clone, Copy)]
pub enum ResultOutcome {
    /// Merged into a job.
    Accepted,
    /// Unknown or ended session (answered 200, ignored).
    Stale,
    /// Refused: authentication failed.
    Refused,
}

/// The controller's counters.
#[derive(Debug, Default)]
pub struct Metrics {
    requests: Mutex<BTreeMap<(&'static str, u16), u64>>,
    latency: Mutex<BTreeMap<&'static str, Histogram>>,
    results_accepted: AtomicU64,
    results_stale: AtomicU64,
    results_refused: AtomicU64,
    tasks_leased: AtomicU64,
    lease_expiries: AtomicU64,
}

fn escape_label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

impl Metrics {
    /// Records one request to `route` answered `status` after `took`.
    pub fn request(&self, route: &'static str, status: u16, took: Duration) {
        *self
            .requests
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry((route, status))
            .or_default() += 1;
        let secs = took.as_secs_f64();
        let mut lat = self.latency.lock().unwrap_or_else(|e| e.into_inner());
        let h = lat.entry(route).or_default();
        for (i, bound) in BUCKETS.iter().enumerate() {
            if secs <= *bound {
                h.counts[i] += 1;
            }
        }
        h.count += 1;
        h.sum += secs;
    }

    /// Records a request the server refused before it reached a handler
    /// (counted, but kept out of the latency histogram).
    pub fn refused(&self, route: &'static str, status: u16) {
        *self
            .requests
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry((route, status))
            .or_default() += 1;
    }

    /// Records what became of a result.
    pub fn result(&self, outcome: ResultOutcome) {
        match outcome {
            ResultOutcome::Accepted => &self.results_accepted,
            ResultOutcome::Stale => &self.results_stale,
            ResultOutcome::Refused => &self.results_refused,
        }
        .fetch_add(1, Ordering::Relaxed);
    }

    /// Records a task handed out.
    pub fn leased(&self) {
        self.tasks_leased.fetch_add(1, Ordering::Relaxed);
    }

    /// Records leases that ran out.
    pub fn expired(&self, n: usize) {
        self.lease_expiries.fetch_add(n as u64, Ordering::Relaxed);
    }

    /// The exposition text: these counters, `stats` from the database
    /// (`None` if it could not be read), and the agents seen recently.
    pub fn render(&self, stats: Option<&Stats>, agents_recent: usize, db_bytes: u64) -> String {
        let mut out = String::new();
        family_header(
            &mut out,
            "bbot_controller_http_requests_total",
            "counter",
            "HTTP requests answered, by route and status code.",
        );
        let requests = self
            .requests
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        for ((route, status), n) in &requests {
            let _ = writeln!(
                out,
                "bbot_controller_http_requests_total{{route=\"{route}\",code=\"{status}\"}} {n}"
            );
        }
        family_header(
            &mut out,
            "bbot_controller_http_request_duration_seconds",
            "histogram",
            "Time from a request's complete body to its answer, by route.",
        );
        let lat = self
            .latency
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        for (route, h) in &lat {
            for (i, bound) in BUCKETS.iter().enumerate() {
                let _ = writeln!(
                    out,
                    "bbot_controller_http_request_duration_seconds_bucket{{route=\"{route}\",le=\"{bound}\"}} {}",
                    h.counts[i]
                );
            }
            let _ = writeln!(
                out,
                "bbot_controller_http_request_duration_seconds_bucket{{route=\"{route}\",le=\"+Inf\"}} {}\n\
                 bbot_controller_http_request_duration_seconds_sum{{route=\"{route}\"}} {}\n\
                 bbot_controller_http_request_duration_seconds_count{{route=\"{route}\"}} {}",
                h.count, h.sum, h.count
            );
        }
        let counter = |out: &mut String, name: &str, help: &str, v: u64| {
            family_header(out, name, "counter", help);
            let _ = writeln!(out, "{name} {v}");
        };
        counter(
            &mut out,
            "bbot_controller_tasks_leased_total",
            "Tasks handed to agents since start.",
            self.tasks_leased.load(Ordering::Relaxed),
        );
        family_header(
            &mut out,
            "bbot_controller_results_total",
            "counter",
            "Result uploads since start: accepted, stale (unknown or ended session), refused (authentication).",
        );
        for (k, v) in [
            ("accepted", &self.results_accepted),
            ("stale", &self.results_stale),
            ("refused", &self.results_refused),
        ] {
            let _ = writeln!(
                out,
                "bbot_controller_results_total{{outcome=\"{k}\"}} {}",
                v.load(Ordering::Relaxed)
            );
        }
        if let Some(s) = stats {
            let gauge = |out: &mut String,
                         name: &str,
                         label: &str,
                         help: &str,
                         m: &BTreeMap<String, u64>| {
                family_header(out, name, "gauge", help);
                for (k, v) in m {
                    let _ = writeln!(out, "{name}{{{label}=\"{}\"}} {v}", escape_label(k));
                }
            };
            gauge(
                &mut out,
                "bbot_controller_tasks",
                "state",
                "Tasks by state (queued, leased, done).",
                &s.tasks,
            );
            gauge(
                &mut out,
                "bbot_controller_tasks_done",
                "status",
                "Done tasks by the overall status of their result.",
                &s.tasks_done,
            );
            gauge(
                &mut out,
                "bbot_controller_cells",
                "status",
                "Board × commit cells of running jobs by status (pending: none yet).",
                &s.cells,
            );
            gauge(
                &mut out,
                "bbot_controller_jobs",
                "state",
                "Jobs running and finished.",
                &s.jobs,
            );
            counter(
                &mut out,
                "bbot_controller_lease_expiries_total",
                "Leases that ran out without a result (from the database, so across restarts).",
                s.lease_expiries,
            );
        }
        family_header(
            &mut out,
            "bbot_controller_agents_seen",
            "gauge",
            "Agents that asked for a task in the last 10 minutes.",
        );
        let _ = writeln!(out, "bbot_controller_agents_seen {agents_recent}");
        family_header(
            &mut out,
            "bbot_controller_database_bytes",
            "gauge",
            "Size of the database and its write-ahead log.",
        );
        let _ = writeln!(out, "bbot_controller_database_bytes {db_bytes}");
        out
    }
}

fn family_header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative() {
        let m = Metrics::default();
        m.request("task", 200, Duration::from_micros(300));
        m.request("task", 200, Duration::from_millis(30));
        m.request("task", 413, Duration::from_secs(20));
        let text = m.render(None, 0, 0);
        for line in [
            "bbot_controller_http_requests_total{route=\"task\",code=\"200\"} 2",
            "bbot_controller_http_requests_total{route=\"task\",code=\"413\"} 1",
            "bbot_controller_http_request_duration_seconds_bucket{route=\"task\",le=\"0.0005\"} 1",
            "bbot_controller_http_request_duration_seconds_bucket{route=\"task\",le=\"0.05\"} 2",
            "bbot_controller_http_request_duration_seconds_bucket{route=\"task\",le=\"+Inf\"} 3",
            "bbot_controller_http_request_duration_seconds_count{route=\"task\"} 3",
        ] {
            assert!(text.contains(line), "{line} missing from\n{text}");
        }
    }
}
