//! What the interpreter knows from outside the device, and the invariants checked against it.
//!
//! The resource table here is the guest's view, built only from the device's answers (a command
//! that succeeded changed what the guest may rely on); the window is the frontend's, built only
//! from the SHMEM_MAP/UNMAP requests the device asked for; the screens are the display's, built
//! only from display commands. Each assertion is a promise of the device to a hostile guest.

use std::collections::BTreeMap;
use std::fs::File;
use std::sync::Arc;

use vgpud_protocol::{
    format, Command, ErrorCode, Rect, Response, BLOB_FLAG_USE_MAPPABLE, BLOB_MEM_GUEST,
    EDID_BLOB_SIZE, MAP_CACHE_MASK, MAX_SCANOUTS,
};

use super::{Stats, REGIONS};
use crate::device::{inside, Device, DisplayCmd, Renderer, ShmemRequest};

pub const PAGE: u64 = 4096;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    TwoD {
        width: u32,
        height: u32,
    },
    /// A guest blob (the only kind a 2D renderer can make).
    Blob {
        size: u64,
        flags: u32,
        /// Where its first backing entry starts in guest memory.
        first_addr: Option<u64>,
    },
}

#[derive(Clone, Debug)]
pub struct Res {
    pub kind: Kind,
    /// Bytes of guest memory behind it, while it has a backing.
    pub backing: Option<u64>,
    /// Its place in the window: (offset, length).
    pub mapped: Option<(u64, u64)>,
    pub uuid: Option<[u8; 16]>,
    /// What it costs against the byte quota.
    pub charge: u64,
}

/// One display output as the display sees it: `rect` of `resource` (0: dark), in the
/// resource's coordinates.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Screen {
    pub resource: u32,
    pub rect: Rect,
}

/// An update the transport will send, reading its pixels then: (scanout, resource, area).
/// An update the transport has yet to send.
pub type Pending = DisplayCmd;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Queue {
    Control,
    Cursor,
}

pub struct Model {
    pub res: BTreeMap<u32, Res>,
    /// The frontend's window: offset -> (length, resource).
    pub window: BTreeMap<u64, (u64, u32)>,
    pub screens: [Screen; MAX_SCANOUTS],
    /// Scanouts the guest may address.
    pub limit: u32,
    pub hostmem: u64,
    pub max_resources: usize,
    pub max_bytes: u64,
    memfd: Arc<File>,
    file_size: u64,
    /// What the frontend did for the request being handled.
    mapped_now: Option<(u32, u64, u64)>,
    unmapped_now: Vec<(u64, u64, u32)>,
    /// Updates announced and not yet sent.
    pub pending: Vec<Pending>,
}

/// Bytes a backing of these entries has: zero-length entries are skipped.
pub fn entry_bytes(entries: &[vgpud_protocol::MemEntry]) -> u64 {
    entries.iter().map(|e| u64::from(e.length)).sum()
}

fn rect_within(r: &Rect, width: u32, height: u32) -> bool {
    u64::from(r.x) + u64::from(r.width) <= u64::from(width)
        && u64::from(r.y) + u64::from(r.height) <= u64::from(height)
}

fn is_empty(r: &Rect) -> bool {
    r.width == 0 || r.height == 0
}

impl Model {
    pub fn new(
        limit: u32,
        hostmem: u64,
        max_resources: usize,
        max_bytes: u64,
        memfd: Arc<File>,
        file_size: u64,
    ) -> Self {
        Model {
            res: BTreeMap::new(),
            window: BTreeMap::new(),
            screens: [Screen::default(); MAX_SCANOUTS],
            limit,
            hostmem,
            max_resources,
            max_bytes,
            memfd,
            file_size,
            mapped_now: None,
            unmapped_now: Vec::new(),
            pending: Vec::new(),
        }
    }

    /// The device was reset: the guest starts over. The frontend keeps its mappings until the
    /// device tells it otherwise, with the next request.
    pub fn reset(&mut self) {
        self.res.clear();
        self.screens = [Screen::default(); MAX_SCANOUTS];
    }

    pub fn begin(&mut self) {
        self.mapped_now = None;
        self.unmapped_now.clear();
    }

    /// The frontend checks and applies one window request, as QEMU would. Returns the resource
    /// of a mapping it refused; `refuse` is the fuzzer's say on whether it fails for no reason.
    pub fn apply(&mut self, req: &ShmemRequest, refuse: bool, stats: &mut Stats) -> Option<u32> {
        match req {
            ShmemRequest::Map {
                resource_id,
                file,
                file_offset,
                shm_offset,
                len,
                ..
            } => {
                let (id, off, len) = (*resource_id, *shm_offset, *len);
                assert!(self.hostmem > 0, "a mapping without a window: {req:?}");
                assert!(
                    off.is_multiple_of(PAGE) && len.is_multiple_of(PAGE) && len > 0,
                    "unaligned window mapping {req:?}"
                );
                assert!(
                    off.checked_add(len).is_some_and(|end| end <= self.hostmem),
                    "mapping past the window ({:#x}): {req:?}",
                    self.hostmem
                );
                if let Some((&start, &(l, other))) = self.window.range(..off + len).next_back() {
                    assert!(
                        start + l <= off,
                        "{req:?} overlaps resource {other}'s mapping at {start:#x}+{l:#x}"
                    );
                }
                let res = self.res.get(&id).unwrap_or_else(|| {
                    panic!("mapping of a resource the guest does not have: {req:?}")
                });
                let Kind::Blob {
                    size,
                    flags,
                    first_addr,
                } = res.kind
                else {
                    panic!("mapping of a non-blob: {req:?}");
                };
                assert!(flags & BLOB_FLAG_USE_MAPPABLE != 0, "not mappable: {req:?}");
                assert_eq!(res.mapped, None, "mapped twice: {req:?}");
                assert_eq!(len, size.next_multiple_of(PAGE), "length is not the blob's");
                // A guest blob is mapped straight from the guest's memory file, at its pages.
                assert!(
                    Arc::ptr_eq(file, &self.memfd),
                    "not the guest's memory file"
                );
                let first = first_addr.expect("a guest blob has entries");
                let region = REGIONS
                    .iter()
                    .find(|r| first >= r.base && first - r.base < r.size)
                    .unwrap_or_else(|| panic!("first entry {first:#x} is in no region"));
                let file_start = region
                    .file_start
                    .unwrap_or_else(|| panic!("a mapping of anonymous guest memory: {req:?}"));
                assert_eq!(
                    *file_offset,
                    file_start + (first - region.base),
                    "not the blob's pages"
                );
                assert!(
                    first - region.base + size <= region.size,
                    "the blob runs out of its region: {req:?}"
                );
                // mmap() takes whole pages only: the device never asks for anything else.
                assert!(
                    file_offset.is_multiple_of(PAGE),
                    "a mapping at an unaligned file offset: {req:?}"
                );
                assert!(
                    first - region.base + len <= region.size && file_offset + len <= self.file_size,
                    "the mapping reaches past the blob's region: {req:?}"
                );
                if refuse {
                    stats.maps_refused += 1;
                    return Some(id);
                }
                self.window.insert(off, (len, id));
                self.mapped_now = Some((id, off, len));
                None
            }
            ShmemRequest::Unmap { shm_offset, len } => {
                let Some((l, id)) = self.window.remove(shm_offset) else {
                    panic!("unmapping what is not mapped: {req:?}");
                };
                assert_eq!(l, *len, "unmapping another length than mapped: {req:?}");
                self.unmapped_now.push((*shm_offset, l, id));
                None
            }
        }
    }

    /// Display commands must name scanouts the guest may address and stay inside them.
    pub fn display(&mut self, cmds: &[DisplayCmd], cmd: &Command, queue: Queue, stats: &mut Stats) {
        for d in cmds {
            match d {
                DisplayCmd::Scanout {
                    scanout,
                    width,
                    height,
                } => {
                    assert_eq!(queue, Queue::Control);
                    assert!(
                        *scanout < self.limit,
                        "scanout {scanout} out of range: {d:?}"
                    );
                    let screen = match cmd {
                        _ if (*width, *height) == (0, 0) => Screen::default(),
                        Command::SetScanout {
                            resource_id, rect, ..
                        } => Screen {
                            resource: *resource_id,
                            rect: *rect,
                        },
                        Command::SetScanoutBlob(s) => Screen {
                            resource: s.resource_id,
                            rect: s.rect,
                        },
                        _ => panic!("{cmd:?} turned scanout {scanout} on"),
                    };
                    assert!(
                        screen.resource == 0
                            || (screen.rect.width, screen.rect.height) == (*width, *height),
                        "{d:?} for {cmd:?}"
                    );
                    self.screens[*scanout as usize] = screen;
                }
                DisplayCmd::Update {
                    scanout,
                    rect,
                    resource_id,
                    area,
                } => {
                    assert!(*scanout < self.limit, "update of scanout {scanout}");
                    let screen = self.screens[*scanout as usize];
                    assert!(
                        matches!(cmd, Command::ResourceFlush { resource_id: r, .. } if r == resource_id),
                        "{cmd:?} sent {d:?}"
                    );
                    assert_eq!(
                        screen.resource, *resource_id,
                        "pixels of resource {resource_id} for scanout {scanout}, which shows {screen:?}"
                    );
                    assert!(
                        !is_empty(area) && inside(area, &screen.rect),
                        "update of {area:?} outside scanout {scanout} ({screen:?})"
                    );
                    let on_screen = Rect {
                        x: area.x - screen.rect.x,
                        y: area.y - screen.rect.y,
                        width: area.width,
                        height: area.height,
                    };
                    assert_eq!(
                        *rect, on_screen,
                        "update position for {area:?} on {screen:?}"
                    );
                    self.pending.push(d.clone());
                    stats.updates += 1;
                }
                DisplayCmd::CursorUpdate { scanout, .. } => {
                    assert!(*scanout < self.limit, "cursor on scanout {scanout}");
                    let Command::UpdateCursor(c) = cmd else {
                        panic!("{cmd:?} drew a cursor");
                    };
                    assert_eq!(queue, Queue::Cursor);
                    let res = self.res.get(&c.resource_id);
                    assert!(
                        matches!(res.map(|r| r.kind), Some(Kind::TwoD { .. })),
                        "cursor image from {:?}",
                        res.map(|r| r.kind)
                    );
                    stats.cursor_images += 1;
                }
                DisplayCmd::CursorMove { scanout, .. } => {
                    assert!(*scanout < self.limit, "cursor on scanout {scanout}");
                    assert!(matches!(cmd, Command::MoveCursor(_)));
                    assert_eq!(queue, Queue::Cursor);
                }
                DisplayCmd::CursorHide { scanout } => {
                    assert!(*scanout < self.limit, "cursor on scanout {scanout}");
                    assert!(
                        matches!(cmd, Command::UpdateCursor(c) if c.resource_id == 0),
                        "{cmd:?} hid the cursor"
                    );
                }
            }
        }
    }

    /// A control request got `resp`: check that success was allowed, and learn from it.
    pub fn observe(&mut self, cmd: &Command, resp: &Response, stats: &mut Stats) {
        let ok = !matches!(resp, Response::Err(_));
        match resp {
            Response::Err(ErrorCode::OutOfMemory) => stats.out_of_memory += 1,
            Response::Err(_) => stats.errors += 1,
            _ => stats.ok += 1,
        }
        let blobs = self.hostmem > 0;
        match cmd {
            Command::GetDisplayInfo => match resp {
                Response::OkDisplayInfo(d) => assert_eq!(d.len(), self.limit as usize),
                other => panic!("GET_DISPLAY_INFO answered {other:?}"),
            },
            Command::GetEdid { scanout } => {
                assert_eq!(ok, *scanout < self.limit, "GET_EDID {scanout}: {resp:?}");
                if let Response::OkEdid(e) = resp {
                    assert!(!e.is_empty() && e.len() <= EDID_BLOB_SIZE);
                }
            }
            Command::ResourceCreate2d {
                resource_id,
                format: f,
                width,
                height,
            } => {
                if ok {
                    self.check_new(*resource_id, cmd);
                    assert!(format::bytes_per_pixel(*f).is_some() && *width > 0 && *height > 0);
                    let charge = u64::from(*width) * u64::from(*height) * 4;
                    self.res.insert(
                        *resource_id,
                        Res {
                            kind: Kind::TwoD {
                                width: *width,
                                height: *height,
                            },
                            backing: None,
                            mapped: None,
                            uuid: None,
                            charge,
                        },
                    );
                    stats.created += 1;
                }
            }
            Command::ResourceCreateBlob(b) => {
                if ok {
                    assert!(blobs, "a blob without a window");
                    self.check_new(b.resource_id, cmd);
                    assert_eq!(b.blob_mem, BLOB_MEM_GUEST, "a host blob from a 2D renderer");
                    let bytes = entry_bytes(&b.entries);
                    assert!(b.size > 0 && bytes >= b.size, "blob larger than its pages");
                    self.res.insert(
                        b.resource_id,
                        Res {
                            kind: Kind::Blob {
                                size: b.size,
                                flags: b.blob_flags,
                                first_addr: b.entries.first().map(|e| e.addr),
                            },
                            backing: Some(bytes),
                            mapped: None,
                            uuid: None,
                            charge: 0,
                        },
                    );
                    stats.blobs += 1;
                }
            }
            Command::ResourceUnref { resource_id } => {
                if ok {
                    let res = self.live(*resource_id, cmd).clone();
                    if let Some((off, len)) = res.mapped {
                        assert!(
                            self.unmapped_now.contains(&(off, len, *resource_id)),
                            "resource {resource_id} freed while mapped at {off:#x}"
                        );
                    }
                    self.res.remove(resource_id);
                }
            }
            Command::ResourceAttachBacking {
                resource_id,
                entries,
            } => {
                if ok {
                    let res = self.live(*resource_id, cmd);
                    assert_eq!(res.backing, None, "a second backing: {cmd:?}");
                    res.backing = Some(entry_bytes(entries));
                    stats.attached += 1;
                }
            }
            Command::ResourceDetachBacking { resource_id } => {
                if ok {
                    let res = self.live(*resource_id, cmd);
                    assert!(res.backing.is_some(), "detached nothing: {cmd:?}");
                    res.backing = None;
                }
            }
            Command::TransferToHost2d {
                rect,
                offset,
                resource_id,
            } => {
                if ok {
                    let res = self.live(*resource_id, cmd).clone();
                    if !is_empty(rect) {
                        let Kind::TwoD { width, height } = res.kind else {
                            panic!("2D transfer into a blob: {cmd:?}");
                        };
                        assert!(
                            rect_within(rect, width, height),
                            "{cmd:?} outside {width}x{height}"
                        );
                        let implied =
                            (u64::from(rect.y) * u64::from(width) + u64::from(rect.x)) * 4;
                        // What lies past the backing is not copied (the renderer is only given
                        // the backing's pages); but there must be a backing.
                        assert!(res.backing.is_some(), "{cmd:?} without a backing");
                        assert!(*offset >= implied, "{cmd:?} starts before its rect");
                        stats.transfers += 1;
                    }
                }
            }
            Command::SetScanout {
                rect,
                scanout_id,
                resource_id,
            } => {
                if ok {
                    assert!(*scanout_id < self.limit, "{cmd:?}");
                    let screen = self.screens[*scanout_id as usize];
                    if *resource_id == 0 {
                        assert_eq!(screen.resource, 0, "{cmd:?} left the scanout on");
                    } else {
                        let res = self.live(*resource_id, cmd).clone();
                        let Kind::TwoD { width, height } = res.kind else {
                            panic!("SET_SCANOUT of a blob: {cmd:?}");
                        };
                        assert!(
                            !is_empty(rect) && rect_within(rect, width, height),
                            "{cmd:?}"
                        );
                        let want = Screen {
                            resource: *resource_id,
                            rect: *rect,
                        };
                        assert_eq!(screen, want, "the display was not told: {cmd:?}");
                        stats.scanouts += 1;
                    }
                }
            }
            Command::SetScanoutBlob(s) => {
                if ok {
                    assert!(blobs && s.scanout_id < self.limit, "{cmd:?}");
                    let screen = self.screens[s.scanout_id as usize];
                    if s.resource_id == 0 {
                        assert_eq!(screen.resource, 0, "{cmd:?} left the scanout on");
                    } else {
                        let res = self.live(s.resource_id, cmd).clone();
                        let Kind::Blob { size, .. } = res.kind else {
                            panic!("SET_SCANOUT_BLOB of a 2D resource: {cmd:?}");
                        };
                        assert_eq!(format::bytes_per_pixel(s.format), Some(4));
                        let r = &s.rect;
                        assert!(!is_empty(r) && rect_within(r, s.width, s.height), "{cmd:?}");
                        let stride = u64::from(s.strides[0]);
                        let row = u64::from(s.width) * 4;
                        let end = u64::from(s.height - 1) * stride + row + u64::from(s.offsets[0]);
                        // Its pages while it has them; afterwards what it exports.
                        let extent = res.backing.unwrap_or(size);
                        assert!(
                            stride >= row && end <= extent,
                            "{cmd:?} reads past {extent}"
                        );
                        let want = Screen {
                            resource: s.resource_id,
                            rect: *r,
                        };
                        assert_eq!(screen, want, "the display was not told: {cmd:?}");
                        stats.blob_scanouts += 1;
                    }
                }
            }
            Command::ResourceFlush { resource_id, .. } => {
                if ok {
                    self.live(*resource_id, cmd);
                }
            }
            Command::ResourceAssignUuid { resource_id } => {
                if ok {
                    let Response::OkResourceUuid(uuid) = resp else {
                        panic!("{cmd:?} answered {resp:?}");
                    };
                    assert_eq!(uuid[6] >> 4, 4, "not a version 4 UUID");
                    let res = self.live(*resource_id, cmd);
                    assert_eq!(*res.uuid.get_or_insert(*uuid), *uuid, "the UUID changed");
                }
            }
            Command::ResourceMapBlob { resource_id, .. } => {
                if ok {
                    assert!(blobs);
                    let Response::OkMapInfo { map_info } = resp else {
                        panic!("{cmd:?} answered {resp:?}");
                    };
                    assert_eq!(map_info & !MAP_CACHE_MASK, 0, "map_info {map_info:#x}");
                    let Some((id, off, len)) = self.mapped_now else {
                        panic!("{cmd:?} succeeded but nothing was mapped");
                    };
                    assert_eq!(id, *resource_id);
                    let res = self.live(id, cmd);
                    assert_eq!(res.mapped, None);
                    res.mapped = Some((off, len));
                    stats.maps += 1;
                } else {
                    assert!(
                        self.mapped_now.is_none(),
                        "a mapping the guest was not told of"
                    );
                }
            }
            Command::ResourceUnmapBlob { resource_id } => {
                if ok {
                    let res = self.live(*resource_id, cmd);
                    let (off, len) = res
                        .mapped
                        .take()
                        .expect("unmapped a blob that was not mapped");
                    assert_eq!(self.unmapped_now, [(off, len, *resource_id)]);
                    stats.unmaps += 1;
                }
            }
            Command::GetCapsetInfo { .. }
            | Command::GetCapset { .. }
            | Command::CtxCreate { .. }
            | Command::CtxDestroy
            | Command::CtxAttachResource { .. }
            | Command::CtxDetachResource { .. }
            | Command::ResourceCreate3d(_)
            | Command::TransferToHost3d(_)
            | Command::TransferFromHost3d(_)
            | Command::Submit3d { .. } => {
                assert!(
                    !ok,
                    "the 2D renderer has no capsets or contexts: {cmd:?} -> {resp:?}"
                );
            }
            Command::UpdateCursor(_) | Command::MoveCursor(_) => {
                assert!(!ok, "a cursor command on the control queue: {resp:?}");
            }
        }
        if !blobs {
            let blob_cmd = matches!(
                cmd,
                Command::ResourceCreateBlob(_)
                    | Command::SetScanoutBlob(_)
                    | Command::ResourceMapBlob { .. }
                    | Command::ResourceUnmapBlob { .. }
            );
            assert!(
                !(ok && blob_cmd),
                "a blob command without a window: {cmd:?}"
            );
        }
    }

    /// After a control request: the device's books agree with the guest's view, within quota;
    /// the frontend maps exactly the blobs the guest mapped; screens show live resources only.
    pub fn check<R: Renderer>(&self, dev: &Device<R>) {
        assert_eq!(dev.resource_count(), self.res.len(), "resource count");
        assert!(dev.resource_count() <= self.max_resources, "resource quota");
        let charged: u64 = self.res.values().map(|r| r.charge).sum();
        assert_eq!(dev.resource_bytes(), charged, "byte accounting");
        assert!(dev.resource_bytes() <= self.max_bytes, "byte quota");
        for (&off, &(len, id)) in &self.window {
            let mapped = self.res.get(&id).and_then(|r| r.mapped);
            assert_eq!(
                mapped,
                Some((off, len)),
                "the frontend maps {off:#x}+{len:#x} for resource {id}"
            );
        }
        for (id, r) in &self.res {
            if let Some((off, len)) = r.mapped {
                assert_eq!(self.window.get(&off), Some(&(len, *id)), "lost mapping");
            }
        }
        for (i, s) in self.screens.iter().enumerate() {
            if s.resource != 0 {
                assert!(
                    self.res.contains_key(&s.resource),
                    "scanout {i} shows freed resource {}",
                    s.resource
                );
            }
        }
    }

    fn check_new(&self, id: u32, cmd: &Command) {
        assert!(id != 0, "resource id 0 created: {cmd:?}");
        assert!(
            !self.res.contains_key(&id),
            "resource {id} created twice: {cmd:?}"
        );
    }

    fn live(&mut self, id: u32, cmd: &Command) -> &mut Res {
        self.res.get_mut(&id).unwrap_or_else(|| {
            panic!("{cmd:?} succeeded on resource {id}, which the guest does not have")
        })
    }
}
