//! The pages in a real browser (headless Chromium, Debian package
//! `chromium`): the job's board × commit table shows board names and cell
//! statuses, a hostile log stays text, the agents page shows who holds
//! what; the JSON API carries the same data. A screenshot of the job page
//! is left under the target directory for people to look at.

mod common;

use common::browser::{artifact, browse};
use common::{ask, get, post_manifest, result_for, result_request, Controller};
use manifests::ResultStatus;
use serde_json::json;

const MACHINE: &str = "x86_64-debian_12-uboot";
const HOSTILE: &str = "<script>alert('pwned')</script> & </pre><b>bold</b>";

#[test]
fn pages_in_a_real_browser() {
    let mut c = Controller::start(&[]);
    let id = c.submit(json!({
        "repository": "https://example.org/u-boot.git",
        "ref": "master",
        "commits": ["aaaa0000", "bbbb1111", "cccc2222"],
        "boards": ["sandbox sandbox", "qemu_arm64 aarch64", "rpi_arm64 aarch64", "qemu_arm arm"],
        "build_settings": ["no_lto=true"],
        "machine": "x86_64-*",
        "boards_per_task": 1,
    }));
    // sandbox: success, warning, error (with a hostile log);
    // qemu_arm64: success; rpi_arm64: still building; qemu_arm: queued.
    let r = ask(&c, "builder-1", &[MACHINE]);
    let t = r.task.clone().expect("task");
    let mut res = result_for(&t, |_, upto, _| {
        Some(
            [
                ResultStatus::Success,
                ResultStatus::Warning,
                ResultStatus::Error,
            ][upto],
        )
    });
    if let Some(op) = res.operations.iter_mut().find(|o| o.name == "sandbox@2") {
        op.log = Some(format!("make: *** error\n{HOSTILE}\n"));
    }
    assert_eq!(
        post_manifest(&c.result_url(), &result_request(&r.session, None, res)).0,
        200
    );
    assert!(common::take_and_report(
        &c,
        "builder-1",
        MACHINE,
        ResultStatus::Success
    ));
    assert!(ask(&c, "builder-2", &[MACHINE]).task.is_some());

    // The job page, as the browser sees it.
    let job_url = format!("{}jobs/{id}", c.url);
    let dom = browse(&job_url, "--dump-dom");
    for board in ["sandbox", "qemu_arm64", "rpi_arm64", "qemu_arm"] {
        assert!(
            dom.contains(&format!("<th>{board} <span")),
            "{board} row missing:\n{dom}"
        );
    }
    for (cell, status) in [
        ("cell-0-0", "success"),
        ("cell-0-1", "warning"),
        ("cell-0-2", "error"),
        ("cell-1-2", "success"),
        ("cell-2-0", "building"),
        ("cell-3-1", "queued"),
    ] {
        let needle = format!("<td class=\"cell {status}\" id=\"{cell}\">");
        assert!(dom.contains(&needle), "{needle} missing:\n{dom}");
    }
    assert!(
        dom.contains("http-equiv=\"refresh\""),
        "running job refreshes"
    );
    assert!(dom.contains("aaaa0000") && dom.contains("no_lto=true"));

    // The hostile log is text, not markup.
    let cell_dom = browse(&format!("{}jobs/{id}/cells/0/2", c.url), "--dump-dom");
    assert!(
        cell_dom.contains(
            "&lt;script&gt;alert('pwned')&lt;/script&gt; &amp; &lt;/pre&gt;&lt;b&gt;bold&lt;/b&gt;"
        ),
        "{cell_dom}"
    );
    assert!(
        !cell_dom.contains("<b>bold</b>") && !cell_dom.contains("<script>alert"),
        "{cell_dom}"
    );
    assert!(cell_dom.contains("make: *** error"));

    // Agents: both, with the machine and what builder-2 holds.
    let agents = browse(&format!("{}agents", c.url), "--dump-dom");
    assert!(
        agents.contains("builder-1") && agents.contains("builder-2"),
        "{agents}"
    );
    assert!(agents.contains(MACHINE), "{agents}");
    assert!(
        agents.contains(&format!("job {id}</a> task 3 on <code>{MACHINE}</code>")),
        "{agents}"
    );

    // The jobs list.
    let jobs = browse(&c.url, "--dump-dom");
    assert!(
        jobs.contains(&format!("<a href=\"/jobs/{id}\">{id}</a>")),
        "{jobs}"
    );

    // A screenshot for people.
    let png = artifact("job-page.png");
    let _ = std::fs::remove_file(&png);
    browse(&job_url, &format!("--screenshot={}", png.display()));
    let bytes = std::fs::read(&png).expect("screenshot written");
    assert!(bytes.starts_with(b"\x89PNG\r\n\x1a\n") && bytes.len() > 10_000);
    println!("screenshot of the job page: {}", png.display());

    // The JSON API has the same data.
    let (_, list) = get(&format!("{}api/jobs", c.url));
    let list: serde_json::Value = serde_json::from_str(&list).expect("json");
    assert_eq!(list[0]["id"], id);
    assert_eq!(list[0]["counts"]["pending"], 6);
    let (_, one) = get(&format!("{}api/jobs/{id}", c.url));
    let one: serde_json::Value = serde_json::from_str(&one).expect("json");
    assert_eq!(one["boards"][2]["target"], "rpi_arm64");
    assert_eq!(one["cells"][2]["status"], "error");
    assert_eq!(one["cells"][6]["state"], "building");
    assert!(
        !one.to_string().contains(&r.session),
        "sessions never shown"
    );
    let (_, cell) = get(&format!("{}api/jobs/{id}/cells/0/2", c.url));
    let cell: serde_json::Value = serde_json::from_str(&cell).expect("json");
    assert!(cell["log"].as_str().unwrap_or_default().contains(HOSTILE));
    c.stop();
}
