//! Building one board at every commit in a thread's worktree, with the
//! rules of buildman 0.2.0's `BuilderThread.run_job` as its worker runs
//! them (`force_config_on_failure` on, no result files of its own).
//!
//! - Commit 0 always runs `<board>_defconfig`; later commits build
//!   incrementally in the same `build/` directory and reconfigure only when
//!   a Kconfig file or the defconfig changed (see `build_step`), when
//!   `force_reconfig` is set, or after a failure.
//! - A build *fails* when make's return code is not 0. Warnings are not
//!   failures: after a build that only warned, the next commit builds
//!   incrementally, so a file that warned is not compiled again and its
//!   warning is not reported again until the file changes. buildman does
//!   exactly this, and the boss's results must be the same from us.
//! - A failed incremental build (without `mrproper`) is retried once after
//!   reconfiguring (with `mrproper` if `fallback_mrproper`), and never as
//!   `config_only`; after any failure the next commit reconfigures.
//! - `skip_unaffected` never skips a commit here: buildman skips by copying
//!   the last result files forward, and a worker has none (buildman's own
//!   worker builds every commit too). See `BuildSettings`.

use crate::build_step::{Attempt, Job};
use crate::engine::{BuildEvent, BuildOutcome, Shared};
use crate::outputs;
use crate::protocol::BoardSpec;

/// Return code for a board without a toolchain, as buildman reports it.
pub const RETURN_CODE_NO_TOOLCHAIN: i32 = 10;

/// Build `board` at every commit of the build, sending one result per
/// commit and marking it in `sent` (so that, should this panic, the
/// engine reports the commits still missing).
pub(crate) fn run_job(shared: &Shared, thread: usize, board: &BoardSpec, sent: &mut [bool]) {
    let job = Job::new(shared, thread, board);
    let settings = &shared.cfg.settings;
    let mrproper = settings.mrproper;
    let Some(commits) = &shared.commits else {
        // The checked-out source: always configure; on failure, one retry
        // with mrproper if fallback_mrproper.
        shared.maybe_inject_panic(&board.board, 0);
        let (mut attempt, _) = job.run_commit(None, 0, true, mrproper, settings.config_only);
        if attempt.failed() && !mrproper {
            (attempt, _) = job.run_commit(
                None,
                0,
                true,
                settings.fallback_mrproper,
                settings.config_only,
            );
        }
        send(&job, 0, attempt, sent);
        return;
    };
    let mut do_config = true;
    for (upto, hash) in commits.iter().enumerate() {
        shared.maybe_inject_panic(&board.board, upto);
        let hash = Some(hash.as_str());
        let (mut attempt, mut request_config) =
            job.run_commit(hash, upto, do_config, mrproper, settings.config_only);
        let failed = attempt.failed();
        if failed && !do_config && !mrproper {
            tracing::debug!("{}@{upto}: incremental build failed, retrying", board.board);
            (attempt, request_config) = job.run_commit(
                hash,
                upto,
                true,
                mrproper || settings.fallback_mrproper,
                false,
            );
        }
        if !settings.force_reconfig {
            do_config = request_config;
        }
        // After a failure (even one the retry fixed), configure afresh next
        // time: stale dependencies are a common cause of failures.
        if failed {
            do_config = true;
        }
        send(&job, upto, attempt, sent);
    }
}

/// Turn an attempt into a result event: sizes (and the lines manifest) on
/// success, config files on failure, only when make ran for this board in
/// its output directory (never another board's files).
fn send(job: &Job, upto: usize, attempt: Attempt, sent: &mut [bool]) {
    let shared = job.shared;
    let mut outcome = BuildOutcome {
        board: job.board.board.clone(),
        commit_upto: upto,
        return_code: attempt.return_code,
        stderr: attempt.stderr,
        stdout: attempt.stdout,
        sizes: None,
        config: Default::default(),
        lines: None,
    };
    if let (true, Ok(tc)) = (attempt.made, &job.tc) {
        let out_dir = &job.dirs.out_dir;
        if outcome.return_code == 0 {
            outcome.sizes = outputs::sizes(out_dir, tc, &job.make_env(false));
            if shared.cfg.settings.lines {
                let jobs = shared
                    .split
                    .jobs(shared.num_threads, 0)
                    .unwrap_or(crate::lines::DEFAULT_JOBS);
                let manifest = crate::lines::scan(out_dir, &job.dirs.src_dir, jobs);
                outcome.lines = (!manifest.is_empty()).then_some(manifest);
            }
        } else if outcome.return_code > 0 && outputs::configured_for(out_dir, &job.board.board) {
            outcome.config = outputs::config_files(out_dir);
        }
    }
    (shared.sink)(BuildEvent::Result(outcome));
    if let Some(s) = sent.get_mut(upto) {
        *s = true;
    }
}
