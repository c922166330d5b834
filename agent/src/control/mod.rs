//! Control: the work loop and everything that talks to controllers (task
//! requests, authentication, results and their spool, tasks in flight).
//! It calls [`crate::host`] for machines and [`crate::vm`]'s runner seam
//! for guests, and reaches the process around it only through
//! [`process`].

pub mod auth;
pub mod controller;
pub mod controller_url;
pub mod inflight;
pub mod monitor;
pub mod process;
pub mod spool;
pub mod task;
pub mod work_loop;
