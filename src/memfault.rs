//! Guest memory that shrinks under the daemon costs only its VM.
//!
//! A VMM whose guest RAM is a file it can resize (QEMU's memory-backend-file, hugetlbfs, an
//! unsealed memfd) may truncate it after its memory table was checked; the daemon's next read
//! or write of a page past the new end raises SIGBUS, whose default action ends the process
//! and with it every VM. So the broker installs a SIGBUS handler at start (`install`) and keeps a
//! table of the guest memory it has mapped (`watch`, for each memory table a VM's queues use).
//! A fault inside one of those mappings is repaired in the handler: anonymous zero pages are
//! mapped over the whole mapping (MAP_FIXED), the mapping is marked, and the faulting access
//! then goes on and reads zeros. The VM's queue thread sees the mark after the request
//! (`Owner::lost`) and disconnects that VM. A fault anywhere else stays fatal: the action that
//! was there before is put back, and the access faults again under it.
//!
//! The handler may only use async-signal-safe calls and lock-free atomics, so the table is a
//! fixed array of atomic slots. A mapping is unmapped when the last holder of its table (the
//! vhost library, the queues, a resource's backing) drops it, on any thread; so the table keeps
//! a reference of its own and lets go (`sweep`) only when it is the last holder, after taking
//! the slots out and waiting for any handler still running: no handler can map over an address
//! that was unmapped meanwhile and perhaps reused.
//!
//! No crate does this: signal-hook refuses SIGBUS (a fault signal must be repaired in place or
//! it loops), and nix's `sigaction` adds nothing over libc's here.

use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex, OnceLock};

use vm_memory::{GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

use crate::sync::lock;

/// Mappings watched at once, over all VMs: a table has up to 8 regions (more with memory slots),
/// and a VM holds its current table and those its resources' backings still use.
const SLOTS: usize = 16384;

/// A slot's states. A slot goes FREE -> CLAIMED (being filled) -> LIVE -> RETIRING (no longer
/// matched; waiting for running handlers) -> FREE.
const FREE: u8 = 0;
const CLAIMED: u8 = 1;
const LIVE: u8 = 2;
const RETIRING: u8 = 3;

struct Slot {
    state: AtomicU8,
    /// Host address and length of the mapping.
    start: AtomicUsize,
    len: AtomicUsize,
    /// The VM whose memory this is.
    owner: AtomicU64,
    /// Where the region starts in guest memory (for the log line).
    gpa: AtomicU64,
    /// Set by the handler: the mapping lost pages and reads as zeros now.
    hit: AtomicBool,
}

#[allow(clippy::declare_interior_mutable_const)] // only used to initialise `TABLE`
const EMPTY: Slot = Slot {
    state: AtomicU8::new(FREE),
    start: AtomicUsize::new(0),
    len: AtomicUsize::new(0),
    owner: AtomicU64::new(0),
    gpa: AtomicU64::new(0),
    hit: AtomicBool::new(false),
};

static TABLE: [Slot; SLOTS] = [EMPTY; SLOTS];
/// Handlers running now: a slot is freed only once this was seen at 0 after it stopped matching.
static ACTIVE: AtomicUsize = AtomicUsize::new(0);
/// Faults repaired so far: lets `Owner::lost` skip the table scan when nothing happened.
static FAULTS: AtomicU64 = AtomicU64::new(0);
static NEXT_OWNER: AtomicU64 = AtomicU64::new(1);
/// The SIGBUS action before ours: put back for faults that are not in guest memory.
static PREVIOUS: OnceLock<libc::sigaction> = OnceLock::new();
/// The memory tables watched, each with its slots; see `sweep`.
static KEPT: Mutex<Vec<Kept>> = Mutex::new(Vec::new());

struct Kept {
    table: Arc<GuestMemoryMmap>,
    slots: Vec<usize>,
}

/// The VM a watched mapping belongs to; one per connection, never reused.
#[derive(Debug)]
pub struct Owner {
    id: u64,
    /// The fault count this owner last looked at.
    seen: AtomicU64,
}

/// Where a VM's guest memory was lost: the guest address of the region.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Lost {
    pub gpa: u64,
}

impl Owner {
    pub fn new() -> Owner {
        Owner {
            id: NEXT_OWNER.fetch_add(1, SeqCst),
            seen: AtomicU64::new(0),
        }
    }

    /// A mapping of this VM's guest memory that faulted (and now reads as zeros), if any.
    pub fn lost(&self) -> Option<Lost> {
        let faults = FAULTS.load(SeqCst);
        if self.seen.load(SeqCst) == faults {
            return None;
        }
        let found = TABLE.iter().find(|s| {
            matches!(s.state.load(SeqCst), LIVE | RETIRING)
                && s.owner.load(SeqCst) == self.id
                && s.hit.load(SeqCst)
        });
        match found {
            Some(s) => Some(Lost {
                gpa: s.gpa.load(SeqCst),
            }),
            None => {
                self.seen.store(faults, SeqCst);
                None
            }
        }
    }
}

impl Default for Owner {
    fn default() -> Self {
        Owner::new()
    }
}

/// Installs the handler; once, before any guest memory is mapped.
pub fn install() -> io::Result<()> {
    // SAFETY: sigaction with a zeroed struct filled in here; the handler only uses
    // async-signal-safe calls (see `on_sigbus`).
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = on_sigbus as *const () as usize;
        action.sa_flags = libc::SA_SIGINFO;
        libc::sigemptyset(&mut action.sa_mask);
        let mut previous: libc::sigaction = std::mem::zeroed();
        // Kept before ours is in force: the handler reads it.
        if libc::sigaction(libc::SIGBUS, std::ptr::null(), &mut previous) != 0 {
            return Err(io::Error::last_os_error());
        }
        if PREVIOUS.set(previous).is_err() {
            return Ok(());
        }
        if libc::sigaction(libc::SIGBUS, &action, std::ptr::null_mut()) != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Watches every region of `table` for `owner` until nobody else holds the table. Fails when
/// the slots are all taken (the table must then not be used).
pub fn watch(table: &Arc<GuestMemoryMmap>, owner: &Owner) -> Result<(), String> {
    sweep();
    let mut kept = lock(&KEPT);
    if kept.iter().any(|k| Arc::ptr_eq(&k.table, table)) {
        return Ok(());
    }
    let mut slots = Vec::new();
    for region in table.iter() {
        let start = region.as_ptr() as usize;
        let len = region.len() as usize;
        match claim(start, len, owner.id, region.start_addr().0) {
            Some(i) => slots.push(i),
            None => {
                release(&slots);
                return Err(format!(
                    "the daemon watches {SLOTS} guest memory mappings already"
                ));
            }
        }
    }
    kept.push(Kept {
        table: table.clone(),
        slots,
    });
    Ok(())
}

/// Lets go of the tables nobody else holds: their slots first, then (their mappings unmapped)
/// the tables.
pub fn sweep() {
    let done: Vec<Kept> = {
        let mut kept = lock(&KEPT);
        let (done, live) = std::mem::take(&mut *kept)
            .into_iter()
            .partition(|k| Arc::strong_count(&k.table) == 1);
        *kept = live;
        done
    };
    for k in done {
        release(&k.slots);
        // Dropped here, after no handler can match its mappings any more.
        drop(k.table);
    }
}

fn claim(start: usize, len: usize, owner: u64, gpa: u64) -> Option<usize> {
    let i = TABLE.iter().position(|s| {
        s.state
            .compare_exchange(FREE, CLAIMED, SeqCst, SeqCst)
            .is_ok()
    })?;
    let s = TABLE.get(i)?;
    s.start.store(start, SeqCst);
    s.len.store(len, SeqCst);
    s.owner.store(owner, SeqCst);
    s.gpa.store(gpa, SeqCst);
    s.hit.store(false, SeqCst);
    s.state.store(LIVE, SeqCst);
    Some(i)
}

/// Stops matching `slots`, waits until no handler that may have matched them still runs, and
/// frees them. The mappings may be unmapped once this returned.
fn release(slots: &[usize]) {
    for s in slots.iter().filter_map(|&i| TABLE.get(i)) {
        s.state.store(RETIRING, SeqCst);
    }
    // A handler runs for the time of a few system calls.
    while ACTIVE.load(SeqCst) != 0 {
        std::thread::yield_now();
    }
    for s in slots.iter().filter_map(|&i| TABLE.get(i)) {
        s.state.store(FREE, SeqCst);
    }
}

/// The SIGBUS handler: only atomics, mmap and sigaction (async-signal-safe).
extern "C" fn on_sigbus(_sig: libc::c_int, info: *mut libc::siginfo_t, _ctx: *mut libc::c_void) {
    // SAFETY: errno is this thread's; it is put back before returning, as the interrupted code
    // may be between a call and its errno check.
    let errno = unsafe { *libc::__errno_location() };
    ACTIVE.fetch_add(1, SeqCst);
    let repaired = !info.is_null() && {
        // SAFETY: the kernel passes a valid siginfo with SA_SIGINFO.
        let (code, addr) = unsafe { ((*info).si_code, (*info).si_addr() as usize) };
        // BUS_ADRERR is a page past the end of its file; a signal sent by kill() is not a fault.
        code == libc::BUS_ADRERR && repair(addr)
    };
    ACTIVE.fetch_sub(1, SeqCst);
    if !repaired {
        // Not guest memory: the action before ours (Rust's own, or the default) takes the fault
        // again when the access is retried on return.
        if let Some(previous) = PREVIOUS.get() {
            // SAFETY: puts back the action sigaction itself reported at `install`.
            unsafe { libc::sigaction(libc::SIGBUS, previous, std::ptr::null_mut()) };
        }
    }
    // SAFETY: see above.
    unsafe { *libc::__errno_location() = errno };
}

/// Maps zeros over the watched mapping that holds `addr`, and marks it; false if none does.
fn repair(addr: usize) -> bool {
    for s in &TABLE {
        // Slots freed while this handler runs wait for it (ACTIVE), so a LIVE slot's mapping
        // is still there.
        if s.state.load(SeqCst) != LIVE {
            continue;
        }
        let start = s.start.load(SeqCst);
        let len = s.len.load(SeqCst);
        if addr < start || addr - start >= len {
            continue;
        }
        // The whole mapping: a hugetlbfs mapping can only be replaced in whole huge pages, and
        // the VM is disconnected anyway. Private, so nothing written to it reaches anyone.
        // SAFETY: replaces pages of a mapping the daemon made and still holds (see above).
        let mapped = unsafe {
            libc::mmap(
                start as *mut libc::c_void,
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_FIXED | libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if mapped == libc::MAP_FAILED {
            return false;
        }
        s.hit.store(true, SeqCst);
        FAULTS.fetch_add(1, SeqCst);
        return true;
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs::File;
    use std::os::fd::FromRawFd;
    use std::os::unix::process::ExitStatusExt;
    use std::process::{Command, ExitStatus};
    use vm_memory::{Bytes, FileOffset, GuestAddress, GuestRegionMmap};

    /// Set in the copy of this test binary that runs a case (the handler is process-wide, and
    /// one case must die).
    const CASE: &str = "VGPUD_MEMFAULT_CASE";
    const GPA: u64 = 0x10_0000;

    /// Runs `case` (see `case`) in a fresh copy of this test binary: its status, and what it
    /// printed.
    fn run(case: &str) -> (ExitStatus, String) {
        let exe = std::env::current_exe().expect("test binary");
        let out = Command::new(exe)
            .args(["--exact", "memfault::tests::case", "--test-threads=1"])
            .env(CASE, case)
            .output()
            .expect("run the test binary");
        let printed = String::from_utf8_lossy(&[out.stdout, out.stderr].concat()).into_owned();
        (out.status, printed)
    }

    /// A two-page memory table over a memfd that is then shrunk to one page.
    fn shrunk_table() -> (Arc<GuestMemoryMmap>, File) {
        // SAFETY: a valid C string; the descriptor is checked, then owned by the File.
        let fd = unsafe { libc::memfd_create(c"memfault-test".as_ptr(), libc::MFD_CLOEXEC) };
        assert!(fd >= 0);
        // SAFETY: see above.
        let file = unsafe { File::from_raw_fd(fd) };
        file.set_len(8192).unwrap();
        let region = GuestRegionMmap::from_range(
            GuestAddress(GPA),
            8192,
            Some(FileOffset::new(file.try_clone().unwrap(), 0)),
        )
        .unwrap();
        let table = Arc::new(GuestMemoryMmap::from_regions(vec![region]).unwrap());
        table.write_slice(&[7; 8192], GuestAddress(GPA)).unwrap();
        file.set_len(4096).unwrap();
        (table, file)
    }

    /// Does nothing in a normal run; in a copy started by `run`, the case named by `CASE`.
    #[test]
    fn case() {
        let Ok(case) = std::env::var(CASE) else {
            return;
        };
        install().unwrap();
        let (table, _file) = shrunk_table();
        let (other, _other_file) = shrunk_table();
        let owner = Owner::new();
        watch(&table, &owner).unwrap();
        match case.as_str() {
            "watched" => {
                assert_eq!(owner.lost(), None);
                let mut past_the_end = [1u8; 16];
                table
                    .read_slice(&mut past_the_end, GuestAddress(GPA + 4096))
                    .unwrap();
                // Zeros, and the whole mapping reads as zeros since.
                assert_eq!(past_the_end, [0; 16]);
                assert_eq!(table.read_obj::<u8>(GuestAddress(GPA)).unwrap(), 0);
                assert_eq!(owner.lost(), Some(Lost { gpa: GPA }));
                assert_eq!(Owner::new().lost(), None, "another VM lost nothing");
                table.write_obj(1u8, GuestAddress(GPA + 4096)).unwrap();
                std::process::exit(0);
            }
            "unwatched" => {
                // Not guest memory of any VM: this must end the process with SIGBUS.
                let _ = other.read_obj::<u8>(GuestAddress(GPA + 4096));
                std::process::exit(3);
            }
            _ => std::process::exit(4),
        }
    }

    #[test]
    fn a_fault_in_watched_guest_memory_is_repaired_and_reported() {
        let (status, printed) = run("watched");
        assert!(status.success(), "{status:?}\n{printed}");
    }

    #[test]
    fn a_fault_anywhere_else_still_ends_the_process() {
        let (status, printed) = run("unwatched");
        assert_eq!(status.signal(), Some(libc::SIGBUS), "{status:?}\n{printed}");
    }

    #[test]
    fn tables_are_let_go_once_nobody_else_holds_them() {
        let (table, _file) = shrunk_table();
        let owner = Owner::new();
        watch(&table, &owner).unwrap();
        watch(&table, &owner).unwrap();
        let watched = |t: &Arc<GuestMemoryMmap>| {
            lock(&KEPT)
                .iter()
                .filter(|k| Arc::ptr_eq(&k.table, t))
                .map(|k| k.slots.len())
                .sum::<usize>()
        };
        assert_eq!(watched(&table), 1, "watched once, one region");
        sweep();
        assert_eq!(watched(&table), 1, "still held here");
        let weak = Arc::downgrade(&table);
        drop(table);
        sweep();
        assert!(weak.upgrade().is_none(), "the mapping was not let go");
    }
}
