//! `worker-guest` library: the guest side of a board-build task.
//!
//! Its engine is a build worker compatible with U-Boot buildman's worker
//! protocol (PROTOCOLS.md section 7), so the real buildman boss can drive it
//! over a pipe, and so that the guest's own task mode can drive the same
//! engine in-process ([`engine::build_boards`]).
//!
//! Modules, one concept each:
//! - [`protocol`]: the JSON-lines messages (the only module that knows them).
//! - [`worker`]: the command loop serving a boss.
//! - [`engine`]: the thread pool building boards × commits, with heartbeats.
//! - `builder` (internal): one board at every commit (reconfigure and
//!   retry rules).
//! - [`build_settings`]: `configure` settings → make arguments, `-j` split.
//! - [`outputs`]: sizes, config files and Kconfig change detection.
//! - [`elf`]: section sizes read from ELF headers.
//! - [`worktree`]: per-thread git worktrees and checkouts.
//! - [`toolchain`]: toolchains, `CROSS_COMPILE` and `PATH`.
//! - [`settings_file`]: the buildman-style `~/.buildman` config file.
//! - [`process`]: process group leadership, signals, killing builds.

#![warn(missing_docs)]

pub mod build_settings;
mod builder;
pub mod elf;
pub mod engine;
pub mod outputs;
pub mod process;
pub mod protocol;
pub mod settings_file;
pub mod toolchain;
pub mod worker;
pub mod worktree;

pub use builder::RETURN_CODE_NO_TOOLCHAIN;
