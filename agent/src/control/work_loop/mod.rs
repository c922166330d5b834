//! The agent's main loop: enumerate → deliver spooled results → ask
//! controllers → perform the task → upload the result → again; sleep about a
//! minute when nobody has work. Also the `--dump-*` and `--fake-request` exits.
//!
//! One instance runs one task at a time. Machines come with their locks
//! held (see `host::locks`): those offered are this instance's until the
//! task arrives; the task's machine stays locked until its snapshot is
//! deleted. An instance above `--instance-max` is a priority monitor
//! (`control::monitor`): it asks only controllers that outrank every
//! running task, and makes room by interrupting lower ones.
//!
//! Why a struct with explicit exits: every way out (a dump, a processed fake
//! request, a stop signal) is an [`Exit`] value the binary maps to a status, and
//! nothing in here calls `process::exit`.

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use manifests::{
    serialize_stream, Document, MachineHeader, ResultManifest, TaskManifest, TaskRequestManifest,
    TaskResponseManifest,
};

use crate::base::fsutil;
use crate::base::priority::Priority;
use crate::control::auth::AgentKey;
use crate::control::controller::{self, Client, Received};
use crate::control::controller_url::{polling_order, ControllerUrl};
use crate::control::inflight::InFlight;
use crate::control::monitor;
use crate::control::process::{ProcessEvents, StatusSink, Wake};
use crate::control::spool::Spool;
use crate::control::task::{self, RunAs, TaskConfig};
use crate::host::locks::{HoldFor, Holder};
use crate::host::machine_source::MachineSource;
use crate::host::machines::{BootstrappedMachine, HeldMachine, MachinesError};
use crate::vm::runner::{MachineRunner, TaskObserver};

mod delivery;

pub use delivery::answer_challenge;

/// The loop's settings, from the command line.
#[derive(Debug, Clone)]
pub struct LoopConfig {
    /// Controllers as given (ordered by priority, shuffled within one, at
    /// every poll).
    pub controllers: Vec<ControllerUrl>,
    /// `agent` field of task requests (host name).
    pub agent_name: String,
    /// `--toolchain-name`.
    pub toolchain_name: String,
    /// `--toolchain-ver` (or the agent's version).
    pub toolchain_version: String,
    /// How a task is performed.
    pub task: TaskConfig,
    /// Sleep when no controller has a task.
    pub idle_sleep: Duration,
    /// `--dump-machines`.
    pub dump_machines: bool,
    /// `--dump-task`.
    pub dump_task: bool,
    /// `--dump-result`.
    pub dump_result: bool,
    /// `--fake-request`.
    pub fake_request: Option<PathBuf>,
    /// `--auth-key`.
    pub auth: Option<std::sync::Arc<AgentKey>>,
    /// `--instance`.
    pub instance: u16,
    /// `--instance-max` (0: no limit, no monitors).
    pub instance_max: u16,
}

impl LoopConfig {
    /// Whether this instance is a priority monitor (section 4a).
    pub fn is_monitor(&self) -> bool {
        self.instance_max > 0 && self.instance > self.instance_max
    }
}

/// Pause before the next round when every machine was held by other
/// instances (they poll or build; one will let go soon), instead of the
/// idle sleep that means "no controller has work".
const BUSY_RETRY: Duration = Duration::from_secs(2);

/// How the loop ended (all of them are exit status 0).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// A `--dump-*` printed its manifest, or a `--fake-request` was processed.
    Done,
    /// SIGTERM/SIGINT.
    Stopped,
}

/// Errors that end the agent (everything else is logged and survived).
#[derive(Debug, thiserror::Error)]
pub enum LoopError {
    /// `--fake-request` cannot be read or parsed.
    #[error("--fake-request: {0}")]
    FakeRequest(String),
    /// The fake request's task is for a machine we do not have.
    #[error("task for machine '{0}' which this agent did not offer")]
    UnknownMachine(String),
    /// Writing a dump to stdout failed.
    #[error("cannot write to stdout: {0}")]
    Stdout(String),
    /// Enumeration cannot work at all.
    #[error(transparent)]
    Machines(#[from] MachinesError),
}

/// The agent's control plane, ready to run.
pub struct Agent<'a> {
    cfg: LoopConfig,
    machines: MachineSource<'a>,
    runner: &'a dyn MachineRunner,
    client: Client,
    spool: Option<Spool>,
    inflight: Option<InFlight>,
    signals: ProcessEvents,
    notifier: Box<dyn StatusSink + 'a>,
}

impl<'a> Agent<'a> {
    /// Puts the parts together. `spool` and `inflight` are `None` in the
    /// dump modes, which keep nothing.
    pub fn new(
        cfg: LoopConfig,
        machines: MachineSource<'a>,
        runner: &'a dyn MachineRunner,
        client: Client,
        (spool, inflight): (Option<Spool>, Option<InFlight>),
        signals: ProcessEvents,
        notifier: Box<dyn StatusSink + 'a>,
    ) -> Self {
        Self {
            cfg,
            machines,
            runner,
            client,
            spool,
            inflight,
            signals,
            notifier,
        }
    }

    /// Runs rounds until a stop signal or a one-shot mode is done.
    pub fn run(&mut self) -> Result<Exit, LoopError> {
        // Ready now, not after the first round: that round may bootstrap
        // machines for an hour, far beyond systemd's start timeout.
        self.notifier.ready();
        let stall = test_stall();
        let mut round = 0u64;
        loop {
            round += 1;
            if let Some((at, d)) = stall.filter(|(at, _)| *at == round) {
                // Test hook: a main thread stuck without polling anything.
                tracing::warn!("test hook: stalling round {at} for {d:?}");
                std::thread::sleep(d);
            }
            if self.signals.stop_requested() {
                return Ok(Exit::Stopped);
            }
            if self.signals.take_hangup() {
                tracing::info!("SIGHUP: re-reading machines and spool now");
                self.machines.reread();
            }
            self.notifier.status("enumerating machines");
            let running = self.machines.running_tasks();
            let round = match self.prepare_round(&running) {
                Ok(r) => r,
                Err(MachinesError::Interrupted) => return Ok(Exit::Stopped),
                Err(e @ MachinesError::Filesystem(_)) => return Err(e.into()),
                Err(e) => {
                    tracing::error!("{e}");
                    Round::default()
                }
            };
            if self.cfg.dump_machines {
                let headers: Vec<MachineHeader> =
                    round.offered.iter().map(|m| m.header().clone()).collect();
                print_stream(headers.iter().flat_map(|h| h.to_stream()).collect())?;
                return Ok(Exit::Done);
            }
            self.deliver_spooled();
            if self.signals.stop_requested() {
                return Ok(Exit::Stopped);
            }
            let received = match &self.cfg.fake_request {
                Some(p) => self.fake_request(p.clone(), &round.offered)?,
                None => self.poll(&round),
            };
            let Some(received) = received else {
                if self.cfg.fake_request.is_some() {
                    return Ok(Exit::Done);
                }
                // Busy machines come free within seconds; an empty answer
                // from every controller means a minute's sleep.
                let busy = round.offered.is_empty() && round.held_elsewhere;
                drop(round);
                let (status, pause) = if busy {
                    ("machines busy in other instances", BUSY_RETRY)
                } else {
                    ("idle: no task, sleeping", self.cfg.idle_sleep)
                };
                self.notifier.status(status);
                match self.signals.sleep(pause) {
                    Wake::Stop => return Ok(Exit::Stopped),
                    Wake::Hangup | Wake::Timeout => continue,
                }
            };
            if self.cfg.dump_task {
                print_stream(received.task.to_stream())?;
                return Ok(Exit::Done);
            }
            // Recorded until its result is spooled, so that a dead agent's
            // task still gets a result at the next start.
            let record = match (&self.inflight, &received.response.result_url) {
                (Some(f), Some(_)) => f
                    .record(&received.response)
                    .map_err(|e| tracing::error!("cannot record the task in flight: {e}"))
                    .ok(),
                _ => None,
            };
            // The other machines' locks go now; the task's after its
            // snapshot is deleted, before the upload.
            let machine = self.claim(&received, round, &running);
            let result = self.perform(&received, machine);
            if self.cfg.dump_result {
                print_stream(result.to_stream())?;
                return Ok(Exit::Done);
            }
            self.upload(&received, result);
            if let (Some(f), Some(r)) = (&self.inflight, record) {
                f.done(r);
            }
            if self.cfg.fake_request.is_some() {
                return Ok(Exit::Done);
            }
        }
    }

    /// What this round offers, and to whom. A regular instance offers the
    /// machines it could lock and skips controllers whose `B` digit is
    /// below a running task's. A monitor asks only controllers that
    /// outrank every running task (with a `C` or `D` digit), and offers
    /// free machines plus those whose task such a controller may interrupt.
    fn prepare_round(&self, running: &[HeldMachine]) -> Result<Round, MachinesError> {
        if !self.cfg.is_monitor() || self.cfg.dump_machines {
            let offered = self.machines.offered()?;
            let top_b = running
                .iter()
                .map(|h| h.holder.priority.b())
                .max()
                .unwrap_or(0);
            let controllers = self
                .cfg
                .controllers
                .iter()
                .filter(|c| c.priority.b() >= top_b)
                .cloned()
                .collect();
            return Ok(Round {
                held_elsewhere: offered.is_empty() && self.machines.any_held(),
                offered,
                takeable: Vec::new(),
                controllers,
            });
        }
        let Some(top) = running.iter().map(|h| h.holder.priority).max() else {
            // Nothing runs: the regular instances take the work.
            return Ok(Round::default());
        };
        let controllers: Vec<ControllerUrl> = self
            .cfg
            .controllers
            .iter()
            .filter(|c| c.priority > top && c.priority.interrupts())
            .cloned()
            .collect();
        let Some(best) = controllers.iter().map(|c| c.priority).max() else {
            return Ok(Round::default());
        };
        let takeable = running
            .iter()
            .filter(|h| !h.holder.suspended && best.may_interrupt(h.holder.priority))
            .cloned()
            .collect();
        Ok(Round {
            offered: self.machines.offered()?,
            takeable,
            controllers,
            held_elsewhere: false,
        })
    }

    /// The machine the task runs on, locked: one this instance offered
    /// (the others' locks are released), or, for a monitor, one taken over
    /// from its victims. Victims are interrupted first (section 4a).
    fn claim(
        &self,
        received: &Received,
        round: Round,
        running: &[HeldMachine],
    ) -> Option<BootstrappedMachine> {
        let name = &received.task.machine;
        let own = round.offered.into_iter().find(|m| &m.header().name == name);
        if !self.cfg.is_monitor() || self.cfg.fake_request.is_some() {
            return own;
        }
        let victims = monitor::victims(received.priority, name, running, self.cfg.instance_max);
        for v in &victims {
            monitor::interrupt(&v.holder, &v.machine.header().name);
        }
        if own.is_some() {
            return own;
        }
        let held = round
            .takeable
            .iter()
            .find(|h| &h.machine.header().name == name)?;
        self.notifier
            .status(&format!("waiting for {name} to be let go by its task"));
        monitor::take_over(held, &self.signals.stop_token())
    }

    fn poll(&self, round: &Round) -> Option<Received> {
        if round.controllers.is_empty() {
            return None;
        }
        let offered: Vec<&BootstrappedMachine> = round
            .offered
            .iter()
            .chain(round.takeable.iter().map(|h| &h.machine))
            .collect();
        if offered.is_empty() {
            if !round.held_elsewhere {
                tracing::warn!("no machines to offer; not asking controllers");
            }
            return None;
        }
        self.notifier.status("asking controllers for a task");
        let req = TaskRequestManifest {
            agent: self.cfg.agent_name.clone(),
            toolchain_name: self.cfg.toolchain_name.clone(),
            toolchain_version: self.cfg.toolchain_version.clone(),
            interactive_mode: None,
            interactive_login: None,
            fingerprint: self.cfg.auth.as_ref().map(|k| k.fingerprint().to_string()),
            auxiliary_ram: None,
            machines: offered.iter().map(|m| m.header().clone()).collect(),
            extra: Vec::new(),
        };
        controller::poll(
            &self.client,
            &polling_order(&round.controllers),
            &req,
            &self.signals.stop_token(),
        )
    }

    /// Reads `--fake-request`: a task response manifest, or a bare task.
    fn fake_request(
        &self,
        path: PathBuf,
        offered: &[BootstrappedMachine],
    ) -> Result<Option<Received>, LoopError> {
        let bytes = fsutil::read_file_or_stdin(&path)
            .map_err(|e| LoopError::FakeRequest(format!("{}: {e}", path.display())))?;
        let src = fsutil::source_name(&path);
        let response = match TaskResponseManifest::parse(&bytes, &src) {
            Ok(r) => r,
            Err(response_err) => match TaskManifest::parse(&bytes, &src) {
                Ok(t) => TaskResponseManifest {
                    session: "fake".into(),
                    challenge: None,
                    result_url: None,
                    upload_urls: Vec::new(),
                    agent_checksum: None,
                    task: Some(t),
                    extra: Vec::new(),
                },
                Err(task_err) => {
                    return Err(LoopError::FakeRequest(format!(
                        "neither a task response ({response_err}) nor a task ({task_err})"
                    )))
                }
            },
        };
        let Some(task) = response.task.clone() else {
            return Ok(None);
        };
        if !offered.iter().any(|m| m.header().name == task.machine) {
            return Err(LoopError::UnknownMachine(task.machine));
        }
        Ok(Some(Received {
            controller: src,
            priority: Priority(0),
            boost: false,
            response,
            task,
        }))
    }

    /// Runs the task on its machine, recording it in the machine lock
    /// (what a monitor reads), and releases the lock when done.
    fn perform(&self, received: &Received, machine: Option<BootstrappedMachine>) -> ResultManifest {
        let mut t = received.task.clone();
        task::apply_trust(&mut t, &self.cfg.task.trust);
        let Some(machine) = machine else {
            // poll() only returns tasks for offered machines; a monitor
            // whose victim did not let go ends here.
            tracing::error!(
                "task {} {}: its machine {} is not available",
                t.name,
                t.version,
                t.machine
            );
            return task::status_result(&t, manifests::ResultStatus::Interrupt);
        };
        self.notifier.status(&format!(
            "building {} {} on {}",
            t.name, t.version, t.machine
        ));
        // In this order: an interrupt that comes once the record names
        // this task is never forgotten.
        self.signals.begin_task();
        let holder = Holder::me(self.cfg.instance, HoldFor::Task, received.priority);
        machine.record(&holder);
        let observer = LockRecord {
            machine: &machine,
            holder,
        };
        let how = RunAs {
            boost: received.boost,
            observer: &observer,
        };
        let r = task::perform(
            &t,
            &machine,
            self.runner,
            &self.cfg.task,
            &how,
            &self.signals.task_token(),
        );
        drop(machine);
        if self.signals.task_interrupted() {
            tracing::warn!(
                "task {} {} interrupted by a higher-priority task",
                t.name,
                t.version
            );
        }
        tracing::info!("task {} {}: {}", t.name, t.version, r.status.as_str());
        r
    }
}

/// `BBOT_AGENT_TEST_STALL=<round>:<seconds>`: the main thread blocks for
/// that long at the start of that round, polling nothing (the watchdog
/// test's stuck agent).
fn test_stall() -> Option<(u64, Duration)> {
    let v = std::env::var("BBOT_AGENT_TEST_STALL").ok()?;
    let (round, secs) = v.split_once(':')?;
    Some((round.parse().ok()?, Duration::from_secs(secs.parse().ok()?)))
}

/// Prints manifests to stdout as one stream (the `--dump-*` options).
fn print_stream(ms: Vec<manifests::Manifest>) -> Result<(), LoopError> {
    let text = serialize_stream(&ms).map_err(|e| LoopError::Stdout(e.to_string()))?;
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())
        .and_then(|()| out.flush())
        .map_err(|e| LoopError::Stdout(e.to_string()))
}

/// One round's offer: machines this instance locked, machines a monitor
/// may take over, and the controllers to ask.
#[derive(Default)]
struct Round {
    offered: Vec<BootstrappedMachine>,
    takeable: Vec<HeldMachine>,
    controllers: Vec<ControllerUrl>,
    /// Nothing was offered because other instances hold every machine.
    held_elsewhere: bool,
}

/// Marks the machine lock's record suspended when the VM is (a suspended
/// machine is never a victim).
struct LockRecord<'m> {
    machine: &'m BootstrappedMachine,
    holder: Holder,
}

impl TaskObserver for LockRecord<'_> {
    fn suspended(&self) {
        let mut h = self.holder;
        h.suspended = true;
        self.machine.record(&h);
    }
}
