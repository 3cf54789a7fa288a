//! The memory budget for shared buffers: pins, and moving unpinned buffers out and back.
//!
//! What counts is shared memory the daemon owns (host blobs of the broker's renderer, a sealed
//! memfd each): a renderer's memory cannot be moved behind its back, so such exports are always
//! pinned and not counted. When the daemon's shared memory exceeds the budget, unpinned buffers
//! are moved out, least recently mapped first:
//!
//! 1. each one is marked moving, so that nothing maps it meanwhile (a MAP_BLOB of it fails);
//! 2. every VM attached to it is asked whether it is busy (the exporter maps it, or a scanout
//!    shows it): a busy buffer is skipped, never waited for;
//! 3. every dynamic importer's mappings are removed (SHMEM_UNMAP) and it gets a MOVED event;
//! 4. the contents go to an unlinked file in the eviction directory and the memory is released
//!    (the memfd's pages are punched out).
//!
//! No renderer context can touch these buffers (the broker's renderer has none), so there are
//! no submissions to hold and no reservation fences to wait for; both steps of the general move
//! protocol are empty here. A buffer comes back (contents restored bit for bit) before any
//! MAP_BLOB or pin of it completes; it may push another buffer out in turn, but is never moved
//! out by the pass its own use triggered (the budget may then be exceeded while everything else
//! is pinned or busy).
//!
//! Pinned buffers (explicit pins, static imports) never move; pinning more than the budget
//! holds is refused at pin time.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use log::{debug, warn};
use vgpud_protocol::share::{Status, Uuid};

use super::share::{Export, ShareClient, ShareRegistry};
use crate::device::share::SharedStorage;
use crate::ids::VmId;
use crate::sync::lock;

/// The most shared memory of the daemon's own that stays resident, and where the rest goes.
#[derive(Clone, Debug)]
pub struct Budget {
    pub limit: u64,
    pub dir: PathBuf,
}

/// Buffers moved out and brought back so far.
#[derive(Default)]
pub struct MoveCounts {
    pub evictions: std::sync::atomic::AtomicU64,
    pub restores: std::sync::atomic::AtomicU64,
}

/// Sharing as a whole: exported buffers, the daemon's own shared memory that is resident and
/// pinned, the budget, moves so far.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ShareStats {
    pub exports: u64,
    pub resident_bytes: u64,
    pub pinned_bytes: u64,
    pub budget_bytes: Option<u64>,
    pub evictions: u64,
    pub restores: u64,
}

pub enum Place {
    Resident,
    /// Being moved out or back: not mappable meanwhile.
    Moving,
    /// Moved out to this (unlinked) file.
    Evicted(File),
}

/// Bytes of movable buffers that are pinned.
pub(super) fn pinned_bytes<'a>(exports: impl IntoIterator<Item = (&'a Uuid, &'a Export)>) -> u64 {
    exports
        .into_iter()
        .filter(|(_, e)| e.movable && e.pinned())
        .map(|(_, e)| e.storage.size)
        .sum()
}

fn resident_bytes<'a>(exports: impl IntoIterator<Item = (&'a Uuid, &'a Export)>) -> u64 {
    exports
        .into_iter()
        .filter(|(_, e)| e.movable && !matches!(e.place, Place::Evicted(_)))
        .map(|(_, e)| e.storage.size)
        .sum()
}

const CHUNK: usize = 1 << 20;

/// Copies `len` bytes at `offset` of `from` to `offset` of `to`.
fn copy(from: &File, to: &File, offset: u64, len: u64) -> io::Result<()> {
    let mut buf = vec![0u8; CHUNK.min(len as usize)];
    let mut done = 0u64;
    while done < len {
        let n = buf.len().min((len - done) as usize);
        let part = buf.get_mut(..n).ok_or_else(|| io::Error::other("chunk"))?;
        from.read_exact_at(part, offset + done)?;
        to.write_all_at(part, offset + done)?;
        done += n as u64;
    }
    Ok(())
}

/// Gives the pages of `file` in [offset, offset + len) back to the system; they read as zero.
fn release(file: &File, offset: u64, len: u64) -> io::Result<()> {
    let (off, len) = (
        libc::off_t::try_from(offset).map_err(io::Error::other)?,
        libc::off_t::try_from(len).map_err(io::Error::other)?,
    );
    // SAFETY: fallocate on a descriptor we hold; no memory is passed.
    let r = unsafe {
        libc::fallocate(
            file.as_raw_fd(),
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            off,
            len,
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

impl ShareRegistry {
    /// Sharing as a whole, for operators.
    pub fn stats(&self) -> ShareStats {
        let shares = lock(&self.shares);
        ShareStats {
            exports: shares.exports.len() as u64,
            resident_bytes: resident_bytes(shares.exports.iter()),
            pinned_bytes: pinned_bytes(shares.exports.iter()),
            budget_bytes: self.budget.as_ref().map(|b| b.limit),
            evictions: self.moves.evictions.load(Ordering::Relaxed),
            restores: self.moves.restores.load(Ordering::Relaxed),
        }
    }

    /// Makes `uuid`'s contents resident (restoring them if they were moved out) and marks it
    /// used now. Fails while it is being moved.
    pub fn ensure_resident(&self, uuid: &Uuid) -> Result<(), Status> {
        let (evicted, storage) = {
            let mut shares = lock(&self.shares);
            shares.tick += 1;
            let tick = shares.tick;
            let export = shares.exports.get_mut(uuid).ok_or(Status::NoSuch)?;
            export.last_use = tick;
            match std::mem::replace(&mut export.place, Place::Moving) {
                Place::Resident => {
                    export.place = Place::Resident;
                    return Ok(());
                }
                Place::Moving => return Err(Status::NoSpace),
                Place::Evicted(file) => (file, export.storage.clone()),
            }
        };
        let restored = copy(&evicted, &storage.file, storage.offset, storage.size);
        let mut shares = lock(&self.shares);
        let Some(export) = shares.exports.get_mut(uuid) else {
            return Err(Status::NoSuch);
        };
        match restored {
            Ok(()) => {
                export.place = Place::Resident;
                self.moves.restores.fetch_add(1, Ordering::Relaxed);
                Ok(())
            }
            Err(e) => {
                if worth_logging() {
                    warn!("share: cannot restore a moved buffer: {e}");
                }
                export.place = Place::Evicted(evicted);
                Err(Status::NoSpace)
            }
        }
    }

    /// A pin of `vm` on `uuid`: it stays resident and never moves until unpinned.
    pub(super) fn pin_export(&self, vm: VmId, uuid: &Uuid) -> Result<(), Status> {
        self.ensure_resident(uuid)?;
        let mut shares = lock(&self.shares);
        let pinned = pinned_bytes(&shares.exports);
        let export = shares.exports.get_mut(uuid).ok_or(Status::NoSuch)?;
        let limit = self.budget.as_ref().map(|b| b.limit);
        if export.movable
            && !export.pinned()
            && limit.is_some_and(|l| pinned + export.storage.size > l)
        {
            return Err(Status::NoSpace);
        }
        *export.pins.entry(vm).or_default() += 1;
        Ok(())
    }

    pub(super) fn unpin_export(&self, vm: VmId, uuid: &Uuid) {
        if let Some(export) = lock(&self.shares).exports.get_mut(uuid) {
            if let Some(n) = export.pins.get_mut(&vm) {
                *n -= 1;
                if *n == 0 {
                    export.pins.remove(&vm);
                }
            }
        }
    }

    /// Moves unpinned, idle buffers out, least recently used first, until the daemon's shared
    /// memory fits the budget (or nothing more can move). Call it with no VM's lock held: it asks
    /// the VMs attached to each buffer.
    pub fn enforce_budget(&self) {
        let Some(budget) = &self.budget else {
            return;
        };
        let mut skipped: Vec<Uuid> = Vec::new();
        loop {
            let (uuid, storage, attached) = {
                let mut shares = lock(&self.shares);
                if resident_bytes(&shares.exports) <= budget.limit {
                    return;
                }
                // The most recently used buffer is in use right now (its mapping or pin is
                // what got us here): never the one to go.
                let newest = shares.exports.values().map(|e| e.last_use).max();
                let lru = (shares.exports.iter())
                    .filter(|(u, e)| {
                        e.movable
                            && !e.pinned()
                            && matches!(e.place, Place::Resident)
                            && Some(e.last_use) != newest
                            && !skipped.contains(u)
                    })
                    .min_by_key(|(_, e)| e.last_use)
                    .map(|(u, _)| *u);
                let Some(uuid) = lru else {
                    return;
                };
                let Some(export) = shares.exports.get_mut(&uuid) else {
                    return;
                };
                export.place = Place::Moving;
                let storage = export.storage.clone();
                let vms: Vec<VmId> = std::iter::once(export.exporter)
                    .chain(export.importers.keys().copied())
                    .collect();
                let attached: Vec<Arc<dyn ShareClient>> =
                    vms.iter().filter_map(|vm| shares.client(*vm)).collect();
                (uuid, storage, attached)
            };
            if attached.iter().any(|c| !c.can_move(&uuid)) {
                // Busy: skipped, not waited for.
                self.settle(&uuid, Place::Resident);
                skipped.push(uuid);
                continue;
            }
            for client in &attached {
                client.moved(&uuid);
            }
            match self.move_out(&storage, &budget.dir) {
                Ok(file) => {
                    // Debug only: a guest can make moves happen as often as it maps.
                    debug!(
                        "share: moved out a {} KiB buffer (over the budget)",
                        storage.size >> 10
                    );
                    self.moves.evictions.fetch_add(1, Ordering::Relaxed);
                    self.settle(&uuid, Place::Evicted(file));
                }
                Err(e) => {
                    if worth_logging() {
                        warn!(
                            "share: cannot move a buffer out to {}: {e}",
                            budget.dir.display()
                        );
                    }
                    self.settle(&uuid, Place::Resident);
                    return;
                }
            }
        }
    }

    fn settle(&self, uuid: &Uuid, place: Place) {
        if let Some(export) = lock(&self.shares).exports.get_mut(uuid) {
            export.place = place;
        }
    }

    /// Copies a buffer's contents to a fresh unlinked file and releases its memory.
    fn move_out(&self, storage: &SharedStorage, dir: &std::path::Path) -> io::Result<File> {
        let path = dir.join(format!(
            "vgpud-moved-{}-{:x}",
            std::process::id(),
            rand_tag()
        ));
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)?;
        std::fs::remove_file(&path)?;
        copy(&storage.file, &file, storage.offset, storage.size)?;
        release(&storage.file, storage.offset, storage.size)?;
        Ok(file)
    }
}

/// Whether to log the n-th failure to move: the 1st, 2nd, 4th, 8th... (a full eviction directory
/// would otherwise log once per request of every VM that shares).
fn worth_logging() -> bool {
    use std::sync::atomic::{AtomicU64, Ordering};
    static FAILURES: AtomicU64 = AtomicU64::new(0);
    (FAILURES.fetch_add(1, Ordering::Relaxed) + 1).is_power_of_two()
}

/// A tag that keeps concurrent moves' file names apart.
fn rand_tag() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

#[cfg(test)]
mod tests {
    use std::os::fd::FromRawFd;
    use std::sync::{Mutex, Weak};

    use super::*;
    use crate::device::share::ShareHub;
    use crate::fences::Timeline;
    use crate::hub::share::Policy;
    use crate::ids::FenceId;

    const PAGE: u64 = 4096;

    #[derive(Default)]
    struct Vm {
        busy: Mutex<bool>,
        moved: Mutex<Vec<Uuid>>,
    }

    impl ShareClient for Vm {
        fn revoked(&self, _: &Uuid) {}
        fn last_fences(
            &self,
            _: Option<Timeline>,
            record: &mut dyn FnMut(Vec<(Timeline, FenceId)>),
        ) {
            record(Vec::new());
        }
        fn share_fence_done(&self, _: FenceId) {}
        fn fence_failed(&self, _: u64) {}
        fn can_move(&self, _: &Uuid) -> bool {
            !*self.busy.lock().unwrap()
        }
        fn moved(&self, uuid: &Uuid) {
            self.moved.lock().unwrap().push(*uuid);
        }
    }

    /// A page of daemon memory filled with `fill`.
    fn page(fill: u8) -> SharedStorage {
        // SAFETY: a valid C string; the descriptor is checked and then owned by the File.
        let fd = unsafe { libc::memfd_create(c"residency-test".as_ptr(), libc::MFD_CLOEXEC) };
        assert!(fd >= 0);
        // SAFETY: just created, owned by nobody else.
        let file = unsafe { File::from_raw_fd(fd) };
        file.write_all_at(&[fill; PAGE as usize], 0).unwrap();
        SharedStorage {
            file: Arc::new(file),
            offset: 0,
            size: PAGE,
            map_info: 0,
        }
    }

    fn contents(s: &SharedStorage) -> Vec<u8> {
        let mut buf = vec![0; PAGE as usize];
        s.file.read_exact_at(&mut buf, 0).unwrap();
        buf
    }

    /// A registry with a budget, the exporter a and importer b, and the clients it holds weakly.
    type Setup = (ShareRegistry, Arc<Vm>, Arc<Vm>, Vec<Arc<dyn ShareClient>>);

    fn setup(limit_pages: u64) -> Setup {
        let policy: Policy =
            serde_json::from_str(r#"{"allow": [{"exporter": "a", "importers": ["b"]}]}"#).unwrap();
        let hub = ShareRegistry::new(policy).with_budget(Budget {
            limit: limit_pages * PAGE,
            dir: std::env::temp_dir(),
        });
        let (a, b) = (Arc::new(Vm::default()), Arc::new(Vm::default()));
        let clients: Vec<Arc<dyn ShareClient>> = vec![a.clone(), b.clone()];
        let weak = |c: &Arc<dyn ShareClient>| -> Weak<dyn ShareClient> { Arc::downgrade(c) };
        hub.join(VmId(1), "a", weak(&clients[0]));
        hub.join(VmId(2), "b", weak(&clients[1]));
        (hub, a, b, clients)
    }

    #[test]
    fn the_least_recently_used_idle_buffer_moves_out_and_comes_back_bit_exact() {
        let (hub, a, b, _keep) = setup(2);
        let pages: Vec<SharedStorage> = (1..=3).map(page).collect();
        for (i, p) in pages.iter().enumerate() {
            let uuid = [i as u8; 16];
            hub.export(VmId(1), i as u32, uuid, p.clone(), true)
                .unwrap();
            hub.import(VmId(2), &uuid, true).unwrap();
        }
        // Buffer 0 was used last, so buffer 1 is the least recently used.
        hub.ensure_resident(&[0; 16]).unwrap();
        hub.enforce_budget();
        assert_eq!(
            *b.moved.lock().unwrap(),
            vec![[1; 16]],
            "the dynamic importer was told"
        );
        assert_eq!(*a.moved.lock().unwrap(), vec![[1; 16]]);
        assert!(
            contents(&pages[1]).iter().all(|&x| x == 0),
            "its memory was released"
        );
        assert!(contents(&pages[0]).iter().all(|&x| x == 1));
        // Mapping it again brings it back as it was, and pushes the next LRU one out.
        hub.ensure_resident(&[1; 16]).unwrap();
        assert!(contents(&pages[1]).iter().all(|&x| x == 2));
        hub.enforce_budget();
        assert!(contents(&pages[2]).iter().all(|&x| x == 0));
        hub.ensure_resident(&[2; 16]).unwrap();
        assert!(contents(&pages[2]).iter().all(|&x| x == 3));
    }

    #[test]
    fn pinned_and_busy_buffers_never_move_and_pins_past_the_budget_are_refused() {
        let (hub, a, _b, _keep) = setup(1);
        let pages: Vec<SharedStorage> = (1..=3).map(page).collect();
        for (i, p) in pages.iter().enumerate() {
            hub.export(VmId(1), i as u32, [i as u8; 16], p.clone(), true)
                .unwrap();
        }
        hub.pin_export(VmId(2), &[0; 16]).unwrap();
        assert_eq!(
            hub.pin_export(VmId(2), &[1; 16]),
            Err(Status::NoSpace),
            "two pinned pages do not fit a one-page budget"
        );
        assert_eq!(
            hub.import(VmId(2), &[1; 16], false).err(),
            Some(Status::NoSpace)
        );
        // The exporter maps everything: busy, skipped, not waited for.
        *a.busy.lock().unwrap() = true;
        hub.enforce_budget();
        assert!(pages.iter().all(|p| contents(p).iter().all(|&x| x != 0)));
        *a.busy.lock().unwrap() = false;
        hub.enforce_budget();
        assert!(contents(&pages[0]).iter().all(|&x| x == 1), "pinned: stays");
        assert!(
            contents(&pages[2]).iter().all(|&x| x == 0),
            "idle: moved out"
        );
        // The refused pin touched buffer 1 last: in use, it is not the one to go.
        assert!(contents(&pages[1]).iter().all(|&x| x == 2));
        // Unpinned, buffer 0 may go too once something else needs the room.
        hub.unpin_export(VmId(2), &[0; 16]);
        hub.ensure_resident(&[2; 16]).unwrap();
        hub.enforce_budget();
        assert!(contents(&pages[0]).iter().all(|&x| x == 0));
        assert!(contents(&pages[1]).iter().all(|&x| x == 0));
        assert!(
            contents(&pages[2]).iter().all(|&x| x == 3),
            "restored bit-exact"
        );
    }
}
