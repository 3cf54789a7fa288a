//! Draining the control and cursor queues: read a request from each descriptor chain, let the
//! device answer it, write the response back, and notify the driver.

use std::io::{self, Read, Write};
use std::sync::Arc;

use log::warn;
use vgpud_protocol::{CtrlHeader, ErrorCode, Limits, Request, Response};
use vhost_user_backend::{VringRwLock, VringT};
use virtio_queue::{DescriptorChain, QueueOwnedT, Reader, Writer};
use vm_memory::GuestMemoryMmap;

use super::backend::VmBackend;

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

/// Processes every available chain, re-checking after re-enabling notifications (EVENT_IDX) so no
/// kick is lost between the last chain and the re-enable.
pub fn drain(vm: &VmBackend, vring: &VringRwLock, kind: Kind) -> io::Result<()> {
    let mem = vm.memory();
    loop {
        if vm.event_idx() {
            vring.disable_notification().map_err(io::Error::other)?;
        }
        process_available(vm, vring, &mem, kind)?;
        if kind == Kind::Control {
            // Renderers that finish at once (2D) have signalled already: answer in this batch.
            vm.answer_signalled(vring)?;
        }
        if !vm.event_idx() || !vring.enable_notification().map_err(io::Error::other)? {
            return Ok(());
        }
    }
}

fn process_available(
    vm: &VmBackend,
    vring: &VringRwLock,
    mem: &Arc<GuestMemoryMmap>,
    kind: Kind,
) -> io::Result<()> {
    let chains: Vec<Chain> = match vring.get_mut().get_queue_mut().iter(mem.as_ref()) {
        Ok(iter) => iter.collect(),
        Err(e) => {
            // A corrupt avail ring is the guest's own problem; keep serving the other queue.
            warn!("{}: {kind:?} queue unusable: {e}", vm.name);
            return Ok(());
        }
    };
    if chains.is_empty() {
        return Ok(());
    }
    for chain in chains {
        let head = chain.head_index();
        let written = match kind {
            Kind::Control => control_chain(vm, vring, mem, chain, head)?,
            Kind::Cursor => Some(cursor_chain(vm, mem, chain)),
        };
        if let Some(written) = written {
            vring.add_used(head, written).map_err(io::Error::other)?;
        }
    }
    if vring.needs_notification().map_err(io::Error::other)? {
        vring.signal_used_queue()?;
    }
    Ok(())
}

/// Handles one control request. Returns the number of response bytes written, or None when the
/// answer is parked behind a fence.
fn control_chain(
    vm: &VmBackend,
    vring: &VringRwLock,
    mem: &Arc<GuestMemoryMmap>,
    chain: Chain,
    head: u16,
) -> io::Result<Option<u32>> {
    let Some((bytes, mut writer)) = read_chain(vm, mem.as_ref(), chain, MAX_REQUEST_BYTES) else {
        return Ok(Some(0));
    };
    let req = match Request::decode(&bytes, &Limits::default()) {
        Ok(req) => req,
        Err(e) => {
            warn!("{}: bad request: {e}", vm.name);
            let hdr = CtrlHeader::decode(&bytes).unwrap_or_default();
            let response = Response::Err(e.error_code()).encode(&hdr);
            return Ok(Some(write_response(vm, &mut writer, &response)));
        }
    };
    vm.refresh_display(&req.cmd);
    let mut outcome = vm.device().handle(&req, mem);
    // The device lock is released: the frontend may now be asked to change the window.
    if !outcome.shmem.is_empty() && !vm.apply_shmem(std::mem::take(&mut outcome.shmem)) {
        outcome.response = Response::Err(ErrorCode::Unspec);
    }
    vm.show(&outcome.display);
    // The response bytes go to guest memory now; the guest sees them once the chain is used.
    let written = write_response(vm, &mut writer, &outcome.response.encode(&req.hdr));
    if let Some(ctx) = outcome.closed_context {
        vm.answer_closed_context(vring, ctx)?;
    }
    Ok(match outcome.fence {
        Some((timeline, fence)) => {
            vm.park(timeline, fence, (head, written));
            None
        }
        None => Some(written),
    })
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
        Err(e) => warn!("{}: bad cursor request: {e}", vm.name),
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
            warn!("{}: malformed descriptor chain: {e}", vm.name);
            return None;
        }
    };
    let len = reader.available_bytes().min(cap);
    let mut bytes = Vec::with_capacity(len);
    if let Err(e) = reader.take(len as u64).read_to_end(&mut bytes) {
        warn!("{}: cannot read request: {e}", vm.name);
        return None;
    }
    Some((bytes, writer))
}

fn write_response(vm: &VmBackend, writer: &mut Writer, response: &[u8]) -> u32 {
    let room = writer.available_bytes();
    if room < response.len() {
        warn!(
            "{}: response of {} bytes truncated to {room}",
            vm.name,
            response.len()
        );
    }
    let part = response.get(..room.min(response.len())).unwrap_or_default();
    match writer.write_all(part) {
        Ok(()) => u32::try_from(part.len()).unwrap_or(0),
        Err(e) => {
            warn!("{}: cannot write response: {e}", vm.name);
            0
        }
    }
}
