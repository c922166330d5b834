//! Where the agent's TFTP server is (PROTOCOLS.md section 5, project
//! choice): the QEMU fw_cfg file `opt/bbot/tftp`, then `bbot.tftp=` on the
//! kernel command line, then the default gateway on port 69.
//!
//! The order is the agent's: fw_cfg works for every boot method, the
//! command line only for direct kernel boots, and the gateway is what a
//! plain bbot guest assumes. A source that is present but unreadable or
//! garbled is an error, not a reason to try the next one: it means the
//! agent meant to tell us something, and guessing would hide its mistake.
//! The file paths are fields so tests can point them at temporary files.

use std::net::{Ipv4Addr, SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};

/// The TFTP port a bbot guest assumes when nothing says otherwise.
pub const DEFAULT_PORT: u16 = 69;

use manifests::guest;

/// Why the server could not be found.
#[derive(Debug, thiserror::Error)]
pub enum LocateError {
    /// A source exists but could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// What failed.
        source: std::io::Error,
    },
    /// A source names something that is not `host:port`.
    #[error("{origin}: '{value}' is not a TFTP server address (expected host:port, e.g. 10.0.2.2:6969): {reason}")]
    BadAddress {
        /// Where the value came from (file, and parameter for the command line).
        origin: String,
        /// The value as found.
        value: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The routing table could not be parsed.
    #[error("{path}: line {line}: {reason}")]
    BadRoute {
        /// The routing table file.
        path: PathBuf,
        /// 1-based line.
        line: usize,
        /// What is wrong.
        reason: String,
    },
    /// No source names a server.
    #[error(
        "no TFTP server: no {fw_cfg}, no {param}= in {cmdline}, no default route in {route}",
        param = manifests::guest::CMDLINE_TFTP
    )]
    NotFound {
        /// fw_cfg path looked at.
        fw_cfg: String,
        /// Command line path looked at.
        cmdline: String,
        /// Routing table path looked at.
        route: String,
    },
}

/// Which source named the server (for the log).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// The `--tftp` option.
    CommandLine,
    /// QEMU fw_cfg.
    FwCfg,
    /// `bbot.tftp=` on the kernel command line.
    KernelCmdline,
    /// The default gateway, port 69.
    Gateway,
}

/// The files the server's address is read from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sources {
    /// The fw_cfg file (`host:port`).
    pub fw_cfg: PathBuf,
    /// The kernel command line (`/proc/cmdline`).
    pub cmdline: PathBuf,
    /// The IPv4 routing table (`/proc/net/route`).
    pub route: PathBuf,
}

impl Default for Sources {
    fn default() -> Self {
        Sources {
            fw_cfg: PathBuf::from(guest::fw_cfg_sysfs_path(guest::FW_CFG_TFTP)),
            cmdline: PathBuf::from("/proc/cmdline"),
            route: PathBuf::from("/proc/net/route"),
        }
    }
}

/// Reads a file; `None` if it does not exist.
fn read_optional(path: &Path) -> Result<Option<String>, LocateError> {
    match std::fs::read(path) {
        Ok(bytes) => Ok(Some(String::from_utf8_lossy(&bytes).into_owned())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(LocateError::Read {
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// Parses `host:port` (an IPv6 host in brackets; a name is resolved); a
/// bare IP address means port 69.
pub fn parse_address(value: &str, origin: &str) -> Result<SocketAddr, LocateError> {
    let value = value.trim_matches(|c: char| c.is_whitespace() || c == '\0');
    let bad = |reason: String| LocateError::BadAddress {
        origin: origin.to_string(),
        value: value.to_string(),
        reason,
    };
    if value.is_empty() {
        return Err(bad("empty".to_string()));
    }
    if let Ok(ip) = value.parse::<std::net::IpAddr>() {
        return Ok(SocketAddr::new(ip, DEFAULT_PORT));
    }
    if let Ok(addr) = value.parse::<SocketAddr>() {
        return Ok(addr);
    }
    let Some((host, port)) = value.rsplit_once(':') else {
        return Err(bad("no port".to_string()));
    };
    let port: u16 = port
        .parse()
        .map_err(|_| bad(format!("'{port}' is not a port number")))?;
    if host.is_empty() || host.contains(char::is_whitespace) {
        return Err(bad(format!("'{host}' is not a host")));
    }
    (host, port)
        .to_socket_addrs()
        .map_err(|e| bad(format!("cannot resolve '{host}': {e}")))?
        .next()
        .ok_or_else(|| bad(format!("'{host}' has no address")))
}

/// The default gateway from a `/proc/net/route` table: the first route to
/// 0.0.0.0/0 with the gateway flag. Addresses are the kernel's `%08X` of a
/// network-order word, i.e. the address bytes in memory order.
pub fn default_gateway(table: &str, path: &Path) -> Result<Option<Ipv4Addr>, LocateError> {
    const RTF_UP: u32 = 0x1;
    const RTF_GATEWAY: u32 = 0x2;
    let bad = |line: usize, reason: String| LocateError::BadRoute {
        path: path.to_path_buf(),
        line,
        reason,
    };
    for (i, line) in table.lines().enumerate().skip(1) {
        let cols: Vec<&str> = line.split_whitespace().collect();
        if cols.is_empty() {
            continue;
        }
        let [_iface, dest, gateway, flags, ..] = cols.as_slice() else {
            return Err(bad(i + 1, format!("too few columns in '{line}'")));
        };
        let hex = |s: &str, what: &str| {
            u32::from_str_radix(s, 16).map_err(|_| bad(i + 1, format!("bad {what} '{s}'")))
        };
        let (dest, gateway, flags) = (
            hex(dest, "destination")?,
            hex(gateway, "gateway")?,
            hex(flags, "flags")?,
        );
        if dest == 0 && flags & RTF_GATEWAY != 0 && flags & RTF_UP != 0 {
            return Ok(Some(Ipv4Addr::from(gateway.to_ne_bytes())));
        }
    }
    Ok(None)
}

/// A value the agent passed the guest: fw_cfg file `fw_cfg`, else the last
/// `param=` on the kernel command line `cmdline`. Returns the value, where
/// it came from (for errors) and which of the two it was.
fn agent_value(
    fw_cfg: &Path,
    cmdline: &Path,
    param: &str,
) -> Result<Option<(String, String, Source)>, LocateError> {
    if let Some(text) = read_optional(fw_cfg)? {
        return Ok(Some((text, fw_cfg.display().to_string(), Source::FwCfg)));
    }
    let Some(text) = read_optional(cmdline)? else {
        return Ok(None);
    };
    Ok(text
        .split_whitespace()
        .filter_map(|w| w.strip_prefix(param)?.strip_prefix('='))
        .next_back()
        .map(|value| {
            let origin = format!("{} ({param}=)", cmdline.display());
            (value.to_string(), origin, Source::KernelCmdline)
        }))
}

/// Finds the server: fw_cfg, then the kernel command line, then the
/// default gateway on port 69.
pub fn locate(sources: &Sources) -> Result<(SocketAddr, Source), LocateError> {
    if let Some((value, origin, source)) =
        agent_value(&sources.fw_cfg, &sources.cmdline, guest::CMDLINE_TFTP)?
    {
        return Ok((parse_address(&value, &origin)?, source));
    }
    if let Some(table) = read_optional(&sources.route)? {
        if let Some(gw) = default_gateway(&table, &sources.route)? {
            return Ok((SocketAddr::from((gw, DEFAULT_PORT)), Source::Gateway));
        }
    }
    Err(LocateError::NotFound {
        fw_cfg: sources.fw_cfg.display().to_string(),
        cmdline: sources.cmdline.display().to_string(),
        route: sources.route.display().to_string(),
    })
}

/// The git URL of the agent's mirror of the task's source, if the agent
/// named one: fw_cfg file `source_fw_cfg`, then `bbot.source=` on the
/// kernel command line `cmdline`. `None`: the guest clones the task's
/// `repository-url` itself (an agent without mirrors).
pub fn locate_source(source_fw_cfg: &Path, cmdline: &Path) -> Result<Option<String>, LocateError> {
    let check = |value: &str, origin: String| {
        let value = value.trim_matches(|c: char| c.is_whitespace() || c == '\0');
        if value.starts_with("git://") && !value.contains(char::is_whitespace) {
            Ok(value.to_string())
        } else {
            Err(LocateError::BadAddress {
                origin,
                value: value.escape_debug().to_string(),
                reason: "expected a git:// URL".to_string(),
            })
        }
    };
    agent_value(source_fw_cfg, cmdline, guest::CMDLINE_SOURCE)?
        .map(|(value, origin, _)| check(&value, origin))
        .transpose()
}

/// [`locate_source`] on the guest's own fw_cfg and command line.
pub fn locate_source_here() -> Result<Option<String>, LocateError> {
    locate_source(
        Path::new(&guest::fw_cfg_sysfs_path(guest::FW_CFG_SOURCE)),
        Path::new("/proc/cmdline"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const ROUTE: &str =
        "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n\
        eth0\t0002000A\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n\
        eth0\t00000000\t0202000A\t0003\t0\t0\t0\t00000000\t0\t0\t0\n";

    struct Dir(PathBuf);
    impl Dir {
        fn new(name: &str) -> Dir {
            let p = std::env::temp_dir().join(format!("locate-{name}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&p);
            std::fs::create_dir_all(&p).unwrap();
            Dir(p)
        }
        fn sources(&self) -> Sources {
            Sources {
                fw_cfg: self.0.join("fw_cfg"),
                cmdline: self.0.join("cmdline"),
                route: self.0.join("route"),
            }
        }
        fn write(&self, name: &str, text: &str) {
            std::fs::write(self.0.join(name), text).unwrap();
        }
    }
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn fw_cfg_wins() {
        let d = Dir::new("fwcfg");
        d.write("fw_cfg", "10.0.2.2:6969\0\n");
        d.write("cmdline", "console=ttyS0 bbot.tftp=10.0.2.3:1\n");
        d.write("route", ROUTE);
        let (addr, src) = locate(&d.sources()).unwrap();
        assert_eq!(addr, "10.0.2.2:6969".parse().unwrap());
        assert_eq!(src, Source::FwCfg);
    }

    #[test]
    fn kernel_command_line_next() {
        let d = Dir::new("cmdline");
        d.write("cmdline", "console=ttyS0 bbot.tftp=10.0.2.3:7000 quiet\n");
        d.write("route", ROUTE);
        let (addr, src) = locate(&d.sources()).unwrap();
        assert_eq!(addr, "10.0.2.3:7000".parse().unwrap());
        assert_eq!(src, Source::KernelCmdline);
    }

    #[test]
    fn gateway_last() {
        let d = Dir::new("gateway");
        d.write("cmdline", "console=ttyS0 quiet\n");
        d.write("route", ROUTE);
        let (addr, src) = locate(&d.sources()).unwrap();
        assert_eq!(addr, "10.0.2.2:69".parse().unwrap());
        assert_eq!(src, Source::Gateway);
    }

    #[test]
    fn nothing_at_all() {
        let d = Dir::new("nothing");
        d.write("route", "Iface\tDestination\tGateway \tFlags\n");
        let e = locate(&d.sources()).unwrap_err();
        assert!(matches!(e, LocateError::NotFound { .. }), "{e}");
        assert!(e.to_string().contains("no TFTP server"), "{e}");
    }

    #[test]
    fn garbage_is_an_error_naming_the_source() {
        let d = Dir::new("garbage");
        d.write("fw_cfg", "not an address");
        d.write("route", ROUTE);
        let e = locate(&d.sources()).unwrap_err().to_string();
        assert!(
            e.contains("fw_cfg") && e.contains("'not an address'"),
            "{e}"
        );

        let d = Dir::new("garbage-cmdline");
        d.write("cmdline", "bbot.tftp=10.0.2.2:http\n");
        d.write("route", ROUTE);
        let e = locate(&d.sources()).unwrap_err().to_string();
        assert!(
            e.contains("bbot.tftp=") && e.contains("'http' is not a port"),
            "{e}"
        );

        let d = Dir::new("garbage-route");
        d.write(
            "route",
            "Iface\tDestination\tGateway \tFlags\neth0\t00000000\tzz\t0003\n",
        );
        let e = locate(&d.sources()).unwrap_err().to_string();
        assert!(
            e.contains("line 2") && e.contains("bad gateway 'zz'"),
            "{e}"
        );

        let d = Dir::new("empty-fwcfg");
        d.write("fw_cfg", "\n");
        let e = locate(&d.sources()).unwrap_err().to_string();
        assert!(e.contains("empty"), "{e}");
    }

    #[test]
    fn addresses() {
        assert_eq!(parse_address("127.0.0.1", "x").unwrap().port(), 69);
        assert_eq!(
            parse_address("[::1]:6969", "x").unwrap(),
            "[::1]:6969".parse().unwrap()
        );
        assert_eq!(parse_address("localhost:70", "x").unwrap().port(), 70);
        assert!(parse_address("1.2.3.4:99999", "x").is_err());
    }

    #[test]
    fn routes_without_default_gateway() {
        let table = "Iface\tDestination\tGateway \tFlags\neth0\t0002000A\t00000000\t0001\n";
        assert_eq!(default_gateway(table, Path::new("r")).unwrap(), None);
    }

    #[test]
    fn source_url_from_fw_cfg_then_cmdline() {
        let d = Dir::new("source");
        let fw = d.0.join("source");
        let cmdline = d.0.join("cmdline");
        assert_eq!(locate_source(&fw, &cmdline).expect("none"), None);
        std::fs::write(
            &cmdline,
            "console=ttyS0 bbot.source=git://10.0.2.2:9/source.git\n",
        )
        .expect("cmdline");
        assert_eq!(
            locate_source(&fw, &cmdline).expect("cmdline").as_deref(),
            Some("git://10.0.2.2:9/source.git")
        );
        std::fs::write(&fw, "git://10.0.2.2:7/source.git").expect("fw_cfg");
        assert_eq!(
            locate_source(&fw, &cmdline).expect("fw_cfg").as_deref(),
            Some("git://10.0.2.2:7/source.git")
        );
        std::fs::write(&fw, "file:///etc").expect("fw_cfg");
        assert!(locate_source(&fw, &cmdline).is_err());
    }
}
