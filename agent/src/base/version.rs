//! The agent's own version and the bootstrap protocol, and how a bootstrapped
//! machine's recorded agent version compares with ours.
//!
//! Why: a machine bootstrapped by an older agent must be bootstrapped again (the
//! guest software may be stale), while one bootstrapped by a newer agent means a
//! newer agent shares this host and this one must keep its hands off.

use std::cmp::Ordering;

/// This agent's version, recorded in every bootstrap manifest it writes.
pub const AGENT_VERSION: &str = env!("CARGO_PKG_VERSION");

/// Version of the guest software (`worker-guest`) shipped with this agent: same
/// workspace, same version.
pub const WORKER_GUEST_VERSION: &str = env!("CARGO_PKG_VERSION");

/// Package name under which the agent records its version in the bootstrap
/// manifest (`bbot-agent-version: <version>`).
pub const AGENT_PACKAGE: &str = "bbot-agent";

/// Package name of the guest software in the bootstrap manifest
/// (`worker-guest-version: <version>`).
pub const WORKER_GUEST_PACKAGE: &str = "worker-guest";

/// Bootstrap protocol version `P`: the agent only uses machines published under
/// the `<name>-<P>` link, so an incompatible guest protocol is a new link name.
pub const BOOTSTRAP_PROTOCOL: u32 = 1;

/// How the agent that bootstrapped a machine relates to this agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BootstrappedBy {
    /// Same version: the bootstrap is usable.
    Same,
    /// Older agent (or no/unparsable version recorded): bootstrap again.
    Older,
    /// Newer agent: leave the machine alone this round.
    Newer,
}

/// Compares the version recorded in a bootstrap manifest with [`AGENT_VERSION`]
/// semver-style. A missing or unparsable version counts as older, so that the
/// machine gets bootstrapped again rather than used blindly.
pub fn bootstrapped_by(recorded: Option<&str>) -> BootstrappedBy {
    compare(recorded, AGENT_VERSION)
}

/// [`bootstrapped_by`] against an arbitrary agent version (for tests).
pub fn compare(recorded: Option<&str>, ours: &str) -> BootstrappedBy {
    let (Some(recorded), Ok(ours)) = (recorded, semver::Version::parse(ours)) else {
        return BootstrappedBy::Older;
    };
    match semver::Version::parse(recorded.trim()) {
        Ok(v) => match v.cmp(&ours) {
            Ordering::Less => BootstrappedBy::Older,
            Ordering::Equal => BootstrappedBy::Same,
            Ordering::Greater => BootstrappedBy::Newer,
        },
        Err(_) => BootstrappedBy::Older,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compares_semver() {
        assert_eq!(compare(Some("0.1.0"), "0.1.0"), BootstrappedBy::Same);
        assert_eq!(compare(Some("0.0.9"), "0.1.0"), BootstrappedBy::Older);
        assert_eq!(compare(Some("0.10.0"), "0.9.0"), BootstrappedBy::Newer);
        assert_eq!(compare(Some("0.1.0-a.1"), "0.1.0"), BootstrappedBy::Older);
        assert_eq!(compare(Some("junk"), "0.1.0"), BootstrappedBy::Older);
        assert_eq!(compare(None, "0.1.0"), BootstrappedBy::Older);
    }
}
