//! vgpud: a vhost-user virtio-gpu device backend serving many VMs from one process.
//!
//! Layers, each depending only on the ones below: `vhost` (transport) -> `device` (one VM's device
//! model) -> `render` (the process's renderer), and the wire formats in the `vgpud-protocol` crate.

pub mod cli;
pub mod device;
#[doc(hidden)]
pub mod fuzzing;
pub mod guestlog;
pub mod hub;
pub mod render;
pub mod vhost;
