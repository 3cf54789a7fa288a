//! The share context (capset `CAPSET_SHARE`): a context of vgpud's own through which a guest
//! exports its blobs to other VMs and imports theirs (protocol::share, docs/share-protocol.md).
//! The daemon's share registry is reached through `ShareHub`; this is one VM's side: its reply
//! blob, its pending imports, its events, and which of its resources are exported or imported.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use vgpud_protocol::share::{
    decode_stream, encode_reply, event, reply_slots, ShareCommand, ShareEvent, Status, Uuid,
    EXPORT_FENCE_ALL, MAX_EVENTS, REPLY_HEADER_SIZE,
};
use vgpud_protocol::{ErrorCode, Response, BLOB_MEM_HOST3D};

use super::blob::ShmemRequest;
use super::renderer::ExportedBlob;
use super::resource::{random_uuid, Blob, Resource};
use super::window::PAGE_SIZE;
use super::{invalid, out_of_memory, Device, DisplayCmd, Failure, Renderer, Result};
use crate::fences::Timeline;
use crate::ids::{FenceId, GuestCtxId, RendererResId, VmId};

/// What an export hands importers: a descriptor, offset and size.
pub type SharedStorage = ExportedBlob;

/// What the device needs from the daemon's share registry (src/hub/share.rs).
pub trait ShareHub: Send + Sync {
    /// Offers `resource_id` of `vm` under `uuid`.
    /// `movable`: the storage is the daemon's own memory, which may be moved out under the
    /// budget.
    fn export(
        &self,
        vm: VmId,
        resource_id: u32,
        uuid: Uuid,
        storage: SharedStorage,
        movable: bool,
    ) -> std::result::Result<Uuid, Status>;
    /// The storage of export `uuid` and its exporter's name, if the policy lets `vm` import it.
    /// A static import (`dynamic` false) pins it.
    fn import(
        &self,
        vm: VmId,
        uuid: &Uuid,
        dynamic: bool,
    ) -> std::result::Result<(SharedStorage, String), Status>;
    /// Pins `uuid` for `vm`: it never moves until unpinned.
    fn pin(&self, vm: VmId, uuid: &Uuid) -> std::result::Result<(), Status>;
    fn unpin(&self, vm: VmId, uuid: &Uuid);
    /// Brings `uuid`'s contents back if they were moved out; before any mapping of it.
    fn ensure_resident(&self, uuid: &Uuid) -> std::result::Result<(), Status>;
    /// One import of `uuid` by `vm` (static or `dynamic`, as it was made) has ended.
    fn unimport(&self, vm: VmId, uuid: &Uuid, dynamic: bool);
    /// Whether `vm` may wait for the fence points `handles` (WAIT_FENCES): NO_SUCH for a handle
    /// never given out and, alike, for one of a VM the policy does not let `vm` import from.
    fn fences_usable(&self, vm: VmId, handles: &[u64]) -> std::result::Result<(), Status>;
    /// A handle for the current last point of `timeline` of `vm` (None: of each of its renderer
    /// timelines).
    fn export_fence(
        &self,
        vm: VmId,
        timeline: Option<Timeline>,
    ) -> std::result::Result<u64, Status>;
    /// A fence of `vm`'s share context that signals once every point of `handles` has (at once
    /// if none is pending). Its signal reaches the VM like a renderer's.
    /// Points that had already failed (their producer died) are returned with it.
    fn share_fence(
        &self,
        vm: VmId,
        handles: &[u64],
    ) -> std::result::Result<(FenceId, Vec<u64>), Status>;
}

/// Imports no resource was made from yet, and events waiting to be read: bounded, so a guest
/// cannot grow them without limit (imports with resources are bounded by the resource quota).
const MAX_PENDING_IMPORTS: usize = 256;
const MAX_QUEUED_EVENTS: usize = 256;
/// Most fence handles one stream's fence may wait for.
const MAX_STREAM_WAITS: usize = 256;

/// One IMPORT: its blob id stays valid while it lasts, from IMPORT until the last resource
/// made from it is freed, so that a guest whose mapping a move took away can make a new
/// resource on it (a guest kernel maps a blob only when it creates the resource).
struct Import {
    uuid: Uuid,
    storage: SharedStorage,
    /// A dynamic import accepts moves; a static one pins the buffer while it lasts.
    dynamic: bool,
    /// Resources made from it now (0: none made yet).
    resources: u32,
}

/// One VM's sharing state. Events and imports belong to the VM (any of its share contexts reads
/// them); each share context has its own reply blob.
pub struct ShareState {
    hub: Arc<dyn ShareHub>,
    vm: VmId,
    reply_blobs: HashMap<GuestCtxId, u32>,
    /// By the blob id IMPORT answered.
    imports: HashMap<u64, Import>,
    next_blob_id: u64,
    events: VecDeque<ShareEvent>,
    /// Resource id -> the UUID it is exported under.
    exported: HashMap<u32, Uuid>,
    /// Resource id -> the blob id of the import it is made from.
    imported: HashMap<u32, u64>,
    /// Fence handles the stream being handled waits for (WAIT_FENCES), flat.
    waits: Vec<u64>,
    /// This VM's pins, by UUID (given back when it resets or lets go of the buffer).
    pins: HashMap<Uuid, u32>,
    /// Imports whose mapping a move took away; the guest may still unmap them.
    moved_mappings: std::collections::HashSet<u32>,
}

impl ShareState {
    /// Exports, resources made from imports, and pins held now: explicit pins and static
    /// imports (each pins its buffer).
    pub(super) fn counts(&self) -> (usize, usize, usize) {
        let pins: usize = self.pins.values().map(|n| *n as usize).sum();
        let statics = self.imports.values().filter(|i| !i.dynamic).count();
        (self.exported.len(), self.imported.len(), pins + statics)
    }

    /// The UUID resource `id` was imported from.
    fn imported_uuid(&self, id: u32) -> Option<Uuid> {
        let blob_id = self.imported.get(&id)?;
        self.imports.get(blob_id).map(|i| i.uuid)
    }

    pub fn new(hub: Arc<dyn ShareHub>, vm: VmId) -> Self {
        ShareState {
            hub,
            vm,
            reply_blobs: HashMap::new(),
            imports: HashMap::new(),
            next_blob_id: 1,
            events: VecDeque::new(),
            exported: HashMap::new(),
            imported: HashMap::new(),
            waits: Vec::new(),
            pins: HashMap::new(),
            moved_mappings: std::collections::HashSet::new(),
        }
    }

    /// Gives back this VM's pins on `uuid`.
    fn unpin_all(&mut self, uuid: &Uuid) {
        for _ in 0..self.pins.remove(uuid).unwrap_or(0) {
            self.hub.unpin(self.vm, uuid);
        }
    }

    fn push_event(&mut self, e: ShareEvent) {
        if self.events.len() == MAX_QUEUED_EVENTS {
            self.events.pop_front();
        }
        self.events.push_back(e);
    }

    /// Forgets everything (device reset); the hub revokes this VM's exports itself.
    pub fn reset(&mut self) {
        for import in self.imports.values() {
            self.hub.unimport(self.vm, &import.uuid, import.dynamic);
        }
        let pinned: Vec<Uuid> = self.pins.keys().copied().collect();
        for uuid in pinned {
            self.unpin_all(&uuid);
        }
        self.reply_blobs.clear();
        self.imports.clear();
        self.events.clear();
        self.exported.clear();
        self.imported.clear();
        self.moved_mappings.clear();
    }
}

type Reply = (Status, Vec<u8>);

impl<R: Renderer> Device<R> {
    /// Runs a share context's command stream: every command that asks for a reply gets one in
    /// the context's reply blob. The whole stream is checked before anything runs (its
    /// encoding, and that each reply fits where it goes); a stream that fails is refused whole:
    /// nothing runs, and each reply slot it names that lies in the reply blob reads INVALID.
    pub(super) fn share_submit(&mut self, ctx: GuestCtxId, stream: &[u8]) -> Result<Response> {
        let current = match self.share.as_mut() {
            None => {
                return Err(Failure::new(
                    ErrorCode::InvalidContextId,
                    "no share context",
                ))
            }
            Some(share) => {
                share.waits.clear();
                share.reply_blobs.get(&ctx).copied()
            }
        };
        let commands = match decode_stream(stream) {
            Ok(commands) => commands,
            Err(e) => return self.refuse_stream(current, stream, format!("{e}")),
        };
        // Where each reply goes: a SET_REPLY_BLOB that will succeed moves later ones.
        let mut blob = current;
        for c in &commands {
            if let ShareCommand::SetReplyBlob { resource_id } = c.command {
                if self.reply_blob_size(resource_id).is_some() {
                    blob = Some(resource_id);
                }
            }
            if let Some(offset) = c.reply_offset {
                let end = u64::from(offset) + c.command.max_reply_len() as u64;
                let size = blob.and_then(|b| self.reply_blob_size(b));
                if size.is_none_or(|size| end > size) {
                    return self.refuse_stream(
                        current,
                        stream,
                        format!("a reply at {offset:#x} ({end:#x}) lies outside the reply blob"),
                    );
                }
            }
        }
        for c in commands {
            let (status, payload) = self.share_command(ctx, &c.command);
            if let Some(offset) = c.reply_offset {
                // Checked above; only a guest memory table changed meanwhile can fail it.
                if self
                    .write_reply(ctx, offset, &encode_reply(status, &payload))
                    .is_err()
                {
                    self.log
                        .warn(format_args!("share: cannot write a reply at {offset:#x}"));
                }
            }
        }
        Ok(Response::OkNodata)
    }

    /// A stream refused whole: nothing of it runs (its SET_REPLY_BLOB neither); every reply slot
    /// it names that lies in the reply blob (`current`, set before it), 4-byte aligned, reads
    /// INVALID, so that a guest whose kernel does not report the error response learns of it.
    fn refuse_stream(
        &mut self,
        current: Option<u32>,
        stream: &[u8],
        why: String,
    ) -> Result<Response> {
        if let Some(blob) = current {
            let invalid = encode_reply(Status::Invalid, &[]);
            for offset in reply_slots(stream) {
                if offset.is_multiple_of(4) {
                    // Slots outside the blob are left alone (write_reply checks).
                    let _ = self.write_reply_to(blob, offset, &invalid);
                }
            }
        }
        // Logged by the caller, with the command, like any failed command.
        Err(invalid(format!(
            "share: stream refused, nothing run: {why}"
        )))
    }

    /// The share context `ctx` is gone: its reply blob is forgotten.
    pub(super) fn share_context_gone(&mut self, ctx: GuestCtxId) {
        if let Some(share) = self.share.as_mut() {
            share.reply_blobs.remove(&ctx);
        }
    }

    fn share_command(&mut self, ctx: GuestCtxId, command: &ShareCommand) -> Reply {
        let done = |r: std::result::Result<Vec<u8>, Status>| match r {
            Ok(payload) => (Status::Ok, payload),
            Err(status) => (status, Vec::new()),
        };
        match command {
            ShareCommand::SetReplyBlob { resource_id } => {
                done(self.set_reply_blob(ctx, *resource_id))
            }
            ShareCommand::Export { resource_id } => done(self.share_export(*resource_id)),
            ShareCommand::Import { uuid, dynamic } => done(self.share_import(uuid, *dynamic)),
            ShareCommand::Pin { resource_id } => done(self.share_pin(*resource_id, true)),
            ShareCommand::Unpin { resource_id } => done(self.share_pin(*resource_id, false)),
            ShareCommand::ExportFence { ctx_id, ring } => {
                done(self.share_export_fence(*ctx_id, *ring))
            }
            ShareCommand::WaitFences { handles } => done(self.share_wait_fences(handles)),
            ShareCommand::ReadEvents { max } => (Status::Ok, self.read_events(*max)),
        }
    }

    fn share_export_fence(
        &mut self,
        ctx_id: u32,
        ring: u32,
    ) -> std::result::Result<Vec<u8>, Status> {
        // A point on a renderer timeline: renderer work never waits on another VM, so no wait
        // across VMs can close a cycle (share contexts' own timelines cannot be exported).
        let timeline = if ctx_id == EXPORT_FENCE_ALL {
            None
        } else if ctx_id == 0 {
            Some(Timeline::GLOBAL)
        } else {
            let ctx = GuestCtxId(ctx_id);
            match self.contexts.get(&ctx) {
                Some(c) if !c.share => {}
                _ => return Err(Status::NoSuch),
            }
            let ring = u8::try_from(ring)
                .ok()
                .filter(|r| *r < 64)
                .ok_or(Status::Invalid)?;
            Some(Timeline {
                ctx,
                ring: Some(ring),
            })
        };
        let share = self.share.as_ref().ok_or(Status::Unsupported)?;
        let handle = share.hub.export_fence(share.vm, timeline)?;
        Ok(handle.to_le_bytes().to_vec())
    }

    /// WAIT_FENCES: the stream's fence will wait for `handles` too, if this VM may wait for
    /// every one of them (none is added otherwise).
    fn share_wait_fences(&mut self, handles: &[u64]) -> std::result::Result<Vec<u8>, Status> {
        let share = self.share.as_mut().ok_or(Status::Unsupported)?;
        share.hub.fences_usable(share.vm, handles)?;
        if share.waits.len() + handles.len() > MAX_STREAM_WAITS {
            // Never dropped silently: the fence would signal before what it should wait for.
            return Err(Status::NoSpace);
        }
        share.waits.extend_from_slice(handles);
        Ok(Vec::new())
    }

    /// The fence of a fenced share-context request, waiting for what its stream named.
    pub(super) fn share_fence(&mut self) -> Option<FenceId> {
        let share = self.share.as_mut()?;
        let waits = std::mem::take(&mut share.waits);
        match share.hub.share_fence(share.vm, &waits) {
            Ok((id, failed)) => {
                for handle in failed {
                    self.share_fence_failed(handle);
                }
                Some(id)
            }
            Err(status) => {
                self.log.warn(format_args!(
                    "share fence refused ({status:?}): answering at once"
                ));
                None
            }
        }
    }

    /// A fence this VM waited for will never signal normally (its producer died): the guest
    /// reads a FENCE_ERROR event.
    pub fn share_fence_failed(&mut self, handle: u64) {
        if let Some(share) = self.share.as_mut() {
            let mut subject = [0; 16];
            subject[..8].copy_from_slice(&handle.to_le_bytes());
            share.push_event(ShareEvent {
                kind: event::FENCE_ERROR,
                resource_id: 0,
                subject,
            });
        }
    }

    fn set_reply_blob(&mut self, ctx: GuestCtxId, id: u32) -> std::result::Result<Vec<u8>, Status> {
        self.resource(id).map_err(|_| Status::NoSuch)?;
        if self.reply_blob_size(id).is_none() {
            return Err(Status::Invalid);
        }
        if let Some(share) = self.share.as_mut() {
            share.reply_blobs.insert(ctx, id);
        }
        Ok(Vec::new())
    }

    /// The size of resource `id` if it can be a reply blob: guest pages, room for a reply.
    fn reply_blob_size(&self, id: u32) -> Option<u64> {
        let backing = self.resource(id).ok()?.backing.as_ref()?;
        (backing.bytes >= REPLY_HEADER_SIZE as u64).then_some(backing.bytes)
    }

    fn write_reply(&self, ctx: GuestCtxId, offset: u32, reply: &[u8]) -> Result<()> {
        let blob = self
            .share
            .as_ref()
            .and_then(|s| s.reply_blobs.get(&ctx).copied())
            .ok_or_else(|| invalid("a reply but no reply blob"))?;
        self.write_reply_to(blob, offset, reply)
    }

    fn write_reply_to(&self, blob: u32, offset: u32, reply: &[u8]) -> Result<()> {
        let backing = self
            .resource(blob)?
            .backing
            .as_ref()
            .ok_or_else(|| invalid("the reply blob has no pages"))?;
        let end = u64::from(offset) + reply.len() as u64;
        if end > backing.bytes || !backing.write_at(u64::from(offset), reply) {
            return Err(invalid(format!(
                "reply offset {offset} outside the reply blob"
            )));
        }
        Ok(())
    }

    pub(super) fn share_hub(&self) -> Option<Arc<dyn ShareHub>> {
        self.share.as_ref().map(|s| s.hub.clone())
    }

    /// The UUID of a resource this VM exported or imported.
    pub(super) fn shared_uuid(&self, id: u32) -> Option<Uuid> {
        let share = self.share.as_ref()?;
        share
            .exported
            .get(&id)
            .copied()
            .or_else(|| share.imported_uuid(id))
    }

    fn share_pin(&mut self, id: u32, pin: bool) -> std::result::Result<Vec<u8>, Status> {
        let uuid = self.shared_uuid(id).ok_or(Status::NoSuch)?;
        let share = self.share.as_mut().ok_or(Status::Unsupported)?;
        if pin {
            share.hub.pin(share.vm, &uuid)?;
            *share.pins.entry(uuid).or_default() += 1;
        } else {
            let n = share.pins.get_mut(&uuid).ok_or(Status::Invalid)?;
            *n -= 1;
            if *n == 0 {
                share.pins.remove(&uuid);
            }
            share.hub.unpin(share.vm, &uuid);
        }
        Ok(Vec::new())
    }

    /// Whether moving `uuid` now would pull it from under this VM: it maps the buffer it
    /// exported, or a scanout shows it. (A dynamic import's mapping is not in the way: it is
    /// removed, and the guest told.)
    pub fn share_busy(&self, uuid: &Uuid) -> bool {
        let Some(share) = self.share.as_ref() else {
            return false;
        };
        let mapped = |id: &u32| {
            self.resources
                .get(id)
                .and_then(|r| r.blob.as_ref())
                .is_some_and(|b| b.mapped.is_some())
        };
        let shown = |id: &u32| self.scanouts.iter().any(|s| s.resource_id == *id);
        share
            .exported
            .iter()
            .any(|(id, u)| u == uuid && (mapped(id) || shown(id)))
            || (share.imported.keys())
                .any(|id| share.imported_uuid(*id).as_ref() == Some(uuid) && shown(id))
    }

    /// `uuid` is being moved out: this VM's mappings of imports of it go (returned, to unmap
    /// now) and the guest gets a MOVED event for each; MAP_BLOB brings it back.
    pub fn share_moved(&mut self, uuid: &Uuid) -> Vec<ShmemRequest> {
        let Some(share) = self.share.as_ref() else {
            return Vec::new();
        };
        let ids: Vec<u32> = (share.imported.keys())
            .filter(|id| share.imported_uuid(**id).as_ref() == Some(uuid))
            .copied()
            .collect();
        let mut unmaps = Vec::new();
        for id in ids {
            if let Ok(Some(unmap)) = self.take_mapping(id) {
                unmaps.push(unmap);
                if let Some(share) = self.share.as_mut() {
                    share.moved_mappings.insert(id);
                    share.push_event(ShareEvent {
                        kind: event::MOVED,
                        resource_id: id,
                        subject: *uuid,
                    });
                }
            }
        }
        unmaps
    }

    fn share_export(&mut self, id: u32) -> std::result::Result<Vec<u8>, Status> {
        let res = self.resource(id).map_err(|_| Status::NoSuch)?;
        let blob = res.blob.as_ref().ok_or(Status::Invalid)?;
        // Only host blobs: their descriptor holds that blob alone. A guest blob's descriptor is
        // the exporter's whole guest memory, which an importer's VMM must never receive.
        if blob.mem != BLOB_MEM_HOST3D {
            return Err(Status::Unsupported);
        }
        if self
            .share
            .as_ref()
            .is_some_and(|s| s.imported.contains_key(&id))
        {
            // Re-exporting someone else's buffer would outlive its revocation.
            return Err(Status::Invalid);
        }
        let existing = res.uuid;
        let own_memory = res.daemon_memory;
        let storage = self.export(id).map_err(|_| Status::Unsupported)?;
        if !storage.size.is_multiple_of(PAGE_SIZE) {
            // Importers map whole pages: they would see what lies past the blob.
            return Err(Status::Invalid);
        }
        let uuid = match existing {
            Some(u) => u,
            None => random_uuid().ok_or(Status::NoSpace)?,
        };
        let share = self.share.as_ref().ok_or(Status::Unsupported)?;
        let movable = own_memory || self.renderer.host_blobs_movable();
        let uuid = share.hub.export(share.vm, id, uuid, storage, movable)?;
        if let Ok(res) = self.resource_mut(id) {
            res.uuid = Some(uuid);
        }
        if let Some(share) = self.share.as_mut() {
            share.exported.insert(id, uuid);
        }
        Ok(uuid.to_vec())
    }

    fn share_import(&mut self, uuid: &Uuid, dynamic: bool) -> std::result::Result<Vec<u8>, Status> {
        let share = self.share.as_mut().ok_or(Status::Unsupported)?;
        if share.imports.values().filter(|i| i.resources == 0).count() >= MAX_PENDING_IMPORTS {
            return Err(Status::NoSpace);
        }
        let (storage, exporter) = match share.hub.import(share.vm, uuid, dynamic) {
            Ok(got) => got,
            Err(Status::Denied) => {
                self.log
                    .warn(format_args!("may not import that buffer (policy)"));
                // Answered like an unknown UUID: the guest learns nothing of what exists.
                return Err(Status::NoSuch);
            }
            Err(status) => return Err(status),
        };
        self.log
            .info(format_args!("imports a buffer of {exporter} (share)"));
        let share = self.share.as_mut().ok_or(Status::Unsupported)?;
        let blob_id = share.next_blob_id;
        share.next_blob_id += 1;
        let size = storage.size;
        share.imports.insert(
            blob_id,
            Import {
                uuid: *uuid,
                storage,
                dynamic,
                resources: 0,
            },
        );
        let mut payload = blob_id.to_le_bytes().to_vec();
        payload.extend_from_slice(&size.to_le_bytes());
        Ok(payload)
    }

    fn read_events(&mut self, max: u32) -> Vec<u8> {
        let Some(share) = self.share.as_mut() else {
            return Vec::new();
        };
        let n = (max.min(MAX_EVENTS) as usize).min(share.events.len());
        let mut out = Vec::with_capacity(8 + n * ShareEvent::SIZE);
        out.extend_from_slice(&(n as u32).to_le_bytes());
        out.extend_from_slice(&[0; 4]);
        for e in share.events.drain(..n) {
            e.encode(&mut out);
        }
        out
    }

    /// RESOURCE_CREATE_BLOB of an import on a share context: a resource backed by the exporter's
    /// storage, not charged to this VM (the exporter pays for it).
    pub(super) fn create_imported_blob(
        &mut self,
        id: u32,
        blob_mem: u32,
        flags: u32,
        blob_id: u64,
        size: u64,
    ) -> Result<Response> {
        let share = (self.share.as_mut())
            .ok_or_else(|| Failure::new(ErrorCode::InvalidContextId, "no share context"))?;
        let fits = share
            .imports
            .get(&blob_id)
            .is_some_and(|i| size > 0 && size <= i.storage.size);
        if blob_mem != BLOB_MEM_HOST3D {
            return Err(invalid("an import is a HOST3D blob"));
        }
        if !fits {
            return Err(invalid(format!(
                "blob id {blob_id} names no pending import of at least {size} bytes"
            )));
        }
        if self.resources.len() >= self.cfg.max_resources {
            return Err(out_of_memory("the VM has its quota of resources"));
        }
        // The import stays: its blob id makes more resources while one of them lives.
        let import = share
            .imports
            .get_mut(&blob_id)
            .ok_or_else(|| invalid(format!("blob id {blob_id} names no pending import")))?;
        import.resources = import.resources.saturating_add(1);
        let storage = SharedStorage {
            size,
            ..import.storage.clone()
        };
        share.imported.insert(id, blob_id);
        // The renderer never sees it: its id 0 names nothing there.
        let mut res = Resource::new(RendererResId(0), 0, 0, 0);
        res.imported = true;
        res.blob = Some(Blob {
            mem: blob_mem,
            flags,
            mapped: None,
            export: Some(storage),
        });
        self.resources.insert(id, res);
        Ok(Response::OkNodata)
    }

    /// Whether `id` lost its mapping to a move (and forgets that).
    pub(super) fn forget_moved_mapping(&mut self, id: u32) -> bool {
        self.share
            .as_mut()
            .is_some_and(|s| s.moved_mappings.remove(&id))
    }

    /// Resource `id` is going away: what it shared ends. Returns the UUID to revoke if it was
    /// exported (the caller revokes it once the device lock is released).
    pub(super) fn share_forget(&mut self, id: u32) -> Option<Uuid> {
        let share = self.share.as_mut()?;
        share.moved_mappings.remove(&id);
        if let Some(blob_id) = share.imported.remove(&id) {
            let ended = share.imports.get_mut(&blob_id).and_then(|import| {
                import.resources = import.resources.saturating_sub(1);
                (import.resources == 0).then_some((import.uuid, import.dynamic))
            });
            // The import ends with its last resource (and its pin, if static).
            if let Some((uuid, dynamic)) = ended {
                share.imports.remove(&blob_id);
                share.hub.unimport(share.vm, &uuid, dynamic);
                // This VM's explicit pins go once nothing of it uses the buffer: it may have
                // imported the same buffer twice.
                if !share.imports.values().any(|i| i.uuid == uuid) {
                    share.unpin_all(&uuid);
                }
            }
        }
        share.exported.remove(&id)
    }

    /// The exporter withdrew `uuid`: every resource made from it loses its storage and its
    /// mapping (returned, for the transport to unmap now), and the guest gets a REVOKED event.
    /// Scanouts that showed one are turned off for the displays (also returned).
    pub fn revoke_import(&mut self, uuid: &Uuid) -> (Vec<ShmemRequest>, Vec<DisplayCmd>) {
        let Some(share) = self.share.as_mut() else {
            return (Vec::new(), Vec::new());
        };
        let ids: Vec<u32> = (share.imported.keys())
            .filter(|id| share.imported_uuid(**id).as_ref() == Some(uuid))
            .copied()
            .collect();
        // The export is gone, and with it these imports and this VM's pins on it.
        share.imports.retain(|_, i| &i.uuid != uuid);
        share.pins.remove(uuid);
        let mut unmaps = Vec::new();
        for id in &ids {
            if let Ok(Some(unmap)) = self.take_mapping(*id) {
                unmaps.push(unmap);
            }
            if let Ok(res) = self.resource_mut(*id) {
                if let Some(blob) = res.blob.as_mut() {
                    blob.export = None;
                }
            }
        }
        if let Some(share) = self.share.as_mut() {
            for id in ids.iter().copied().chain(ids.is_empty().then_some(0)) {
                share.imported.remove(&id);
                share.push_event(ShareEvent {
                    kind: event::REVOKED,
                    resource_id: id,
                    subject: *uuid,
                });
            }
        }
        (unmaps, self.hide_scanouts_of(&ids))
    }
}
