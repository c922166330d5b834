//! Several agent instances of one toolchain on one host (PROTOCOLS.md
//! section 4a), on a real loop btrfs with real agent processes and a
//! controller on loopback: they share the machines under locks, bootstrap
//! each machine once, never run two VMs on one machine, and a priority
//! monitor interrupts a lower-priority task to run its own.
//!
//! The builds are fake (`--fake-build` with a duration: the agent holds
//! the machine lock, snapshots it and waits, as for a VM); the names a real
//! guest uses are checked in `vm_failures.rs` (instance 2's leftovers).

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use bbot_agent::base::cancel::Cancel;
use bbot_agent::host::locks::LockFile;
use common::agent::AgentProc;
use common::btrfs_loop::BtrfsLoop;
use common::controller::{task_response, Reply, TestController};
use common::vm;
use common::{add_revision, set_link, temporaries, wait_for};
use manifests::{Document, ResultRequestManifest, ResultStatus, TaskRequestManifest};

/// How long each fake build takes.
const BUILD: Duration = Duration::from_secs(3);

/// What the controller saw of one task.
#[derive(Debug, Clone)]
struct Handed {
    machine: String,
    at: Instant,
    results: Vec<ResultStatus>,
}

/// A controller with `tasks` tasks for whichever machine an agent offers
/// first; it records when and where each went and the results.
struct Farm {
    ctl: TestController,
    handed: Arc<Mutex<BTreeMap<String, Handed>>>,
}

impl Farm {
    fn start(tasks: usize, available: Arc<dyn Fn() -> bool + Send + Sync>) -> Farm {
        let handed: Arc<Mutex<BTreeMap<String, Handed>>> = Arc::default();
        let result_url: Arc<OnceLock<String>> = Arc::default();
        let (h, ru) = (Arc::clone(&handed), Arc::clone(&result_url));
        let ctl = TestController::start(move |req, _| {
            let mut handed = h.lock().expect("lock");
            if req.path.starts_with("/result") {
                if let Ok(r) = ResultRequestManifest::parse(req.body.as_bytes(), "result") {
                    if let Some(t) = handed.get_mut(&r.session) {
                        t.results.push(r.result.status);
                    }
                }
                return Reply::ok("");
            }
            if handed.len() >= tasks || !available() {
                return Reply::no_task();
            }
            let Ok(q) = TaskRequestManifest::parse(req.body.as_bytes(), "request") else {
                return Reply::status(400);
            };
            let Some(m) = q.machines.first() else {
                return Reply::no_task();
            };
            let session = format!("s{}", handed.len() + 1);
            handed.insert(
                session.clone(),
                Handed {
                    machine: m.name.clone(),
                    at: Instant::now(),
                    results: Vec::new(),
                },
            );
            let url = ru.get().cloned().unwrap_or_default();
            Reply::ok(task_response(&m.name, &url, &session))
        });
        result_url.set(ctl.url("/result")).expect("once");
        Farm { ctl, handed }
    }

    fn handed(&self) -> BTreeMap<String, Handed> {
        self.handed.lock().expect("lock").clone()
    }

    fn done(&self) -> usize {
        self.handed()
            .values()
            .filter(|t| !t.results.is_empty())
            .count()
    }
}

/// `names` as bootstrappable machines on `fs`.
fn machines(fs: &Path, names: &[&str]) {
    for n in names {
        add_revision(fs, "v", n, 1, &format!("{n}-1"), true);
        set_link(fs, "v", n, 1, true);
    }
}

/// An agent instance of toolchain `tc` with fake bootstraps and fake
/// builds of `build`, polling `urls` (its state in `<work>/state-tc`,
/// shared by the instances).
fn instance(
    fs: &Path,
    work: &Path,
    n: u16,
    build: Duration,
    extra: &[&str],
    urls: &[String],
) -> AgentProc {
    let (build, n) = (build.as_secs().to_string(), n.to_string());
    let mut opts = vec![
        "--fake-bootstrap",
        "--fake-build",
        "--fake-build-result",
        "success",
        "--fake-build-duration",
        &build,
        "--instance",
        &n,
    ];
    opts.extend_from_slice(extra);
    let (last, first) = urls.split_last().expect("a controller");
    opts.extend(first.iter().map(String::as_str));
    AgentProc::spawn(&vm::agent_args(fs, work, "tc", &opts, last))
}

#[test]
fn three_instances_share_two_machines() {
    let fs = BtrfsLoop::new();
    let work = tempfile::tempdir().expect("work");
    machines(fs.path(), &["alpha", "beta"]);
    let farm = Farm::start(6, Arc::new(|| true));
    let url = farm.ctl.url("/task");
    let mut agents: Vec<AgentProc> = (1..=3)
        .map(|n| {
            instance(
                fs.path(),
                work.path(),
                n,
                BUILD,
                &[],
                std::slice::from_ref(&url),
            )
        })
        .collect();

    // While they work: --dump-machines waits for the toolchain lock (held
    // here by the test), then bootstraps nothing.
    wait_for("a first task", Duration::from_secs(60), || {
        (!farm.handed().is_empty()).then_some(())
    });
    let lock_path = fs.path().join(".bbot-agent-tc.lock");
    let held = LockFile::acquire(&lock_path, &Cancel::new(), |_| {}).expect("toolchain lock");
    let mut dump = AgentProc::spawn(&[
        "--machines",
        &fs.path().display().to_string(),
        "--toolchain-name",
        "tc",
        "--fake-bootstrap",
        "--fake-build",
        "--dump-machines",
        "--verbose",
        "3",
    ]);
    wait_for("--dump-machines waiting", Duration::from_secs(20), || {
        dump.stderr()
            .contains("waiting for toolchain lock")
            .then_some(())
    });
    std::thread::sleep(Duration::from_millis(500));
    assert!(dump.running(), "it must wait:\n{}", dump.stderr());
    drop(held);
    let st = dump.wait(Duration::from_secs(30));
    let dump_log = dump.stderr();
    assert_eq!(st.code(), Some(0), "{dump_log}");
    assert!(!dump_log.contains("bootstrapping"), "{dump_log}");

    wait_for("6 results", Duration::from_secs(120), || {
        (farm.done() == 6).then_some(())
    });
    // A last poll round, so that a seventh task would have shown.
    std::thread::sleep(Duration::from_secs(2));
    let logs: Vec<String> = agents.iter_mut().map(AgentProc::stop).collect();
    let all = logs.join("\n----\n");
    let handed = farm.handed();

    // Every task once, each with one result.
    assert_eq!(handed.len(), 6, "{all}");
    for (s, t) in &handed {
        assert_eq!(t.results, [ResultStatus::Success], "{s}: {all}");
    }
    // Never two builds on one machine at once: on each machine the next
    // task was handed out only after the previous one's build time.
    let mut by_machine: BTreeMap<&str, Vec<Instant>> = BTreeMap::new();
    for t in handed.values() {
        by_machine.entry(&t.machine).or_default().push(t.at);
    }
    for (m, times) in &mut by_machine {
        times.sort();
        for w in times.windows(2) {
            assert!(
                w[1].duration_since(w[0]) >= BUILD,
                "{m}: two tasks {:?} apart\n{all}",
                w[1].duration_since(w[0])
            );
        }
    }
    assert_eq!(by_machine.len(), 2, "both machines worked: {handed:?}");
    // More than one instance worked (two machines, three instances).
    let working = logs
        .iter()
        .filter(|l| l.contains("task u-boot 2026.01: success"))
        .count();
    assert!(working >= 2, "{all}");
    // Each machine bootstrapped exactly once, by whichever came first.
    for m in ["alpha", "beta"] {
        let n = all.matches(&format!("bootstrapping {m} ")).count();
        assert_eq!(n, 1, "{m} bootstrapped {n} times:\n{all}");
    }
    // No name collided: each instance kept its own state, nothing is left.
    for n in 1..=3 {
        assert!(work
            .path()
            .join(format!("state-tc/instance-{n}/results"))
            .is_dir());
    }
    assert!(temporaries(fs.path()).is_empty(), "{all}");
    // And a second process of a running instance refuses to start.
    let mut one = instance(
        fs.path(),
        work.path(),
        1,
        BUILD,
        &[],
        std::slice::from_ref(&url),
    );
    // Only once the first holds its instance lock (else the second may
    // win); it logs its VM settings right after taking it.
    wait_for("instance 1's lock held", Duration::from_secs(20), || {
        one.stderr().contains("VM settings").then_some(())
    });
    let mut again = instance(fs.path(), work.path(), 1, BUILD, &[], &[url]);
    let st = again.wait(Duration::from_secs(20));
    assert_eq!(st.code(), Some(1));
    assert!(
        again.stderr().contains("instance 1 already runs"),
        "{}",
        again.stderr()
    );
    one.stop();
}

#[test]
fn a_monitor_interrupts_a_lower_priority_task() {
    let fs = BtrfsLoop::new();
    let work = tempfile::tempdir().expect("work");
    machines(fs.path(), &["solo"]);
    // Low priority: one long task. High priority (D): one task, available
    // once the low one runs.
    let low = Farm::start(1, Arc::new(|| true));
    let low_started = {
        let h = Arc::clone(&low.handed);
        Arc::new(move || !h.lock().expect("lock").is_empty())
    };
    let high = Farm::start(1, low_started);
    let urls = [
        low.ctl.url("/task"),
        format!("1000={}", high.ctl.url("/task")),
    ];
    let mut worker = instance(
        fs.path(),
        work.path(),
        1,
        Duration::from_secs(300),
        &["--instance-max", "1"],
        &urls,
    );
    wait_for("the low task", Duration::from_secs(60), || {
        (!low.handed().is_empty()).then_some(())
    });
    let mut monitor = instance(
        fs.path(),
        work.path(),
        2,
        Duration::from_secs(1),
        &["--instance-max", "1"],
        &urls,
    );
    wait_for("the high task's result", Duration::from_secs(60), || {
        (high.done() == 1).then_some(())
    });
    wait_for("the low task's result", Duration::from_secs(30), || {
        (low.done() == 1).then_some(())
    });
    let wlog = worker.stop();
    let mlog = monitor.stop();
    let both = format!("{wlog}\n---- monitor:\n{mlog}");
    assert_eq!(
        low.handed()["s1"].results,
        [ResultStatus::Interrupt],
        "{both}"
    );
    assert_eq!(
        high.handed()["s1"].results,
        [ResultStatus::Success],
        "{both}"
    );
    assert!(
        mlog.contains("interrupting the task of priority 0000 on solo"),
        "{both}"
    );
    assert!(
        wlog.contains("interrupted by a higher-priority task"),
        "{both}"
    );
    assert!(mlog.contains("priority monitor"), "{both}");
    assert!(temporaries(fs.path()).is_empty(), "{both}");
}
