//! The real boss: buildman 0.2.0's `--dist --no-local` build through our
//! worker must give the same results as the same buildman building the same
//! boards locally.

mod common;

use std::collections::BTreeMap;
use std::path::Path;

use common::boss::Boss;
use common::fixture::{Fixture, BOARDS};
use common::TestDir;

/// For each `<commit dir>/<board>`: (done, err, sizes) contents.
fn outcomes(out: &Path) -> BTreeMap<String, (String, String, String)> {
    let mut map = BTreeMap::new();
    let branch = out.join("master");
    let mut commits: Vec<_> = std::fs::read_dir(&branch)
        .expect("output dir")
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with('0'))
        .collect();
    commits.sort_by_key(|e| e.file_name());
    for c in commits {
        for (board, _) in BOARDS {
            let dir = c.path().join(board);
            if !dir.is_dir() {
                continue;
            }
            // The boss writes `done` with a newline and `sizes` without
            // one, a local build the other way round: compare the text.
            let read = |f: &str| {
                std::fs::read_to_string(dir.join(f))
                    .unwrap_or_default()
                    .trim_end()
                    .to_string()
            };
            map.insert(
                format!("{}/{board}", c.file_name().to_string_lossy()),
                (read("done"), sorted_lines(&read("err")), read("sizes")),
            );
        }
    }
    map
}

/// Compilers running in parallel (`-j`) interleave their messages, so
/// stderr is compared as a sorted list of lines.
fn sorted_lines(text: &str) -> String {
    let mut lines: Vec<&str> = text.lines().collect();
    lines.sort_unstable();
    lines.join("\n")
}

fn text(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn dist_build_matches_local_build() {
    let dir = TestDir::new("real-boss");
    let fx = Fixture::create(&dir.path.join("src"));
    let boss = Boss::new(&dir.path, &["rusty"], 0);
    let dist = dir.path.join("out-dist");
    let local = dir.path.join("out-local");
    let boards: Vec<&str> = BOARDS.iter().map(|(b, _)| *b).collect();
    let with = |extra: &[&str], out: &Path| {
        let mut a = vec!["-b", &fx.branch, "-c", "3", "-o"];
        let out = out.to_str().expect("utf-8 path").to_string();
        let mut v: Vec<String> = a.drain(..).map(str::to_string).collect();
        v.push(out);
        v.extend(extra.iter().map(|s| s.to_string()));
        v.extend(boards.iter().map(|s| s.to_string()));
        v
    };

    let args = with(&["--dist", "--no-local"], &dist);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let run = boss.run(&fx.dir, &args);
    let log = text(&run);
    assert!(
        log.contains("Completed: 15 total built"),
        "dist build:\n{log}"
    );
    assert!(
        log.contains("demand-driven"),
        "not built by the worker:\n{log}"
    );

    let args = with(&[], &local);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let run = boss.run(&fx.dir, &args);
    let log = text(&run);
    assert!(
        log.contains("Completed: 15 total built"),
        "local build:\n{log}"
    );

    // Same done/err/sizes for every board and commit.
    let d = outcomes(&dist);
    let l = outcomes(&local);
    assert_eq!(d.len(), 15, "{d:#?}");
    for (key, dv) in &d {
        assert_eq!(
            Some(dv),
            l.get(key),
            "{key} differs (dist left, local right)"
        );
    }
    assert_eq!(d.len(), l.len());
    // Every board really was built by the worker.
    for key in d.keys() {
        let host = dist.join("master").join(key).join("host");
        let host = std::fs::read_to_string(&host).unwrap_or_default();
        assert_eq!(host.trim(), "rusty", "{key}");
    }
    // One size line per image, as buildman writes them: qemu_arm64 links
    // U-Boot, SPL and TPL.
    for (key, (_, _, sizes)) in d.iter().filter(|(k, _)| k.ends_with("/qemu_arm64")) {
        let files: Vec<&str> = sizes
            .lines()
            .filter_map(|l| l.split_whitespace().nth(5))
            .collect();
        assert_eq!(
            files,
            ["u-boot", "spl/u-boot-spl", "tpl/u-boot-tpl"],
            "{key}: {sizes}"
        );
    }
    // The failed build carries its config.
    let broken = d
        .iter()
        .find(|(k, v)| k.ends_with("/sandbox_broken") && v.0.trim() != "0")
        .map(|(k, _)| k.clone())
        .expect("a failed sandbox_broken build");
    let cfg = std::fs::read_to_string(dist.join("master").join(&broken).join(".config"))
        .expect("config of the failed build");
    assert!(cfg.contains("CONFIG_TARGET_SANDBOX_BROKEN=y"), "{cfg}");

    // buildman's summaries agree: pass/fail/warn per board and commit,
    // errors and sizes.
    for flags in [&["-s"][..], &["-s", "-e"], &["-s", "-S"]] {
        let mut summaries = Vec::new();
        for out in [&dist, &local] {
            let args = with(flags, out);
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            let run = boss.run(&fx.dir, &args);
            assert!(
                run.status.success()
                    || run.status.code() == Some(100)
                    || run.status.code() == Some(101),
                "{}",
                text(&run)
            );
            summaries.push(String::from_utf8_lossy(&run.stdout).into_owned());
        }
        assert_eq!(
            sorted_lines(&summaries[0]),
            sorted_lines(&summaries[1]),
            "summary {flags:?} differs:\n{}\n----\n{}",
            summaries[0],
            summaries[1]
        );
        assert!(summaries[0].contains("sandbox_broken"), "{}", summaries[0]);
        assert!(summaries[0].contains("sandbox_warn"), "{}", summaries[0]);
    }
}

/// `--lines`: the boss writes each build's `lines` file from the manifest
/// our worker sends; it must be the file a local build writes.
#[test]
fn lines_files_match_local_build() {
    let dir = TestDir::new("real-boss-lines");
    let fx = Fixture::create(&dir.path.join("src"));
    let boss = Boss::new(&dir.path, &["rusty"], 0);
    let boards = ["qemu_arm64", "sandbox_broken"];
    let mut files = Vec::new();
    for (name, extra) in [
        ("dist", &["--dist", "--no-local", "--lines"][..]),
        ("local", &["--lines"][..]),
    ] {
        let out = dir.path.join(format!("out-{name}"));
        let out_s = out.to_string_lossy().into_owned();
        let mut args = vec!["-b", fx.branch.as_str(), "-c", "3", "-o", &out_s];
        args.extend_from_slice(extra);
        args.extend(boards);
        let run = boss.run(&fx.dir, &args);
        assert!(
            text(&run).contains("Completed: 6 total built"),
            "{name}:\n{}",
            text(&run)
        );
        let mut map = BTreeMap::new();
        let mut commits: Vec<_> = std::fs::read_dir(out.join("master"))
            .expect("output")
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with('0'))
            .collect();
        commits.sort_by_key(|e| e.file_name());
        for c in commits {
            for b in boards {
                let lines = std::fs::read_to_string(c.path().join(b).join("lines")).ok();
                map.insert(format!("{}/{b}", c.file_name().to_string_lossy()), lines);
            }
        }
        files.push(map);
    }
    assert_eq!(files[0], files[1], "lines files differ (dist first)");
    // Successful builds have one; sandbox_broken's failed build none.
    let with_lines = files[0].values().filter(|l| l.is_some()).count();
    assert_eq!(with_lines, 5, "{:#?}", files[0]);
    let arm = files[0]
        .iter()
        .find(|(k, _)| k.ends_with("/qemu_arm64"))
        .and_then(|(_, l)| l.clone())
        .unwrap_or_default();
    assert!(arm.contains("spl:common/main.c: "), "{arm}");
}
