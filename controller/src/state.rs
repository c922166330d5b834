//! What every request handler shares: the database, the trusted agent keys,
//! counters, the agents seen, and the configuration.

use std::time::Duration;

use crate::agents::Agents;
use crate::auth::AgentKeys;
use crate::db::Db;
use crate::jobs::Defaults;
use crate::metrics::Metrics;

/// How long an agent counts as "seen recently" (pages, metrics): ten idle
/// polls of a bbot agent.
pub const RECENT: Duration = Duration::from_secs(600);

/// Settings from the command line.
#[derive(Debug, Clone)]
pub struct Config {
    /// The URL agents reach this controller at, ending in `/`; result URLs
    /// are made from it.
    pub base_url: String,
    /// How long an agent may hold a task.
    pub lease: Duration,
    /// Defaults for jobs.
    pub defaults: Defaults,
    /// Token `POST /api/jobs` must carry as `Authorization: Bearer`.
    pub submit_token: Option<String>,
}

/// The shared state.
pub struct State {
    /// Storage.
    pub db: Db,
    /// Trusted agent keys; `None`: authentication off.
    pub keys: Option<AgentKeys>,
    /// Counters.
    pub metrics: Metrics,
    /// Agents seen.
    pub agents: Agents,
    /// Settings.
    pub config: Config,
}

impl State {
    /// Where agents POST results: brep's form, `<base>?build-result`.
    pub fn result_url(&self) -> String {
        format!("{}?build-result", self.config.base_url)
    }
}
