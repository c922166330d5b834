//! bbot's controller priority (PROTOCOLS.md section 4a), shared by the
//! control layer (which controllers to ask, which task interrupts which)
//! and the host layer (the priority recorded in a machine lock).

use std::fmt;

/// A controller's priority, bbot's `DCBA` digits as one number (0..=9999).
///
/// - `A` (ones): preference only;
/// - `B` (tens): lower-B controllers are not asked while a higher-B task runs;
/// - `C` (hundreds): may interrupt one lower-C task;
/// - `D` (thousands): interrupts every lower-D task.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Priority(pub u32);

impl Priority {
    fn digit(self, place: u32) -> u32 {
        (self.0 / place) % 10
    }

    /// The `B` digit.
    pub fn b(self) -> u32 {
        self.digit(10)
    }

    /// The `C` digit.
    pub fn c(self) -> u32 {
        self.digit(100)
    }

    /// The `D` digit.
    pub fn d(self) -> u32 {
        self.digit(1000)
    }

    /// Whether a task of this priority may interrupt others at all (its C
    /// or D digit is set).
    pub fn interrupts(self) -> bool {
        self.c() > 0 || self.d() > 0
    }

    /// Whether a task of this priority may interrupt a running task of
    /// priority `running`: a D-level task every lower-D one, a C-level task
    /// a lower-C one of the same D.
    pub fn may_interrupt(self, running: Priority) -> bool {
        if self.d() != running.d() {
            return self.d() > running.d();
        }
        self.c() > running.c()
    }
}

impl fmt::Display for Priority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:04}", self.0)
    }
}
