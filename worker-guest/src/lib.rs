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
//! - `builder` (internal): one board at every commit (buildman's
//!   reconfigure and retry rules); `build_step` (internal): one attempt at
//!   one commit (checkout, make arguments and environment).
//! - [`build_settings`]: `configure` settings → make arguments, `-j` split.
//! - [`outputs`]: sizes, config files and Kconfig change detection.
//! - [`dtc_cache`]: the shared dtc/pylibfdt build (`shared_dtc`), named by
//!   a SHA-1 of its sources (buildman's key).
//! - [`lines`]: the source-lines manifest (`lines`) from DWARF line tables.
//! - [`elf`]: section sizes read from ELF headers.
//! - [`fswalk`]: the `os.walk`-style directory walk the three above share.
//! - [`worktree`]: per-thread git worktrees and checkouts.
//! - [`git`]: every git command, each bounded in time.
//! - [`toolchain`]: toolchains, `CROSS_COMPILE` and `PATH`.
//! - [`settings_file`]: the buildman-style `~/.buildman` config file.
//! - [`process`]: process group leadership, signals, killing builds.
//! - [`tftp_client`]: the guest's TFTP client (task and result transfer).
//! - [`locate`]: where the agent's TFTP server is (fw_cfg, kernel command
//!   line, default gateway).
//! - [`repository`]: cloning the task's source.
//! - [`results`]: build outcomes → the result manifest.
//! - [`task`]: task mode (fetch, clone, build, upload).
//! - [`bootstrap`]: bootstrap mode (install the served worker, report
//!   versions).

#![warn(missing_docs)]

pub mod bootstrap;
pub mod build_settings;
mod build_step;
mod builder;
pub mod dtc_cache;
pub mod elf;
pub mod engine;
pub mod fswalk;
pub mod git;
pub mod lines;
pub mod locate;
pub mod outputs;
pub mod process;
pub mod protocol;
pub mod repository;
pub mod results;
pub mod settings_file;
pub mod task;
pub mod tftp_client;
pub mod toolchain;
pub mod worker;
pub mod worktree;

pub use builder::RETURN_CODE_NO_TOOLCHAIN;
