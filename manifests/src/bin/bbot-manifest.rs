//! `bbot-manifest`: checks manifest files by hand and prints them back
//! normalized, so an admin can validate a machine manifest or a task before
//! the agent ever sees it.

use anyhow::{Context, Result};
use clap::Parser;
use manifests::detect::Kind;
use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;

/// Check bbot manifest files and print them in canonical form.
#[derive(Parser, Debug)]
#[command(name = "bbot-manifest", version, about, long_about = None)]
struct Cli {
    /// Manifest kind; guessed from the fields when not given.
    #[arg(short, long, value_parser = parse_kind)]
    kind: Option<Kind>,
    /// Only check; print nothing on success.
    #[arg(short, long)]
    quiet: bool,
    /// For a result (or result request): print a board × commit table
    /// instead of the manifest.
    #[arg(short, long)]
    summary: bool,
    /// Files to check (`-` for standard input).
    #[arg(required = true)]
    files: Vec<PathBuf>,
}

fn parse_kind(s: &str) -> Result<Kind, String> {
    s.parse()
}

fn read_input(path: &PathBuf) -> Result<(Vec<u8>, String)> {
    if path.as_os_str() == "-" {
        let mut buf = Vec::new();
        std::io::stdin()
            .read_to_end(&mut buf)
            .context("cannot read standard input")?;
        return Ok((buf, "<stdin>".to_string()));
    }
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    Ok((bytes, path.display().to_string()))
}

fn check(cli: &Cli, path: &PathBuf) -> Result<()> {
    let (bytes, source) = read_input(path)?;
    let stream = manifests::parse_stream(&bytes, &source)?;
    let kind = cli.kind.unwrap_or_else(|| Kind::detect(&stream));
    let text = kind.normalize(&stream, &source)?;
    if cli.summary {
        use manifests::Document;
        let result = match kind {
            Kind::Result => manifests::ResultManifest::from_stream(&stream, &source)?,
            Kind::ResultRequest => {
                manifests::ResultRequestManifest::from_stream(&stream, &source)?.result
            }
            other => anyhow::bail!("{source}: --summary needs a result, this is a {other}"),
        };
        print!("{}", manifests::summary::board_summary(&result));
        return Ok(());
    }
    if cli.quiet {
        eprintln!("{source}: ok ({kind})");
    } else {
        let mut out = std::io::stdout().lock();
        if cli.files.len() > 1 {
            writeln!(out, "# {source} ({kind})")?;
        }
        out.write_all(text.as_bytes())?;
    }
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let mut failed = false;
    for path in &cli.files {
        if let Err(e) = check(&cli, path) {
            eprintln!("{e:#}");
            failed = true;
        }
    }
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
