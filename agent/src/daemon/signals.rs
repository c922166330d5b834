//! Signal handling with `signal-hook`: SIGTERM/SIGINT request a clean stop,
//! SIGHUP asks for a re-read of what can be re-read, SIGUSR1 (from a priority
//! monitor) interrupts the running task.
//!
//! Why flags: the handlers only set atomics; the work loop and the task runner
//! look at them at safe points (between rounds, while waiting for a guest), so a
//! stop never leaves a half-made subvolume behind. A second SIGINT while the
//! first is being handled exits at once, as an escape hatch at a terminal; a
//! second SIGTERM does not cut the clean-up short.

use std::io;

use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM, SIGUSR1};

use crate::control::process::ProcessEvents;

/// Exit status used when a second termination signal forces an immediate exit
/// (128 + SIGINT, as a shell would report it).
const FORCED_EXIT_STATUS: i32 = 128 + 2;

/// Registers the handlers for SIGTERM, SIGINT, SIGHUP and SIGUSR1 on a
/// fresh set of [`ProcessEvents`] flags.
pub fn install() -> io::Result<ProcessEvents> {
    let s = ProcessEvents::new();
    // A second SIGINT (an impatient ^C at a terminal) exits at once;
    // QEMU dies with the agent and the next start removes the rest.
    // Order matters: the conditional exit must be registered before the
    // flag is set, so that only a *second* signal exits at once.
    signal_hook::flag::register_conditional_shutdown(
        SIGINT,
        FORCED_EXIT_STATUS,
        s.stop_token().flag(),
    )?;
    // A second SIGTERM (systemd, a script repeating itself) changes
    // nothing: the stop goes on cleaning up its VMs. Only SIGKILL skips
    // that.
    for sig in [SIGTERM, SIGINT] {
        signal_hook::flag::register(sig, s.stop_token().flag())?;
        signal_hook::flag::register(sig, s.task_token().flag())?;
    }
    signal_hook::flag::register(SIGHUP, s.hangup_flag())?;
    // A priority monitor interrupts this instance's task (section 4a).
    signal_hook::flag::register(SIGUSR1, s.task_token().flag())?;
    Ok(s)
}
