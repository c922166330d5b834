//! One attempt at one commit of one board: check out, decide whether to
//! reconfigure, run `make <board>_defconfig` (after `make mrproper` if
//! asked) and `make`, as buildman's `BuilderThread.run_commit` does.
//!
//! What make is run with follows buildman exactly (arguments, environment,
//! working and output directories), since the boss compares our results
//! with those of a local build and of buildman's own worker.

use std::collections::HashMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::Ordering;

use crate::builder::RETURN_CODE_NO_TOOLCHAIN;
use crate::engine::Shared;
use crate::outputs;
use crate::protocol::BoardSpec;
use crate::toolchain::{NoToolchain, Toolchain};
use crate::worktree;

/// The result of one attempt at one commit.
pub(crate) struct Attempt {
    pub return_code: i32,
    pub stdout: String,
    pub stderr: String,
    /// Whether make ran in the output directory, so its files belong to
    /// this build (sizes, config).
    pub made: bool,
}

impl Attempt {
    /// buildman's test of failure: the return code, nothing else.
    pub fn failed(&self) -> bool {
        self.return_code != 0
    }
}

/// Where a thread builds: working directory, `O=` argument, output
/// directory and the source directory whose path is stripped from messages.
pub(crate) struct Dirs {
    pub cwd: PathBuf,
    pub out_arg: String,
    pub out_dir: PathBuf,
    pub src_dir: PathBuf,
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
pub(crate) struct Job<'a> {
    pub shared: &'a Shared,
    pub dirs: Dirs,
    pub board: &'a BoardSpec,
    pub tc: Result<&'a Toolchain, NoToolchain>,
}

impl<'a> Job<'a> {
    /// The job of `board` on `thread`, with its toolchain (or why there is
    /// none).
    pub fn new(shared: &'a Shared, thread: usize, board: &'a BoardSpec) -> Self {
        Self {
            shared,
            dirs: dirs(shared, thread),
            board,
            tc: shared.cfg.toolchains.select(&board.arch),
        }
    }

    /// The environment make runs with: ours plus the toolchain's (and,
    /// with `shared_dtc`, the shared dtc when `with_dtc`).
    pub fn make_env(&self, with_dtc: bool) -> HashMap<OsString, OsString> {
        let shared = self.shared;
        let mut env = shared.base_env.clone();
        let Ok(tc) = &self.tc else {
            return env;
        };
        tc.apply_env(&mut env, shared.cfg.toolchains.wrapper());
        if let Some(cc) = &shared.ccache {
            // As buildman's make_environment: ccache goes in front of
            // whatever CROSS_COMPILE is (the host compiler's empty one
            // included), unless a wrapper already is ccache.
            let key = OsString::from("CROSS_COMPILE");
            let cross = env
                .get(&key)
                .map(|c| c.to_string_lossy().into_owned())
                .unwrap_or_default();
            if !cross.contains("ccache") {
                env.insert(key, format!("{cc} {cross}").into());
            }
            let bm_work = shared.cfg.work_dir.join(".bm-work");
            let base = std::fs::canonicalize(&bm_work).unwrap_or(bm_work);
            env.insert("CCACHE_BASEDIR".into(), base.into_os_string());
        }
        if let (true, Some(cache)) = (with_dtc, &shared.dtc_cache) {
            if let Some((dtc, pylibfdt)) = cache.obtain(&self.dirs.src_dir, &shared.base_env) {
                env.insert("DTC".into(), dtc.into_os_string());
                let mut path = pylibfdt.into_os_string();
                if let Some(old) = env
                    .get(&OsString::from("PYTHONPATH"))
                    .filter(|p| !p.is_empty())
                {
                    path.push(":");
                    path.push(old);
                }
                env.insert("PYTHONPATH".into(), path);
            }
        }
        env
    }

    /// Whether this commit changed the configuration: buildman's test, a
    /// `Kconfig*` file or the board's defconfig newer than `.config`
    /// (after the checkout), answered once per commit for all threads.
    fn kconfig_changed(&self, upto: usize) -> bool {
        let mut cache = self
            .shared
            .kconfig_cache
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        *cache.entry(upto).or_insert_with(|| {
            outputs::kconfig_changed_since(
                &self.dirs.out_dir.join(".config"),
                &self.dirs.src_dir,
                &self.board.board,
            )
        })
    }

    /// Build one commit (`hash`; `None` for the checked-out source): check
    /// it out, reconfigure if asked or needed, then build. Returns the
    /// attempt and whether the next commit must reconfigure.
    pub fn run_commit(
        &self,
        hash: Option<&str>,
        upto: usize,
        mut do_config: bool,
        mrproper: bool,
        config_only: bool,
    ) -> (Attempt, bool) {
        let (shared, board, d) = (self.shared, self.board, &self.dirs);
        if let Err(e) = &self.tc {
            let attempt = Attempt {
                return_code: RETURN_CODE_NO_TOOLCHAIN,
                stdout: String::new(),
                stderr: format!("Tool chain error for {}: {e}", board.arch),
                made: false,
            };
            return (attempt, do_config);
        }
        if let Some(hash) = hash {
            if let Err(e) = worktree::checkout(&d.cwd, hash, shared.cfg.git_timeout) {
                // buildman's worker loses the board's remaining results
                // here (an exception); we report the failure instead.
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
        if settings.kconfig_check && !do_config && hash.is_some() && self.kconfig_changed(upto) {
            tracing::debug!("{}@{upto}: Kconfig changed, reconfiguring", board.board);
            do_config = true;
        }
        if let Err(e) = std::fs::create_dir_all(&d.out_dir) {
            tracing::warn!("cannot create {}: {e}", d.out_dir.display());
        }
        let env = self.make_env(true);
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
            outputs::forget_configured_board(&d.out_dir);
            if mrproper {
                let mut a = vec!["mrproper".to_string()];
                a.extend(args.iter().cloned());
                let r = run_make(&d.cwd, &a, &env);
                config_out.push_str(&r.stdout);
                config_out.push_str(&r.stderr);
            }
            let mut a = args.clone();
            a.push(format!("{}_defconfig", board.board));
            let r = run_make(&d.cwd, &a, &env);
            config_out.push_str(&r.stdout);
            config_out.push_str(&r.stderr);
            do_config = false;
            if r.failed() {
                result = Some(r);
            } else {
                outputs::mark_configured_board(&d.out_dir, &board.board);
            }
        }
        let mut r = match result {
            Some(r) => r,
            None => {
                let mut a = args;
                if config_only {
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
