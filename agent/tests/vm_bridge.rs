//! `--bridge`: a real guest attached to a host bridge through a tap device
//! the agent creates, getting its address from DHCP on the bridge and
//! reaching the agent's TFTP server on the bridge's address — bbot's
//! classic host setup. Everything runs inside a network namespace this
//! test creates (bridge, dnsmasq, the agent and QEMU), so the host's own
//! networking is untouched; the namespace is deleted at the end.

mod common;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::controller::task_response_from;
use common::vm::{self, MACHINE};
use manifests::{Document, ResultManifest, ResultStatus};

const BRIDGE: &str = "bbotbr0";
const HOST_ADDR: &str = "10.77.0.1";

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("ip");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A network namespace with a bridge that has an address and a DHCP
/// server; deleted (with everything in it) on drop.
struct Netns {
    name: String,
    dnsmasq: Child,
}

impl Netns {
    fn create(dir: &Path) -> Netns {
        let name = format!("bbot-test-{}", std::process::id());
        ip(&["netns", "add", &name]);
        let inside = |args: &[&str]| {
            let mut a = vec!["netns", "exec", &name, "ip"];
            a.extend_from_slice(args);
            ip(&a);
        };
        inside(&["link", "set", "lo", "up"]);
        inside(&["link", "add", BRIDGE, "type", "bridge"]);
        inside(&["addr", "add", &format!("{HOST_ADDR}/24"), "dev", BRIDGE]);
        inside(&["link", "set", BRIDGE, "up"]);
        let dnsmasq = Command::new("ip")
            .args([
                "netns",
                "exec",
                &name,
                "dnsmasq",
                "--no-daemon",
                "--conf-file=/dev/null",
            ])
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
        Netns { name, dnsmasq }
    }

    /// The network interfaces in the namespace.
    fn links(&self) -> Vec<String> {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.name, "ip", "-o", "link", "show"])
            .output()
            .expect("ip link");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.split(':').nth(1))
            .map(|n| n.trim().split('@').next().unwrap_or_default().to_string())
            .collect()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = self.dnsmasq.kill();
        let _ = self.dnsmasq.wait();
        let _ = Command::new("ip")
            .args(["netns", "delete", &self.name])
            .status();
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
        task_response_from(MACHINE, "http://unused/", "s1", &repo.url),
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
    // The tap devices are gone with their VMs; nothing else is left.
    let mut links = ns.links();
    links.sort();
    assert_eq!(links, [BRIDGE.to_string(), "lo".to_string()], "{log}");
    assert!(common::temporaries(fs.path()).is_empty());
}
