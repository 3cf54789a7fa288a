//! The driver (guest) side of one split virtqueue: rings in guest memory, descriptor slots,
//! avail publishing and used-ring draining.
//!
//! Descriptors are handed out in pairs: slot `k` owns descriptors `2k` (readable request) and
//! `2k + 1` (writable response), and a data buffer of `SLOT_BYTES` for both. The head of
//! slot `k` is therefore always `2k`, which is how used elements are matched back.

use std::io;
use std::sync::atomic::{fence, Ordering};

use vhost::VringConfigData;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::memory::GuestMem;
use crate::util::err;

/// Per-slot data buffer (request followed by response) in guest memory.
pub(crate) const SLOT_BYTES: u64 = 16 * 1024;

pub const DESC_F_NEXT: u16 = 1;
pub const DESC_F_WRITE: u16 = 2;
pub const DESC_F_INDIRECT: u16 = 4;

/// A raw split-ring descriptor.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Desc {
    pub addr: u64,
    pub len: u32,
    pub flags: u16,
    pub next: u16,
}

impl Desc {
    fn to_bytes(self) -> [u8; 16] {
        let mut b = [0u8; 16];
        b[0..8].copy_from_slice(&self.addr.to_le_bytes());
        b[8..12].copy_from_slice(&self.len.to_le_bytes());
        b[12..14].copy_from_slice(&self.flags.to_le_bytes());
        b[14..16].copy_from_slice(&self.next.to_le_bytes());
        b
    }
}

#[derive(Default)]
pub(crate) struct Slot {
    pub busy: bool,
    /// Its token timed out; free the slot whenever the backend finally returns it.
    pub abandoned: bool,
    pub done: Option<u32>,
    /// Bumped on every reuse so stale tokens are detected.
    pub gen: u32,
    pub resp: u64,
    pub cap: u32,
    /// Buffers came from the shared big-request arena instead of the slot buffer.
    pub big: bool,
}

fn align_up(v: u64, a: u64) -> u64 {
    (v + a - 1) & !(a - 1)
}

fn ring_bytes(size: u16) -> u64 {
    let n = size as u64;
    let used = align_up(16 * n + 6 + 2 * n, 4096);
    align_up(used + 6 + 8 * n, 4096)
}

pub(crate) struct Vring {
    size: u16,
    desc: u64,
    avail: u64,
    used: u64,
    data: u64,
    pub kick: EventFd,
    pub call: EventFd,
    avail_idx: u16,
    used_seen: u16,
    event_idx: bool,
    free: Vec<u16>,
    pub slots: Vec<Slot>,
    /// Used elements that matched no outstanding slot: (id, len).
    pub stray: Vec<(u32, u32)>,
}

impl Vring {
    /// Guest memory one queue of `size` needs (page aligned).
    pub fn reserved_bytes(size: u16) -> u64 {
        ring_bytes(size) + (size as u64 / 2) * SLOT_BYTES
    }

    /// A queue whose rings and slot buffers start at `base` (page aligned, zeroed memory).
    pub fn new(size: u16, base: u64, event_idx: bool) -> io::Result<Vring> {
        if size < 2 || !size.is_power_of_two() {
            return Err(err(
                io::ErrorKind::InvalidInput,
                format!("queue size {size} must be a power of two >= 2"),
            ));
        }
        let n = size as u64;
        let slots = size / 2;
        Ok(Vring {
            size,
            desc: base,
            avail: base + 16 * n,
            used: base + align_up(16 * n + 6 + 2 * n, 4096),
            data: base + ring_bytes(size),
            kick: EventFd::new(EFD_NONBLOCK)?,
            call: EventFd::new(EFD_NONBLOCK)?,
            avail_idx: 0,
            used_seen: 0,
            event_idx,
            // Pop from the end: hand out low slots first.
            free: (0..slots).rev().collect(),
            slots: (0..slots).map(|_| Slot::default()).collect(),
            stray: Vec::new(),
        })
    }

    pub fn size(&self) -> u16 {
        self.size
    }

    /// Where the rings start, and how many bytes they take (the slot buffers follow).
    pub fn rings(&self) -> (u64, u64) {
        (self.desc, ring_bytes(self.size))
    }

    pub fn event_idx(&self) -> bool {
        self.event_idx
    }

    pub fn config(&self, mem: &GuestMem) -> VringConfigData {
        VringConfigData {
            queue_max_size: self.size,
            queue_size: self.size,
            flags: 0,
            desc_table_addr: mem.host_addr(self.desc),
            used_ring_addr: mem.host_addr(self.used),
            avail_ring_addr: mem.host_addr(self.avail),
            log_addr: None,
        }
    }

    pub fn alloc_slot(&mut self) -> Option<u16> {
        let s = self.free.pop()?;
        let slot = &mut self.slots[s as usize];
        slot.busy = true;
        slot.abandoned = false;
        slot.done = None;
        slot.gen = slot.gen.wrapping_add(1);
        Some(s)
    }

    pub fn free_slot(&mut self, s: u16) {
        let slot = &mut self.slots[s as usize];
        debug_assert!(slot.busy);
        slot.busy = false;
        slot.done = None;
        self.free.push(s);
    }

    pub fn slot_buf(&self, s: u16) -> u64 {
        self.data + s as u64 * SLOT_BYTES
    }

    pub fn write_desc(&self, mem: &GuestMem, idx: u16, d: Desc) {
        assert!(idx < self.size, "descriptor index {idx} out of table");
        mem.write(self.desc + 16 * idx as u64, &d.to_bytes());
    }

    /// Puts `head` in the next avail entry and makes it visible to the backend.
    pub fn publish(&mut self, mem: &GuestMem, head: u16) {
        let pos = (self.avail_idx % self.size) as u64;
        mem.write_u16(self.avail + 4 + 2 * pos, head);
        self.avail_idx = self.avail_idx.wrapping_add(1);
        // Release: descriptors and the ring entry are visible before the new index.
        mem.store(self.avail_idx.to_le(), self.avail + 2, Ordering::Release);
    }

    pub fn kick(&self) -> io::Result<()> {
        self.kick.write(1)
    }

    /// Hostile: moves the published avail index `ahead` entries past the real one, promising
    /// chains that were never written.
    pub fn bump_avail_idx(&mut self, mem: &GuestMem, ahead: u16) {
        let idx = self.avail_idx.wrapping_add(ahead);
        mem.store(idx.to_le(), self.avail + 2, Ordering::Release);
    }

    /// With EVENT_IDX, asks to be notified for the next used element. Callers re-check the
    /// used ring after this before sleeping.
    pub fn arm(&self, mem: &GuestMem) {
        if self.event_idx {
            let used_event = self.avail + 4 + 2 * self.size as u64;
            mem.store(self.used_seen.to_le(), used_event, Ordering::Release);
            fence(Ordering::SeqCst);
        }
    }

    /// Consumes new used elements. Returns how many abandoned big-arena slots were freed.
    pub fn drain(&mut self, mem: &GuestMem) -> io::Result<usize> {
        let idx = u16::from_le(mem.load::<u16>(self.used + 2, Ordering::Acquire));
        let new = idx.wrapping_sub(self.used_seen);
        if new > self.size {
            return Err(err(
                io::ErrorKind::InvalidData,
                format!(
                    "backend moved used.idx from {} to {idx}: more than the queue size {}",
                    self.used_seen, self.size
                ),
            ));
        }
        let mut released_big = 0;
        for _ in 0..new {
            let elem = self.used + 4 + 8 * (self.used_seen % self.size) as u64;
            let id = mem.read_u32(elem);
            let len = mem.read_u32(elem + 4);
            self.used_seen = self.used_seen.wrapping_add(1);
            let s = (id / 2) as usize;
            let matches = id.is_multiple_of(2)
                && s < self.slots.len()
                && self.slots[s].busy
                && self.slots[s].done.is_none();
            if !matches {
                self.stray.push((id, len));
                continue;
            }
            self.slots[s].done = Some(len);
            if self.slots[s].abandoned {
                if self.slots[s].big {
                    released_big += 1;
                }
                self.free_slot(s as u16);
            }
        }
        Ok(released_big)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_fits_reservation() {
        for size in [2u16, 16, 256, 1024] {
            let v = Vring::new(size, 0, false).unwrap();
            assert_eq!(v.data, ring_bytes(size));
            assert!(v.used >= v.avail + 6 + 2 * size as u64);
            assert!(v.data >= v.used + 6 + 8 * size as u64);
            assert_eq!(
                Vring::reserved_bytes(size),
                v.data + (size as u64 / 2) * SLOT_BYTES
            );
        }
        assert!(Vring::new(3, 0, false).is_err());
    }

    #[test]
    fn desc_encoding() {
        let d = Desc {
            addr: 0x1122334455667788,
            len: 0x99aabbcc,
            flags: 3,
            next: 0x0102,
        };
        let b = d.to_bytes();
        assert_eq!(&b[..8], &0x1122334455667788u64.to_le_bytes());
        assert_eq!(&b[8..12], &0x99aabbccu32.to_le_bytes());
        assert_eq!(&b[12..], &[3, 0, 2, 1]);
    }
}
