//! vgpud: a vhost-user virtio-gpu device backend serving many VMs from one process.
//!
//! Layers, each depending only on the ones below: `vhost` (transport) -> `hub` (what crosses VMs)
//! and `device` (one VM's device model) -> `render` (renderers: 2D in place, 3D in a worker
//! process per VM), the wire formats in the `vgpud-protocol` crate. `ids`, `fences`, `sync`,
//! `stats` and `guestlog` are shared by all of them. For operators, beside them: `cli`,
//! `control` (the status command), `metrics` (Prometheus), `operators` (serves those two, with
//! their limits) and `signals` (stop and reload); `memfault` keeps a SIGBUS in one VM's guest
//! memory from ending the daemon.

pub mod cli;
pub mod control;
pub mod device;
pub mod fences;
#[doc(hidden)]
pub mod fuzzing;
pub mod guestlog;
pub mod hostmem;
pub mod hub;
pub mod ids;
pub mod memfault;
pub mod metrics;
pub mod operators;
pub mod output;
pub mod render;
pub mod signals;
pub mod stats;
pub mod sync;
pub mod vhost;
