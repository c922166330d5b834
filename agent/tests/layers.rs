//! The agent's layers call only downward (ARCHITECTURE.md): daemon →
//! control → host → vm → base. Every `crate::<layer>::` path in a module is
//! checked against the module's own layer, so an upward import fails here
//! rather than in review.

use std::path::Path;

/// Layers from the top; a module may use its own layer and those after it.
const ORDER: [&str; 5] = ["daemon", "control", "host", "vm", "base"];

fn rank(layer: &str) -> Option<usize> {
    ORDER.iter().position(|l| *l == layer)
}

fn rust_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for e in std::fs::read_dir(dir).expect("read src").flatten() {
        let p = e.path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// The layers a text names as `crate::<layer>::`.
fn used_layers(text: &str) -> Vec<(usize, &str)> {
    let mut v = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let mut rest = line;
        while let Some(i) = rest.find("crate::") {
            rest = &rest[i + "crate::".len()..];
            let name: &str = rest
                .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .next()
                .unwrap_or("");
            if rank(name).is_some() {
                v.push((n + 1, name));
            }
        }
    }
    v
}

#[test]
fn no_module_imports_from_a_layer_above_it() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut checked = 0;
    let mut upward = Vec::new();
    for f in &files {
        let rel = f.strip_prefix(&src).expect("under src");
        let Some(own) = rel
            .components()
            .next()
            .and_then(|c| c.as_os_str().to_str())
            .and_then(rank)
        else {
            continue; // lib.rs and main.rs wire everything
        };
        checked += 1;
        let text = std::fs::read_to_string(f).expect("read");
        for (line, used) in used_layers(&text) {
            if rank(used).is_some_and(|r| r < own) {
                upward.push(format!("{}:{line}: uses crate::{used}", rel.display()));
            }
        }
    }
    assert!(
        checked > 30,
        "only {checked} modules found under {}",
        src.display()
    );
    assert!(
        upward.is_empty(),
        "imports from a layer above:\n{}",
        upward.join("\n")
    );
}

#[test]
fn the_check_sees_an_upward_import() {
    assert_eq!(
        used_layers("use crate::control::task;\n// crate::nothing\nx(crate::vm::fake::f)"),
        [(1, "control"), (3, "vm")]
    );
}
