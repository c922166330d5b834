//! Result status values and how they merge.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// Outcome of an operation or a whole task, in merge order: a later
/// variant is worse, and merging keeps the worse one. The order is bbot's,
/// so controllers rank our results the way they rank build2's.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Default,
)]
#[serde(rename_all = "lowercase")]
pub enum ResultStatus {
    /// The operation was not performed (nothing to do).
    #[default]
    Skip,
    /// It worked.
    Success,
    /// It worked, with diagnostics worth a look.
    Warning,
    /// It failed: the build itself is broken.
    Error,
    /// It could not be carried out (e.g. no toolchain): not the build's fault.
    Abort,
    /// The machinery failed (guest crashed, timed out, uploaded garbage).
    Abnormal,
    /// Stopped from outside (agent shut down mid-task).
    Interrupt,
}

impl ResultStatus {
    /// Every status, in merge order.
    pub const ALL: [ResultStatus; 7] = [
        ResultStatus::Skip,
        ResultStatus::Success,
        ResultStatus::Warning,
        ResultStatus::Error,
        ResultStatus::Abort,
        ResultStatus::Abnormal,
        ResultStatus::Interrupt,
    ];

    /// The manifest spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            ResultStatus::Skip => "skip",
            ResultStatus::Success => "success",
            ResultStatus::Warning => "warning",
            ResultStatus::Error => "error",
            ResultStatus::Abort => "abort",
            ResultStatus::Abnormal => "abnormal",
            ResultStatus::Interrupt => "interrupt",
        }
    }

    /// The worse of two statuses: how an overall status follows from its
    /// operations.
    #[must_use]
    pub fn merge(self, other: ResultStatus) -> ResultStatus {
        self.max(other)
    }
}

impl fmt::Display for ResultStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A status spelling that is not one of bbot's.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid status '{0}' (expected one of skip, success, warning, error, abort, abnormal, interrupt)")]
pub struct InvalidStatus(pub String);

impl FromStr for ResultStatus {
    type Err = InvalidStatus;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ResultStatus::ALL
            .into_iter()
            .find(|st| st.as_str() == s)
            .ok_or_else(|| InvalidStatus(s.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merge_keeps_the_worse() {
        use ResultStatus::*;
        assert_eq!(Success.merge(Warning), Warning);
        assert_eq!(Error.merge(Warning), Error);
        assert_eq!(Skip.merge(Success), Success);
        assert_eq!(Interrupt.merge(Abnormal), Interrupt);
        assert_eq!(Abort.merge(Error), Abort);
        for w in ResultStatus::ALL.windows(2) {
            assert!(w[0] < w[1]);
            assert_eq!(w[0].merge(w[1]), w[1]);
            assert_eq!(w[1].merge(w[0]), w[1]);
        }
    }

    #[test]
    fn parses_every_spelling_and_rejects_others() {
        for st in ResultStatus::ALL {
            assert_eq!(st.as_str().parse::<ResultStatus>(), Ok(st));
        }
        assert!("Success".parse::<ResultStatus>().is_err());
        assert!("".parse::<ResultStatus>().is_err());
    }
}
