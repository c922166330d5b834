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

/// Build `board` at every commit of the build, sending one result per
/// commit (never fewer, whatever fails).
pub(crate) fn run_job(shared: &Shared, thread: usize, board: &BoardSpec) {
    let d = dirs(shared, thread);
    let tc = shared.cfg.toolchains.select(&board.arch);
    let settings = &shared.cfg.settings;
    let mrproper = settings.mrproper;
    let ncommits = shared.commits.as_ref().map_or(1, Vec::len);
    let Some(commits) = &shared.commits else {
        // The checked-out source: always configure; one retry with the
        // fallback mrproper.
        let (mut attempt, _) = run_commit(shared, &d, board, &tc, None, true, mrproper);
        if attempt.return_code != 0 && !mrproper && tc.is_ok() {
            (attempt, _) = run_commit(
                shared,
                &d,
                board,
                &tc,
                None,
                true,
                settings.fallback_mrproper,
            );
        }
        send(shared, board, 0, &tc, &d, attempt);
        return;
    };
    let mut do_config = true;
    for upto in 0..ncommits {
        let hash = commits.get(upto).map(String::as_str);
        let (mut attempt, mut request_config) =
            run_commit(shared, &d, board, &tc, hash, do_config, mrproper);
        let failed = attempt.return_code != 0;
        if failed && !do_config && !mrproper && tc.is_ok() {
            tracing::debug!("{}@{upto}: incremental build failed, retrying", board.board);
            (attempt, request_config) = run_commit(
                shared,
                &d,
                board,
                &tc,
                hash,
                true,
                mrproper || settings.fallback_mrproper,
            );
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
        send(shared, board, upto, &tc, &d, attempt);
    }
}

/// Turn an attempt into a result event: sizes on success, config files
/// on failure (only when make ran for this board, never stale files).
fn send(
    shared: &Shared,
    board: &BoardSpec,
    upto: usize,
    tc: &Result<&Toolchain, NoToolchain>,
    d: &Dirs,
    attempt: Attempt,
) {
    let mut outcome = BuildOutcome {
        board: board.board.clone(),
        commit_upto: upto,
        return_code: attempt.return_code,
        stderr: attempt.stderr,
        stdout: attempt.stdout,
        sizes: None,
        config: Default::default(),
    };
    if let (true, Ok(tc)) = (attempt.made, tc) {
        if outcome.return_code == 0 {
            let env = make_env(shared, tc);
            outcome.sizes = outputs::sizes(&d.out_dir, tc, &env);
        } else if outcome.return_code > 0 {
            outcome.config = outputs::config_files(&d.out_dir);
        }
    }
    (shared.sink)(BuildEvent::Result(outcome));
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
    shared: &Shared,
    d: &Dirs,
    board: &BoardSpec,
    tc: &Result<&Toolchain, NoToolchain>,
    hash: Option<&str>,
    mut do_config: bool,
    mrproper: bool,
) -> (Attempt, bool) {
    let tc = match tc {
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
    if settings.kconfig_check && !do_config {
        let cfg_file = d.out_dir.join(".config");
        if outputs::kconfig_changed_since(&cfg_file, &d.src_dir, &board.board) {
            tracing::debug!("{}: Kconfig changed, reconfiguring", board.board);
            do_config = true;
        }
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
