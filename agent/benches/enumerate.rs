//! Benchmark: one enumeration round over 1,000 bootstrapped machines (nothing to
//! re-bootstrap) on a loop-mounted btrfs. Target: under 200 ms. Needs root.
//!
//! Run: `cargo bench -p bbot-agent --bench enumerate`

#[path = "../tests/common/btrfs_loop.rs"]
#[allow(dead_code)]
mod btrfs_loop;

use std::path::Path;
use std::time::{Duration, Instant};

use bbot_agent::base::cancel::Cancel;
use bbot_agent::base::version::BOOTSTRAP_PROTOCOL;
use bbot_agent::host::machines::{generate_mac, Machines, MachinesConfig};
use bbot_agent::vm::fake::{fake_bootstrap_manifest, FakeRunner};
use manifests::{
    BootstrappedMachineManifest, Document, MachineHeader, MachineManifest, MachineType,
    ToolchainManifest,
};

const MACHINES: usize = 1000;
const VOLUMES: usize = 4;
const ROUNDS: usize = 20;
const TARGET: Duration = Duration::from_millis(200);

fn btrfs_create(paths: &[std::path::PathBuf]) {
    for p in paths {
        bbot_agent::host::btrfs::create_subvolume(p).expect("create subvolume");
    }
}

fn layout(root: &Path) {
    let mut revs = Vec::new();
    let mut boots = Vec::new();
    let mut dirs = Vec::new();
    for i in 0..MACHINES {
        let name = format!("m{i:04}");
        let dir = root.join(format!("vol{}", i % VOLUMES)).join(&name);
        std::fs::create_dir_all(&dir).expect("machine dir");
        revs.push(dir.join(format!("{name}-{BOOTSTRAP_PROTOCOL}.1")));
        boots.push(dir.join(format!("{name}-default")));
        dirs.push((dir, name));
    }
    btrfs_create(&revs);
    btrfs_create(&boots);
    for ((dir, name), (rev, boot)) in dirs.iter().zip(revs.iter().zip(&boots)) {
        let machine = MachineManifest {
            header: MachineHeader {
                id: format!("{name}-id-1"),
                name: name.clone(),
                summary: format!("benchmark machine {name}"),
                role: None,
                ram_minimum: None,
                ram_maximum: None,
                extra: Vec::new(),
            },
            machine_type: MachineType::Kvm,
            mac: None,
            options: Some("-cpu host".into()),
            changes: None,
            extra: Vec::new(),
        };
        std::fs::write(rev.join("manifest"), machine.to_text().expect("text")).expect("write");
        let mut booted = machine.clone();
        booted.mac = Some(generate_mac(name, "default", 1));
        let bm = BootstrappedMachineManifest {
            machine: booted,
            toolchain: ToolchainManifest {
                id: "default".into(),
                extra: Vec::new(),
            },
            bootstrap: fake_bootstrap_manifest(),
        };
        std::fs::write(boot.join("manifest"), bm.to_text().expect("text")).expect("write");
        std::os::unix::fs::symlink(
            rev.file_name().expect("name"),
            dir.join(format!("{name}-{BOOTSTRAP_PROTOCOL}")),
        )
        .expect("link");
    }
}

fn main() {
    // `cargo bench` passes --bench; `cargo test --benches` too; nothing to parse.
    let fs = btrfs_loop::BtrfsLoop::new();
    let setup = Instant::now();
    layout(fs.path());
    println!("setup: {MACHINES} machines in {:?}", setup.elapsed());
    let runner = FakeRunner::all_fake(Duration::ZERO);
    let ms = Machines::new(
        MachinesConfig {
            machines: fs.path().to_path_buf(),
            toolchain_name: "default".into(),
            toolchain_id: None,
            toolchain_num: 1,
            instance: 1,
            toolchain_lock: fs.path().join(".bbot-agent-default.lock"),
            bootstrap_timeout: Duration::from_secs(60),
        },
        &runner,
        Cancel::new(),
    );
    let mut times = Vec::new();
    for _ in 0..ROUNDS {
        let t = Instant::now();
        // The offer's machine locks go with it, as in the agent's round.
        let offered = ms.enumerate().expect("enumerate");
        times.push(t.elapsed());
        assert_eq!(offered.len(), MACHINES);
        drop(offered);
    }
    assert_eq!(runner.bootstraps(), 0, "nothing should need a bootstrap");
    times.sort();
    let median = times[times.len() / 2];
    println!(
        "enumerate {MACHINES} bootstrapped machines: min {:?} median {:?} max {:?} ({ROUNDS} rounds)",
        times[0],
        median,
        times[times.len() - 1]
    );
    println!(
        "target < {TARGET:?}: {}",
        if median < TARGET { "PASS" } else { "FAIL" }
    );
    // For comparison: what bbot's snapshot-every-machine-every-round approach
    // would cost here (snapshot each revision, then delete the snapshot).
    let t = Instant::now();
    for i in 0..MACHINES {
        let name = format!("m{i:04}");
        let dir = fs.path().join(format!("vol{}", i % VOLUMES)).join(&name);
        let tmp = dir.join(format!("{name}-default-bbot-tmp-bench"));
        bbot_agent::host::btrfs::snapshot(
            &dir.join(format!("{name}-{BOOTSTRAP_PROTOCOL}.1")),
            &tmp,
        )
        .expect("snapshot");
        bbot_agent::host::btrfs::delete(&tmp).expect("delete");
    }
    println!(
        "for comparison, snapshot+delete of every revision: {:?}",
        t.elapsed()
    );
    assert!(median < TARGET, "enumeration too slow");
}
