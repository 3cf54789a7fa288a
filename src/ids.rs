//! Ids that must not mix. A guest names its contexts and resources with its own numbers, per VM;
//! a renderer knows them by numbers of its own; the daemon knows VMs by a `VmId`. Each kind is a
//! type of its own, so that passing one where another is meant does not compile.

use std::fmt;

macro_rules! id {
    ($(#[$doc:meta])* $name:ident($inner:ty), $show:literal) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub struct $name(pub $inner);

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!($show, "{}"), self.0)
            }
        }
    };
}

id!(
    /// A VM served by this daemon, unique for the daemon's lifetime (never reused).
    VmId(u32),
    "vm"
);
id!(
    /// A context id as the guest chose it (CTX_CREATE's header); 0 means none.
    GuestCtxId(u32),
    "guest ctx "
);
id!(
    /// The renderer's id for a guest context; 0 means none (the renderer's global timeline).
    RendererCtxId(u32),
    "renderer ctx "
);
id!(
    /// The renderer's id for a resource. A 2D renderer hands out its own; a 3D renderer uses the
    /// guest's (its command streams name resources that way), which is why it runs per VM.
    RendererResId(u32),
    "renderer resource "
);
id!(
    /// A fence the renderer created, unique among that renderer's outstanding fences.
    FenceId(u64),
    "fence "
);

impl RendererCtxId {
    pub const NONE: RendererCtxId = RendererCtxId(0);
}
