//! `bbot-agent` as a library: the build host's control plane (machines on
//! btrfs, controllers over HTTP, the work loop, signals, systemd), following
//! build2's bbot agent. The binary in `main.rs` only parses the command line
//! and wires these modules together; tests and benchmarks use them directly.
//!
//! Booting real guests lives behind the [`runner::MachineRunner`] seam.

#![warn(missing_docs)]

pub mod auth;
pub mod btrfs;
pub mod cancel;
pub mod cgroup;
pub mod cli;
pub mod confine;
pub mod console;
pub mod controller;
pub mod fake;
pub mod fsutil;
pub mod guest_services;
pub mod inflight;
pub mod iproute;
pub mod layout;
pub mod leftovers;
pub mod logging;
pub mod machines;
pub mod mirror;
pub mod netns;
pub mod notify;
pub mod qemu_channels;
pub mod qemu_runner;
pub mod qmp;
pub mod result_check;
pub mod runner;
pub mod signals;
pub mod source_server;
pub mod spool;
pub mod task;
pub mod tftp;
pub mod version;
pub mod vm;
pub mod work_loop;
