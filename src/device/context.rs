//! 3D: rendering contexts, 3D resources, 3D transfers and command submission.

use vgpud_protocol::{
    ErrorCode, ResourceCreate3d, Response, Transfer3d, CONTEXT_INIT_CAPSET_ID_MASK,
};

use super::{invalid, out_of_memory, render_error, Device, Failure, Renderer, Result};
use crate::ids::{GuestCtxId, RendererCtxId};
use vgpud_protocol::share::CAPSET_SHARE;

/// A guest context, known to the renderer by `renderer`; or a share context, which the
/// renderer never sees (the device runs it).
pub struct Context {
    pub renderer: RendererCtxId,
    pub share: bool,
}

/// Largest dimensions a 3D texture may claim; the renderer allocates host memory for them.
const MAX_3D_EXTENT: u32 = 16384;
const MAX_3D_LAYERS: u32 = 2048;
/// Bytes per texel assumed when charging a 3D texture to the VM's memory quota.
const QUOTA_BYTES_PER_TEXEL: u64 = 4;
/// Gallium's PIPE_BUFFER: a buffer whose width is its size in bytes.
const PIPE_BUFFER: u32 = 0;

/// What a 3D resource is charged against the VM's memory quota, or None if its shape is invalid.
fn quota_size(a: &ResourceCreate3d) -> Option<u64> {
    let within = |v: u32, max: u32| (1..=max).contains(&v);
    if a.target == PIPE_BUFFER {
        return (a.width >= 1 && a.height == 1 && a.depth == 1).then_some(u64::from(a.width));
    }
    if !within(a.width, MAX_3D_EXTENT)
        || !within(a.height, MAX_3D_EXTENT)
        || !within(a.depth, MAX_3D_LAYERS)
        || !within(a.array_size, MAX_3D_LAYERS)
        || a.last_level > 31
    {
        return None;
    }
    let texels = u64::from(a.width)
        * u64::from(a.height)
        * u64::from(a.depth)
        * u64::from(a.array_size)
        * u64::from(a.nr_samples.clamp(1, 16));
    // A full mip chain adds at most a third.
    let mips = if a.last_level > 0 { 4 } else { 3 };
    Some(texels * QUOTA_BYTES_PER_TEXEL * mips / 3)
}

impl<R: Renderer> Device<R> {
    pub(super) fn has_3d(&self) -> bool {
        !self.capsets.is_empty()
    }

    pub(super) fn ctx_create(
        &mut self,
        guest: GuestCtxId,
        context_init: u32,
        name: &[u8],
    ) -> Result<Response> {
        if guest.0 == 0 || self.contexts.contains_key(&guest) {
            return Err(Failure::new(
                ErrorCode::InvalidContextId,
                format!("context id {} is 0 or in use", guest.0),
            ));
        }
        let capset = context_init & CONTEXT_INIT_CAPSET_ID_MASK;
        if capset != 0 && !self.capsets.iter().any(|c| c.id == capset) {
            return Err(invalid(format!("capset {capset} is not offered")));
        }
        if self.contexts.len() >= self.cfg.max_contexts {
            return Err(out_of_memory(format!(
                "the VM has {} contexts, its quota",
                self.contexts.len()
            )));
        }
        if capset == CAPSET_SHARE {
            let renderer = RendererCtxId::NONE;
            self.contexts.insert(
                guest,
                Context {
                    renderer,
                    share: true,
                },
            );
            return Ok(Response::OkNodata);
        }
        let renderer = (self.renderer.alloc_ctx_id())
            .ok_or_else(|| out_of_memory("the renderer has no context id left"))?;
        let name = String::from_utf8_lossy(name);
        self.renderer
            .create_context(renderer, context_init, &name)
            .map_err(render_error)?;
        let share = false;
        self.contexts.insert(guest, Context { renderer, share });
        Ok(Response::OkNodata)
    }

    pub(super) fn ctx_destroy(&mut self, guest: GuestCtxId) -> Result<Response> {
        let ctx = self
            .contexts
            .remove(&guest)
            .ok_or_else(|| no_context(guest))?;
        if ctx.share {
            self.share_context_gone(guest);
        } else {
            self.renderer.destroy_context(ctx.renderer);
        }
        Ok(Response::OkNodata)
    }

    /// The renderer's id for the guest's context `guest` (not a share context).
    pub(super) fn renderer_ctx(&self, guest: GuestCtxId) -> Result<RendererCtxId> {
        self.contexts
            .get(&guest)
            .filter(|c| !c.share)
            .map(|c| c.renderer)
            .ok_or_else(|| no_context(guest))
    }

    pub(super) fn is_share_ctx(&self, guest: GuestCtxId) -> bool {
        self.contexts.get(&guest).is_some_and(|c| c.share)
    }

    pub(super) fn ctx_attach(
        &mut self,
        guest: GuestCtxId,
        id: u32,
        attach: bool,
    ) -> Result<Response> {
        if self.is_share_ctx(guest) {
            // Whatever the guest kernel attaches to a share context is not the renderer's.
            self.resource(id)?;
            return Ok(Response::OkNodata);
        }
        let ctx = self.renderer_ctx(guest)?;
        let res = self.resource(id)?.renderer_id;
        if attach {
            self.renderer
                .attach_to_context(ctx, res)
                .map_err(render_error)?;
        } else {
            self.renderer.detach_from_context(ctx, res);
        }
        Ok(Response::OkNodata)
    }

    pub(super) fn create_3d(&mut self, args: &ResourceCreate3d) -> Result<Response> {
        let id = args.resource_id;
        self.check_new_id(id)?;
        let size = quota_size(args).ok_or_else(|| {
            invalid(format!(
                "a target {} resource of {}x{}x{}, {} layers, last level {}",
                args.target, args.width, args.height, args.depth, args.array_size, args.last_level
            ))
        })?;
        self.add_resource(id, (args.width, args.height), size, |r, renderer_id| {
            r.create_3d(renderer_id, args)
        })
    }

    /// A 3D transfer; with `fence_ring` (a fenced request: its ring), the renderer makes the
    /// fence with it where `handle` would make it on the same context and timeline.
    pub(super) fn transfer_3d(
        &mut self,
        guest: GuestCtxId,
        t: &Transfer3d,
        to_host: bool,
        fence_ring: Option<Option<u8>>,
    ) -> Result<Response> {
        let ctx = if guest.0 == 0 {
            RendererCtxId::NONE
        } else {
            self.renderer_ctx(guest)?
        };
        let id = self.resource(t.resource_id)?.renderer_id;
        // A ring needs a context (else `handle` answers at once). (`renderer_ctx` refused the
        // share context, whose fences are the hub's.)
        let fence_ring = fence_ring.filter(|ring| ring.is_none() || guest.0 != 0);
        let refused = |e: super::RenderError| invalid(super::bounded(&e));
        // The renderer checks the box against the resource and its backing.
        match fence_ring {
            Some(ring) => {
                let made = (self.renderer)
                    .transfer_3d_fenced(ctx, id, t, to_host, ring)
                    .map_err(refused)?;
                self.made_fence = Some(made);
            }
            None if to_host => self
                .renderer
                .transfer_to_host_3d(ctx, id, t)
                .map_err(refused)?,
            None => (self.renderer.transfer_from_host_3d(ctx, id, t)).map_err(refused)?,
        }
        Ok(Response::OkNodata)
    }

    /// Submits a command stream; with `fence_ring` (a fenced request: its ring), the renderer
    /// makes the fence with it, kept in `made_fence` for `handle`.
    pub(super) fn submit_3d(
        &mut self,
        guest: GuestCtxId,
        commands: &[u8],
        fence_ring: Option<Option<u8>>,
    ) -> Result<Response> {
        if self.is_share_ctx(guest) {
            return self.share_submit(guest, commands);
        }
        let ctx = self.renderer_ctx(guest)?;
        // Guests submit empty streams only to get a fence on a ring; the fence is created after
        // this either way, and some renderers refuse an empty stream.
        if commands.is_empty() {
            return Ok(Response::OkNodata);
        }
        let refused = |e: super::RenderError| {
            invalid(format!("command stream refused: {}", super::bounded(&e)))
        };
        match fence_ring {
            // Fenced: the fence is made with the submission (one crossing to a render worker).
            // A refused stream made none: the request is fenced afterwards as any failed one.
            Some(ring) => {
                let made = (self.renderer)
                    .submit_3d_fenced(ctx, commands.to_vec(), ring)
                    .map_err(refused)?;
                self.made_fence = Some(made);
            }
            None => self
                .renderer
                .submit_3d(ctx, commands.to_vec())
                .map_err(refused)?,
        }
        Ok(Response::OkNodata)
    }
}

fn no_context(guest: GuestCtxId) -> Failure {
    Failure::new(
        ErrorCode::InvalidContextId,
        format!("no context {}", guest.0),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(target: u32, width: u32, height: u32) -> ResourceCreate3d {
        ResourceCreate3d {
            target,
            width,
            height,
            depth: 1,
            array_size: 1,
            ..Default::default()
        }
    }

    #[test]
    fn buffers_are_charged_in_bytes_and_textures_per_texel() {
        assert_eq!(quota_size(&args(PIPE_BUFFER, 1 << 20, 1)), Some(1 << 20));
        assert_eq!(
            quota_size(&args(PIPE_BUFFER, 64, 2)),
            None,
            "a buffer has one row"
        );
        assert_eq!(quota_size(&args(2, 256, 256)), Some(256 * 256 * 4));
        assert_eq!(quota_size(&args(2, 16385, 1)), None);
        assert_eq!(quota_size(&args(2, 0, 1)), None);
        let mipped = ResourceCreate3d {
            last_level: 8,
            ..args(2, 256, 256)
        };
        assert_eq!(quota_size(&mipped), Some(256 * 256 * 4 * 4 / 3));
    }
}
