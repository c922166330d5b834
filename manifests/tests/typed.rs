//! Typed bbot manifests: the sample files parse, every kind round-trips,
//! unknown fields survive in order, and bad content is reported at the
//! right spot.

use manifests::detect::Kind;
use manifests::*;
use std::path::Path;

fn data(name: &str) -> (Vec<u8>, String) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(name);
    (std::fs::read(&path).unwrap(), name.to_string())
}

fn round_trip<D: Document + PartialEq + std::fmt::Debug>(doc: &D) {
    let text = doc.to_text().unwrap();
    let back = D::parse(text.as_bytes(), "rt").unwrap_or_else(|e| panic!("{e}\n{text}"));
    assert_eq!(&back, doc);
    // Writing is canonical: a second pass gives the same bytes.
    assert_eq!(back.to_text().unwrap(), text);
}

fn load<D: Document + PartialEq + std::fmt::Debug>(name: &str) -> D {
    let (bytes, source) = data(name);
    let doc = D::parse(&bytes, &source).unwrap_or_else(|e| panic!("{e}"));
    round_trip(&doc);
    doc
}

#[test]
fn machine_sample() {
    let m: MachineManifest = load("machine.manifest");
    assert_eq!(m.header.name, "x86_64-debian_12-uboot");
    assert_eq!(m.header.role, Some(MachineRole::Build));
    assert_eq!(m.header.ram_minimum, Some(1048576));
    assert_eq!(m.machine_type, MachineType::Kvm);
    assert_eq!(m.mac, None);
    assert_eq!(
        m.option_args().unwrap(),
        [
            "-kernel",
            "vmlinuz",
            "-initrd",
            "initrd.img",
            "-append",
            "console=ttyS0 quiet"
        ]
    );
    assert_eq!(
        m.changes.as_deref(),
        Some("r1: first revision\n    (Debian 12 kernel, busybox initramfs)")
    );
}

#[test]
fn bootstrapped_machine_sample() {
    let b: BootstrappedMachineManifest = load("bootstrapped-machine.manifest");
    assert_eq!(b.machine.mac.unwrap().to_string(), "52:54:00:3a:9c:11");
    assert_eq!(b.toolchain.id, "uboot-toolchain-1");
    assert_eq!(b.bootstrap.version_of("worker-guest"), Some("0.1.0"));
    assert_eq!(b.bootstrap.version_of("bbot-agent"), Some("0.1.0"));
}

#[test]
fn task_sample() {
    let t: TaskManifest = load("task.manifest");
    assert_eq!(
        t.repository(),
        ("https://git.example.org/u-boot.git", Some("master"))
    );
    assert_eq!(t.commits.len(), 3);
    assert_eq!(
        t.boards,
        vec![
            Board {
                target: "sandbox".into(),
                arch: "sandbox".into()
            },
            Board {
                target: "qemu_arm64".into(),
                arch: "aarch64".into()
            },
            Board {
                target: "rpi_4".into(),
                arch: "aarch64".into()
            },
        ]
    );
    assert_eq!(
        t.build_settings[0],
        BuildSetting {
            key: "no_lto".into(),
            value: "true".into()
        }
    );
    assert_eq!(
        TaskManifest::operation_name(&t.boards[1], 2),
        "qemu_arm64@2"
    );
}

#[test]
fn result_sample() {
    let r: ResultManifest = load("result.manifest");
    assert_eq!(r.status, ResultStatus::Error);
    assert_eq!(r.worst_operation_status(), ResultStatus::Error);
    let names: Vec<_> = r.operations.iter().map(|o| o.name.as_str()).collect();
    assert_eq!(
        names,
        ["sandbox@0", "sandbox@1", "qemu_arm64@0", "qemu_arm64@1"]
    );
    assert!(r
        .operation("sandbox@0")
        .unwrap()
        .log
        .as_deref()
        .unwrap()
        .starts_with("sizes:\n"));
    assert_eq!(r.operation("qemu_arm64@0").unwrap().log, None);
}

#[test]
fn controller_exchange_samples() {
    let req: TaskRequestManifest = load("task-request.manifest");
    assert_eq!(req.machines.len(), 1);
    let resp: TaskResponseManifest = load("task-response.manifest");
    assert_eq!(resp.task.as_ref().unwrap().boards.len(), 1);
    let rr: ResultRequestManifest = load("result-request.manifest");
    assert_eq!(rr.result.status, ResultStatus::Success);
}

#[test]
fn detect_names_every_sample() {
    for (file, kind) in [
        ("machine.manifest", Kind::Machine),
        ("bootstrapped-machine.manifest", Kind::BootstrappedMachine),
        ("task.manifest", Kind::Task),
        ("result.manifest", Kind::Result),
        ("task-request.manifest", Kind::TaskRequest),
        ("task-response.manifest", Kind::TaskResponse),
        ("result-request.manifest", Kind::ResultRequest),
    ] {
        let (bytes, source) = data(file);
        let stream = parse_stream(&bytes, &source).unwrap();
        assert_eq!(Kind::detect(&stream), kind, "{file}");
        kind.normalize(&stream, &source).unwrap();
    }
}

#[test]
fn empty_session_response_round_trips() {
    let resp = TaskResponseManifest::no_task();
    assert_eq!(resp.to_text().unwrap(), ": 1\nsession:\n");
    round_trip(&resp);
}

#[test]
fn awkward_values_survive_every_kind() {
    let log = "  leading blanks\nwarning: # hash\ntrailing backslash \\\nnon-ASCII: Grüße 🚀\n"
        .repeat(3)
        + &"long ".repeat(100);
    let mut r = ResultManifest::new("u-boot", "1.0");
    r.push_operation(OperationResult {
        name: "sandbox@0".into(),
        status: ResultStatus::Success,
        log: Some(log.clone()),
    });
    r.push_operation(OperationResult {
        name: "rpi_4@0".into(),
        status: ResultStatus::Abort,
        log: Some(String::new()),
    });
    r.extra.push(("future-field".into(), " spaced ".into()));
    assert_eq!(r.status, ResultStatus::Abort);
    round_trip(&r);
    let rr = ResultRequestManifest {
        session: "s".into(),
        challenge: Some("c".into()),
        agent_checksum: None,
        result: r,
        extra: vec![],
    };
    round_trip(&rr);

    let (bytes, _) = data("task.manifest");
    let mut t = TaskManifest::parse(&bytes, "task").unwrap();
    t.environment = Some("CC=\"gcc -O2\"\nLANG=ü".into());
    t.auxiliary_machines = vec![
        ("".into(), "aux-a".into()),
        ("pgsql".into(), "aux-b".into()),
    ];
    t.warning_regex = vec!["^warning: ".into(), "\\bdeprecated\\b\\".into()];
    round_trip(&t);
    let resp = TaskResponseManifest {
        session: "abc".into(),
        challenge: None,
        result_url: Some("http://x/".into()),
        upload_urls: vec!["http://u/1".into(), "http://u/2".into()],
        agent_checksum: Some("1".into()),
        task: Some(t),
        extra: vec![("x-new".into(), "kept".into())],
    };
    round_trip(&resp);
}

#[test]
fn unknown_fields_are_kept_in_order() {
    let text =
        ": 1\nid: i\nzeta: last\nname: n\nalpha: first\nsummary: s\ntype: kvm\nalpha: again\n";
    let m = MachineManifest::parse(text.as_bytes(), "m").unwrap();
    assert_eq!(
        m.extra,
        vec![
            ("zeta".into(), "last".into()),
            ("alpha".into(), "first".into()),
            ("alpha".into(), "again".into())
        ]
    );
    let out = m.to_text().unwrap();
    assert!(
        out.ends_with("type: kvm\nzeta: last\nalpha: first\nalpha: again\n"),
        "{out}"
    );
}

#[test]
fn old_field_names_are_read() {
    let text =
        ": 1\nname: p\nversion: 1\nrepository: https://r\nmachine: m\ntarget: t\nconfig: c\n";
    let t = TaskManifest::parse(text.as_bytes(), "t").unwrap();
    assert_eq!(t.repository_url, "https://r");
    assert_eq!(t.target_config.as_deref(), Some("c"));
    assert!(t.to_text().unwrap().contains("repository-url: https://r\n"));
}

fn assert_invalid<D: Document + std::fmt::Debug>(text: &str, line: u64, column: u64, what: &str) {
    let e = D::parse(text.as_bytes(), "bad.manifest").expect_err("must fail");
    assert_eq!(
        (e.position().line, e.position().column),
        (line, column),
        "{e}"
    );
    assert!(e.message().contains(what), "{e}");
    assert!(
        e.to_string()
            .starts_with(&format!("bad.manifest:{line}:{column}: error:")),
        "{e}"
    );
}

#[test]
fn missing_required_fields() {
    assert_invalid::<TaskManifest>(
        ": 1\nname: p\nversion: 1\nrepository-url: r\ntarget: t\n",
        1,
        1,
        "missing required field 'machine' in task manifest",
    );
    assert_invalid::<ResultManifest>(
        ": 1\nname: p\nversion: 1\n",
        1,
        1,
        "missing required field 'status'",
    );
    assert_invalid::<MachineManifest>(
        ": 1\nid: i\nname: n\nsummary: s\n",
        1,
        1,
        "missing required field 'type'",
    );
    assert_invalid::<BootstrapManifest>(
        ": 1\nbbot-agent-version: 1\n",
        1,
        1,
        "worker-guest-version",
    );
    assert_invalid::<TaskResponseManifest>(
        ": 1\nresult-url: x\n",
        1,
        1,
        "missing required field 'session'",
    );
    assert_invalid::<TaskManifest>(
        ": 1\nname:\nversion: 1\n",
        2,
        6,
        "empty value for field 'name'",
    );
}

#[test]
fn bad_values() {
    assert_invalid::<ResultManifest>(
        ": 1\nname: p\nversion: 1\nstatus: fine\n",
        4,
        9,
        "invalid status 'fine'",
    );
    assert_invalid::<ResultManifest>(
        ": 1\nname: p\nversion: 1\nstatus: success\nb@0-status: ok\n",
        5,
        13,
        "invalid status 'ok'",
    );
    assert_invalid::<ResultManifest>(
        ": 1\nname: p\nversion: 1\nstatus: success\nb@0-log: x\n",
        5,
        10,
        "no matching 'b@0-status'",
    );
    assert_invalid::<MachineManifest>(
        ": 1\nid: i\nname: n\nsummary: s\ntype: kvm\nmac: 52:54:00:zz:00:01\n",
        6,
        6,
        "not a MAC address",
    );
    assert_invalid::<MachineManifest>(
        ": 1\nid: i\nname: n\nsummary: s\ntype: xen\n",
        5,
        7,
        "not a machine type",
    );
    assert_invalid::<MachineManifest>(
        ": 1\nid: i\nname: n\nsummary: s\nram-minimum: 0\ntype: kvm\n",
        5,
        14,
        "positive integer",
    );
    assert_invalid::<MachineManifest>(
        ": 1\nid: i\nname: n\nsummary: s\nram-maximum: -5\ntype: kvm\n",
        5,
        14,
        "positive integer",
    );
    assert_invalid::<MachineManifest>(
        ": 1\nid: i\nname: n\nsummary: s\ntype: kvm\noptions: -append \"x\n",
        6,
        10,
        "unbalanced quotes",
    );
    let task = ": 1\nname: p\nversion: 1\nrepository-url: r\nmachine: m\ntarget: t\n";
    assert_invalid::<TaskManifest>(&format!("{task}board: sandbox\n"), 7, 8, "not a board");
    assert_invalid::<TaskManifest>(
        &format!("{task}commit: xyz123\n"),
        7,
        9,
        "not a commit hash",
    );
    assert_invalid::<TaskManifest>(
        &format!("{task}build-setting: no lto\n"),
        7,
        16,
        "not a build setting",
    );
    assert_invalid::<TaskManifest>(
        &format!("{task}machine: other\n"),
        7,
        1,
        "duplicate field 'machine'",
    );
    assert_invalid::<TaskRequestManifest>(
        ": 1\nagent: a\ntoolchain-name: t\ntoolchain-version: 1\n",
        1,
        1,
        "offers no machines",
    );
}

#[test]
fn stream_shape_errors() {
    assert_invalid::<BootstrappedMachineManifest>(
        ": 1\nid: i\nname: n\nsummary: s\ntype: kvm\n:\nid: t\n",
        6,
        1,
        "needs 3 manifest(s), found 2",
    );
    assert_invalid::<TaskResponseManifest>(
        ": 1\nsession: abc\n",
        1,
        1,
        "has a session but no task",
    );
    assert_invalid::<TaskResponseManifest>(
        ": 1\nsession:\n:\nname: x\n",
        3,
        1,
        "must not carry a task",
    );
    assert_invalid::<ResultManifest>(
        ": 1\nname: p\nversion: 1\nstatus: skip\n:\nname: q\n",
        5,
        1,
        "unexpected manifest #2",
    );
}
