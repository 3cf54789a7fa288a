//! Test harness for vgpud: a real vhost-user frontend (the part QEMU plays) that drives a
//! backend daemon over its UNIX socket.
//!
//! - [`Daemon`] starts a backend process and waits until its sockets listen.
//! - [`Vm`] connects like QEMU: SET_OWNER, GET_FEATURES, GET/SET_PROTOCOL_FEATURES,
//!   GET_QUEUE_NUM, SET_BACKEND_REQ_FD, GPU_SET_SOCKET (with a display), SET_FEATURES,
//!   SET_MEM_TABLE (memfd regions mapped here too) and per queue SET_VRING_NUM/ADDR/BASE/
//!   CALL/KICK/ENABLE; then submits virtio-gpu requests on the virtqueues.
//! - [`DisplayPeer`] answers the vhost-user-gpu display protocol and keeps the frames.
//! - [`ShmemPeer`] serves SHMEM_MAP/UNMAP from the backend.
//!
//! Everything the backend does wrong (bad replies, disconnects, silence) comes back as an
//! `io::Error`; every wait is bounded by `VmConfig::timeout`.

mod daemon;
mod display;
mod memory;
mod shmem;
mod util;
mod vm;
pub mod vnc;
mod vring;
mod watchdog;

pub use daemon::{Daemon, ProcStats};
pub use display::{DisplayEvent, DisplayPeer, Frame};
pub use shmem::{ShmemMapping, ShmemPeer};
pub use vm::{Token, Vm, VmConfig};
pub use vnc::VncViewer;
pub use vring::{Desc, DESC_F_INDIRECT, DESC_F_NEXT, DESC_F_WRITE};
