//! `bbot-controller`: thin binary over the library; errors are reported
//! here, once, with their chain.

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Parser;

use bbot_controller::cli::{Cli, Command, ControllerArgs, StatusArgs, SubmitArgs, WaitArgs};
use bbot_controller::client::Client;
use bbot_controller::jobs::JobRequest;
use bbot_controller::views::JobState;
use bbot_controller::{logging, serve, table};

fn main() {
    let cli = Cli::parse();
    let result = match &cli.command {
        Command::Serve(args) => {
            logging::init(&args.log, args.log_json);
            serve::serve(args).context("bbot-controller serve")
        }
        Command::Submit(args) => submit(args),
        Command::Status(args) => status(args),
    };
    if let Err(e) = result {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn client(args: &ControllerArgs) -> Result<Client> {
    let token = args
        .token_file
        .as_ref()
        .map(|p| {
            std::fs::read_to_string(p)
                .map(|t| t.trim().to_string())
                .with_context(|| format!("--token-file {}", p.display()))
        })
        .transpose()?;
    Ok(Client::new(&args.controller, token)?)
}

/// Polls until job `id` is finished, then prints its table.
fn wait_and_print(client: &Client, id: i64, wait: &WaitArgs) -> Result<()> {
    let start = Instant::now();
    loop {
        let job = client.job(id)?;
        if job.state == JobState::Finished || !wait.wait {
            print!("{}", table::render(&job));
            return Ok(());
        }
        if wait.timeout > 0 && start.elapsed() > Duration::from_secs(wait.timeout) {
            print!("{}", table::render(&job));
            bail!("job {id} not finished after {} s", wait.timeout);
        }
        std::thread::sleep(Duration::from_secs_f64(wait.poll.clamp(0.1, 3600.0)));
    }
}

fn submit(args: &SubmitArgs) -> Result<()> {
    let c = client(&args.controller)?;
    let request = JobRequest {
        repository: args.repository.clone(),
        reference: args.reference.clone(),
        commits: args.commits.clone(),
        boards: args.boards.clone(),
        build_settings: args.settings.clone(),
        machine: args.machine.clone(),
        name: args.name.clone(),
        version: args.version.clone(),
        target: args.target.clone(),
        boards_per_task: args.boards_per_task,
        max_attempts: args.max_attempts,
    };
    let s = c.submit(&request)?;
    println!("{}", s.id);
    eprintln!(
        "job {} submitted: {} task(s), {} cell(s): {}",
        s.id, s.tasks, s.cells, s.url
    );
    if args.wait.wait {
        wait_and_print(&c, s.id, &args.wait)?;
    }
    Ok(())
}

fn status(args: &StatusArgs) -> Result<()> {
    let c = client(&args.controller)?;
    match args.job {
        Some(id) => wait_and_print(&c, id, &args.wait),
        None => {
            for j in c.jobs()? {
                let pending = j.counts.get("pending").copied().unwrap_or(0);
                let total = j.boards * j.columns;
                println!(
                    "{:>5}  {:<8}  {}/{} cells  {}{}",
                    j.id,
                    j.state.as_str(),
                    total - pending,
                    total,
                    j.repository,
                    j.reference.map(|r| format!("#{r}")).unwrap_or_default()
                );
            }
            Ok(())
        }
    }
}
