//! The agent's channels to one QEMU: its QMP socket and its serial
//! console, created by the agent and handed to QEMU as inherited file
//! descriptors (`-chardev socket,fd=N`). QEMU runs unprivileged and needs
//! no access to the agent's run directory (under a state directory that
//! is the agent's alone, mode 0700 under systemd).
//!
//! - QMP: the agent binds the listening socket `<run>/qmp.sock` and QEMU
//!   accepts on it; the agent connects to the path as before.
//! - Console: a socket pair; QEMU's serial port writes one end, the
//!   agent's `console` thread reads the other.

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The socket file of the QMP channel in a run directory.
pub const QMP_SOCKET: &str = "qmp.sock";

/// Channels for one QEMU, to be inherited by it.
pub struct Channels {
    qmp: UnixListener,
    qmp_path: PathBuf,
    console_qemu: UnixStream,
    console_agent: Option<UnixStream>,
}

impl Channels {
    /// Creates the channels of a QEMU whose run directory is `run_dir`.
    pub fn open(run_dir: &Path) -> io::Result<Channels> {
        let qmp_path = run_dir.join(QMP_SOCKET);
        let _ = std::fs::remove_file(&qmp_path);
        let qmp = UnixListener::bind(&qmp_path)?;
        let (console_agent, console_qemu) = UnixStream::pair()?;
        Ok(Channels {
            qmp,
            qmp_path,
            console_qemu,
            console_agent: Some(console_agent),
        })
    }

    /// Where the agent connects for QMP.
    pub fn qmp_path(&self) -> &Path {
        &self.qmp_path
    }

    /// The agent's end of the console (once).
    pub fn take_console(&mut self) -> Option<UnixStream> {
        self.console_agent.take()
    }

    /// The QEMU arguments that use the channels.
    pub fn qemu_args(&self) -> Vec<String> {
        vec![
            "-chardev".into(),
            format!(
                "socket,id=qmp,fd={},server=on,wait=off",
                self.qmp.as_raw_fd()
            ),
            "-mon".into(),
            "chardev=qmp,mode=control".into(),
            "-chardev".into(),
            format!("socket,id=console,fd={}", self.console_qemu.as_raw_fd()),
            "-serial".into(),
            "chardev:console".into(),
        ]
    }

    /// Makes `cmd`'s process inherit the channels' QEMU ends.
    pub fn inherit(&self, cmd: &mut Command) {
        let fds: [RawFd; 2] = [self.qmp.as_raw_fd(), self.console_qemu.as_raw_fd()];
        // SAFETY: between fork and exec the closure only calls fcntl
        // (async-signal-safe) on descriptors that are open in the parent.
        unsafe {
            cmd.pre_exec(move || {
                for fd in fds {
                    if libc::fcntl(fd, libc::F_SETFD, 0) != 0 {
                        return Err(io::Error::last_os_error());
                    }
                }
                Ok(())
            });
        }
    }
}
