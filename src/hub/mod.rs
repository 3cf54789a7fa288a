//! What crosses VMs: today, the renderer's fence signals routed back to the VM that asked.

pub mod fences;
