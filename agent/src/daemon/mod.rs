//! The process's edge: the command line, signals, systemd notification and
//! logging. It drives the [`crate::control`] layer and implements that
//! layer's [`crate::control::process`] seam.

pub mod cli;
pub mod instance;
pub mod logging;
pub mod notify;
pub mod signals;
