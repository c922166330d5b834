//! A network namespace per guest (user-mode networking): the guest's QEMU,
//! and with it QEMU's user-mode network stack (slirp), runs in a namespace
//! of its own that holds nothing but a loopback interface. The agent binds
//! that guest's TFTP socket and source server on the namespace's
//! 127.0.0.1, which is what the guest reaches as 10.0.2.2. So the guest
//! reaches exactly the agent's servers for its session: no host service
//! (the host's loopback is another namespace), no other guest (each has
//! its own), no LAN, no internet (no interface leads out).
//!
//! Namespaces are named `bbot-<toolchain>-<num>-<agent pid>-<n>` (`ip netns`, so an
//! admin can inspect one and a restarted agent can find its dead
//! predecessor's by name) and deleted when dropped.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::Command;

use crate::vm::iproute::ip;

/// Where `ip netns` keeps its namespaces.
const NETNS_DIR: &str = "/run/netns";

/// A namespace that could not be made or used.
#[derive(Debug, thiserror::Error)]
#[error("network namespace {name}: {message}")]
pub struct NetnsError {
    /// The namespace.
    pub name: String,
    /// What failed.
    pub message: String,
}

/// A guest's network namespace, deleted when dropped.
#[derive(Debug)]
pub struct GuestNetns {
    name: String,
    file: File,
}

/// The name prefix of the VMs of toolchain `toolchain` (`--toolchain-num`
/// `num`), instance `instance`; the agent's pid and a counter follow.
pub fn name_prefix(toolchain: &str, num: u16, instance: u16) -> String {
    format!("bbot-{toolchain}-{num}-{instance}-")
}

impl GuestNetns {
    /// Creates namespace `name` with its loopback interface up.
    pub fn create(name: &str) -> Result<GuestNetns, NetnsError> {
        let fail = |message: String| NetnsError {
            name: name.to_string(),
            message,
        };
        // Only a leftover of a crashed agent can have this name.
        let _ = ip(&["netns", "delete", name]);
        ip(&["netns", "add", name]).map_err(fail)?;
        let made = ip(&["-n", name, "link", "set", "lo", "up"]).and_then(|()| {
            File::open(PathBuf::from(NETNS_DIR).join(name)).map_err(|e| e.to_string())
        });
        match made {
            Ok(file) => Ok(GuestNetns {
                name: name.to_string(),
                file,
            }),
            Err(e) => {
                let _ = ip(&["netns", "delete", name]);
                Err(fail(e))
            }
        }
    }

    /// The namespace's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Runs `f` on a thread of its own that has entered the namespace:
    /// sockets `f` creates belong to the namespace for their whole life,
    /// whatever thread uses them later.
    pub fn within<T: Send>(
        &self,
        f: impl FnOnce() -> io::Result<T> + Send,
    ) -> Result<T, NetnsError> {
        let fd = self.file.as_raw_fd();
        let joined = std::thread::scope(|s| {
            s.spawn(move || {
                // SAFETY: setns on an open namespace file; it changes only
                // this (short-lived) thread's network namespace.
                if unsafe { libc::setns(fd, libc::CLONE_NEWNET) } != 0 {
                    return Err(io::Error::last_os_error());
                }
                f()
            })
            .join()
        });
        match joined {
            Ok(r) => r.map_err(|e| NetnsError {
                name: self.name.clone(),
                message: e.to_string(),
            }),
            Err(_) => Err(NetnsError {
                name: self.name.clone(),
                message: "the thread inside the namespace panicked".into(),
            }),
        }
    }

    /// Moves the calling thread into the namespace, for good: for a thread
    /// of its own that serves the guest (sockets it creates later, like a
    /// TFTP server's per-transfer ones, are then in the namespace too).
    pub fn enter_current_thread(&self) -> io::Result<()> {
        // SAFETY: setns on an open namespace file; only this thread moves.
        if unsafe { libc::setns(self.file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Makes `cmd`'s process start inside the namespace.
    pub fn enter_on_spawn(&self, cmd: &mut Command) -> Result<(), NetnsError> {
        // The child gets its own descriptor (not close-on-exec is not
        // needed: setns runs before exec).
        let file = self.file.try_clone().map_err(|e| NetnsError {
            name: self.name.clone(),
            message: e.to_string(),
        })?;
        // SAFETY: between fork and exec the closure only calls setns, which
        // is async-signal-safe, and allocates nothing.
        unsafe {
            cmd.pre_exec(move || {
                if libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) != 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
        Ok(())
    }
}

impl Drop for GuestNetns {
    fn drop(&mut self) {
        if let Err(e) = ip(&["netns", "delete", &self.name]) {
            tracing::error!("cannot delete network namespace {}: {e}", self.name);
        }
    }
}

/// Deletes namespaces named `<prefix><pid>-<n>` of other (dead) agents;
/// returns how many.
pub fn clean_leftovers(prefix: &str) -> usize {
    let mut n = 0;
    for name in crate::base::fsutil::names_of_other_agents(std::path::Path::new(NETNS_DIR), prefix)
    {
        match ip(&["netns", "delete", &name]) {
            Ok(()) => {
                tracing::info!("deleted leftover network namespace {name}");
                n += 1;
            }
            Err(e) => tracing::error!("cannot delete leftover network namespace {name}: {e}"),
        }
    }
    n
}
