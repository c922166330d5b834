//! Guests that misbehave, in real QEMU guests under TCG on a real loop
//! btrfs, bootstrapped by the real agent: one that never asks for its task
//! (startup timeout), one that hangs after fetching it (build timeout), one
//! that uploads garbage (abnormal result naming the parse error) and one
//! that tries to read and write outside its TFTP directories (refused). In
//! every case the result reaches the controller and nothing of the VM
//! survives: no temporary subvolume, no QEMU process, no TFTP or run
//! directory. An agent SIGKILLed while its guest works takes its QEMU with
//! it, and the next start removes the rest.
//!
//! The machine is made by machines/make-machine with a scripted
//! worker-guest (tests/guests/misbehaving-worker-guest) that picks its
//! behaviour at bootstrap from the toolchain directory, so one image serves
//! every case.

mod common;

use std::fs;
use std::path::Path;
use std::time::Duration;

use common::agent::AgentProc;
use common::controller::{task_response_from, Reply, TestController};
use common::vm::{self, MACHINE};
use manifests::{Document, ResultRequestManifest, ResultStatus};

struct Case<'a> {
    behaviour: &'a str,
    extra_args: &'a [&'a str],
    /// Stop the agent (SIGTERM) once the task's guest has fetched its task,
    /// instead of waiting for the guest to finish.
    interrupt: bool,
}

/// A controller that hands out one task for the machine (session
/// `session`, results to its own `/result`), then none, and takes results.
fn task_controller(session: &'static str, repository: &str) -> TestController {
    let repository = repository.to_string();
    // The controller learns its own URL only once started; the result URL
    // is relative to it, so the task names it through a shared slot.
    let result_url: std::sync::Arc<std::sync::OnceLock<String>> = Default::default();
    let slot = std::sync::Arc::clone(&result_url);
    let served = std::sync::atomic::AtomicBool::new(false);
    let ctl = TestController::start(move |req, _| {
        if req.path.starts_with("/result") {
            Reply::ok("")
        } else if !served.swap(true, std::sync::atomic::Ordering::SeqCst) {
            Reply::ok(task_response_from(
                MACHINE,
                slot.get().map_or("", String::as_str),
                session,
                &repository,
            ))
        } else {
            Reply::no_task()
        }
    });
    let _ = result_url.set(ctl.url("/result"));
    ctl
}

/// Runs one agent for toolchain `tc-<behaviour>` until the controller has
/// its result; returns the result and the agent's log.
fn run_case(fs: &Path, work: &Path, case: &Case<'_>) -> (ResultRequestManifest, String) {
    let tc = format!(
        "tc-{}{}",
        case.behaviour,
        if case.interrupt { "-stopped" } else { "" }
    );
    let tftp = work.join("tftp");
    let toolchain_dir = tftp.join("toolchain").join(&tc);
    fs::create_dir_all(&toolchain_dir).expect("toolchain dir");
    fs::write(
        toolchain_dir.join("behaviour"),
        format!("{}\n", case.behaviour),
    )
    .expect("behaviour");
    let state = work.join(format!("state-{tc}"));
    let repo = vm::TinyRepo::serve(work, None);
    let ctl = task_controller("s1", &repo.url);
    let args = vm::agent_args(fs, work, &tc, case.extra_args, &ctl.url("/"));
    let mut agent = AgentProc::spawn(&args);
    if case.interrupt {
        // The bootstrap's first request, then the task's.
        common::wait_for("the task's guest at work", Duration::from_secs(600), || {
            (agent.stderr().matches("guest's first TFTP request").count() >= 2).then_some(())
        });
        agent.signal("TERM");
    }
    let end = std::time::Instant::now() + Duration::from_secs(600);
    let body = loop {
        if let Some(r) = ctl.requests_to("/result").into_iter().next() {
            break r.body;
        }
        assert!(
            std::time::Instant::now() < end,
            "no {} result in time; agent log:\n{}",
            case.behaviour,
            agent.stderr()
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    let log = if case.interrupt {
        let st = agent.wait(Duration::from_secs(60));
        assert_eq!(
            st.code(),
            Some(0),
            "agent exit status {st:?}:\n{}",
            agent.stderr()
        );
        agent.stderr()
    } else {
        agent.stop()
    };
    let result = ResultRequestManifest::parse(body.as_bytes(), "uploaded result")
        .unwrap_or_else(|e| panic!("{e}\n{body}\nagent log:\n{log}"));
    // Nothing of the VM survives.
    assert!(
        common::temporaries(fs).is_empty(),
        "temporary subvolumes left:\n{log}"
    );
    assert!(vm::qemu_processes(&tc).is_empty(), "QEMU left running");
    assert_eq!(
        vm::netns_of(&tc),
        Vec::<String>::new(),
        "network namespace left"
    );
    assert_eq!(vm::cgroups_of(&tc), Vec::<String>::new(), "cgroup left");
    assert!(
        !tftp.join("build").join(&tc).join("1").exists(),
        "TFTP build directory left"
    );
    let run = state.join("instance-1/run");
    assert!(
        fs::read_dir(&run).map_or(true, |mut d| d.next().is_none()),
        "run directory (QMP socket) left in {}",
        run.display()
    );
    assert!(
        fs.join("default")
            .join(MACHINE)
            .join(format!("{MACHINE}-{tc}"))
            .is_dir(),
        "the machine was bootstrapped for {tc}"
    );
    (result, log)
}

/// The agent (instance 2 of its toolchain) is SIGKILLed while its guest
/// works: QEMU dies with it (PR_SET_PDEATHSIG). Its controller has the
/// boost flag (`10000=`), so the guest has every hardware thread of the
/// host rather than `--cpu 1`. Every name it left carries
/// its instance. The next start of that instance removes the temporary
/// snapshot, the run directory and the task's TFTP directory, and reports
/// the task it was running as interrupted, so the controller hears of it
/// at once.
///
/// Both agents run the way systemd runs the unit: inside a group of their
/// own (the test's, for the unit's delegated one) with `--cgroup-delegated`,
/// so the VM's group is made inside it, and the leftover is found there.
fn killed_agent_leaves_nothing(fs: &Path, work: &Path) {
    let tc = "tc-killed";
    let tftp = work.join("tftp");
    let toolchain_dir = tftp.join("toolchain").join(tc);
    fs::create_dir_all(&toolchain_dir).expect("toolchain dir");
    fs::write(toolchain_dir.join("behaviour"), "hangs\n").expect("behaviour");
    let state = work.join(format!("state-{tc}"));
    let repo = vm::TinyRepo::serve(work, None);
    let ctl = task_controller("killed-1", &repo.url);
    let boosted = format!("10000={}", ctl.url("/"));
    let args = vm::agent_args(
        fs,
        work,
        tc,
        &["--instance", "2", "--cgroup-delegated"],
        &boosted,
    );
    let unit = common::cgroup::TestCgroup::new("killed");
    let mut agent = AgentProc::spawn_in(&args, &unit);
    let end = std::time::Instant::now() + Duration::from_secs(600);
    while agent.stderr().matches("guest's first TFTP request").count() < 2 {
        assert!(
            std::time::Instant::now() < end && agent.running(),
            "the task's guest never got to work:\n{}",
            agent.stderr()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let qemu = vm::qemu_processes(tc);
    assert_eq!(qemu.len(), 1, "{}", agent.stderr());
    // QEMU's group is a child of the agent's delegated one, in every
    // hierarchy; none went to the shared `bbot-agent` subtree.
    let qemu_pid = qemu[0].split_whitespace().next().expect("pid");
    let groups = fs::read_to_string(format!("/proc/{qemu_pid}/cgroup")).expect("QEMU's cgroups");
    let vm_group = format!("{}/bbot-{tc}-1-2-", unit.path());
    for controller in ["memory", "pids", "cpu"] {
        assert!(
            groups.lines().any(|l| {
                let mut f = l.splitn(3, ':');
                let (_, c, path) = (f.next(), f.next().unwrap_or(""), f.next().unwrap_or(""));
                (c.split(',').any(|x| x == controller) || c.is_empty())
                    && path.starts_with(&vm_group)
            }),
            "QEMU not in {vm_group}... for {controller}:\n{groups}"
        );
    }
    assert_eq!(
        vm::cgroups_of(tc),
        Vec::<String>::new(),
        "shared subtree used"
    );
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    assert!(
        qemu[0].contains(&format!(" -smp {threads} ")),
        "boosted: every hardware thread ({threads}): {}",
        qemu[0]
    );
    agent.signal("KILL");
    agent.wait(Duration::from_secs(10));
    common::wait_for("QEMU gone with its agent", Duration::from_secs(10), || {
        vm::qemu_processes(tc).is_empty().then_some(())
    });
    // What SIGKILL skipped is still there, every name with instance 2 ...
    let temps = common::temporaries(fs);
    assert_eq!(temps.len(), 1, "the task's snapshot");
    let temp = temps[0].display().to_string();
    assert!(
        temp.contains(&format!("{MACHINE}-{tc}-bbot-tmp-2-")),
        "{temp}"
    );
    let run = state.join("instance-2/run");
    assert_eq!(fs::read_dir(&run).map(|d| d.count()).unwrap_or(0), 1);
    assert!(tftp.join("build").join(tc).join("2").exists());
    let netns = vm::netns_of(tc);
    assert_eq!(netns.len(), 1, "the guest's network namespace");
    // bbot-<toolchain>-<toolchain-num>-<instance>-<pid>-<n>
    assert!(
        netns[0].starts_with(&format!("bbot-{tc}-1-2-")),
        "{netns:?}"
    );
    let cgroups = unit.children(&format!("bbot-{tc}-"));
    assert_eq!(cgroups.len(), 1, "the VM's cgroup: {cgroups:?}");
    assert!(
        cgroups[0].starts_with(&format!("bbot-{tc}-1-2-")),
        "{cgroups:?}"
    );
    assert!(ctl.requests_to("/result").is_empty());
    // ... until the next start, which also reports the task.
    let mut next = AgentProc::spawn_in(&args, &unit);
    let body = common::wait_for("the interrupt result", Duration::from_secs(120), || {
        ctl.requests_to("/result")
            .into_iter()
            .next()
            .map(|r| r.body)
    });
    let log = next.stop();
    let r = ResultRequestManifest::parse(body.as_bytes(), "uploaded result").expect("result");
    assert_eq!(r.session, "killed-1");
    assert_eq!(r.result.status, ResultStatus::Interrupt, "{log}");
    assert!(
        machine_log(&r).contains("died while this task ran"),
        "{}",
        machine_log(&r)
    );
    assert_eq!(ctl.requests_to("/result").len(), 1, "exactly one result");
    assert!(common::temporaries(fs).is_empty(), "snapshot left:\n{log}");
    assert!(
        fs::read_dir(&run).map_or(true, |mut d| d.next().is_none()),
        "run directory left:\n{log}"
    );
    assert!(
        !tftp.join("build").join(tc).join("2").exists(),
        "TFTP directory left:\n{log}"
    );
    assert!(log.contains("removed leftover run directory"), "{log}");
    assert!(log.contains("deleted leftover temporary snapshot"), "{log}");
    assert!(log.contains("deleted leftover network namespace"), "{log}");
    assert_eq!(
        vm::netns_of(tc),
        Vec::<String>::new(),
        "network namespace left"
    );
    assert!(log.contains("removed leftover cgroup"), "{log}");
    assert_eq!(
        unit.children(&format!("bbot-{tc}-")),
        Vec::<String>::new(),
        "cgroup left"
    );
}

fn machine_log(r: &ResultRequestManifest) -> String {
    r.result
        .operation("machine")
        .and_then(|o| o.log.clone())
        .unwrap_or_default()
}

#[test]
fn misbehaving_guests_are_stopped_reported_and_cleaned_up() {
    let (fs, work) = vm::scripted_machine();
    let run = |behaviour, extra_args: &[&str], interrupt| {
        let case = Case {
            behaviour,
            extra_args,
            interrupt,
        };
        run_case(fs.path(), work.path(), &case)
    };

    // Never asks for its manifest: startup timeout, suspended, reported.
    let (r, log) = run("never-asks", &["--build-startup", "12"], false);
    assert_eq!(r.result.status, ResultStatus::Abort, "{log}");
    assert!(
        machine_log(&r).contains("startup timed out after 12s"),
        "{}",
        machine_log(&r)
    );
    assert!(log.contains("suspended for investigation"), "{log}");

    // Fetches its manifest, then hangs: build timeout.
    let (r, log) = run("hangs", &["--build-timeout", "10"], false);
    assert_eq!(r.result.status, ResultStatus::Abort, "{log}");
    assert!(
        machine_log(&r).contains("build timed out after 10s"),
        "{}",
        machine_log(&r)
    );
    assert!(log.contains("suspended for investigation"), "{log}");

    // The agent is stopped while the guest works: the VM is forced down,
    // its snapshot deleted, and an interrupt result delivered.
    let (r, log) = run("hangs", &[], true);
    assert_eq!(r.result.status, ResultStatus::Interrupt, "{log}");
    assert!(log.contains("is down"), "the VM was forced down:\n{log}");

    // Uploads its result, then does not power off: asked to over ACPI.
    let (r, log) = run("lingers", &[], false);
    assert_eq!(r.result.status, ResultStatus::Success, "{log}");
    assert!(
        log.contains("guest powered off cleanly"),
        "ACPI power-off:\n{log}"
    );

    // Uploads garbage: abnormal, naming the parse error and its place.
    let (r, log) = run("garbage", &[], false);
    assert_eq!(r.result.status, ResultStatus::Abnormal, "{log}");
    let m = machine_log(&r);
    assert!(m.contains("invalid result manifest"), "{m}");
    assert!(
        m.contains(":4:9: error: invalid 'status' value: invalid status 'grand'"),
        "{m}"
    );

    // Tries to leave its directories: every attempt refused, nothing
    // written outside.
    let (r, log) = run("escape", &[], false);
    assert_eq!(r.result.status, ResultStatus::Success, "{log}");
    let attempts = r
        .result
        .operation("sandbox@0")
        .and_then(|o| o.log.clone())
        .unwrap_or_default();
    assert_eq!(attempts.lines().count(), 10, "{attempts}");
    for line in attempts.lines() {
        assert!(line.ends_with(": refused"), "escaped: {line}\n{attempts}");
    }
    assert!(log.contains("refused"), "the agent logs refusals:\n{log}");
    assert!(!Path::new("/tmp/bbot-evil").exists());
    assert!(!work.path().join("tftp/build/evil").exists());

    killed_agent_leaves_nothing(fs.path(), work.path());
    assert!(!work.path().join("tftp/evil").exists());
    assert_eq!(
        fs::read_to_string(work.path().join("tftp/toolchain/tc-escape/behaviour"))
            .ok()
            .as_deref(),
        Some("escape\n")
    );
}
