//! `bbot-agent`: the build host's agent. See ARCHITECTURE.md for the flow of a task.

use clap::Parser;

/// Command line of the agent; bbot's option names are kept so that admins' unit files carry over.
#[derive(Parser, Debug)]
#[command(name = "bbot-agent", version, about)]
struct Cli {}

fn main() {
    let _cli = Cli::parse();
}
