//! Draining the control and cursor queues: read a request from each descriptor chain, let the
//! device answer it, write the response back, and notify the driver.

use std::io::{self, Read, Write};
use std::sync::Arc;

use vgpud_protocol::{CtrlHeader, ErrorCode, Limits, Request, Response};
use vhost_user_backend::{VringRwLock, VringT};
use virtio_queue::{DescriptorChain, QueueOwnedT, QueueT, Reader, Writer};
use vm_memory::GuestMemoryMmap;

use super::backend::{place_of, VmBackend, CONTROL_QUEUE, CURSOR_QUEUE};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Control,
    Cursor,
}

/// The largest request read from one chain: a header plus the largest variable part the decoder
/// accepts (backing entries or a 3D command stream).
const MAX_REQUEST_BYTES: usize = 24 + 64 + (16 << 20);
/// Cursor commands are fixed-size; anything longer is not read.
const MAX_CURSOR_BYTES: usize = 256;

type Chain<'a> = DescriptorChain<&'a GuestMemoryMmap>;

impl Kind {
    fn index(self) -> u16 {
        match self {
            Kind::Control => CONTROL_QUEUE,
            Kind::Cursor => CURSOR_QUEUE,
        }
    }
}

/// A queue's rings, reached through `mem`: the memory table this VM accepted, never the library's
/// own copy of the latest table (see `VmBackend::update_memory`).
pub(super) struct Ring<'a> {
    pub vring: &'a VringRwLock,
    pub mem: &'a GuestMemoryMmap,
}

impl Ring<'_> {
    /// Puts a chain on the used ring. A head past the descriptor table cannot be returned; it is
    /// refused here rather than by the queue crate, which would log every time.
    pub fn add_used(&self, head: u16, len: u32) -> io::Result<()> {
        let mut state = self.vring.get_mut();
        let queue = state.get_queue_mut();
        if head >= queue.size() {
            return Err(io::Error::other(format!(
                "chain head {head} is past the {}-entry descriptor table",
                queue.size()
            )));
        }
        queue
            .add_used(self.mem, head, len)
            .map_err(io::Error::other)
    }

    /// Interrupts the driver if it asked to be (EVENT_IDX) or always (without it).
    pub fn notify(&self) -> io::Result<()> {
        let needed = self
            .vring
            .get_mut()
            .get_queue_mut()
            .needs_notification(self.mem)
            .map_err(io::Error::other)?;
        if needed {
            self.vring.signal_used_queue()?;
        }
        Ok(())
    }

    fn set_notification(&self, on: bool) -> io::Result<bool> {
        let mut state = self.vring.get_mut();
        let queue = state.get_queue_mut();
        let more = if on {
            queue.enable_notification(self.mem)
        } else {
            queue.disable_notification(self.mem).map(|()| false)
        };
        more.map_err(io::Error::other)
    }
}

/// Processes every available chain, re-checking after re-enabling notifications (EVENT_IDX) so no
/// kick is lost between the last chain and the re-enable. An error means the guest broke the
/// queue's rings; the caller stops serving it.
pub fn drain(vm: &VmBackend, vring: &VringRwLock, kind: Kind) -> io::Result<()> {
    if vm.is_broken(kind.index()) {
        return Ok(());
    }
    let mem = vm.memory();
    let ring = Ring {
        vring,
        mem: mem.as_ref(),
    };
    // Whether the avail index said there was more when notifications were last re-enabled.
    let mut promised = false;
    loop {
        if vm.event_idx() {
            ring.set_notification(false)?;
        }
        let Some(taken) = process_available(vm, &ring, &mem, kind)? else {
            // The frontend stopped the queues meanwhile (GET_VRING_BASE, on its own thread): not
            // a broken ring. What is left is served once they are all set up again
            // (`check_resumed`), not from rings set up anew under this loop before it decided.
            return Ok(());
        };
        // More was promised, yet nothing could be taken: looping would spin for ever.
        if promised && taken == 0 {
            return Err(io::Error::other(
                "the avail index promises chains the ring does not deliver",
            ));
        }
        if kind == Kind::Control {
            // Renderers that finish at once (2D) have signalled already: answer in this batch.
            vm.answer_signalled(vring)?;
        }
        if !vm.event_idx() || !ring.set_notification(true)? {
            return Ok(());
        }
        promised = true;
    }
}

/// Answers every chain on the avail ring; returns how many were taken off it, None if the queues
/// are stopped. A chain that cannot be returned (a head past the table) costs only itself: every
/// other chain of the batch is answered, and the driver notified.
fn process_available(
    vm: &VmBackend,
    ring: &Ring,
    mem: &Arc<GuestMemoryMmap>,
    kind: Kind,
) -> io::Result<Option<usize>> {
    let (chains, place) = {
        let mut state = ring.vring.get_mut();
        let queue = state.get_queue_mut();
        // Under the ring's lock: GET_VRING_BASE makes the queue not ready under it, and marks
        // the device asleep before the frontend can set the queue up again.
        if vm.is_asleep() {
            return Ok(None);
        }
        let chains: Vec<Chain> = match queue.iter(mem.as_ref()) {
            Ok(chains) => chains.collect(),
            Err(virtio_queue::Error::QueueNotReady) => return Ok(None),
            Err(e) => return Err(io::Error::other(e)),
        };
        (chains, place_of(queue))
    };
    // Where the queue stands once these chains are taken, read under the same lock: if the
    // frontend stops it next, GET_VRING_BASE gives this index. Read after the drain, it may
    // already be the place of rings set up anew, and a reset would look like a wake.
    vm.served(kind.index(), place);
    if chains.is_empty() {
        return Ok(Some(0));
    }
    let taken = chains.len();
    let mut used = 0;
    for chain in chains {
        let head = chain.head_index();
        let written = match kind {
            Kind::Control => control_chain(vm, ring.vring, mem, chain, head),
            Kind::Cursor => Some(cursor_chain(vm, mem, chain)),
        };
        // A VMM disconnected meanwhile (it stalled, or shrank the guest memory under this
        // request) gets nothing more.
        if vm.lost_memory() || vm.is_broken(kind.index()) {
            return Ok(Some(taken));
        }
        if let Some(written) = written {
            match ring.add_used(head, written) {
                Ok(()) => used += 1,
                Err(e) => vm.log.warn(format_args!("{kind:?} queue: {e}")),
            }
        }
    }
    if used > 0 {
        ring.notify()?;
    }
    Ok(Some(taken))
}

/// Handles one control request. Returns the number of response bytes written, or None when the
/// answer is parked behind a fence.
fn control_chain(
    vm: &VmBackend,
    vring: &VringRwLock,
    mem: &Arc<GuestMemoryMmap>,
    chain: Chain,
    head: u16,
) -> Option<u32> {
    let Some((bytes, mut writer)) = read_chain(vm, mem.as_ref(), chain, MAX_REQUEST_BYTES) else {
        return Some(0);
    };
    let req = match Request::decode(&bytes, &Limits::default()) {
        Ok(req) => req,
        Err(e) => {
            vm.log.warn(format_args!("bad request: {e}"));
            let hdr = CtrlHeader::decode(&bytes).unwrap_or_default();
            let response = Response::Err(e.error_code());
            vm.count(None, &response, vm.device().gauges());
            return Some(write_response(vm, &mut writer, &response.encode(&hdr)));
        }
    };
    vm.refresh_display(&req.cmd);
    let outcome = {
        // Window changes reach the frontend in the order the device decided them, also when
        // another VM revokes an import here meanwhile.
        let _order = vm.shmem_order();
        let mut outcome = {
            let mut device = vm.device();
            let outcome = device.handle(&req, mem);
            vm.count(Some(&req.cmd), &outcome.response, device.gauges());
            outcome
        };
        // The device lock is released: the frontend may now be asked to change the window.
        if !outcome.shmem.is_empty() && !vm.apply_shmem(std::mem::take(&mut outcome.shmem)) {
            outcome.response = Response::Err(ErrorCode::Unspec);
        }
        outcome
    };
    // Every importer of what this request withdrew lets go before the answer, outside this
    // VM's locks (an importer may be revoking something of ours at the same time).
    vm.revoke(&outcome.revoke);
    vm.show(&outcome.display);
    // The response bytes go to guest memory now; the guest sees them once the chain is used.
    let written = write_response(vm, &mut writer, &outcome.response.encode(&req.hdr));
    if let Some(ctx) = outcome.closed_context {
        if let Err(e) = vm.answer_closed_context(vring, ctx) {
            vm.log.warn(format_args!("answering a closed context: {e}"));
        }
    }
    match outcome.fence {
        Some((timeline, fence)) => {
            vm.park(timeline, fence, (head, written));
            None
        }
        None => Some(written),
    }
}

fn cursor_chain(vm: &VmBackend, mem: &Arc<GuestMemoryMmap>, chain: Chain) -> u32 {
    let Some((bytes, _)) = read_chain(vm, mem.as_ref(), chain, MAX_CURSOR_BYTES) else {
        return 0;
    };
    match Request::decode(&bytes, &Limits::default()) {
        Ok(req) => {
            let cmds = vm.device().handle_cursor(&req.cmd);
            vm.show(&cmds);
        }
        Err(e) => vm.log.warn(format_args!("bad cursor request: {e}")),
    }
    0
}

/// Reads up to `cap` readable bytes of a chain and returns them with a writer over its writable
/// part. None if the chain points outside guest memory.
fn read_chain<'a>(
    vm: &VmBackend,
    mem: &'a GuestMemoryMmap,
    chain: Chain<'a>,
    cap: usize,
) -> Option<(Vec<u8>, Writer<'a>)> {
    let parts = Reader::new(mem, chain.clone()).and_then(|r| Ok((r, Writer::new(mem, chain)?)));
    let (reader, writer) = match parts {
        Ok(p) => p,
        Err(e) => {
            vm.log.warn(format_args!("malformed descriptor chain: {e}"));
            return None;
        }
    };
    let len = reader.available_bytes().min(cap);
    let mut bytes = Vec::with_capacity(len);
    if let Err(e) = reader.take(len as u64).read_to_end(&mut bytes) {
        vm.log.warn(format_args!("cannot read request: {e}"));
        return None;
    }
    Some((bytes, writer))
}

fn write_response(vm: &VmBackend, writer: &mut Writer, response: &[u8]) -> u32 {
    let room = writer.available_bytes();
    if room < response.len() {
        vm.log.warn(format_args!(
            "response of {} bytes truncated to {room}",
            response.len()
        ));
    }
    let part = response.get(..room.min(response.len())).unwrap_or_default();
    match writer.write_all(part) {
        Ok(()) => u32::try_from(part.len()).unwrap_or(0),
        Err(e) => {
            vm.log.warn(format_args!("cannot write response: {e}"));
            0
        }
    }
}
