//! A bridged guest's tap device and the packet filter that confines it
//! (`--bridge`): the guest reaches its own agent's TFTP and source servers
//! on the bridge's address, and DHCP, and nothing else — not the host's
//! other services (other guests' TFTP servers listen on the same address),
//! not other guests, not the LAN, not what the host routes to.
//!
//! The filter is two nftables tables per tap, named after the tap:
//! - `bridge <tap>` sees the guest's frames. Into the host: only from the
//!   guest's MAC, ARP (claiming that MAC) and IPv4; the IPv4 packets are
//!   given the tap's mark, `0xbb000000 | ifindex`. Across the bridge (to
//!   other ports: guests, the LAN): only DHCP to a server elsewhere and its
//!   answer. Out of the host to the guest: ARP, DHCP answers, and packets
//!   of the guest's own connections (carrying its mark, below).
//! - `inet <tap>` decides on marked packets at the IP layer, with
//!   connection tracking: a new connection only to this session's TFTP
//!   port or source port on the bridge's address, and that connection
//!   gets the tap's connection mark; afterwards only packets of
//!   connections with this tap's connection mark (TFTP answers from a new
//!   port are tied to the request by the kernel's `tftp` helper, which
//!   passes the mark on); DHCP to this host; nothing routed. Packets the
//!   host sends on a connection are given its connection mark as packet
//!   mark, which the bridge table's "out" rule checks.
//!
//! So a guest that claims another guest's address (ARP or IP) gains
//! nothing: the connections it could hijack carry the other tap's mark
//! and are neither accepted from it nor sent to it. It can disturb that
//! guest's traffic (the host's ARP cache follows the last claim), which a
//! DHCP-addressed bridge cannot prevent without knowing the addresses.
//!
//! The tap is also an isolated bridge port (the kernel forwards nothing
//! between isolated ports), which holds even if someone flushes the host's
//! nftables ruleset. It is brought up only once the filter is in place.

use std::io::Write;
use std::net::Ipv4Addr;
use std::process::{Command, Stdio};

use crate::vm::iproute::ip;

/// What one guest on a bridge may reach.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TapFilter {
    /// The agent's address on the bridge, where the session's servers
    /// listen.
    pub host: Ipv4Addr,
    /// The session's TFTP server port (UDP).
    pub tftp_port: u16,
    /// The session's source server port (TCP), for a task.
    pub source_port: Option<u16>,
}

/// A tap device enslaved to a bridge, filtered; the filter and the device
/// are deleted on drop.
#[derive(Debug)]
pub struct Tap {
    name: String,
}

/// The bit pattern that marks our packets, or'ed with the tap's ifindex
/// (unique on the host while the tap exists).
const MARK_BASE: u32 = 0xbb00_0000;

impl Tap {
    /// Creates tap `name` on `bridge` for a guest with `mac`, confined by
    /// `filter`, up. A tap or filter of this name can only be a crashed
    /// run's leftover and is replaced.
    pub fn create(name: &str, bridge: &str, mac: &str, filter: &TapFilter) -> Result<Tap, String> {
        delete_filter(name);
        let _ = ip(&["link", "delete", "dev", name]);
        ip(&["tuntap", "add", "dev", name, "mode", "tap"])?;
        // From here on the drop deletes whatever was made.
        let tap = Tap {
            name: name.to_string(),
        };
        ip(&["link", "set", "dev", name, "master", bridge])?;
        ip(&[
            "link",
            "set",
            "dev",
            name,
            "type",
            "bridge_slave",
            "isolated",
            "on",
        ])?;
        let ifindex = std::fs::read_to_string(format!("/sys/class/net/{name}/ifindex"))
            .map_err(|e| format!("{name}: ifindex: {e}"))?;
        let ifindex: u32 = ifindex
            .trim()
            .parse()
            .map_err(|e| format!("{name}: ifindex {:?}: {e}", ifindex.trim()))?;
        if ifindex > 0x00ff_ffff {
            return Err(format!(
                "{name}: ifindex {ifindex} does not fit the packet mark"
            ));
        }
        nft_apply(&ruleset(name, mac, filter, MARK_BASE | ifindex))?;
        ip(&["link", "set", "dev", name, "up"])?;
        tracing::info!(
            "tap {name} on {bridge}: isolated port; packet filter lets the guest reach {} \
             (TFTP udp/{}{}) and DHCP, nothing else",
            filter.host,
            filter.tftp_port,
            filter
                .source_port
                .map_or(String::new(), |p| format!(", source tcp/{p}"))
        );
        Ok(tap)
    }

    /// The device's name.
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl Drop for Tap {
    fn drop(&mut self) {
        delete_filter(&self.name);
        if let Err(e) = ip(&["link", "delete", "dev", &self.name]) {
            tracing::warn!("cannot delete tap device {}: {e}", self.name);
        }
    }
}

/// The nftables ruleset confining the guest behind tap `tap`.
pub fn ruleset(tap: &str, mac: &str, filter: &TapFilter, mark: u32) -> String {
    let host = filter.host;
    let tftp = format!(
        "        meta mark {mark:#010x} ct state new ip daddr {host} udp dport {} \
         ct helper set \"tftp\" ct mark set {mark:#010x} accept\n",
        filter.tftp_port
    );
    let source = filter.source_port.map_or(String::new(), |port| {
        format!(
            "        meta mark {mark:#010x} ct state new ip daddr {host} tcp dport {port} \
             ct mark set {mark:#010x} accept\n"
        )
    });
    format!(
        "table bridge {tap} {{
    chain to_host {{
        type filter hook input priority filter; policy accept;
        iifname \"{tap}\" ether saddr != {mac} drop
        iifname \"{tap}\" arp saddr ether != {mac} drop
        iifname \"{tap}\" ether type arp accept
        iifname \"{tap}\" ether type ip meta mark set {mark:#010x} accept
        iifname \"{tap}\" drop
    }}
    chain across {{
        type filter hook forward priority filter; policy accept;
        iifname \"{tap}\" ether saddr {mac} udp sport 68 udp dport 67 accept
        iifname \"{tap}\" drop
        oifname \"{tap}\" udp sport 67 udp dport 68 accept
        oifname \"{tap}\" drop
    }}
    chain from_host {{
        type filter hook output priority filter; policy accept;
        oifname \"{tap}\" ether type arp accept
        oifname \"{tap}\" udp sport 67 udp dport 68 accept
        oifname \"{tap}\" meta mark {mark:#010x} accept
        oifname \"{tap}\" drop
    }}
}}
table inet {tap} {{
    ct helper tftp {{
        type \"tftp\" protocol udp
        l3proto ip
    }}
    chain to_host {{
        type filter hook input priority filter; policy accept;
        meta mark {mark:#010x} ct state established,related ct mark {mark:#010x} accept
{tftp}{source}        meta mark {mark:#010x} udp sport 68 udp dport 67 accept
        meta mark {mark:#010x} drop
    }}
    chain routed {{
        type filter hook forward priority filter; policy accept;
        meta mark {mark:#010x} drop
    }}
    chain from_host {{
        type filter hook output priority filter; policy accept;
        ct mark {mark:#010x} meta mark set {mark:#010x}
    }}
}}
"
    )
}

/// Loads `rules` with `nft -f -`.
fn nft_apply(rules: &str) -> Result<(), String> {
    let mut child = Command::new("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("nft (package nftables): {e}"))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(rules.as_bytes())
            .map_err(|e| format!("nft: writing the ruleset: {e}"))?;
    }
    let out = child.wait_with_output().map_err(|e| format!("nft: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "nft -f: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Runs `nft args...`, quietly.
fn nft(args: &[&str]) -> Result<String, String> {
    let out = Command::new("nft")
        .args(args)
        .output()
        .map_err(|e| format!("nft (package nftables): {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "nft {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Deletes the filter tables of tap `name`, if any.
fn delete_filter(name: &str) {
    for family in ["bridge", "inet"] {
        // Absent is the usual case (a fresh tap), so errors are not news.
        let _ = nft(&["delete", "table", family, name]);
    }
}

/// Checks at start-up that the filter can be installed at all, so a host
/// without nftables fails before its first task, not at it.
pub fn check_available() -> Result<(), String> {
    nft(&["list", "tables"]).map(drop).map_err(|e| {
        format!("--bridge confines each guest with nftables, which is not usable: {e}")
    })
}

/// Deletes filter tables named `<prefix><n>` (a dead predecessor's), and
/// says how many.
pub fn clean_leftover_filters(prefix: &str) -> usize {
    let Ok(list) = nft(&["list", "tables"]) else {
        return 0;
    };
    let mut n = 0;
    for line in list.lines() {
        let mut words = line.split_whitespace();
        let (Some("table"), Some(family), Some(name)) = (words.next(), words.next(), words.next())
        else {
            continue;
        };
        let ours = name
            .strip_prefix(prefix)
            .is_some_and(|rest| !rest.is_empty() && rest.bytes().all(|b| b.is_ascii_digit()));
        if ours && matches!(family, "bridge" | "inet") {
            match nft(&["delete", "table", family, name]) {
                Ok(_) => {
                    tracing::info!("deleted leftover packet filter {family} {name}");
                    n += 1;
                }
                Err(e) => tracing::error!("cannot delete leftover packet filter: {e}"),
            }
        }
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ruleset_names_the_tap_mac_mark_and_only_the_sessions_ports() {
        let filter = TapFilter {
            host: Ipv4Addr::new(10, 77, 0, 1),
            tftp_port: 40001,
            source_port: Some(40002),
        };
        let r = ruleset("bbot1i1t7", "de:ad:be:ef:00:01", &filter, 0xbb00_0012);
        assert!(r.contains("table bridge bbot1i1t7 {"), "{r}");
        assert!(r.contains("table inet bbot1i1t7 {"), "{r}");
        assert!(r.contains("ether saddr != de:ad:be:ef:00:01 drop"), "{r}");
        assert!(r.contains("meta mark set 0xbb000012"), "{r}");
        assert!(
            r.contains("ip daddr 10.77.0.1 udp dport 40001 ct helper set \"tftp\""),
            "{r}"
        );
        assert!(r.contains("ip daddr 10.77.0.1 tcp dport 40002"), "{r}");
        // Without a source server, no TCP port is open.
        let r = ruleset(
            "bbot1i1t7",
            "de:ad:be:ef:00:01",
            &TapFilter {
                source_port: None,
                ..filter
            },
            0xbb00_0012,
        );
        assert!(!r.contains("tcp dport"), "{r}");
    }
}
