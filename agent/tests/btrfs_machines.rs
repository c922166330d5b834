//! Machine enumeration and bootstrap bookkeeping (PROTOCOLS.md section 4) on a
//! real loop-mounted btrfs. Needs root; skips loudly otherwise.

mod common;

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bbot_agent::base::cancel::Cancel;
use bbot_agent::base::version::AGENT_VERSION;
use bbot_agent::control::task::{self, TaskConfig};
use bbot_agent::host::btrfs::{self, BtrfsError};
use bbot_agent::host::layout::MANIFEST_FILE;
use bbot_agent::host::machines::{Machines, MachinesConfig, MachinesError};
use bbot_agent::vm::fake::FakeRunner;
use bbot_agent::vm::runner::{BootstrapJob, MachineRunner, RunnerError, TaskJob};
use common::btrfs_loop::BtrfsLoop;
use common::{add_revision, set_link, temporaries};
use manifests::{
    BootstrapManifest, BootstrappedMachineManifest, Document, ResultManifest, ResultStatus,
    TaskManifest,
};

fn cfg(machines: &Path, toolchain_id: Option<&str>) -> MachinesConfig {
    MachinesConfig {
        machines: machines.to_path_buf(),
        toolchain_name: "default".into(),
        toolchain_id: toolchain_id.map(str::to_owned),
        toolchain_num: 1,
        instance: 1,
        toolchain_lock: machines.join(".bbot-agent-default.lock"),
        bootstrap_timeout: Duration::from_secs(10),
    }
}

fn fake() -> FakeRunner {
    FakeRunner::all_fake(Duration::ZERO)
}

fn names(ms: &[bbot_agent::host::machines::BootstrappedMachine]) -> Vec<String> {
    let mut v: Vec<String> = ms.iter().map(|m| m.header().name.clone()).collect();
    v.sort();
    v
}

fn read_bootstrapped(p: &Path) -> BootstrappedMachineManifest {
    let bytes = std::fs::read(p.join(MANIFEST_FILE)).expect("bootstrapped manifest");
    BootstrappedMachineManifest::parse(&bytes, "test").expect("valid bootstrapped manifest")
}

/// Rewrites the bootstrapped manifest with `f` (clearing the read-only flag the
/// agent sets, as an admin would have to).
fn edit_bootstrapped(p: &Path, f: impl FnOnce(&mut BootstrappedMachineManifest)) {
    let mut b = read_bootstrapped(p);
    f(&mut b);
    btrfs::set_read_only(p, false).expect("clear ro");
    std::fs::write(p.join(MANIFEST_FILE), b.to_text().expect("serialize")).expect("write");
    btrfs::set_read_only(p, true).expect("set ro");
}

#[test]
fn machines_with_and_without_links() {
    let fs = BtrfsLoop::new();
    let m = fs.path().join("machines");
    std::fs::create_dir(&m).expect("machines dir");
    // Relative link, absolute link, no link (with a stale bootstrap), hidden volume.
    add_revision(&m, "vol", "rel", 1, "r1", false);
    set_link(&m, "vol", "rel", 1, true);
    add_revision(&m, "vol", "abs", 1, "a1", false);
    set_link(&m, "vol", "abs", 1, false);
    add_revision(&m, "vol", "gone", 1, "g1", false);
    set_link(&m, "vol", "gone", 1, true);
    add_revision(&m, ".hidden", "secret", 1, "s1", false);
    set_link(&m, ".hidden", "secret", 1, true);
    std::fs::write(m.join("vol").join("README"), "not a machine").expect("file");

    let runner = fake();
    let ms = Machines::new(cfg(&m, Some("tc1")), &runner, Cancel::new());
    ms.check().expect("btrfs");
    let offered = ms.enumerate().expect("round 1");
    assert_eq!(names(&offered), ["abs", "gone", "rel"]);
    assert_eq!(runner.bootstraps(), 3);
    let gone = m.join("vol/gone/gone-default");
    assert!(btrfs::is_subvolume(&gone));

    // The bootstrapped manifest: machine with a MAC, toolchain id, versions.
    let b = read_bootstrapped(&m.join("vol/rel/rel-default"));
    assert_eq!(b.machine.header.id, "r1");
    assert!(b.machine.mac.is_some());
    assert_eq!(b.toolchain.id, "tc1");
    assert_eq!(b.bootstrap.version_of("bbot-agent"), Some(AGENT_VERSION));
    assert!(b.bootstrap.version_of("worker-guest").is_some());
    assert!(btrfs::is_read_only(&m.join("vol/rel/rel-default")).expect("ro flag"));

    // Round 2: nothing to do; remove a link and its bootstrap goes away.
    std::fs::remove_file(m.join("vol/gone/gone-1")).expect("unlink");
    drop(offered);
    let offered = ms.enumerate().expect("round 2");
    assert_eq!(names(&offered), ["abs", "rel"]);
    assert_eq!(
        runner.bootstraps(),
        3,
        "no re-bootstrap of current machines"
    );
    assert!(
        !gone.exists(),
        "stale <name>-<toolchain> deleted when the link is gone"
    );
    assert!(
        m.join("vol/gone/gone-1.1").exists(),
        "revision itself untouched"
    );
    assert!(temporaries(&m).is_empty());
}

#[test]
fn revision_swap_between_rounds() {
    let fs = BtrfsLoop::new();
    let m = fs.path().to_path_buf();
    add_revision(&m, "v", "deb", 1, "id-1", false);
    set_link(&m, "v", "deb", 1, true);
    let runner = fake();
    let ms = Machines::new(cfg(&m, None), &runner, Cancel::new());
    assert_eq!(names(&ms.enumerate().expect("round 1")), ["deb"]);
    assert_eq!(runner.bootstraps(), 1);

    add_revision(&m, "v", "deb", 2, "id-2", false);
    set_link(&m, "v", "deb", 2, true);
    let offered = ms.enumerate().expect("round 2");
    assert_eq!(runner.bootstraps(), 2, "new revision re-bootstrapped");
    assert_eq!(offered[0].header().id, "id-2");
    assert_eq!(
        read_bootstrapped(&m.join("v/deb/deb-default"))
            .machine
            .header
            .id,
        "id-2"
    );
    ms.enumerate().expect("round 3");
    assert_eq!(runner.bootstraps(), 2);
    assert!(temporaries(&m).is_empty());
}

#[test]
fn toolchain_id_change() {
    let fs = BtrfsLoop::new();
    let m = fs.path().to_path_buf();
    add_revision(&m, "v", "x", 1, "x1", false);
    set_link(&m, "v", "x", 1, true);
    let runner = fake();
    Machines::new(cfg(&m, Some("t1")), &runner, Cancel::new())
        .enumerate()
        .expect("t1");
    Machines::new(cfg(&m, Some("t1")), &runner, Cancel::new())
        .enumerate()
        .expect("t1 again");
    assert_eq!(runner.bootstraps(), 1);
    Machines::new(cfg(&m, Some("t2")), &runner, Cancel::new())
        .enumerate()
        .expect("t2");
    assert_eq!(runner.bootstraps(), 2, "toolchain id change re-bootstraps");
    assert_eq!(
        read_bootstrapped(&m.join("v/x/x-default")).toolchain.id,
        "t2"
    );
    Machines::new(cfg(&m, None), &runner, Cancel::new())
        .enumerate()
        .expect("no id");
    assert_eq!(
        runner.bootstraps(),
        2,
        "no toolchain id given: not a change"
    );
}

#[test]
fn agent_version_older_and_newer() {
    let fs = BtrfsLoop::new();
    let m = fs.path().to_path_buf();
    add_revision(&m, "v", "x", 1, "x1", false);
    set_link(&m, "v", "x", 1, true);
    let xp = m.join("v/x/x-default");
    let runner = fake();
    let ms = Machines::new(cfg(&m, None), &runner, Cancel::new());
    ms.enumerate().expect("round 1");
    assert_eq!(runner.bootstraps(), 1);

    edit_bootstrapped(&xp, |b| b.bootstrap.set_version("bbot-agent", "0.0.1"));
    assert_eq!(names(&ms.enumerate().expect("older")), ["x"]);
    assert_eq!(
        runner.bootstraps(),
        2,
        "bootstrapped by older agent: re-bootstrap"
    );
    assert_eq!(
        read_bootstrapped(&xp).bootstrap.version_of("bbot-agent"),
        Some(AGENT_VERSION)
    );

    edit_bootstrapped(&xp, |b| b.bootstrap.set_version("bbot-agent", "999.0.0"));
    assert!(
        ms.enumerate().expect("newer").is_empty(),
        "newer agent's machine not offered"
    );
    assert_eq!(runner.bootstraps(), 2, "and not touched");
    assert_eq!(
        read_bootstrapped(&xp).bootstrap.version_of("bbot-agent"),
        Some("999.0.0")
    );

    edit_bootstrapped(&xp, |b| {
        b.bootstrap.versions.retain(|(p, _)| p != "bbot-agent")
    });
    ms.enumerate().expect("missing version");
    assert_eq!(
        runner.bootstraps(),
        3,
        "no recorded agent version counts as older"
    );
    assert!(temporaries(&m).is_empty());
}

#[test]
fn crash_leftovers_cleaned_at_start() {
    let fs = BtrfsLoop::new();
    let m = fs.path().to_path_buf();
    add_revision(&m, "v", "x", 1, "x1", false);
    set_link(&m, "v", "x", 1, true);
    let dir = m.join("v/x");
    // A crashed run's snapshot (pid that is not a running agent), read-only with a
    // nested subvolume; and one of another toolchain, which is not ours.
    let ours = dir.join("x-default-bbot-tmp-4000000-3");
    btrfs::create_subvolume(&ours).expect("leftover");
    btrfs::create_subvolume(&ours.join("nested")).expect("nested");
    btrfs::set_read_only(&ours, true).expect("ro");
    let theirs = dir.join("x-other-bbot-tmp-4000000-0");
    btrfs::create_subvolume(&theirs).expect("other toolchain");

    let runner = fake();
    let ms = Machines::new(cfg(&m, None), &runner, Cancel::new());
    assert_eq!(ms.clean_leftovers().expect("cleanup"), 1);
    assert!(!ours.exists());
    assert!(theirs.exists(), "other toolchain's snapshot left alone");
}

/// Another instance died during a task (SIGKILL: its machine lock's record
/// was never emptied, its snapshot is still there). The next round of any
/// instance that takes that lock deletes the snapshot, without a restart.
#[test]
fn a_dead_instances_snapshot_goes_in_the_next_round() {
    let fs = BtrfsLoop::new();
    let m = fs.path().to_path_buf();
    add_revision(&m, "v", "x", 1, "x1", false);
    set_link(&m, "v", "x", 1, true);
    let runner = fake();
    let ms = Machines::new(cfg(&m, None), &runner, Cancel::new());
    drop(ms.enumerate().expect("round 1"));
    let dir = m.join("v/x");
    let left = dir.join("x-default-bbot-tmp-2-4000000-0");
    btrfs::create_subvolume(&left).expect("snapshot of the dead instance");
    std::fs::write(
        dir.join("x-default.lock"),
        "bbot-lock i=02 pid=4000000000 hold=task      p=0000 s=0\n",
    )
    .expect("its record");
    let offered = ms.enumerate().expect("round 2");
    assert_eq!(names(&offered), ["x"]);
    assert!(!left.exists(), "the dead instance's snapshot is deleted");
}

#[test]
fn read_only_revision() {
    let fs = BtrfsLoop::new();
    let m = fs.path().to_path_buf();
    let rev = add_revision(&m, "v", "ro", 1, "ro1", true);
    set_link(&m, "v", "ro", 1, true);
    let runner = fake();
    let ms = Machines::new(cfg(&m, None), &runner, Cancel::new());
    assert_eq!(names(&ms.enumerate().expect("round")), ["ro"]);
    assert!(
        btrfs::is_read_only(&rev).expect("flag"),
        "revision stays read-only"
    );
    assert_eq!(
        read_bootstrapped(&m.join("v/ro/ro-default"))
            .machine
            .header
            .id,
        "ro1"
    );
    // The revision's own manifest was not rewritten.
    let text = std::fs::read_to_string(rev.join(MANIFEST_FILE)).expect("manifest");
    assert!(!text.contains("bbot-agent-version"));
    assert!(temporaries(&m).is_empty());
}

#[test]
fn nested_subvolumes_are_deleted() {
    let fs = BtrfsLoop::new();
    let m = fs.path().to_path_buf();
    add_revision(&m, "v", "n", 1, "n1", false);
    set_link(&m, "v", "n", 1, true);
    let runner = fake();
    let ms = Machines::new(cfg(&m, None), &runner, Cancel::new());
    ms.enumerate().expect("round 1");
    let xp = m.join("v/n/n-default");
    // Something made nested subvolumes (one read-only) inside the bootstrap.
    btrfs::set_read_only(&xp, false).expect("clear ro");
    btrfs::create_subvolume(&xp.join("a")).expect("a");
    btrfs::create_subvolume(&xp.join("a/b")).expect("a/b");
    std::fs::create_dir(xp.join("dir")).expect("dir");
    btrfs::create_subvolume(&xp.join("dir/c")).expect("dir/c");
    btrfs::set_read_only(&xp.join("a"), true).expect("ro a");
    btrfs::set_read_only(&xp, true).expect("ro");
    // A new revision makes it obsolete: it must go, nested subvolumes and all.
    add_revision(&m, "v", "n", 2, "n2", false);
    set_link(&m, "v", "n", 2, true);
    ms.enumerate().expect("round 2");
    assert_eq!(runner.bootstraps(), 2);
    assert!(!xp.join("a").exists() && !xp.join("dir").exists());
    assert_eq!(read_bootstrapped(&xp).machine.header.id, "n2");
    // And deleting a missing subvolume is fine; a plain directory is an error.
    btrfs::delete(&m.join("nothing-here")).expect("idempotent");
    std::fs::create_dir(m.join("plain")).expect("plain");
    assert!(matches!(
        btrfs::delete(&m.join("plain")),
        Err(BtrfsError::NotSubvolume { .. })
    ));
}

#[test]
fn dangling_link_is_skipped_after_bounded_retry() {
    let fs = BtrfsLoop::new();
    let m = fs.path().to_path_buf();
    add_revision(&m, "v", "ok", 1, "ok1", false);
    set_link(&m, "v", "ok", 1, true);
    std::fs::create_dir_all(m.join("v/dang")).expect("dir");
    set_link(&m, "v", "dang", 7, true);
    let runner = fake();
    let ms = Machines::new(cfg(&m, None), &runner, Cancel::new());
    assert_eq!(names(&ms.enumerate().expect("round")), ["ok"]);
    assert!(temporaries(&m).is_empty());
}

/// Fails every bootstrap, counting attempts.
struct FailingRunner(AtomicUsize);

impl MachineRunner for FailingRunner {
    fn bootstrap(
        &self,
        job: &BootstrapJob<'_>,
        _: &Cancel,
    ) -> Result<BootstrapManifest, RunnerError> {
        self.0.fetch_add(1, Ordering::SeqCst);
        assert!(
            btrfs::is_subvolume(job.subvolume),
            "boots from a real snapshot"
        );
        std::fs::write(job.subvolume.join("half-done"), "x").expect("write into snapshot");
        Err(RunnerError::Failed("guest never called home".into()))
    }
    fn run_task(&self, _: &TaskJob<'_>, _: &Cancel) -> Result<ResultManifest, RunnerError> {
        Err(RunnerError::Failed("no".into()))
    }
}

#[test]
fn failed_bootstrap_leaves_nothing() {
    let fs = BtrfsLoop::new();
    let m = fs.path().to_path_buf();
    add_revision(&m, "v", "x", 1, "x1", false);
    set_link(&m, "v", "x", 1, true);
    let runner = FailingRunner(AtomicUsize::new(0));
    let ms = Machines::new(cfg(&m, None), &runner, Cancel::new());
    assert!(ms.enumerate().expect("round").is_empty());
    assert_eq!(runner.0.load(Ordering::SeqCst), 1);
    assert!(!m.join("v/x/x-default").exists(), "no half-made bootstrap");
    assert!(
        temporaries(&m).is_empty(),
        "failed bootstrap's snapshot deleted"
    );
}

/// Checks during the task that it runs on a snapshot, then fails or succeeds.
struct TaskProbe;

impl MachineRunner for TaskProbe {
    fn bootstrap(
        &self,
        _: &BootstrapJob<'_>,
        _: &Cancel,
    ) -> Result<BootstrapManifest, RunnerError> {
        Ok(bbot_agent::vm::fake::fake_bootstrap_manifest())
    }
    fn run_task(&self, job: &TaskJob<'_>, _: &Cancel) -> Result<ResultManifest, RunnerError> {
        let sv = job.subvolume.expect("a snapshot to boot");
        assert!(btrfs::is_subvolume(sv));
        assert!(sv.to_string_lossy().contains("-bbot-tmp-"));
        assert!(
            !btrfs::is_read_only(sv).expect("flag"),
            "task snapshot is writable"
        );
        std::fs::write(sv.join("scratch"), "guest wrote this").expect("write");
        if job.task.name == "fail" {
            return Err(RunnerError::Failed("VM crashed".into()));
        }
        Ok(bbot_agent::vm::fake::fake_result(job.task))
    }
}

#[test]
fn task_runs_on_a_throwaway_snapshot() {
    let fs = BtrfsLoop::new();
    let m = fs.path().to_path_buf();
    add_revision(&m, "v", "x", 1, "x1", false);
    set_link(&m, "v", "x", 1, true);
    let offered = Machines::new(cfg(&m, None), &TaskProbe, Cancel::new())
        .enumerate()
        .expect("round");
    let text = common::controller::task_response("x", "http://unused/", "s");
    let resp = manifests::TaskResponseManifest::parse(text.as_bytes(), "t").expect("response");
    let mut t: TaskManifest = resp.task.expect("task");
    let tc = TaskConfig {
        toolchain_name: "default".into(),
        instance: 1,
        build_timeout: Duration::from_secs(5),
        trust: vec!["AB:CD".into()],
    };
    task::apply_trust(&mut t, &tc.trust);
    assert_eq!(t.trust, ["AB:CD"]);
    let run_as = task::RunAs {
        boost: false,
        observer: &bbot_agent::vm::runner::Unobserved,
    };
    let r = task::perform(&t, &offered[0], &TaskProbe, &tc, &run_as, &Cancel::new());
    assert_eq!(r.status, ResultStatus::Success);
    assert_eq!(r.operations.len(), 4, "2 boards x 2 commits");
    t.name = "fail".into();
    let r = task::perform(&t, &offered[0], &TaskProbe, &tc, &run_as, &Cancel::new());
    assert_eq!(r.status, ResultStatus::Abnormal);
    assert!(temporaries(&m).is_empty(), "task snapshots deleted");
    assert!(
        !m.join("v/x/x-default/scratch").exists(),
        "bootstrap untouched"
    );
}

#[test]
fn non_btrfs_machines_dir_is_a_clear_error() {
    // /dev/shm is tmpfs on Linux, never btrfs; no root needed for this one.
    let dir = tempfile::tempdir_in("/dev/shm").expect("a directory on /dev/shm");
    assert!(
        btrfs::check_filesystem(dir.path()).is_err(),
        "/dev/shm is btrfs?"
    );
    let runner = fake();
    let ms = Machines::new(cfg(dir.path(), None), &runner, Cancel::new());
    let e = ms.check().expect_err("not btrfs");
    assert!(
        matches!(e, MachinesError::Filesystem(BtrfsError::NotBtrfs { .. })),
        "{e:?}"
    );
    assert!(e.to_string().contains("not on a btrfs filesystem"), "{e}");

    let out = std::process::Command::new(env!("CARGO_BIN_EXE_bbot-agent"))
        .arg("--machines")
        .arg(dir.path())
        .arg("--dump-machines")
        .output()
        .expect("run agent");
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("not on a btrfs filesystem"), "{err}");
}

#[test]
fn dump_machines_lists_bootstrapped_machines() {
    let fs = BtrfsLoop::new();
    let m = fs.path().to_path_buf();
    add_revision(&m, "v", "alpha", 1, "a1", false);
    set_link(&m, "v", "alpha", 1, true);
    add_revision(&m, "v", "beta", 1, "b1", true);
    set_link(&m, "v", "beta", 1, false);
    // A crashed agent's leftover: the binary deletes it before anything else.
    let leftover = m.join("v/alpha/alpha-default-bbot-tmp-4000001-0");
    btrfs::create_subvolume(&leftover).expect("leftover");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_bbot-agent"))
        .arg("--machines")
        .arg(&m)
        .args(["--fake-bootstrap", "--dump-machines", "--verbose", "0"])
        .output()
        .expect("run agent");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let ms = manifests::parse_stream(stdout.as_bytes(), "stdout").expect("manifest stream");
    let got: Vec<_> = ms.iter().map(|h| (h.get("name"), h.get("id"))).collect();
    assert_eq!(
        got,
        [(Some("alpha"), Some("a1")), (Some("beta"), Some("b1"))]
    );
    assert!(m.join("v/alpha/alpha-default").exists());
    assert!(!leftover.exists(), "leftover deleted at start");
    assert!(temporaries(&m).is_empty());
}
