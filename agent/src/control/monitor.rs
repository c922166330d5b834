//! Priority interruption (PROTOCOLS.md section 4a): which running tasks a
//! higher-priority task may interrupt, telling their instances, and taking
//! over a machine once its victim let go.
//!
//! Why signals and locks: the instances are separate processes that share
//! nothing but the machines directory. A machine lock's record says who
//! runs what at which priority; the victim's process gets SIGUSR1, forces
//! its VM down, deletes its snapshot, releases the lock and reports
//! `interrupt` to its controller; the monitor waits for that lock.

use std::time::Duration;

use crate::base::cancel::Cancel;
use crate::base::fsutil;
use crate::base::priority::Priority;
use crate::host::locks::{Holder, LockFile};
use crate::host::machines::{BootstrappedMachine, HeldMachine};

/// How long a monitor waits for a victim to let go of the machine it
/// needs (its VM is forced down and its snapshot deleted meanwhile).
pub const TAKE_OVER_LIMIT: Duration = Duration::from_secs(120);

/// Which running tasks a task of priority `task` interrupts
/// (`running` are the other instances' tasks):
/// - never a suspended VM, never a task `task` may not interrupt;
/// - a `D`-level task: every lower-`D` task, and the machine's holder;
/// - a `C`-level task: the holder of the machine it needs; on a free
///   machine, when `instance_max` tasks already run, the one of lowest
///   priority;
/// - anything else: none.
pub fn victims<'h>(
    task: Priority,
    machine: &str,
    running: &'h [HeldMachine],
    instance_max: u16,
) -> Vec<&'h HeldMachine> {
    let eligible = |h: &&HeldMachine| !h.holder.suspended && task.may_interrupt(h.holder.priority);
    let holder = running.iter().find(|h| h.machine.header().name == machine);
    if !task.interrupts() {
        return Vec::new();
    }
    if task.d() > 0 {
        return running
            .iter()
            .filter(eligible)
            .filter(|h| h.holder.priority.d() < task.d() || h.machine.header().name == machine)
            .collect();
    }
    if let Some(h) = holder {
        return std::iter::once(h).filter(eligible).collect();
    }
    if running.len() < usize::from(instance_max) {
        return Vec::new();
    }
    running
        .iter()
        .filter(eligible)
        .min_by_key(|h| h.holder.priority)
        .into_iter()
        .collect()
}

/// Asks a victim's instance to interrupt its task (SIGUSR1), if the
/// recorded pid is still a `bbot-agent` (never a recycled pid's process).
///
/// The signal goes to the process, not to the task: should the victim
/// finish the task it was picked for and begin another between the
/// record's reading and the signal (microseconds), that next task is the
/// one interrupted, reported `interrupt` and handed out again by its
/// controller. No result is lost; one build is repeated.
pub fn interrupt(victim: &Holder, machine: &str) -> bool {
    if !fsutil::process_alive(victim.pid, "bbot-agent") {
        tracing::warn!(
            "victim on {machine} (instance {}, pid {}) is gone",
            victim.instance,
            victim.pid
        );
        return false;
    }
    let Ok(pid) = i32::try_from(victim.pid) else {
        return false;
    };
    // SAFETY: kill(2) with a checked pid and a signal number; no memory
    // is involved.
    let r = unsafe { libc::kill(pid, libc::SIGUSR1) };
    if r == 0 {
        tracing::warn!(
            "interrupting the task of priority {} on {machine} (instance {}, pid {})",
            victim.priority,
            victim.instance,
            victim.pid
        );
        true
    } else {
        tracing::error!(
            "cannot signal instance {} (pid {}): {}",
            victim.instance,
            victim.pid,
            std::io::Error::last_os_error()
        );
        false
    }
}

/// Waits for the machine a victim held and returns it with its lock, or
/// `None` when the victim did not let go within [`TAKE_OVER_LIMIT`] (or a
/// stop came).
pub fn take_over(held: &HeldMachine, cancel: &Cancel) -> Option<BootstrappedMachine> {
    match LockFile::acquire_within(&held.lock_path, TAKE_OVER_LIMIT, cancel) {
        Ok(Some(lock)) => {
            let mut m = held.machine.clone();
            m.lock = Some(std::sync::Arc::new(lock));
            Some(m)
        }
        Ok(None) => {
            tracing::error!(
                "machine {} still held after {TAKE_OVER_LIMIT:?}; giving up",
                held.machine.header().name
            );
            None
        }
        Err(e) => {
            tracing::warn!("{e}");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::locks::HoldFor;
    use crate::host::machine_source::fake_machine;

    fn held(name: &str, priority: u32, suspended: bool) -> HeldMachine {
        use manifests::Document;
        let text = format!(": 1\nid: {name}-id\nname: {name}\nsummary: s\n");
        let header = manifests::MachineHeader::parse(text.as_bytes(), "test").unwrap();
        HeldMachine {
            machine: fake_machine(header, std::path::Path::new("/m"), "tc"),
            lock_path: format!("/m/{name}.lock").into(),
            holder: Holder {
                instance: 1,
                pid: 1,
                hold: HoldFor::Task,
                priority: Priority(priority),
                suspended,
            },
        }
    }

    fn names(v: Vec<&HeldMachine>) -> Vec<String> {
        v.iter().map(|h| h.machine.header().name.clone()).collect()
    }

    #[test]
    fn who_is_interrupted() {
        let running = [
            held("a", 0, false),
            held("b", 10, false),
            held("c", 0, true),
        ];
        // Only preference: nobody.
        assert!(victims(Priority(20), "a", &running, 3).is_empty());
        // C on a busy machine: its holder.
        assert_eq!(names(victims(Priority(100), "b", &running, 3)), ["b"]);
        // C on a free machine with room: nobody; without room: the lowest.
        assert!(victims(Priority(100), "z", &running, 4).is_empty());
        assert_eq!(names(victims(Priority(100), "z", &running, 3)), ["a"]);
        // A suspended VM is never a victim.
        assert!(victims(Priority(100), "c", &running, 3).is_empty());
        // D: every lower-D task that is not suspended.
        assert_eq!(names(victims(Priority(1000), "z", &running, 9)), ["a", "b"]);
        // Not a lower priority: not a victim.
        let high = [held("h", 100, false)];
        assert!(victims(Priority(100), "h", &high, 1).is_empty());
    }
}
