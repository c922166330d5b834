//! Building one board at every commit in a thread's worktree, with
//! buildman's rules for when to reconfigure and when to retry.
//!
//! Commit 0 always runs `<board>_defconfig`; later commits build
//! incrementally in the same `build/` directory and reconfigure only when
//! a Kconfig file or the defconfig changed, or after a failure. A failed
//! incremental build is retried once after reconfiguring, since stale
//! dependency files are a common cause of spurious failures.

use std::collections::HashMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use crate::engine::{BuildEvent, BuildOutcome, Shared};
use crate::outputs;
use crate::protocol::BoardSpec;
use crate::toolchain::{NoToolchain, Toolchain};
use crate::worktree;

/// Return code for a board without a toolchain, as buildman reports it.
pub const RETURN_CODE_NO_TOOLCHAIN: i32 = 10;

/// The result of one attempt at one commit.
struct Attempt {
    return_code: i32,
    stdout: String,
    stderr: String,
    /// Whether make ran in the output directory, so its files belong to
    /// this build (sizes, config).
    made: bool,
}

/// Where a thread builds: working directory, `O=` argument, output
/// directory and the source directory whose path is stripped from messages.
struct Dirs {
    cwd: PathBuf,
    out_arg: String,
    out_dir: PathBuf,
    src_dir: PathBuf,
}

fn dirs(shared: &Shared, thread: usize) -> Dirs {
    let tdir = worktree::thread_dir(&shared.cfg.work_dir, thread);
    let tdir = std::fs::canonicalize(&tdir).unwrap_or(tdir);
    if shared.commits.is_some() {
        Dirs {
            out_dir: tdir.join("build"),
            out_arg: "build".to_string(),
            src_dir: tdir.clone(),
            cwd: tdir,
        }
    } else {
        // The checked-out source is shared: build it in place with the
        // output in the thread's directory.
        let src = std::fs::canonicalize(&shared.cfg.work_dir)
            .unwrap_or_else(|_| shared.cfg.work_dir.clone());
        let out = tdir.join("build");
        Dirs {
            out_arg: out.to_string_lossy().into_owned(),
            out_dir: out,
            cwd: src.clone(),
            src_dir: src,
        }
    }
}

/// One board's job in one thread: what every commit of it needs.
struct Job<'a> {
    shared: &'a Shared,
    d: Dirs,
    board: &'a BoardSpec,
    tc: Result<&'a Toolchain, NoToolchain>,
}

/// Build `board` at every commit of the build, sending one result per
/// commit (never fewer, whatever fails).
pub(crate) fn run_job(shared: &Shared, thread: usize, board: &BoardSpec) {
    let job = Job {
        shared,
        d: dirs(shared, thread),
        board,
        tc: shared.cfg.toolchains.select(&board.arch),
    };
    let settings = &shared.cfg.settings;
    let mrproper = settings.mrproper;
    let can_retry = job.tc.is_ok();
    let Some(commits) = &shared.commits else {
        // The checked-out source: always configure; one retry with the
        // fallback mrproper.
        let (mut attempt, _) = run_commit(&job, None, 0, true, mrproper);
        if attempt.return_code != 0 && !mrproper && can_retry {
            (attempt, _) = run_commit(&job, None, 0, true, settings.fallback_mrproper);
        }
        send(&job, 0, attempt);
        return;
    };
    let mut do_config = true;
    for (upto, hash) in commits.iter().enumerate() {
        let hash = Some(hash.as_str());
        let (mut attempt, mut request_config) = run_commit(&job, hash, upto, do_config, mrproper);
        let failed = attempt.return_code != 0;
        if failed && !do_config && !mrproper && can_retry {
            tracing::debug!("{}@{upto}: incremental build failed, retrying", board.board);
            let mrproper = mrproper || settings.fallback_mrproper;
            (attempt, request_config) = run_commit(&job, hash, upto, true, mrproper);
        }
        if !settings.force_reconfig {
            do_config = request_config;
        }
        // After any failure (even one the retry fixed), configure afresh
        // next time, so an incremental build does not hide a warning or
        // trip over stale dependencies.
        if failed {
            do_config = true;
        }
        send(&job, upto, attempt);
    }
}

/// Turn an attempt into a result event: sizes on success, config files
/// on failure (only when make ran for this board, never stale files).
fn send(job: &Job, upto: usize, attempt: Attempt) {
    let (shared, board, d) = (job.shared, job.board, &job.d);
    let mut outcome = BuildOutcome {
        board: board.board.clone(),
        commit_upto: upto,
        return_code: attempt.return_code,
        stderr: attempt.stderr,
        stdout: attempt.stdout,
        sizes: None,
        config: Default::default(),
    };
    if let (true, Ok(tc)) = (attempt.made, &job.tc) {
        if outcome.return_code == 0 {
            let env = make_env(shared, tc);
            outcome.sizes = outputs::sizes(&d.out_dir, tc, &env);
        } else if outcome.return_code > 0 {
            outcome.config = outputs::config_files(&d.out_dir);
        }
    }
    (shared.sink)(BuildEvent::Result(outcome));
}

/// Whether this commit changed the configuration: a `Kconfig*` file or
/// the board's defconfig differs from the previous commit. The list of
/// changed files is computed once per commit for all threads (a walk of a
/// large tree for every board would cost more than many builds' overhead);
/// without it (no previous commit, git failing), fall back to buildman's
/// test of file times against `.config`.
fn kconfig_changed(shared: &Shared, d: &Dirs, board: &BoardSpec, upto: usize) -> bool {
    let defconfig = format!("configs/{}_defconfig", board.board);
    if let (Some(commits), Some(prev)) = (&shared.commits, upto.checked_sub(1)) {
        if let (Some(from), Some(to)) = (commits.get(prev), commits.get(upto)) {
            let files = {
                let mut cache = shared
                    .changes
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                cache
                    .entry(upto)
                    .or_insert_with(|| match worktree::changed_files(&d.cwd, from, to) {
                        Ok(files) => Some(Arc::new(files)),
                        Err(e) => {
                            tracing::warn!("{e}");
                            None
                        }
                    })
                    .clone()
            };
            if let Some(files) = files {
                return files.iter().any(|f| {
                    f == &defconfig
                        || Path::new(f)
                            .file_name()
                            .is_some_and(|n| n.to_string_lossy().starts_with("Kconfig"))
                });
            }
        }
    }
    outputs::kconfig_changed_since(&d.out_dir.join(".config"), &d.src_dir, &board.board)
}

/// The environment make runs with: ours, plus the toolchain's.
fn make_env(shared: &Shared, tc: &Toolchain) -> HashMap<OsString, OsString> {
    let mut env = shared.base_env.clone();
    let wrapper = match &shared.ccache {
        Some(cc) => format!("{}{cc} ", shared.cfg.toolchains.wrapper()),
        None => shared.cfg.toolchains.wrapper().to_string(),
    };
    tc.apply_env(&mut env, &wrapper);
    if shared.ccache.is_some() {
        let bm_work = shared.cfg.work_dir.join(".bm-work");
        let base = std::fs::canonicalize(&bm_work).unwrap_or(bm_work);
        env.insert("CCACHE_BASEDIR".into(), base.into_os_string());
    }
    env
}

/// Build one commit (`hash`; `None` for the checked-out source): check it
/// out, reconfigure if asked or needed, then build. Returns the attempt and
/// whether the next commit must reconfigure.
fn run_commit(
    job: &Job,
    hash: Option<&str>,
    upto: usize,
    mut do_config: bool,
    mrproper: bool,
) -> (Attempt, bool) {
    let (shared, board, d) = (job.shared, job.board, &job.d);
    let tc = match &job.tc {
        Ok(tc) => *tc,
        Err(e) => {
            let attempt = Attempt {
                return_code: RETURN_CODE_NO_TOOLCHAIN,
                stdout: String::new(),
                stderr: format!("Tool chain error for {}: {e}", board.arch),
                made: false,
            };
            return (attempt, do_config);
        }
    };
    if let Some(hash) = hash {
        if let Err(e) = worktree::checkout(&d.cwd, hash) {
            let attempt = Attempt {
                return_code: 1,
                stdout: String::new(),
                stderr: format!("{e}\n"),
                made: false,
            };
            return (attempt, true);
        }
    }
    let settings = &shared.cfg.settings;
    if settings.kconfig_check && !do_config && kconfig_changed(shared, d, board, upto) {
        tracing::debug!("{}: Kconfig changed, reconfiguring", board.board);
        do_config = true;
    }
    if let Err(e) = std::fs::create_dir_all(&d.out_dir) {
        tracing::warn!("cannot create {}: {e}", d.out_dir.display());
    }
    let env = make_env(shared, tc);
    let active = shared.active.load(Ordering::SeqCst);
    let jobs = shared.split.jobs(shared.num_threads, active);
    let mut args = settings.make_args(Some(&d.out_arg), jobs, shared.ccache.as_deref());
    args.extend(shared.cfg.make_flags.for_board(&board.board));
    // Images of the board built before in this directory must not pass
    // as ours.
    outputs::remove_old_outputs(&d.out_dir);

    let mut config_out = String::new();
    let mut result = None;
    if do_config {
        if mrproper {
            let mut a = vec!["mrproper".to_string()];
            a.extend(args.iter().cloned());
            let r = run_make(&d.cwd, &a, &env);
            config_out.push_str(&r.stdout);
            config_out.push_str(&r.stderr);
        }
        // Config files left by another board must never be reported as
        // this board's.
        outputs::remove_config_files(&d.out_dir);
        let mut a = args.clone();
        a.push(format!("{}_defconfig", board.board));
        let r = run_make(&d.cwd, &a, &env);
        config_out.push_str(&r.stdout);
        config_out.push_str(&r.stderr);
        do_config = false;
        if r.return_code != 0 {
            result = Some(r);
        }
    }
    let mut r = match result {
        Some(r) => r,
        None => {
            let mut a = args;
            if settings.config_only {
                a.push("cfg".to_string());
            }
            let mut r = run_make(&d.cwd, &a, &env);
            if r.return_code == 2 && r.stderr.contains("Some images are invalid") {
                // Missing blobs: reported through the warning in stderr.
                r.return_code = 0;
            }
            r
        }
    };
    let prefix = format!("{}/", d.src_dir.display());
    r.stderr = r.stderr.replace(&prefix, "");
    if settings.verbose_build {
        r.stdout = config_out + &r.stdout;
    }
    (r, do_config)
}

/// Run make with stdin closed, capturing stdout and stderr. A make that
/// cannot start or is killed still gives an attempt (never a lost result).
fn run_make(cwd: &Path, args: &[String], env: &HashMap<OsString, OsString>) -> Attempt {
    tracing::trace!("make {} (in {})", args.join(" "), cwd.display());
    let out = Command::new("make")
        .args(args)
        .current_dir(cwd)
        .env_clear()
        .envs(env)
        .output();
    match out {
        Ok(out) => {
            use std::os::unix::process::ExitStatusExt;
            let code = match (out.status.code(), out.status.signal()) {
                (Some(c), _) => c,
                (None, Some(sig)) => 128 + sig,
                (None, None) => 1,
            };
            Attempt {
                return_code: code,
                stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
                stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
                made: true,
            }
        }
        Err(e) => Attempt {
            return_code: 1,
            stdout: String::new(),
            stderr: format!("make failed to start: {e}"),
            made: false,
        },
    }
}
