//! Wire format of the virtio-gpu control and cursor queues.
//!
//! Everything is little-endian. Decoders never panic and never allocate
//! more than the input (bounded by [`Limits`]) justifies: guest input is
//! treated as hostile.

pub mod command;
pub mod config;
pub mod consts;
pub mod edid;
pub mod header;
pub mod response;
pub mod share;
pub mod wire;
pub mod worker;

pub use command::*;
pub use config::*;
pub use consts::*;
pub use edid::*;
pub use header::*;
pub use response::*;
pub use wire::*;
