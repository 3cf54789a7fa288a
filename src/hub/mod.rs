//! What crosses VMs: the registry of the VMs this daemon serves.

pub mod registry;
