//! Controller URLs with bbot's `[F]DCBA=` priority prefix, and what the
//! priority means (PROTOCOLS.md section 4a): the order controllers are
//! asked in, which tasks may interrupt which, and the boost flag.
//!
//! Why one module: the work loop, the priority monitor and the lock
//! records all compare priorities, and must agree on what a digit means.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::str::FromStr;

pub use crate::base::priority::Priority;

/// A controller URL with bbot's optional `[F]DCBA=` priority prefix.
///
/// Why: bbot lets an admin poll several controllers with different priorities
/// (`100=https://ci.example.org/?build-task`); higher priority is asked
/// first, and the C and D digits let a task interrupt lower ones.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ControllerUrl {
    /// The `DCBA` part; 0 when no prefix was given.
    pub priority: Priority,
    /// The `F` digit when the prefix had five digits (1: boost).
    pub flags: u8,
    /// The URL proper.
    pub url: String,
}

/// A controller URL argument that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ControllerUrlError {
    /// Not an http(s) URL.
    #[error("invalid controller url '{0}': {1}")]
    Invalid(String, String),
}

impl FromStr for ControllerUrl {
    type Err = ControllerUrlError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (mut priority, mut flags, mut url) = (Priority(0), 0u8, s);
        if let Some((p, rest)) = s.split_once('=') {
            if !p.is_empty() && p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit()) {
                let (f, dcba) = if p.len() == 5 {
                    p.split_at(1)
                } else {
                    ("0", p)
                };
                flags = f.parse().unwrap_or(0);
                priority = Priority(dcba.parse().unwrap_or(0));
                url = rest;
            }
        }
        crate::control::controller::http_url(url)
            .map_err(|e| ControllerUrlError::Invalid(s.to_string(), e))?;
        Ok(Self {
            priority,
            flags,
            url: url.to_string(),
        })
    }
}

impl ControllerUrl {
    /// Whether the `F` digit asks for a boost: the task's VM gets every
    /// hardware thread of the host instead of `--cpu`.
    pub fn boost(&self) -> bool {
        self.flags == 1
    }
}

/// Orders controllers the way they are polled: higher priority first, and
/// in random order within a priority, as bbot does (so that one busy
/// controller listed first cannot starve its equals).
pub fn polling_order(urls: &[ControllerUrl]) -> Vec<ControllerUrl> {
    let mut keyed: Vec<(Priority, u64, ControllerUrl)> = urls
        .iter()
        .map(|c| (c.priority, random_u64(), c.clone()))
        .collect();
    keyed.sort_by_key(|(p, r, _)| (std::cmp::Reverse(*p), *r));
    keyed.into_iter().map(|(_, _, c)| c).collect()
}

/// A random number from the standard library's per-process random hash
/// keys (enough to shuffle; no cryptography depends on it).
fn random_u64() -> u64 {
    let mut h = RandomState::new().build_hasher();
    h.write_u64(0);
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn priority_prefix() {
        let u: ControllerUrl = "100=http://a/x?y=1".parse().unwrap();
        assert_eq!(
            (u.priority, u.flags, u.url.as_str()),
            (Priority(100), 0, "http://a/x?y=1")
        );
        assert_eq!((u.priority.c(), u.priority.d(), u.boost()), (1, 0, false));
        let u: ControllerUrl = "11234=https://b/".parse().unwrap();
        assert_eq!((u.priority, u.flags, u.boost()), (Priority(1234), 1, true));
        let u: ControllerUrl = "http://c/?a=b".parse().unwrap();
        assert_eq!((u.priority, u.url.as_str()), (Priority(0), "http://c/?a=b"));
        assert!("ftp://x/".parse::<ControllerUrl>().is_err());
        assert!("nonsense".parse::<ControllerUrl>().is_err());
        let order = polling_order(&[
            "1=http://a/".parse().unwrap(),
            "http://b/".parse().unwrap(),
            "2=http://c/".parse().unwrap(),
            "1=http://d/".parse().unwrap(),
        ]);
        let urls: Vec<_> = order.iter().map(|u| u.url.as_str()).collect();
        assert_eq!(urls[0], "http://c/");
        assert_eq!(urls[3], "http://b/");
        let mut equal = vec![urls[1], urls[2]];
        equal.sort();
        assert_eq!(equal, ["http://a/", "http://d/"]);
    }

    #[test]
    fn equal_priorities_are_asked_in_random_order() {
        let urls: Vec<ControllerUrl> = (0..4)
            .map(|i| format!("http://c{i}/").parse().unwrap())
            .collect();
        let firsts: std::collections::HashSet<String> = (0..200)
            .map(|_| polling_order(&urls)[0].url.clone())
            .collect();
        assert!(firsts.len() > 1, "always the same first: {firsts:?}");
    }

    #[test]
    fn which_priority_interrupts_which() {
        let p = |n| Priority(n);
        assert!(p(100).may_interrupt(p(0)));
        assert!(p(100).may_interrupt(p(99)));
        assert!(!p(100).may_interrupt(p(100)));
        assert!(!p(100).may_interrupt(p(1000)));
        assert!(p(1000).may_interrupt(p(900)));
        assert!(!p(1000).may_interrupt(p(1000)));
        assert!(p(2000).may_interrupt(p(1100)));
        assert!(!p(10).interrupts() && p(100).interrupts() && p(1000).interrupts());
    }
}
