//! Faults with agents simulated on the wire (manifests written exactly as
//! the agent writes them), where the test must control every step: a task
//! abandoned by its agent, a partial `interrupt` result, attempts running
//! out, and the controller SIGKILLed and restarted with leases and results
//! in flight. The same faults with the real agent: tests/real_agent.rs.

mod common;

use std::time::Duration;

use bbot_controller::views::JobState;
use common::{ask, post_manifest, result_for, result_request, wait_for, Controller, WAIT};
use manifests::{OperationResult, ResultStatus};
use serde_json::json;

const MACHINE: &str = "x86_64-debian_12-uboot";
const COMMITS: [&str; 3] = ["aaaa0000", "bbbb1111", "cccc2222"];

fn job(boards: &[&str], per_task: usize) -> serde_json::Value {
    json!({
        "repository": "https://example.org/u-boot.git",
        "ref": "master",
        "commits": COMMITS,
        "boards": boards.iter().map(|b| format!("{b} arm")).collect::<Vec<_>>(),
        "machine": "x86_64-*",
        "boards_per_task": per_task,
    })
}

#[test]
fn an_abandoned_task_goes_to_another_agent_when_its_lease_ends() {
    let mut c = Controller::start(&["--lease", "2"]);
    let id = c.submit(job(&["a", "b"], 2));
    // Agent A takes the task and is never heard of again.
    let a = ask(&c, "agent-a", &[MACHINE]);
    let task_a = a.task.clone().expect("task for A");
    assert!(ask(&c, "agent-b", &[MACHINE]).task.is_none(), "leased to A");
    // After the lease, B gets the very same cells as attempt 2.
    wait_for("task back in the queue", Duration::from_secs(10), || {
        ask(&c, "agent-b", &[MACHINE]).task.is_some().then_some(())
    });
    let j = c.job(id);
    let t = &j.tasks[0];
    assert_eq!((t.state.as_str(), t.attempt), ("leased", 2));
    assert_eq!(t.agent.as_deref(), Some("agent-b"));
    assert!(
        t.note
            .as_deref()
            .unwrap_or("")
            .contains("agent agent-a (default)"),
        "{t:?}"
    );
    assert_eq!(c.metric("bbot_controller_lease_expiries_total"), Some(1.0));
    // A wakes up and reports late: answered 200, ignored.
    let late = result_for(&task_a, |_, _, _| Some(ResultStatus::Error));
    assert_eq!(
        post_manifest(&c.result_url(), &result_request(&a.session, None, late)).0,
        200
    );
    assert!(c.job(id).cells.iter().all(|c| c.status.is_none()));
    let log = c.stop();
    assert!(log.contains("lease expired; task queued again"), "{log}");
    assert!(log.contains("session already ended (expired)"), "{log}");
}

#[test]
fn an_interrupt_requeues_only_the_missing_cells_mapped_by_commit() {
    let mut c = Controller::start(&[]);
    let id = c.submit(job(&["a", "b", "c"], 3));
    let r = ask(&c, "agent", &[MACHINE]);
    let task = r.task.clone().expect("task");
    // a: done at every commit; b: done at @0, interrupted at @1, nothing
    // at @2; c: nothing at all. Plus the agent's task-level operation.
    let mut partial = result_for(&task, |b, upto, _| match (b, upto) {
        ("a", _) => Some(ResultStatus::Success),
        ("b", 0) => Some(ResultStatus::Warning),
        ("b", 1) => Some(ResultStatus::Interrupt),
        _ => None,
    });
    partial.push_operation(OperationResult {
        name: "machine".into(),
        status: ResultStatus::Interrupt,
        log: Some("agent stopped (SIGTERM)\n".into()),
    });
    assert_eq!(
        post_manifest(&c.result_url(), &result_request(&r.session, None, partial)).0,
        200
    );
    let j = c.job(id);
    let retries: Vec<(Vec<usize>, Vec<usize>, u32)> = j
        .tasks
        .iter()
        .filter(|t| t.state == "queued")
        .map(|t| (t.boards.clone(), t.commits.clone(), t.attempt))
        .collect();
    assert_eq!(
        retries,
        [(vec![2], vec![0, 1, 2], 2), (vec![1], vec![1, 2], 2)],
        "c at every commit, b at the two it misses"
    );
    // c's task, then b's: its manifest carries only b's missing commits.
    let rc = ask(&c, "agent", &[MACHINE]);
    let tc = rc.task.clone().expect("task c");
    assert_eq!(tc.commits, COMMITS);
    let rb = ask(&c, "agent", &[MACHINE]);
    let tb = rb.task.clone().expect("task b");
    assert_eq!(
        (tb.boards[0].target.as_str(), tb.commits.clone()),
        ("b", vec![COMMITS[1].to_string(), COMMITS[2].to_string()])
    );
    let ok = result_for(&tc, |_, _, _| Some(ResultStatus::Success));
    assert_eq!(
        post_manifest(&c.result_url(), &result_request(&rc.session, None, ok)).0,
        200
    );
    // b@0 of this task is the job's @1; @2 is interrupted again.
    let again = result_for(&tb, |_, upto, _| (upto == 0).then_some(ResultStatus::Error));
    assert_eq!(
        post_manifest(&c.result_url(), &result_request(&rb.session, None, again)).0,
        200
    );
    let rb2 = ask(&c, "agent", &[MACHINE]);
    let tb2 = rb2.task.clone().expect("last b task");
    assert_eq!(tb2.commits, [COMMITS[2]], "only the last commit is left");
    let last = result_for(&tb2, |_, _, _| Some(ResultStatus::Success));
    assert_eq!(
        post_manifest(&c.result_url(), &result_request(&rb2.session, None, last)).0,
        200
    );

    let j = c.job(id);
    assert_eq!(j.state, JobState::Finished);
    use ResultStatus::*;
    let b: Vec<Option<ResultStatus>> = (0..3)
        .map(|k| j.cell(1, k).and_then(|x| x.status))
        .collect();
    assert_eq!(b, [Some(Warning), Some(Error), Some(Success)]);
    // Each cell's log was written for that cell's own commit.
    for (board, name) in [(0, "a"), (1, "b"), (2, "c")] {
        for (k, commit) in COMMITS.iter().enumerate() {
            let (_, text) = common::get(&format!("{}api/jobs/{id}/cells/{board}/{k}", c.url));
            assert!(
                text.contains(&format!("built {name} at {commit}")),
                "{board}/{k}: {text}"
            );
        }
    }
    c.stop();
}

#[test]
fn attempts_run_out_into_abort_with_the_reason() {
    let mut c = Controller::start(&["--max-attempts", "2"]);
    let id = c.submit(job(&["a"], 1));
    for _ in 0..2 {
        let r = ask(&c, "agent", &[MACHINE]);
        let task = r.task.clone().expect("task");
        // The first commit builds; the others are aborted each time.
        let mut res = result_for(&task, |_, _, commit| {
            (commit == COMMITS[0]).then_some(ResultStatus::Success)
        });
        res.push_operation(OperationResult {
            name: "machine".into(),
            status: ResultStatus::Abort,
            log: Some("guest missed its build deadline\n".into()),
        });
        assert_eq!(
            post_manifest(&c.result_url(), &result_request(&r.session, None, res)).0,
            200
        );
    }
    let j = c.job(id);
    assert_eq!(j.state, JobState::Finished);
    assert_eq!(
        j.cell(0, 0).and_then(|x| x.status),
        Some(ResultStatus::Success)
    );
    for k in 1..3 {
        assert_eq!(
            j.cell(0, k).and_then(|x| x.status),
            Some(ResultStatus::Abort)
        );
    }
    let (_, text) = common::get(&format!("{}api/jobs/{id}/cells/0/2", c.url));
    assert!(
        text.contains("gave up after 2 attempt(s)")
            && text.contains("guest missed its build deadline"),
        "{text}"
    );
    assert!(ask(&c, "agent", &[MACHINE]).task.is_none());
    c.stop();
}

#[test]
fn a_sigkilled_controller_loses_no_job_lease_or_result() {
    let mut c = Controller::start(&["--lease", "3"]);
    let id = c.submit(job(&["a", "b", "c"], 1));
    // One result committed, one task leased to A, one leased to B.
    assert!(common::take_and_report(
        &c,
        "agent-0",
        MACHINE,
        ResultStatus::Success
    ));
    let a = ask(&c, "agent-a", &[MACHINE]);
    let b = ask(&c, "agent-b", &[MACHINE]);
    let (ta, tb) = (a.task.clone().expect("a"), b.task.clone().expect("b"));
    c.kill();
    c.restart();
    // The committed result and both leases survived.
    let j = c.job(id);
    assert_eq!(
        j.cells
            .iter()
            .filter(|x| x.status == Some(ResultStatus::Success))
            .count(),
        3
    );
    assert_eq!(j.tasks.iter().filter(|t| t.state == "leased").count(), 2);
    assert!(
        ask(&c, "agent-x", &[MACHINE]).task.is_none(),
        "nothing to hand out twice"
    );
    // A reports after the restart: its session is still good.
    let ra = result_for(&ta, |_, _, _| Some(ResultStatus::Warning));
    assert_eq!(
        post_manifest(&c.result_url(), &result_request(&a.session, None, ra)).0,
        200
    );
    // B's lease keeps running across a second crash and runs out.
    c.kill();
    std::thread::sleep(Duration::from_secs(4));
    c.restart();
    let rx = ask(&c, "agent-x", &[MACHINE]);
    let tx = rx.task.clone().expect("B's task, swept at start-up");
    assert_eq!(tx.boards, tb.boards);
    let r = result_for(&tx, |_, _, _| Some(ResultStatus::Success));
    assert_eq!(
        post_manifest(&c.result_url(), &result_request(&rx.session, None, r)).0,
        200
    );
    let j = c.wait_finished(id, WAIT);
    assert!(j.cells.iter().all(|x| x.status.is_some()));
    assert_eq!(c.metric("bbot_controller_lease_expiries_total"), Some(1.0));
    c.stop();
}
