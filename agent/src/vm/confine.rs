//! How QEMU is confined: the agent keeps the root work (btrfs, taps,
//! namespaces, cgroups) and QEMU gets only what it needs.
//!
//! - It never runs as root: between fork and exec the child joins its
//!   cgroup, sets its resource limits and drops to the unprivileged QEMU
//!   user (`--qemu-user`, with the `kvm` group for `/dev/kvm`). QEMU's own
//!   `-runas` cannot be used together with its seccomp filter, which
//!   forbids the set*id calls `-runas` makes after the filter is on; so
//!   the agent drops privileges itself, before QEMU starts. The files QEMU
//!   opens (the throw-away snapshot's files) are handed to that user
//!   first; its QMP socket and console are inherited descriptors
//!   (`qemu_channels`), so it needs no access to the agent's directories.
//! - Its seccomp filter is on: `-sandbox on,obsolete=deny,
//!   elevateprivileges=deny,spawn=deny,resourcecontrol=deny`.
//! - A cgroup per VM bounds its memory, processes and CPU share
//!   (`crate::vm::cgroup`); resource limits forbid core dumps (a guest's RAM)
//!   and bound its open files.

use std::ffi::{CStr, CString};
use std::io;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use crate::vm::cgroup::VmCgroup;

/// The seccomp options QEMU runs with.
pub const SANDBOX: &str = "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny";

/// Most open files a QEMU may have.
const MAX_OPEN_FILES: u64 = 4096;

/// A confinement that could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum ConfineError {
    /// The QEMU user does not exist.
    #[error(
        "user '{0}' does not exist: create it (useradd --system --no-create-home \
         --shell /usr/sbin/nologin {0}; scripts/install-deps does) or name another \
         with --qemu-user"
    )]
    NoUser(String),
    /// A file could not be handed to the QEMU user.
    #[error("cannot hand {path} to the QEMU user: {source}")]
    Chown {
        /// The file.
        path: std::path::PathBuf,
        /// What failed.
        source: io::Error,
    },
    /// The cgroup could not be joined.
    #[error(transparent)]
    Cgroup(#[from] crate::vm::cgroup::CgroupError),
}

/// The unprivileged user QEMU runs as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QemuUser {
    /// Its name.
    pub name: String,
    /// Its uid.
    pub uid: u32,
    /// Its primary gid.
    pub gid: u32,
    /// Supplementary groups: `kvm` when the host has it.
    pub groups: Vec<u32>,
}

impl QemuUser {
    /// Looks `name` up in the password database.
    pub fn lookup(name: &str) -> Result<QemuUser, ConfineError> {
        let cname = CString::new(name).map_err(|_| ConfineError::NoUser(name.to_string()))?;
        // SAFETY: getpwnam_r with a buffer we own; the result points into it.
        let (uid, gid) = unsafe {
            let mut pwd: libc::passwd = std::mem::zeroed();
            let mut buf = vec![0 as libc::c_char; 16 * 1024];
            let mut out: *mut libc::passwd = std::ptr::null_mut();
            let rc = libc::getpwnam_r(
                cname.as_ptr(),
                &mut pwd,
                buf.as_mut_ptr(),
                buf.len(),
                &mut out,
            );
            if rc != 0 || out.is_null() {
                return Err(ConfineError::NoUser(name.to_string()));
            }
            (pwd.pw_uid, pwd.pw_gid)
        };
        if uid == 0 {
            return Err(ConfineError::NoUser(format!("{name} (uid 0 is root)")));
        }
        let mut groups = Vec::new();
        if let Some(kvm) = group_id(c"kvm") {
            groups.push(kvm);
        }
        Ok(QemuUser {
            name: name.to_string(),
            uid,
            gid,
            groups,
        })
    }
}

/// The gid of group `name`.
fn group_id(name: &CStr) -> Option<u32> {
    // SAFETY: getgrnam_r with a buffer we own.
    unsafe {
        let mut grp: libc::group = std::mem::zeroed();
        let mut buf = vec![0 as libc::c_char; 16 * 1024];
        let mut out: *mut libc::group = std::ptr::null_mut();
        let rc = libc::getgrnam_r(
            name.as_ptr(),
            &mut grp,
            buf.as_mut_ptr(),
            buf.len(),
            &mut out,
        );
        (rc == 0 && !out.is_null()).then_some(grp.gr_gid)
    }
}

/// How one VM's QEMU is confined.
#[derive(Debug, Clone, Default)]
pub struct Confinement {
    /// Drop to this user before QEMU starts (`None`: QEMU runs as the
    /// agent's user, for tests of the runner without root).
    pub user: Option<QemuUser>,
    /// QEMU's seccomp filter ([`SANDBOX`]).
    pub seccomp: bool,
    /// The VM's cgroup, joined before QEMU starts.
    pub cgroup: Option<Arc<VmCgroup>>,
}

impl Confinement {
    /// QEMU arguments of the confinement.
    pub fn qemu_args(&self) -> Vec<String> {
        if self.seccomp {
            vec!["-sandbox".into(), SANDBOX.into()]
        } else {
            Vec::new()
        }
    }

    /// Hands `paths` (and, for directories, what is in them) to the QEMU
    /// user, so that it can open them once it is not root.
    pub fn hand_over(&self, paths: &[&Path]) -> Result<(), ConfineError> {
        let Some(user) = &self.user else {
            return Ok(());
        };
        for p in paths {
            chown_tree(p, user.uid, user.gid).map_err(|source| ConfineError::Chown {
                path: p.to_path_buf(),
                source,
            })?;
        }
        Ok(())
    }

    /// Makes `cmd`'s process join the cgroup, set its limits and drop to
    /// the QEMU user before it executes. Register before anything that
    /// must survive the credential change (the parent-death signal, which
    /// the kernel clears when the uid changes).
    pub fn apply_on_spawn(&self, cmd: &mut Command) -> Result<(), ConfineError> {
        if let Some(cg) = &self.cgroup {
            cg.join_on_spawn(cmd)?;
        }
        let user = self.user.clone();
        // SAFETY: between fork and exec the closure calls only setrlimit,
        // setgroups, setgid and setuid (async-signal-safe) on values made
        // before the fork; it allocates nothing.
        unsafe {
            cmd.pre_exec(move || {
                let limit = |resource, value: u64| {
                    let l = libc::rlimit {
                        rlim_cur: value,
                        rlim_max: value,
                    };
                    if libc::setrlimit(resource, &l) != 0 {
                        return Err(io::Error::last_os_error());
                    }
                    Ok(())
                };
                limit(libc::RLIMIT_CORE, 0)?;
                limit(libc::RLIMIT_NOFILE, MAX_OPEN_FILES)?;
                if let Some(u) = &user {
                    if libc::setgroups(u.groups.len(), u.groups.as_ptr()) != 0
                        || libc::setgid(u.gid) != 0
                        || libc::setuid(u.uid) != 0
                    {
                        return Err(io::Error::last_os_error());
                    }
                }
                Ok(())
            });
        }
        Ok(())
    }
}

/// chown of `path` and everything below it (not following symlinks).
fn chown_tree(path: &Path, uid: u32, gid: u32) -> io::Result<()> {
    std::os::unix::fs::lchown(path, Some(uid), Some(gid))?;
    let meta = std::fs::symlink_metadata(path)?;
    if meta.is_dir() {
        for e in std::fs::read_dir(path)? {
            chown_tree(&e?.path(), uid, gid)?;
        }
    }
    Ok(())
}
