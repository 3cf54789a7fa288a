//! What crosses VMs: the registry of the VMs this daemon serves, and the buffers they share.

pub mod registry;
pub mod residency;
pub mod share;
