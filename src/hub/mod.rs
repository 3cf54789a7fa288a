//! What crosses VMs: the registry of the VMs this daemon serves, the buffers they share
//! (`share`, and `residency` for the memory budget), and the fences they wait on (`waits`).

pub mod registry;
pub mod residency;
pub mod share;
pub mod waits;
