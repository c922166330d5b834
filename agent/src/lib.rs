//! `bbot-agent` as a library: the build host's control plane, following
//! build2's bbot agent. The binary in `main.rs` only parses the command line
//! and wires these layers together; tests and benchmarks use them directly.
//!
//! Layers, each calling only downward (ARCHITECTURE.md has the picture):
//! - [`daemon`]: the process's edge: command line, signals, systemd, logs;
//! - [`control`]: the work loop, controllers, the result spool, tasks;
//! - [`host`]: the machines on btrfs, their enumeration and bootstrap, the
//!   locks that let several instances share them;
//! - [`vm`]: one guest: the runner seam, QEMU, its network, confinement,
//!   the guest's TFTP and source servers, the fakes;
//! - [`base`]: what every layer needs: cancellation, file helpers, versions.

#![warn(missing_docs)]

pub mod base;
pub mod control;
pub mod daemon;
pub mod host;
pub mod vm;
