//! `--bridge`: a real guest attached to a host bridge through a tap device
//! the agent creates, getting its address from DHCP on the bridge and
//! reaching the agent's TFTP server on the bridge's address — bbot's
//! classic host setup — and, through the tap's packet filter, nothing
//! else: not another service on the bridge's address (another TFTP server
//! like another VM's, a TCP listener), not a neighbour on the bridge, not
//! an address the host routes to. Each of those is reachable from the host
//! itself, checked first, so a refusal is the filter's doing. Everything
//! runs inside network namespaces this test creates (bridge, dnsmasq, the
//! agent and QEMU; the neighbour), so the host's own networking is
//! untouched; they are deleted at the end.

mod common;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::controller::task_response_from;
use common::vm::{self, MACHINE};
use manifests::{Document, ResultManifest, ResultStatus};

const BRIDGE: &str = "bbotbr0";
const HOST_ADDR: &str = "10.77.0.1";
/// A machine on the bridge that is not a guest (the LAN, another guest).
const NEIGHBOUR_ADDR: &str = "10.77.0.200";
/// An address behind the neighbour, routed by the host (the internet).
const ROUTED_ADDR: &str = "192.0.2.1";
const HOST_SERVICE_PORT: u16 = 7101;
const NEIGHBOUR_PORT: u16 = 7102;
const OTHER_TFTP_PORT: u16 = 7069;

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("ip");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Runs `args` inside namespace `ns`.
fn in_ns(ns: &str, args: &[&str]) -> Command {
    let mut c = Command::new("ip");
    c.args(["netns", "exec", ns]).args(args);
    c
}

/// A TCP listener on `addr:port` inside `ns` that accepts and closes.
fn listener(ns: &str, addr: &str, port: u16) -> Child {
    in_ns(
        ns,
        &[
            "python3",
            "-c",
            &format!(
                "import socket\ns=socket.socket()\ns.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1)\n\
                 s.bind(('{addr}',{port}))\ns.listen()\nwhile True: s.accept()[0].close()\n"
            ),
        ],
    )
    .stdout(Stdio::null())
    .stderr(Stdio::null())
    .spawn()
    .expect("python3 listener")
}

/// Whether a TCP connection from namespace `ns` to `addr:port` succeeds.
fn reaches(ns: &str, addr: &str, port: u16) -> bool {
    in_ns(
        ns,
        &[
            "timeout",
            "5",
            "bash",
            "-c",
            &format!("exec 3<>/dev/tcp/{addr}/{port}"),
        ],
    )
    .stderr(Stdio::null())
    .status()
    .is_ok_and(|s| s.success())
}

/// A network namespace with a bridge that has an address and a DHCP
/// server, another TFTP server and a TCP listener on the bridge's address,
/// and a neighbour namespace on the bridge with an address routed behind
/// it; deleted (with everything in them) on drop.
struct Netns {
    name: String,
    neighbour: String,
    children: Vec<Child>,
}

impl Netns {
    fn create(dir: &Path) -> Netns {
        let name = format!("bbot-test-{}", std::process::id());
        let neighbour = format!("{name}-nb");
        ip(&["netns", "add", &name]);
        ip(&["netns", "add", &neighbour]);
        let inside = |ns: &str, args: &[&str]| {
            let mut a = vec!["netns", "exec", ns, "ip"];
            a.extend_from_slice(args);
            ip(&a);
        };
        inside(&name, &["link", "set", "lo", "up"]);
        inside(&name, &["link", "add", BRIDGE, "type", "bridge"]);
        inside(
            &name,
            &["addr", "add", &format!("{HOST_ADDR}/24"), "dev", BRIDGE],
        );
        inside(&name, &["link", "set", BRIDGE, "up"]);
        // The neighbour: a plain (not isolated) bridge port, like the LAN's
        // uplink, with ROUTED_ADDR behind it as far as the host knows.
        inside(
            &name,
            &[
                "link", "add", "nb0", "type", "veth", "peer", "name", "eth0", "netns", &neighbour,
            ],
        );
        inside(&name, &["link", "set", "nb0", "master", BRIDGE, "up"]);
        inside(&neighbour, &["link", "set", "lo", "up"]);
        inside(
            &neighbour,
            &["addr", "add", &format!("{ROUTED_ADDR}/32"), "dev", "lo"],
        );
        inside(
            &neighbour,
            &[
                "addr",
                "add",
                &format!("{NEIGHBOUR_ADDR}/24"),
                "dev",
                "eth0",
            ],
        );
        inside(&neighbour, &["link", "set", "eth0", "up"]);
        inside(
            &name,
            &[
                "route",
                "add",
                &format!("{ROUTED_ADDR}/32"),
                "via",
                NEIGHBOUR_ADDR,
            ],
        );
        let forwarding = in_ns(&name, &["sysctl", "-qw", "net.ipv4.ip_forward=1"])
            .status()
            .expect("sysctl");
        assert!(forwarding.success(), "ip_forward in the namespace");
        let mut children = Vec::new();
        let dnsmasq = in_ns(&name, &["dnsmasq", "--no-daemon", "--conf-file=/dev/null"])
            .args([
                "--port=0",
                "--bind-interfaces",
                &format!("--interface={BRIDGE}"),
            ])
            .arg("--dhcp-range=10.77.0.10,10.77.0.99,1h")
            .arg(format!("--dhcp-option=option:router,{HOST_ADDR}"))
            .arg(format!("--dhcp-leasefile={}", dir.join("leases").display()))
            .arg("--pid-file=")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start dnsmasq (package dnsmasq-base)");
        children.push(dnsmasq);
        // Another TFTP server on the bridge's address, as another VM's
        // would be, with a secret to steal.
        let other = dir.join("other-tftp");
        std::fs::create_dir_all(&other).expect("other tftp dir");
        std::fs::write(other.join("manifest"), "another session's task\n").expect("secret");
        let other = other.to_string_lossy().into_owned();
        let tftpd = in_ns(
            &name,
            &[
                "/usr/sbin/in.tftpd",
                "--foreground",
                "--listen",
                "--address",
                &format!("{HOST_ADDR}:{OTHER_TFTP_PORT}"),
                "--secure",
                &other,
            ],
        )
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start in.tftpd (package tftpd-hpa)");
        children.push(tftpd);
        children.push(listener(&name, HOST_ADDR, HOST_SERVICE_PORT));
        children.push(listener(&neighbour, "0.0.0.0", NEIGHBOUR_PORT));
        let ns = Netns {
            name,
            neighbour,
            children,
        };
        // Everything the guest will try is reachable without the filter.
        let deadline = Instant::now() + Duration::from_secs(10);
        for (addr, port) in [
            (HOST_ADDR, HOST_SERVICE_PORT),
            (NEIGHBOUR_ADDR, NEIGHBOUR_PORT),
            (ROUTED_ADDR, NEIGHBOUR_PORT),
        ] {
            while !reaches(&ns.name, addr, port) {
                assert!(
                    Instant::now() < deadline,
                    "{addr}:{port} not reachable from the host"
                );
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        let got = dir.join("got");
        let st = in_ns(
            &ns.name,
            &[
                "busybox",
                "tftp",
                "-g",
                "-r",
                "manifest",
                "-l",
                &got.to_string_lossy(),
                HOST_ADDR,
                &OTHER_TFTP_PORT.to_string(),
            ],
        )
        .status()
        .expect("busybox tftp");
        assert!(st.success(), "the other TFTP server answers the host");
        ns
    }

    /// The network interfaces in the namespace.
    fn links(&self) -> Vec<String> {
        let out = in_ns(&self.name, &["ip", "-o", "link", "show"])
            .output()
            .expect("ip link");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.split(':').nth(1))
            .map(|n| n.trim().split('@').next().unwrap_or_default().to_string())
            .collect()
    }

    /// The nftables tables in the namespace.
    fn nft_tables(&self) -> String {
        let out = in_ns(&self.name, &["nft", "list", "tables"])
            .output()
            .expect("nft list tables");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        for ns in [&self.name, &self.neighbour] {
            let _ = Command::new("ip").args(["netns", "delete", ns]).status();
        }
    }
}

#[test]
fn bridged_guest_gets_its_task_over_the_bridge() {
    let (fs, work) = vm::scripted_machine();
    let ns = Netns::create(work.path());

    let tc = "tc-bridged";
    let tftp = work.path().join("tftp");
    std::fs::create_dir_all(tftp.join("toolchain").join(tc)).expect("toolchain dir");
    std::fs::write(
        tftp.join("toolchain").join(tc).join("behaviour"),
        "bridged\n",
    )
    .expect("behaviour");
    let task = work.path().join("task.manifest");
    // The agent runs in the namespace: so does the repository it mirrors.
    let repo = vm::TinyRepo::serve(work.path(), Some(&ns.name));
    std::fs::write(
        &task,
        format!(
            "{}x-host-port: {HOST_SERVICE_PORT}\nx-neighbour-ip: {NEIGHBOUR_ADDR}\n\
             x-neighbour-port: {NEIGHBOUR_PORT}\nx-routed-ip: {ROUTED_ADDR}\n\
             x-other-tftp-port: {OTHER_TFTP_PORT}\n",
            task_response_from(MACHINE, "http://unused/", "s1", &repo.url)
        ),
    )
    .expect("task");

    let mut agent = Command::new("ip")
        .args(["netns", "exec", &ns.name, env!("CARGO_BIN_EXE_bbot-agent")])
        .arg("--machines")
        .arg(fs.path())
        .arg("--tftp")
        .arg(&tftp)
        .arg("--state")
        .arg(work.path().join("state"))
        .args(["--toolchain-name", tc, "--accel", "tcg", "--ram", "1048576"])
        .args(["--bridge", BRIDGE, "--verbose", "3", "--fake-request"])
        .arg(&task)
        .arg("--dump-result")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start bbot-agent in the namespace");
    let deadline = Instant::now() + Duration::from_secs(600);
    while agent.try_wait().expect("wait").is_none() {
        if Instant::now() > deadline {
            let _ = agent.kill();
            panic!("agent did not finish");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let out = agent.wait_with_output().expect("agent output");
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "agent failed:\n{log}");
    let result = ResultManifest::parse(&out.stdout, "dumped result")
        .unwrap_or_else(|e| panic!("{e}\n{log}"));
    assert_eq!(result.status, ResultStatus::Success, "{log}");
    let report = result
        .operation("sandbox@0")
        .and_then(|o| o.log.clone())
        .unwrap_or_default();
    // The guest got a DHCP lease on the bridge and found the TFTP server
    // on the bridge's address.
    assert!(report.contains("guest 10.77.0."), "{report}\n{log}");
    assert!(
        report.contains(&format!("TFTP server {HOST_ADDR}")),
        "{report}"
    );
    // Its own source server answered; nothing else did.
    for line in [
        "source: fetched",
        "tcp host service: refused",
        "tcp neighbour: refused",
        "tcp routed: refused",
        "udp other tftp: refused",
    ] {
        assert!(
            report.contains(line),
            "{line:?} missing in:\n{report}\n{log}"
        );
    }
    // The tap was an isolated port while it existed, with its filter.
    assert!(log.contains("packet filter"), "{log}");
    assert_eq!(ns.nft_tables().trim(), "", "filters left behind");
    // The tap devices are gone with their VMs; nothing else is left.
    let mut links = ns.links();
    links.sort();
    assert_eq!(links, [BRIDGE, "lo", "nb0"], "{log}");
    assert!(common::temporaries(fs.path()).is_empty());
}
