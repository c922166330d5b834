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
//! - Bridge networking: the tap device, opened by the agent on
//!   `/dev/net/tun` (root-only on many hosts).

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::os::unix::process::CommandExt;
use std::path::Path;

use crate::vm::qmp::SocketPath;
use std::process::Command;

/// The socket file of the QMP channel in a run directory.
pub const QMP_SOCKET: &str = "qmp.sock";

/// Channels for one QEMU, to be inherited by it.
pub struct Channels {
    qmp: UnixListener,
    qmp_socket: SocketPath,
    console_qemu: UnixStream,
    console_agent: Option<UnixStream>,
    tap: Option<OwnedFd>,
}

/// Opens tap device `name` (which must exist) for a VM's NIC: no packet
/// information, virtio-net headers, as QEMU's own tap backend does.
fn open_tap(name: &str) -> io::Result<OwnedFd> {
    if name.is_empty() || name.len() >= libc::IFNAMSIZ {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("tap name '{name}' is not 1..15 bytes"),
        ));
    }
    // SAFETY: open(2) of a constant path; the descriptor is owned below.
    let raw = unsafe { libc::open(c"/dev/net/tun".as_ptr(), libc::O_RDWR | libc::O_CLOEXEC) };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `raw` is a fresh descriptor nobody else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    // SAFETY: an all-zero ifreq is valid; the name fits (checked above).
    let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, s) in ifr.ifr_name.iter_mut().zip(name.bytes()) {
        *d = s as libc::c_char;
    }
    ifr.ifr_ifru.ifru_flags =
        (libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR) as libc::c_short;
    // SAFETY: TUNSETIFF with a valid ifreq on our tun descriptor.
    if unsafe { libc::ioctl(fd.as_raw_fd(), libc::TUNSETIFF, &ifr) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(fd)
}

impl Channels {
    /// Creates the channels of a QEMU whose run directory is `run_dir`,
    /// and opens its tap device `tap` (bridge networking).
    pub fn open(run_dir: &Path, tap: Option<&str>) -> io::Result<Channels> {
        let qmp_socket = SocketPath::in_dir(run_dir, QMP_SOCKET)?;
        let _ = std::fs::remove_file(qmp_socket.full());
        let qmp = UnixListener::bind(qmp_socket.short())?;
        let (console_agent, console_qemu) = UnixStream::pair()?;
        let tap = tap.map(open_tap).transpose()?;
        Ok(Channels {
            qmp,
            qmp_socket,
            console_qemu,
            console_agent: Some(console_agent),
            tap,
        })
    }

    /// Where the agent connects for QMP.
    pub fn qmp_socket(&self) -> SocketPath {
        self.qmp_socket.clone()
    }

    /// The agent's end of the console (once).
    pub fn take_console(&mut self) -> Option<UnixStream> {
        self.console_agent.take()
    }

    /// The `-netdev` value of the tap device, if there is one.
    pub fn tap_netdev(&self) -> Option<String> {
        self.tap
            .as_ref()
            .map(|fd| format!("tap,id=net0,fd={},vhost=off", fd.as_raw_fd()))
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
        let fds: [RawFd; 3] = [
            self.qmp.as_raw_fd(),
            self.console_qemu.as_raw_fd(),
            self.tap.as_ref().map_or(-1, |t| t.as_raw_fd()),
        ];
        // SAFETY: between fork and exec the closure only calls fcntl
        // (async-signal-safe) on descriptors that are open in the parent.
        unsafe {
            cmd.pre_exec(move || {
                for fd in fds.into_iter().filter(|fd| *fd >= 0) {
                    if libc::fcntl(fd, libc::F_SETFD, 0) != 0 {
                        return Err(io::Error::last_os_error());
                    }
                }
                Ok(())
            });
        }
    }
}
