//! The host's machines: btrfs subvolumes, the machines layout, per-round
//! enumeration and bootstrap, and where offered machines come from. It
//! boots guests only through [`crate::vm::runner`], and never sees a
//! controller.

pub mod btrfs;
pub mod layout;
pub mod locks;
pub mod machine_source;
pub mod machines;
