//! Benchmark on real U-Boot: our worker against buildman's own Python
//! worker, driven by the same real boss (buildman 0.2.0, `--dist
//! --no-local --use-machines`) over Debian's U-Boot 2023.01 with the test
//! commits A, B, C (`tests/common/uboot.rs`), 2 boards × 3 commits, on the
//! same machine, in one run.
//!
//! Each run starts from empty worktrees (so every run is a full build of
//! commit A and incremental builds of B and C) and reports:
//! - wall: the whole boss run (board scan, probe, push, worker start,
//!   builds, quit), and how long until the first make started (board scan,
//!   probe, push, worker start, worktree set-up, first checkout);
//! - per board × commit: time in make and time not in make. A `make`
//!   wrapper first on `PATH` logs when each top-level make starts and ends,
//!   in which worktree and at which commit; the boss's `done` file of each
//!   result is written when the result arrives. For each build thread, the
//!   time from its previous result (or the start of its first make) to
//!   this result, minus the time spent in make, is the worker's own time
//!   for this board and commit: checkout, Kconfig check, sizes, sending the
//!   result, waiting for the next board.
//!
//! Run: `cargo bench -p worker-guest --bench boss_compare_uboot` (needs
//! what the real U-Boot test needs; takes minutes). `BENCH_ROUNDS` sets the
//! rounds (default 1; the order of the two workers alternates).

#[path = "../tests/common/mod.rs"]
mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use common::boss::Boss;
use common::uboot::{self, boss_args, BOARDS, BRANCH};
use common::TestDir;

/// One top-level make: worktree, start, end, commit checked out, args.
struct MakeRun {
    dir: String,
    start: f64,
    end: f64,
    head: String,
    args: String,
}

fn read_make_log(path: &Path) -> Vec<MakeRun> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines()
        .filter_map(|l| {
            let mut f = l.splitn(5, '|');
            Some(MakeRun {
                dir: f.next()?.to_string(),
                start: f.next()?.parse().ok()?,
                end: f.next()?.parse().ok()?,
                head: f.next()?.trim().to_string(),
                args: f.next().unwrap_or("").to_string(),
            })
        })
        .collect()
}

/// A `make` that logs top-level runs (sub-makes, `MAKELEVEL` set, go
/// straight to the real make). bash's `EPOCHREALTIME` and `read` need no
/// fork, so the wrapper adds little.
fn make_wrapper(dir: &Path) -> PathBuf {
    std::fs::create_dir_all(dir).expect("wrapper dir");
    let real = std::process::Command::new("sh")
        .args(["-c", "command -v make"])
        .output()
        .expect("find make");
    let real = String::from_utf8_lossy(&real.stdout).trim().to_string();
    let script = format!(
        "#!/bin/bash\n\
         if [ -n \"$MAKELEVEL\" ]; then exec {real} \"$@\"; fi\n\
         s=$EPOCHREALTIME\n\
         {real} \"$@\"\n\
         rc=$?\n\
         e=$EPOCHREALTIME\n\
         head=\n\
         if read -r line < .git 2>/dev/null; then read -r head < \"${{line#gitdir: }}/HEAD\"; fi\n\
         echo \"$PWD|$s|$e|$head|$*\" >> \"$BENCH_MAKE_LOG\"\n\
         exit $rc\n"
    );
    let path = dir.join("make");
    std::fs::write(&path, script).expect("write wrapper");
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .expect("chmod wrapper");
    dir.to_path_buf()
}

/// When the boss wrote each result: (board, commit hash) → seconds.
fn result_times(out: &Path) -> BTreeMap<(String, String), f64> {
    let mut map = BTreeMap::new();
    let Ok(commits) = std::fs::read_dir(out.join(BRANCH)) else {
        return map;
    };
    for c in commits.flatten() {
        let name = c.file_name().to_string_lossy().into_owned();
        // NN_g<hash>_<subject>
        let Some(hash) = name.split('_').nth(1).and_then(|h| h.strip_prefix('g')) else {
            continue;
        };
        for (board, _) in BOARDS {
            let done = c.path().join(board).join("done");
            let Ok(t) = std::fs::metadata(&done).and_then(|m| m.modified()) else {
                continue;
            };
            let secs = t
                .duration_since(UNIX_EPOCH)
                .map_or(0.0, |d| d.as_secs_f64());
            map.insert((board.to_string(), hash.to_string()), secs);
        }
    }
    map
}

/// Per (board, commit index): (seconds in make, seconds not in make).
type PerBuild = BTreeMap<(String, usize), (f64, f64)>;

fn per_build(
    runs: &[MakeRun],
    results: &BTreeMap<(String, String), f64>,
    commits: &[String],
) -> PerBuild {
    // Makes per worktree in order; the board is the one whose defconfig
    // ran last in that worktree (every board starts with one).
    let mut by_dir: BTreeMap<&str, Vec<&MakeRun>> = BTreeMap::new();
    for r in runs {
        by_dir.entry(r.dir.as_str()).or_default().push(r);
    }
    let mut out = PerBuild::new();
    for list in by_dir.values_mut() {
        list.sort_by(|a, b| a.start.total_cmp(&b.start));
        let mut board = String::new();
        // (board, head) → (first make start, make seconds), in order.
        let mut builds: Vec<((String, String), f64, f64)> = Vec::new();
        for r in list.iter() {
            if let Some(b) = r
                .args
                .split_whitespace()
                .find_map(|a| a.strip_suffix("_defconfig"))
            {
                board = b.to_string();
            }
            let key = (board.clone(), r.head.clone());
            match builds.last_mut() {
                Some((k, _, make)) if *k == key => *make += r.end - r.start,
                _ => builds.push((key, r.start, r.end - r.start)),
            }
        }
        let mut prev: Option<f64> = None;
        for (key, first_start, make) in builds {
            let Some(&done) = results.get(&key) else {
                continue;
            };
            let from = prev.unwrap_or(first_start);
            prev = Some(done);
            let Some(upto) = commits.iter().position(|c| *c == key.1) else {
                continue;
            };
            out.insert((key.0, upto), (make, (done - from - make).max(0.0)));
        }
    }
    out
}

struct Measure {
    wall: f64,
    /// From starting the boss to the first make: board scan, probe, push,
    /// worker start, worktree set-up and the first checkout.
    to_first_make: f64,
    builds: PerBuild,
}

fn run_once(
    boss: &Boss,
    src: &Path,
    host: &str,
    out: &Path,
    wrapper: &Path,
    log: &Path,
    commits: &[String],
) -> Measure {
    let _ = std::fs::remove_file(log);
    // Every run builds from scratch: no worktrees (and build directories)
    // left by an earlier run.
    let _ = std::fs::remove_dir_all(boss.hosts.join(host).join("dev/.bm-worker/.bm-work"));
    let out_s = out.to_string_lossy().into_owned();
    let args = boss_args(&out_s, &["--dist", "--no-local", "--use-machines", host]);
    let mut cmd = boss.command(src, &args, Some(wrapper));
    cmd.env("BENCH_MAKE_LOG", log);
    let started = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64());
    let t = Instant::now();
    let res = cmd.output().expect("run buildman");
    let wall = t.elapsed().as_secs_f64();
    let text =
        String::from_utf8_lossy(&res.stdout).into_owned() + &String::from_utf8_lossy(&res.stderr);
    let results = result_times(out);
    assert_eq!(
        results.len(),
        BOARDS.len() * 3,
        "{host} run failed:\n{text}"
    );
    let runs = read_make_log(log);
    let first = runs.iter().map(|r| r.start).fold(f64::INFINITY, f64::min);
    let builds = per_build(&runs, &results, commits);
    assert_eq!(
        builds.len(),
        BOARDS.len() * 3,
        "{host}: makes not attributed:\n{text}"
    );
    Measure {
        wall,
        to_first_make: first - started,
        builds,
    }
}

fn load_avg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let rounds: usize = std::env::var("BENCH_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(1);
    uboot::require_prerequisites();
    let dir = TestDir::new("bench-uboot");
    let src = uboot::test_tree(&dir.path);
    let commits: Vec<String> = {
        let log = common::fixture::git(&src, &["rev-list", "--reverse", "-n", "3", "HEAD"]);
        log.lines().map(str::to_string).collect()
    };
    let mut boss = Boss::new(&dir.path, &["rshost", "pyhost"], 0);
    // Debian's python3 (pyelftools) for U-Boot's scripts.
    boss.path_tail = uboot::build_path();
    let wrapper = make_wrapper(&dir.path.join("wrap"));
    let log = dir.path.join("make.log");
    let started = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    println!(
        "boss: buildman 0.2.0 --dist --no-local; U-Boot 2023.01 (Debian) + 3 test commits; \
         {} boards x 3 commits; {rounds} round(s); {} CPUs; start (unix) {started}",
        BOARDS.len(),
        std::thread::available_parallelism().map_or(1, usize::from)
    );
    let mut totals: BTreeMap<&str, Vec<(f64, f64, f64, f64)>> = BTreeMap::new();
    for round in 0..rounds {
        let mut order = [("rust", "rshost"), ("python", "pyhost")];
        if round % 2 == 1 {
            order.reverse();
        }
        for (name, host) in order {
            let out = dir.path.join(format!("out-{host}-{round}"));
            let before = load_avg();
            let m = run_once(&boss, &src, host, &out, &wrapper, &log, &commits);
            println!(
                "\n{name} (round {round}): wall {:.1} s, first make after {:.1} s; \
                 load average before {before}, after {}",
                m.wall,
                m.to_first_make,
                load_avg()
            );
            println!(
                "{:<22} {:>6} {:>9} {:>14}",
                "board", "commit", "make_s", "not_in_make_ms"
            );
            let (mut make, mut other) = (0.0, 0.0);
            for ((board, upto), (mk, ov)) in &m.builds {
                println!("{board:<22} {upto:>6} {mk:>9.2} {:>14.0}", ov * 1000.0);
                make += mk;
                other += ov;
            }
            println!(
                "{:<22} {:>6} {make:>9.2} {:>14.0}",
                "total",
                "",
                other * 1000.0
            );
            totals
                .entry(name)
                .or_default()
                .push((m.wall, m.to_first_make, make, other));
        }
    }
    println!(
        "\n{:<8} {:>8} {:>14} {:>10} {:>16}",
        "worker", "wall_s", "first_make_s", "make_s", "not_in_make_ms"
    );
    for (name, runs) in &totals {
        for (wall, first, make, other) in runs {
            println!(
                "{name:<8} {wall:>8.1} {first:>14.1} {make:>10.1} {:>16.0}",
                other * 1000.0
            );
        }
    }
}
