//! Agents seen recently: who asked for work, from where, offering what.
//!
//! Kept in memory, not in the database: it is what the web page shows
//! about the last minutes, every polling agent re-announces itself within
//! its idle interval (a minute), and writing a row per poll would cost a
//! disk write for nothing. Bounded, so that requests inventing agent names
//! cannot grow it without limit.

use std::collections::HashMap;
use std::sync::Mutex;

use manifests::TaskRequestManifest;

use crate::views::{AgentView, LeaseView, MachineView};

/// Most agents remembered; the longest-unseen is forgotten first.
const MAX_AGENTS: usize = 10_000;

#[derive(Debug, Clone)]
struct Seen {
    fingerprint: Option<String>,
    address: Option<String>,
    last_seen: f64,
    requests: u64,
    machines: Vec<MachineView>,
}

/// The registry.
#[derive(Debug, Default)]
pub struct Agents {
    seen: Mutex<HashMap<(String, String), Seen>>,
}

impl Agents {
    /// Records a task request.
    pub fn saw(&self, req: &TaskRequestManifest, address: Option<String>, now: f64) {
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        let key = (req.agent.clone(), req.toolchain_name.clone());
        if !seen.contains_key(&key) && seen.len() >= MAX_AGENTS {
            if let Some(oldest) = seen
                .iter()
                .min_by(|a, b| a.1.last_seen.total_cmp(&b.1.last_seen))
                .map(|(k, _)| k.clone())
            {
                seen.remove(&oldest);
            }
        }
        let e = seen.entry(key).or_insert_with(|| Seen {
            fingerprint: None,
            address: None,
            last_seen: now,
            requests: 0,
            machines: Vec::new(),
        });
        e.fingerprint = req.fingerprint.clone();
        e.address = address;
        e.last_seen = now;
        e.requests += 1;
        e.machines = req
            .machines
            .iter()
            .map(|m| MachineView {
                name: m.name.clone(),
                summary: m.summary.clone(),
            })
            .collect();
    }

    /// Agents seen since `since` (Unix seconds), most recent first, with
    /// the tasks they hold according to `leases`.
    pub fn recent(&self, since: f64, leases: &[LeaseView]) -> Vec<AgentView> {
        let seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        let mut out: Vec<AgentView> = seen
            .iter()
            .filter(|(_, s)| s.last_seen >= since)
            .map(|((name, toolchain), s)| AgentView {
                name: name.clone(),
                toolchain: toolchain.clone(),
                fingerprint: s.fingerprint.clone(),
                address: s.address.clone(),
                last_seen: s.last_seen,
                requests: s.requests,
                machines: s.machines.clone(),
                tasks: leases
                    .iter()
                    .filter(|l| &l.agent == name && &l.toolchain == toolchain)
                    .cloned()
                    .collect(),
            })
            .collect();
        // An agent busy with a long task does not poll: show it anyway.
        for l in leases {
            if !out
                .iter()
                .any(|a| a.name == l.agent && a.toolchain == l.toolchain)
            {
                out.push(AgentView {
                    name: l.agent.clone(),
                    toolchain: l.toolchain.clone(),
                    fingerprint: None,
                    address: None,
                    last_seen: l.issued,
                    requests: 0,
                    machines: vec![MachineView {
                        name: l.machine.clone(),
                        summary: String::new(),
                    }],
                    tasks: vec![l.clone()],
                });
            }
        }
        out.sort_by(|a, b| b.last_seen.total_cmp(&a.last_seen));
        out
    }

    /// Number of agents seen since `since`.
    pub fn count_since(&self, since: f64) -> usize {
        let seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        seen.values().filter(|s| s.last_seen >= since).count()
    }
}
