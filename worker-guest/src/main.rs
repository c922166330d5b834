//! `worker-guest`: runs inside the build VM. See ARCHITECTURE.md.

use clap::Parser;

/// Command line of the guest side.
#[derive(Parser, Debug)]
#[command(name = "worker-guest", version, about)]
struct Cli {}

fn main() {
    let _cli = Cli::parse();
}
