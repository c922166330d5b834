//! `--auth-key`, checked against OpenSSL itself: the fingerprint in the
//! task request is `openssl pkey -pubout -outform DER | sha256sum` of the
//! key, the result's `challenge` verifies with `openssl pkeyutl -verify`
//! against the challenge's bytes, and a key that cannot be read stops the
//! agent at start with a message naming the file. (The project's own
//! controller accepting these results is controller/tests/real_agent.rs.)

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use base64::Engine as _;
use common::agent::{AgentProc, Scratch};
use common::controller::{Reply, TestController};
use common::wait_for;
use manifests::{Document, ResultRequestManifest, TaskRequestManifest};

/// Runs openssl; panics with its stderr when it fails.
fn openssl(args: &[&str], dir: &Path) -> Vec<u8> {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl (Debian package openssl, scripts/install-deps installs it)");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// A task response with `challenge` (base64 of 64 bytes, as brep sends).
fn challenged(result_url: &str, challenge: &str) -> String {
    common::controller::task_response("linux", result_url, "auth-1").replacen(
        ": 1\n",
        &format!(": 1\nchallenge: {challenge}\n"),
        1,
    )
}

#[test]
fn the_key_names_itself_and_signs_challenges_as_openssl_does() {
    let s = Scratch::new();
    let dir = s.path();
    openssl(
        &[
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
            "-out",
            "agent.key",
        ],
        dir,
    );
    openssl(
        &["pkey", "-in", "agent.key", "-pubout", "-out", "agent.pub"],
        dir,
    );
    let der = openssl(
        &["pkey", "-in", "agent.key", "-pubout", "-outform", "DER"],
        dir,
    );
    std::fs::write(dir.join("der"), &der).expect("der");
    let out = Command::new("sha256sum")
        .arg(dir.join("der"))
        .output()
        .expect("sha256sum");
    let expected_fp = String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .expect("hash")
        .to_string();

    let raw: Vec<u8> = (0u8..64)
        .map(|i| i.wrapping_mul(37).wrapping_add(11))
        .collect();
    let challenge = base64::engine::general_purpose::STANDARD.encode(&raw);
    let results = TestController::start(|_, _| Reply::ok(""));
    let ru = results.url("/result");
    let tasks = TestController::start(move |_, i| {
        if i == 0 {
            Reply::ok(challenged(&ru, &challenge))
        } else {
            Reply::no_task()
        }
    });
    let key = dir.join("agent.key").display().to_string();
    let mut a = AgentProc::spawn(&s.args(&["--auth-key", &key, &tasks.url("/")]));
    let up = wait_for("the signed result", Duration::from_secs(20), || {
        results.requests().first().cloned()
    });
    let log = a.stop();

    // The task request names the key.
    let req = TaskRequestManifest::parse(tasks.requests()[0].body.as_bytes(), "request")
        .expect("task request");
    assert_eq!(
        req.fingerprint.as_deref(),
        Some(expected_fp.as_str()),
        "{log}"
    );

    // The result's challenge is the signature of the challenge's bytes.
    let rr = ResultRequestManifest::parse(up.body.as_bytes(), "upload").expect("result");
    let sig = base64::engine::general_purpose::STANDARD
        .decode(rr.challenge.as_deref().expect("a signed challenge"))
        .expect("base64 signature");
    std::fs::write(dir.join("sig"), &sig).expect("sig");
    std::fs::write(dir.join("challenge"), &raw).expect("challenge");
    let out = openssl(
        &[
            "pkeyutl",
            "-verify",
            "-pubin",
            "-inkey",
            "agent.pub",
            "-in",
            "challenge",
            "-sigfile",
            "sig",
        ],
        dir,
    );
    assert!(
        String::from_utf8_lossy(&out).contains("Signature Verified Successfully"),
        "{}",
        String::from_utf8_lossy(&out)
    );
    // And what rsautl -verify recovers is exactly the challenge.
    let recovered = openssl(
        &[
            "pkeyutl",
            "-verifyrecover",
            "-pubin",
            "-inkey",
            "agent.pub",
            "-in",
            "sig",
        ],
        dir,
    );
    assert_eq!(recovered, raw);
}

#[test]
fn an_unreadable_key_stops_the_agent_at_start() {
    let s = Scratch::new();
    let missing = s.path().join("no-such.key");
    let garbage = s.path().join("garbage.key");
    std::fs::write(
        &garbage,
        "-----BEGIN PRIVATE KEY-----\nnope\n-----END PRIVATE KEY-----\n",
    )
    .expect("garbage");
    for (path, why) in [
        (&missing, "No such file"),
        (&garbage, "not a PEM RSA private key"),
    ] {
        let p = path.display().to_string();
        let mut a = AgentProc::spawn(&s.args(&["--auth-key", &p, "http://127.0.0.1:9/"]));
        let st = a.wait(Duration::from_secs(10));
        let log = a.stderr();
        assert_ne!(st.code(), Some(0), "{log}");
        assert!(
            log.contains("--auth-key") && log.contains(&p) && log.contains(why),
            "{log}"
        );
    }
}
