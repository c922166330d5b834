//! The bottom layer: what every other layer needs and that needs nothing
//! of theirs.

pub mod cancel;
pub mod fsutil;
pub mod priority;
pub mod version;
