//! The real `bbot-agent` binary (its `--fake-machine`/`--fake-build`
//! diagnosis modes: no VM, everything else real — polling, the task
//! manifest, the result manifest, the spool, signals) against the real
//! controller over loopback HTTP.

mod common;

use std::collections::BTreeMap;
use std::process::Command;
use std::time::Duration;

use bbot_controller::jobs::TaskCells;
use bbot_controller::views::{CellState, JobState};
use common::agent::Agent;
use common::{get, wait_for, Controller, WAIT};
use manifests::ResultStatus;
use serde_json::json;

const MACHINE: &str = "linux-x86_64";

fn job(boards: &[&str]) -> serde_json::Value {
    json!({
        "repository": "https://example.org/u-boot.git",
        "ref": "master",
        "commits": ["aaaa0000", "bbbb1111"],
        "boards": boards,
        "machine": "linux-*",
        "boards_per_task": 1,
    })
}

/// Waits until the job's first task is held by an agent.
fn wait_leased(c: &Controller, id: i64) {
    wait_for("task leased", WAIT, || {
        (c.job(id).tasks.first()?.state == "leased").then_some(())
    });
}

#[test]
fn the_real_agent_runs_a_job_into_the_table() {
    let mut c = Controller::start(&[]);
    let id = c.submit(job(&["sandbox sandbox", "qemu_arm64 aarch64"]));
    let mut agent = Agent::start(MACHINE, &c.task_url(), 0);
    let j = c.wait_finished(id, WAIT);
    assert!(
        j.cells
            .iter()
            .all(|x| x.status == Some(ResultStatus::Success)),
        "{:?}",
        j.cells
    );
    // Each cell holds the agent's log for that board at that commit.
    for (b, board) in [(0, "sandbox (sandbox)"), (1, "qemu_arm64 (aarch64)")] {
        for (k, commit) in ["aaaa0000", "bbbb1111"].iter().enumerate() {
            let (_, text) = get(&format!("{}api/jobs/{id}/cells/{b}/{k}", c.url));
            assert!(
                text.contains(&format!("fake build of {board} at {commit}")),
                "{text}"
            );
        }
    }
    // The job page the real agent's results filled, in a real browser.
    let job_url = format!("{}jobs/{id}", c.url);
    let dom = common::browser::browse(&job_url, "--dump-dom");
    for board in ["sandbox", "qemu_arm64"] {
        assert!(
            dom.contains(&format!("<th>{board} <span")),
            "{board}:\n{dom}"
        );
    }
    for cell in ["cell-0-0", "cell-0-1", "cell-1-0", "cell-1-1"] {
        let needle = format!("<td class=\"cell success\" id=\"{cell}\">");
        assert!(dom.contains(&needle), "{needle} missing:\n{dom}");
    }
    let png = common::browser::artifact("real-agent-job-page.png");
    let _ = std::fs::remove_file(&png);
    common::browser::browse(&job_url, &format!("--screenshot={}", png.display()));
    let bytes = std::fs::read(&png).expect("screenshot written");
    assert!(bytes.starts_with(b"\x89PNG\r\n\x1a\n") && bytes.len() > 10_000);
    // The agent is listed with its machine.
    let (_, agents) = get(&format!("{}api/agents", c.url));
    assert!(
        agents.contains(MACHINE) && agents.contains("\"toolchain\": \"default\""),
        "{agents}"
    );
    // `bbot-controller status` prints the table.
    let out = Command::new(env!("CARGO_BIN_EXE_bbot-controller"))
        .args(["status", "--controller", &c.url, &id.to_string()])
        .output()
        .expect("status");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(
        text.starts_with("u-boot 0: success (2 boards x 2 commits)\n"),
        "{text}"
    );
    assert!(
        text.contains("\nsandbox     success    success\n"),
        "{text}"
    );
    agent.signal("TERM");
    agent.wait(Duration::from_secs(20));
    c.stop();
}

#[test]
fn a_killed_agents_task_goes_to_another_agent_after_the_lease() {
    let mut c = Controller::start(&["--lease", "3"]);
    let id = c.submit(job(&["sandbox sandbox"]));
    let mut a = Agent::start(MACHINE, &c.task_url(), 600);
    wait_leased(&c, id);
    a.signal("KILL");
    a.wait(Duration::from_secs(10));
    let _b = Agent::start(MACHINE, &c.task_url(), 0);
    let j = c.wait_finished(id, WAIT);
    assert!(j
        .cells
        .iter()
        .all(|x| x.status == Some(ResultStatus::Success)));
    assert_eq!(j.tasks.len(), 1);
    assert_eq!(j.tasks[0].attempt, 2, "the same task, second attempt");
    assert_eq!(c.metric("bbot_controller_lease_expiries_total"), Some(1.0));
    c.stop();
}

#[test]
fn a_stopped_agents_interrupt_is_tried_again() {
    let mut c = Controller::start(&[]);
    let id = c.submit(job(&["sandbox sandbox"]));
    let mut a = Agent::start(MACHINE, &c.task_url(), 600);
    wait_leased(&c, id);
    // SIGTERM: the agent stops its build and reports `interrupt`.
    a.signal("TERM");
    a.wait(Duration::from_secs(20));
    let j = c.job(id);
    assert_eq!(
        j.tasks[0].result_status,
        Some(ResultStatus::Interrupt),
        "{:?}",
        j.tasks
    );
    let retry = &j.tasks[1];
    assert_eq!((retry.state.as_str(), retry.attempt), ("queued", 2));
    assert_eq!(
        (retry.boards.clone(), retry.commits.clone()),
        (vec![0], vec![0, 1])
    );
    assert!(j.cells.iter().all(|x| x.state == CellState::Queued));
    let _b = Agent::start(MACHINE, &c.task_url(), 0);
    let j = c.wait_finished(id, WAIT);
    assert!(j
        .cells
        .iter()
        .all(|x| x.status == Some(ResultStatus::Success)));
    assert_eq!(
        c.metric("bbot_controller_results_total{outcome=\"accepted\"}"),
        Some(2.0)
    );
    c.stop();
}

#[test]
fn a_controller_killed_mid_job_finishes_every_cell_exactly_once() {
    let mut c = Controller::start(&["--lease", "10"]);
    let boards: Vec<String> = (0..6).map(|i| format!("board{i} arm")).collect();
    let boards: Vec<&str> = boards.iter().map(String::as_str).collect();
    let id = c.submit(job(&boards));
    let _a = Agent::start(MACHINE, &c.task_url(), 1);
    let _b = Agent::start(MACHINE, &c.task_url(), 1);
    wait_for("some results in", WAIT, || {
        let j = c.job(id);
        let done = j
            .cells
            .iter()
            .filter(|x| x.state == CellState::Done)
            .count();
        (done >= 4 && j.state == JobState::Running).then_some(())
    });
    c.kill();
    std::thread::sleep(Duration::from_millis(1500));
    c.restart();
    let j = c.wait_finished(id, Duration::from_secs(120));
    // Every cell once: the tasks whose results were taken partition the
    // table, and every cell points at one of them.
    let mut covered: BTreeMap<(usize, usize), usize> = BTreeMap::new();
    for t in j.tasks.iter().filter(|t| t.result_status.is_some()) {
        let cells = TaskCells {
            boards: t.boards.clone(),
            commits: t.commits.clone(),
        };
        for cell in cells.cells() {
            *covered.entry(cell).or_default() += 1;
        }
    }
    assert_eq!(covered.len(), 12, "{covered:?}");
    assert!(covered.values().all(|&n| n == 1), "{covered:?}");
    for x in &j.cells {
        assert_eq!(x.status, Some(ResultStatus::Success));
        let t = j
            .tasks
            .iter()
            .find(|t| Some(t.id) == x.task)
            .expect("its task");
        assert!(t.boards.contains(&x.board) && t.commits.contains(&x.commit));
    }
    let log = c.stop();
    assert!(log.contains("=== restart ==="), "{log}");
}
