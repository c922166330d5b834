//! Writes the test fixture firmware repository (the one worker-guest's own
//! tests build: five boards on two architectures, four commits, one board
//! broken at commit 2; see `tests/common/fixture.rs`) into a directory, so
//! the end-to-end VM test and the main job build the very same tree.
//!
//! Usage: `cargo run -p worker-guest --example make-fixture -- DIR`
//!
//! Prints the repository's absolute path on the first line, then a line
//! `commits:`, then the commit hashes, one per line, oldest first. The
//! commits are on branch `master`.

use std::path::PathBuf;

use anyhow::{bail, Context};

#[path = "../tests/common/fixture.rs"]
mod fixture;

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args_os().skip(1);
    let (Some(dir), None) = (args.next(), args.next()) else {
        bail!("usage: make-fixture DIR (DIR must not exist or be empty)");
    };
    let dir = PathBuf::from(dir);
    // The generator commits on top of whatever is there: start clean.
    if let Ok(mut entries) = std::fs::read_dir(&dir) {
        if entries.next().is_some() {
            bail!("{} is not empty", dir.display());
        }
    }
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let dir =
        std::fs::canonicalize(&dir).with_context(|| format!("resolving {}", dir.display()))?;
    let fx = fixture::Fixture::create(&dir);
    println!("{}", fx.dir.display());
    println!("commits:");
    for c in &fx.commits {
        println!("{c}");
    }
    Ok(())
}
