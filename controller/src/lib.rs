//! `bbot-controller`: the controller side of build2's bbot protocol for
//! the build farm, serving `bbot-agent` (PROTOCOLS.md sections 1, 2, 3, 6).
//!
//! A job (repository, ref, commits, boards, settings, machine glob) is
//! split into tasks of a few boards across all commits; agents polling
//! with task requests get one that fits a machine they offer; results are
//! merged into the job's board × commit table. Leases bound how long an
//! agent may hold a task; interrupted or aborted work is retried, and only
//! the cells still missing.
//!
//! Modules by concept:
//! - [`http`]: HTTP/1.1 server with bounded requests; [`routes`]: which
//!   handler serves what;
//! - [`protocol`]: task and result requests (agents); [`auth`]: agent
//!   keys, fingerprints, challenges;
//! - [`jobs`]: job requests, checks, splitting into tasks, task manifests;
//!   [`merge`]: results into the table, retries; [`lease`]: lease expiry;
//! - [`db`]: SQLite storage, the only module with SQL;
//! - [`views`]: what pages, API and CLI show; [`web`]: HTML; [`api`]:
//!   JSON; [`table`]: the text table; [`metrics`]: Prometheus;
//!   [`agents`]: agents seen;
//! - [`cli`], [`client`], [`serve`], [`logging`]: the binary's parts.

pub mod agents;
pub mod api;
pub mod auth;
pub mod cli;
pub mod client;
pub mod db;
pub mod http;
pub mod jobs;
pub mod lease;
pub mod logging;
pub mod merge;
pub mod metrics;
pub mod protocol;
pub mod routes;
pub mod serve;
pub mod state;
pub mod table;
pub mod views;
pub mod web;
