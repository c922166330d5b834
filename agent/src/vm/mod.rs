//! One guest: the [`runner`] seam and its QEMU implementation, the VM's
//! lifecycle, QMP, its console, its network (namespace, taps), its
//! confinement (user, seccomp, cgroup), the services it may reach (TFTP,
//! source mirror), vetting its upload, and the fakes. It never sees a
//! controller or the machines layout.

pub mod cgroup;
pub mod confine;
pub mod console;
pub mod fake;
pub mod guest_services;
pub mod iproute;
pub mod leftovers;
pub mod lifecycle;
pub mod mirror;
pub mod netns;
pub mod qemu_channels;
pub mod qemu_runner;
pub mod qmp;
pub mod result_check;
pub mod runner;
pub mod source_server;
pub mod tap;
pub mod tftp;
