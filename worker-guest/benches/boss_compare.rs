//! Benchmark: our worker against buildman's own Python worker, driven by
//! the same real boss (buildman 0.2.0, `--dist --no-local --use-machines`)
//! over the same fixture boards and commits on the same machine, in one
//! run, alternating the two workers.
//!
//! For each run it prints the wall time of the whole boss run and the
//! worker's per-build overhead: the time a build thread spends outside
//! make (checkout, reconfigure checks, sizes, sending results, waiting for
//! the next board), measured with a `make` wrapper that logs when each make
//! starts and ends and in which worktree.
//!
//! Run: `cargo bench -p worker-guest --bench boss_compare` (needs what
//! `ci-packages.txt` lists; creates the buildman virtualenv on first use).
//! `BENCH_ROUNDS` sets the rounds per worker (default 3).

#[path = "../tests/common/mod.rs"]
mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use common::boss::Boss;
use common::fixture::{Fixture, BOARDS};
use common::TestDir;

/// One make invocation: worktree, start and end (seconds).
struct MakeRun {
    dir: String,
    start: f64,
    end: f64,
}

fn read_make_log(path: &Path) -> Vec<MakeRun> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines()
        .filter_map(|l| {
            let mut f = l.rsplitn(3, ' ');
            let end = f.next()?.parse().ok()?;
            let start = f.next()?.parse().ok()?;
            let dir = f.next()?.to_string();
            Some(MakeRun { dir, start, end })
        })
        .collect()
}

/// Seconds between makes, summed over build threads (worktrees).
fn gaps(runs: &[MakeRun]) -> (f64, f64) {
    let mut by_dir: BTreeMap<&str, Vec<&MakeRun>> = BTreeMap::new();
    for r in runs {
        // The worktree is .../.bm-work/NN (make may run in a subdir).
        by_dir.entry(r.dir.as_str()).or_default().push(r);
    }
    let mut gap = 0.0;
    let mut in_make = 0.0;
    for list in by_dir.values_mut() {
        list.sort_by(|a, b| a.start.total_cmp(&b.start));
        for w in list.windows(2) {
            gap += (w[1].start - w[0].end).max(0.0);
        }
        in_make += list.iter().map(|r| r.end - r.start).sum::<f64>();
    }
    (gap, in_make)
}

struct Measure {
    wall: f64,
    builds: usize,
    in_make: f64,
    overhead_ms: f64,
}

fn run_once(
    boss: &Boss,
    fx: &Fixture,
    host: &str,
    out: &Path,
    wrapper: &Path,
    log: &Path,
) -> Measure {
    let _ = std::fs::remove_file(log);
    let boards: Vec<&str> = BOARDS.iter().map(|(b, _)| *b).collect();
    let out_s = out.to_string_lossy().into_owned();
    let mut args = vec![
        "--dist",
        "--no-local",
        "--use-machines",
        host,
        "-b",
        &fx.branch,
        "-c",
        "3",
        "-o",
        &out_s,
    ];
    args.extend(boards.iter().copied());
    let mut cmd = boss.command(&fx.dir, &args, Some(wrapper));
    cmd.env("BENCH_MAKE_LOG", log);
    let t = Instant::now();
    let res = cmd.output().expect("run buildman");
    let wall = t.elapsed().as_secs_f64();
    let text =
        String::from_utf8_lossy(&res.stdout).into_owned() + &String::from_utf8_lossy(&res.stderr);
    let builds = BOARDS.len() * 3;
    assert!(
        text.contains(&format!("Completed: {builds} total built")),
        "{host} run failed:\n{text}"
    );
    let runs = read_make_log(log);
    let (gap, in_make) = gaps(&runs);
    Measure {
        wall,
        builds,
        in_make,
        overhead_ms: gap * 1000.0 / builds as f64,
    }
}

fn make_wrapper(dir: &Path) -> PathBuf {
    std::fs::create_dir_all(dir).expect("wrapper dir");
    let real = std::process::Command::new("sh")
        .args(["-c", "command -v make"])
        .output()
        .expect("find make");
    let real = String::from_utf8_lossy(&real.stdout).trim().to_string();
    // bash's EPOCHREALTIME needs no fork, so the wrapper adds little time.
    let script = format!(
        "#!/bin/bash\ns=$EPOCHREALTIME\n{real} \"$@\"\nrc=$?\ne=$EPOCHREALTIME\necho \"$PWD $s $e\" >> \"$BENCH_MAKE_LOG\"\nexit $rc\n"
    );
    let path = dir.join("make");
    std::fs::write(&path, script).expect("write wrapper");
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .expect("chmod wrapper");
    dir.to_path_buf()
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => 0.0,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

fn min(v: &[f64]) -> f64 {
    v.iter().copied().fold(f64::INFINITY, f64::min)
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let rounds: usize = std::env::var("BENCH_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(3);
    let dir = TestDir::new("bench");
    let fx = Fixture::create(&dir.path.join("src"));
    let boss = Boss::new(&dir.path, &["rusty", "pyworker"], 0);
    let wrapper = make_wrapper(&dir.path.join("wrap"));
    let log = dir.path.join("make.log");
    println!(
        "boss: buildman 0.2.0 --dist --no-local; {} boards x 3 commits; {} rounds per worker",
        BOARDS.len(),
        rounds
    );
    println!(
        "{:<8} {:>5} {:>8} {:>7} {:>9} {:>16}",
        "worker", "round", "wall_s", "builds", "make_s", "overhead_ms/build"
    );
    let mut all: BTreeMap<&str, (Vec<f64>, Vec<f64>)> = BTreeMap::new();
    for round in 0..rounds {
        for (name, host) in [("rust", "rusty"), ("python", "pyworker")] {
            let out = dir.path.join(format!("out-{host}-{round}"));
            let m = run_once(&boss, &fx, host, &out, &wrapper, &log);
            println!(
                "{name:<8} {round:>5} {:>8.2} {:>7} {:>9.2} {:>16.1}",
                m.wall, m.builds, m.in_make, m.overhead_ms
            );
            let t = all.entry(name).or_default();
            t.0.push(m.wall);
            t.1.push(m.overhead_ms);
        }
    }
    println!();
    println!(
        "{:<8} {:>12} {:>12} {:>20} {:>20}",
        "worker", "wall_med_s", "wall_min_s", "overhead_med_ms", "overhead_min_ms"
    );
    for (name, (wall, ovh)) in &mut all {
        println!(
            "{name:<8} {:>12.2} {:>12.2} {:>20.1} {:>20.1}",
            median(wall),
            min(wall),
            median(ovh),
            min(ovh)
        );
    }
}
