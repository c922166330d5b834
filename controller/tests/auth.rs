//! Agent authentication against keys made and signatures produced by the
//! `openssl` command, as a bbot agent's are: 401 without a known
//! fingerprint, a fresh challenge per task, a result refused unless its
//! signature of exactly the challenge verifies against that agent's key.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use base64::Engine;
use common::{post_manifest, result_for, result_request, task_request, Controller};
use manifests::{Document, ResultStatus, TaskResponseManifest};
use serde_json::json;

const MACHINE: &str = "x86_64-debian_12-uboot";

fn openssl(args: &[&str]) -> Vec<u8> {
    let out = Command::new("openssl")
        .args(args)
        .output()
        .expect("openssl");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// A private key and its public key in `pub_dir`; returns (private key,
/// fingerprint computed by openssl and sha256sum).
fn key(dir: &Path, pub_dir: &Path, name: &str) -> (PathBuf, String) {
    let private = dir.join(format!("{name}.key"));
    let public = pub_dir.join(format!("{name}.pem"));
    let p = private.display().to_string();
    openssl(&[
        "genpkey",
        "-algorithm",
        "RSA",
        "-pkeyopt",
        "rsa_keygen_bits:2048",
        "-out",
        &p,
    ]);
    openssl(&[
        "pkey",
        "-in",
        &p,
        "-pubout",
        "-out",
        &public.display().to_string(),
    ]);
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "openssl pkey -pubin -in '{}' -outform DER | sha256sum",
            public.display()
        ))
        .output()
        .expect("sha256sum");
    let fp = String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .expect("digest")
        .to_string();
    (private, fp)
}

/// base64 (wrapped at 64 columns, as `openssl base64` writes it) of the
/// raw PKCS#1 v1.5 signature of `data` by `private`, with `tool`
/// (`pkeyutl` or `rsautl`).
fn sign(tool: &str, private: &Path, data: &[u8], scratch: &Path) -> String {
    let input = scratch.join("challenge");
    let sig = scratch.join("signature");
    std::fs::write(&input, data).expect("challenge file");
    let (i, s, k) = (
        input.display().to_string(),
        sig.display().to_string(),
        private.display().to_string(),
    );
    openssl(&[tool, "-sign", "-inkey", &k, "-in", &i, "-out", &s]);
    let b64 = openssl(&["base64", "-in", &s]);
    String::from_utf8(b64)
        .expect("base64")
        .trim_end()
        .to_string()
}

fn ask(c: &Controller, fp: Option<&str>) -> (u16, String) {
    post_manifest(&c.task_url(), &task_request("host1", &[MACHINE], fp))
}

#[test]
fn agents_must_be_known_and_results_signed() {
    let tmp = tempfile::tempdir().expect("tmp");
    let keys = tmp.path().join("keys");
    std::fs::create_dir(&keys).expect("keys dir");
    let (private, fp) = key(tmp.path(), &keys, "agent1");
    // A key that is not trusted (its public half stays outside the dir).
    let outside = tmp.path().join("outside");
    std::fs::create_dir(&outside).expect("dir");
    let (stranger, stranger_fp) = key(tmp.path(), &outside, "stranger");

    let mut c = Controller::start(&["--agent-keys", &keys.display().to_string()]);
    let id = c.submit(json!({
        "repository": "https://example.org/u-boot.git",
        "commits": ["aaaa", "bbbb"],
        "boards": ["sandbox sandbox", "qemu_arm arm"],
        "machine": "x86_64-*",
        "boards_per_task": 1,
    }));

    // 401 without a fingerprint, and with one not in the directory.
    let (status, body) = ask(&c, None);
    assert_eq!(status, 401, "{body}");
    assert!(body.contains("sent no fingerprint"), "{body}");
    assert_eq!(ask(&c, Some(&stranger_fp)).0, 401);
    assert!(
        c.job(id).tasks.iter().all(|t| t.state == "queued"),
        "nothing leased"
    );

    // The known key (any case) gets a task with a fresh challenge.
    let (status, body) = ask(&c, Some(&fp.to_uppercase()));
    assert_eq!(status, 200, "{body}");
    let r = TaskResponseManifest::parse(body.as_bytes(), "response").expect("response");
    let challenge = r.challenge.clone().expect("challenge");
    // brep's challenge: 64 random bytes, base64 in the manifest; bbot
    // signs the decoded bytes.
    let raw = base64::engine::general_purpose::STANDARD
        .decode(&challenge)
        .expect("base64 challenge");
    assert_eq!(raw.len(), 64);
    let task = r.task.clone().expect("task");
    let result = result_for(&task, |_, _, _| Some(ResultStatus::Success));
    let url = c.result_url();
    let post =
        |sig: Option<String>| post_manifest(&url, &result_request(&r.session, sig, result.clone()));

    // Refused: no signature, not base64, another key, other data.
    let refusals = [
        (None, "no challenge signature"),
        (Some("not base64!".to_string()), "not base64"),
        (
            Some(sign("pkeyutl", &stranger, &raw, tmp.path())),
            "does not verify",
        ),
        (
            Some(sign(
                "rsautl",
                &private,
                format!("{challenge}\n").as_bytes(),
                tmp.path(),
            )),
            "does not verify",
        ),
    ];
    for (sig, why) in refusals {
        let (status, body) = post(sig);
        assert_eq!(status, 401, "{why}: {body}");
        assert!(body.contains(why), "{body}");
        assert!(
            c.job(id).cells.iter().all(|c| c.status.is_none()),
            "nothing merged"
        );
    }

    // The right signature (openssl pkeyutl, no digest, of the decoded
    // challenge as bbot signs it), as multi-line base64.
    let sig = sign("pkeyutl", &private, &raw, tmp.path());
    assert!(
        sig.contains('\n'),
        "wrapped base64 travels as a multi-line value"
    );
    assert_eq!(post(Some(sig)).0, 200);
    let j = c.job(id);
    assert_eq!(
        j.cells
            .iter()
            .filter(|c| c.status == Some(ResultStatus::Success))
            .count(),
        2
    );

    // The second task: a new challenge, signed as text by openssl rsautl
    // (the literal reading of "the challenge bytes") is accepted too.
    let (_, body) = ask(&c, Some(&fp));
    let r2 = TaskResponseManifest::parse(body.as_bytes(), "response").expect("response");
    let challenge2 = r2.challenge.clone().expect("challenge");
    assert_ne!(challenge2, challenge);
    let sig2 = sign("rsautl", &private, challenge2.as_bytes(), tmp.path());
    let result2 = result_for(&r2.task.expect("task"), |_, _, _| {
        Some(ResultStatus::Warning)
    });
    let (status, body) = post_manifest(&url, &result_request(&r2.session, Some(sig2), result2));
    assert_eq!(status, 200, "{body}");
    assert!(c.job(id).finished.is_some());

    assert_eq!(
        c.metric("bbot_controller_results_total{outcome=\"refused\"}"),
        Some(4.0)
    );
    assert_eq!(
        c.metric("bbot_controller_results_total{outcome=\"accepted\"}"),
        Some(2.0)
    );
    let log = c.stop();
    assert!(
        log.contains("result refused: authentication failed"),
        "{log}"
    );
    assert!(log.contains("is not in --agent-keys"), "{log}");
}

#[test]
fn unusable_key_directories_stop_the_start() {
    let tmp = tempfile::tempdir().expect("tmp");
    std::fs::write(tmp.path().join("junk.pem"), "not a key").expect("write");
    let out = Command::new(env!("CARGO_BIN_EXE_bbot-controller"))
        .args(["serve", "--listen", "127.0.0.1:0", "--data"])
        .arg(tmp.path().join("data"))
        .arg("--agent-keys")
        .arg(tmp.path())
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("junk.pem") && err.contains("not an RSA public key"),
        "{err}"
    );
}

/// The real agent with `--auth-key` against a controller that requires
/// keys: its fingerprint is known, its signed results are merged.
#[test]
fn the_real_agent_authenticates_with_its_key() {
    let tmp = tempfile::tempdir().expect("tmp");
    let keys = tmp.path().join("keys");
    std::fs::create_dir(&keys).expect("keys dir");
    let (private, _fp) = key(tmp.path(), &keys, "agent1");
    let mut c = Controller::start(&["--agent-keys", &keys.display().to_string()]);
    let id = c.submit(json!({
        "repository": "https://example.org/u-boot.git",
        "commits": ["aaaa", "bbbb"],
        "boards": ["sandbox sandbox"],
        "machine": "x86_64-*",
    }));
    let p = private.display().to_string();
    let mut agent =
        common::agent::Agent::start_with(MACHINE, &c.task_url(), 0, &["--auth-key", &p]);
    let j = c.wait_finished(id, common::WAIT);
    let log = agent.log();
    assert!(
        j.cells
            .iter()
            .all(|x| x.status == Some(ResultStatus::Success)),
        "{:?}\n{log}",
        j.cells
    );
    assert!(!log.contains("unsigned"), "{log}");
    agent.signal("TERM");
    agent.wait(std::time::Duration::from_secs(20));
    c.stop();
}
