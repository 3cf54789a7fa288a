//! Command sequences through one VM's device model, for fuzzing: arbitrary bytes become a
//! sequence of control and cursor requests that the device handles exactly as the vhost queue
//! does (encode, `Request::decode`, `Device::handle`, window requests, display commands,
//! response), over the real 2D renderer and in-process guest memory. Invariants are checked
//! after every request; a violation panics.
//!
//! Why it lives here, as a doc-hidden module of the library rather than in fuzz/ or behind a
//! cargo feature: the cargo-fuzz target `device` (fuzz/fuzz_targets/device.rs) and the
//! deterministic test tests/device_sequences.rs must run the very same interpreter; a copy
//! would drift, and a feature would drop the test from a plain `cargo test --workspace`. It is
//! not part of vgpud's API and the daemon never calls it.
//!
//! Reaching deep states: resource ids come from a small space (mostly 1..=6, often one that is
//! live), sizes are small, rects and offsets are mostly derived from what the guest knows it
//! created, backings point into two memfd-backed guest regions (plus an anonymous one), blobs
//! go into a small host-visible window, and quotas are small enough to be hit. Every so often a
//! request is mutated after encoding, or is raw garbage.

mod input;
mod model;
mod share;
mod vnc;

use std::fs::File;
use std::io;
use std::os::fd::FromRawFd;
use std::sync::{Arc, Mutex};

use vgpud_protocol::{
    cmd, format, Box3d, Command, CreateBlob, CtrlHeader, CursorPos, DisplayOne, ErrorCode, Limits,
    MemEntry, Rect, Request, ResourceCreate3d, Response, ScanoutBlob, Transfer3d, UpdateCursor,
    BLOB_FLAG_USE_MAPPABLE, BLOB_FLAG_USE_SHAREABLE, BLOB_MEM_GUEST, BLOB_MEM_HOST3D,
    BLOB_MEM_HOST3D_GUEST, EDID_BLOB_SIZE, FLAG_FENCE, FLAG_INFO_RING_IDX, MAX_SCANOUTS,
};
use vm_memory::{FileOffset, GuestAddress, GuestMemoryMmap};

use self::input::Input;
use self::model::{entry_bytes, Kind, Model, Queue, Res, PAGE};
use crate::device::{bands, inside, Device, DeviceConfig, DisplayCmd, ShmemRequest};
use crate::render::Soft2d;

/// A guest memory region: where the guest sees it, and where it is in the memory file (None:
/// anonymous memory, which cannot be handed to the frontend).
#[derive(Clone, Copy, Debug)]
pub struct Region {
    pub base: u64,
    pub size: u64,
    pub file_start: Option<u64>,
}

/// Two regions in one memfd (at different offsets, as QEMU lays out RAM), and one anonymous.
pub const REGIONS: [Region; 3] = [
    Region {
        base: 0,
        size: 2 << 20,
        file_start: Some(0),
    },
    Region {
        base: 1 << 32,
        size: 2 << 20,
        file_start: Some(2 << 20),
    },
    Region {
        base: 0x1_8000_0000,
        size: 1 << 20,
        file_start: None,
    },
];
const FILE_SIZE: u64 = 4 << 20;

/// Requests per input at most, so one input stays fast whatever its length.
const MAX_STEPS: usize = 1024;

/// Updates are read in bands this large (the transport's are larger; small ones reach the
/// band arithmetic with small images).
const BAND_BYTES: usize = 4096;

/// What one or more runs reached; tests use it to check the interpreter still gets deep.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    pub requests: u64,
    pub decode_errors: u64,
    pub ok: u64,
    pub errors: u64,
    pub out_of_memory: u64,
    pub created: u64,
    pub attached: u64,
    pub transfers: u64,
    pub scanouts: u64,
    pub updates: u64,
    pub blobs: u64,
    pub maps: u64,
    pub unmaps: u64,
    /// Mappings the simulated frontend refused at random.
    pub maps_refused: u64,
    pub blob_scanouts: u64,
    /// Bands of pixels read for updates (`Device::update_pixels`), and reads refused because
    /// the update had gone stale by the time it was sent.
    pub update_bands: u64,
    pub stale_updates: u64,
    pub cursor_images: u64,
    pub fences: u64,
    pub resets: u64,
}

impl Stats {
    pub fn add(&mut self, o: &Stats) {
        self.requests += o.requests;
        self.decode_errors += o.decode_errors;
        self.ok += o.ok;
        self.errors += o.errors;
        self.out_of_memory += o.out_of_memory;
        self.created += o.created;
        self.attached += o.attached;
        self.transfers += o.transfers;
        self.scanouts += o.scanouts;
        self.updates += o.updates;
        self.blobs += o.blobs;
        self.maps += o.maps;
        self.unmaps += o.unmaps;
        self.maps_refused += o.maps_refused;
        self.blob_scanouts += o.blob_scanouts;
        self.update_bands += o.update_bands;
        self.stale_updates += o.stale_updates;
        self.cursor_images += o.cursor_images;
        self.fences += o.fences;
        self.resets += o.resets;
    }
}

/// What runs share: the renderer and guest memory (contents left by one run never steer the
/// next: no decision reads them).
pub struct Harness {
    renderer: Arc<Soft2d>,
    mem: Arc<GuestMemoryMmap>,
    memfd: Arc<File>,
    /// VGPUD_FUZZ_TRACE=1: print each request and its answer to stderr.
    trace: bool,
}

static SHARED: Mutex<Option<Harness>> = Mutex::new(None);

/// Runs `data` on a process-wide harness, started on first use.
pub use self::vnc::run_vnc;

pub fn run(data: &[u8]) -> Stats {
    let mut shared = SHARED.lock().unwrap_or_else(|e| e.into_inner());
    let harness =
        shared.get_or_insert_with(|| Harness::new().expect("cannot set up the device harness"));
    harness.run(data)
}

pub use self::share::ShareStats;

/// Runs `data` as share-context sequences between two VMs (see `share`), on the same harness.
pub fn run_share(data: &[u8]) -> ShareStats {
    let mut shared = SHARED.lock().unwrap_or_else(|e| e.into_inner());
    let harness =
        shared.get_or_insert_with(|| Harness::new().expect("cannot set up the device harness"));
    share::run(data, &harness.mem, &harness.renderer)
}

impl Harness {
    pub fn new() -> io::Result<Harness> {
        let renderer = Arc::new(Soft2d::default());
        // SAFETY: a valid C string; the result is checked, then owned by the File.
        let fd = unsafe { libc::memfd_create(c"vgpud-fuzz-guest".as_ptr(), libc::MFD_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` was just returned by memfd_create and is owned by nobody else.
        let memfd = Arc::new(unsafe { File::from_raw_fd(fd) });
        memfd.set_len(FILE_SIZE)?;
        let ranges: Vec<_> = REGIONS
            .iter()
            .map(|r| {
                let file = r.file_start.map(|s| FileOffset::from_arc(memfd.clone(), s));
                (GuestAddress(r.base), r.size as usize, file)
            })
            .collect();
        let mem = GuestMemoryMmap::from_ranges_with_files(&ranges).map_err(io::Error::other)?;
        Ok(Harness {
            renderer,
            mem: Arc::new(mem),
            memfd,
            trace: std::env::var_os("VGPUD_FUZZ_TRACE").is_some_and(|v| v == "1"),
        })
    }

    /// Interprets `data` as a device configuration and a sequence of requests to a fresh device.
    pub fn run(&self, data: &[u8]) -> Stats {
        let mut inp = Input::new(data);
        let mut run = Run::new(self, &mut inp);
        let mut steps = 0;
        while !inp.is_empty() && steps < MAX_STEPS {
            run.step(&mut inp);
            steps += 1;
        }
        run.wind_down();
        run.stats
    }
}

/// One input's device, and what the interpreter knows about it.
struct Run<'h> {
    h: &'h Harness,
    dev: Device<Arc<Soft2d>>,
    model: Model,
    stats: Stats,
    fence_seq: u64,
}

/// Valid 2D formats.
const FORMATS: [u32; 8] = [
    format::B8G8R8A8_UNORM,
    format::B8G8R8X8_UNORM,
    format::A8R8G8B8_UNORM,
    format::X8R8G8B8_UNORM,
    format::R8G8B8A8_UNORM,
    format::X8B8G8R8_UNORM,
    format::A8B8G8R8_UNORM,
    format::R8G8B8X8_UNORM,
];

/// Every request type code, to give garbage a chance past the type check.
const TYPES: [u32; 26] = [
    cmd::GET_DISPLAY_INFO,
    cmd::RESOURCE_CREATE_2D,
    cmd::RESOURCE_UNREF,
    cmd::SET_SCANOUT,
    cmd::RESOURCE_FLUSH,
    cmd::TRANSFER_TO_HOST_2D,
    cmd::RESOURCE_ATTACH_BACKING,
    cmd::RESOURCE_DETACH_BACKING,
    cmd::GET_CAPSET_INFO,
    cmd::GET_CAPSET,
    cmd::GET_EDID,
    cmd::RESOURCE_ASSIGN_UUID,
    cmd::RESOURCE_CREATE_BLOB,
    cmd::SET_SCANOUT_BLOB,
    cmd::CTX_CREATE,
    cmd::CTX_DESTROY,
    cmd::CTX_ATTACH_RESOURCE,
    cmd::CTX_DETACH_RESOURCE,
    cmd::RESOURCE_CREATE_3D,
    cmd::TRANSFER_TO_HOST_3D,
    cmd::TRANSFER_FROM_HOST_3D,
    cmd::SUBMIT_3D,
    cmd::RESOURCE_MAP_BLOB,
    cmd::RESOURCE_UNMAP_BLOB,
    cmd::UPDATE_CURSOR,
    cmd::MOVE_CURSOR,
];

/// Structured operations (what `build` makes); the others are handled in `step`.
const BUILT_OPS: u8 = 26;

impl<'h> Run<'h> {
    /// The first two bytes configure the device: scanouts, window, display, quotas.
    fn new(h: &'h Harness, inp: &mut Input) -> Self {
        let (c0, c1) = (inp.u8(), inp.u8());
        let (width, height) =
            [(1280, 800), (64, 48), (1, 1), (4096, 2160)][usize::from(c1 >> 4) & 3];
        let cfg = DeviceConfig {
            // 0 is clamped to 1 by the device.
            num_scanouts: [1, 2, 4, 0][usize::from(c0 & 3)],
            width,
            height,
            max_resources: [4, 6, 16, 4096][usize::from(c1 & 3)],
            max_resource_bytes: [64 << 10, 1 << 20, 16 << 20, 16 << 20][usize::from(c1 >> 2) & 3],
            max_contexts: 4,
            hostmem: [0, 256 << 10, 1 << 20, 1 << 20][usize::from(c0 >> 3) & 3],
            max_mappings: [2, 256][usize::from(c0 >> 5) & 1],
        };
        let mut dev = Device::new(h.renderer.clone(), cfg.clone());
        let mut limit = dev.num_scanouts();
        if c0 & 4 != 0 {
            dev.attach_display();
            limit = MAX_SCANOUTS as u32;
        }
        let model = Model::new(
            limit,
            cfg.hostmem,
            cfg.max_resources,
            cfg.max_resource_bytes,
            h.memfd.clone(),
            FILE_SIZE,
        );
        Run {
            h,
            dev,
            model,
            stats: Stats::default(),
            fence_seq: 0,
        }
    }

    fn step(&mut self, inp: &mut Input) {
        let op = inp.u8() % 32;
        match op {
            0..BUILT_OPS => {
                let (queue, req) = self.build(op, inp);
                self.submit(queue, &req.encode(), inp);
            }
            // A request mutated after encoding: fields no builder makes, lengths that disagree.
            26 | 27 => {
                let (queue, req) = self.build(inp.u8() % BUILT_OPS, inp);
                let mut bytes = req.encode();
                for _ in 0..1 + inp.below(4) {
                    let at = inp.below(bytes.len() as u32) as usize;
                    bytes[at] ^= inp.u8().max(1);
                }
                if inp.chance(32) {
                    bytes.truncate(inp.below(bytes.len() as u32) as usize);
                }
                self.submit(queue, &bytes, inp);
            }
            28 => {
                let len = usize::from(inp.u8());
                let mut bytes = inp.bytes(len).to_vec();
                if bytes.len() >= 4 && inp.chance(192) {
                    bytes[..4].copy_from_slice(&inp.pick(&TYPES).to_le_bytes());
                }
                let queue = if inp.chance(64) {
                    Queue::Cursor
                } else {
                    Queue::Control
                };
                self.submit(queue, &bytes, inp);
            }
            29 => self.reset(),
            30 => self.frontend(inp),
            _ => {
                if inp.chance(128) {
                    self.mapped_blob(inp);
                } else {
                    self.frame(inp);
                }
            }
        }
    }

    /// A fresh mappable guest blob, mapped next to (or into) what is mapped already: the
    /// window's edge cases need several live mappings, which single random requests rarely set
    /// up.
    fn mapped_blob(&mut self, inp: &mut Input) {
        let resource_id = self.free_id(inp);
        let region = REGIONS[inp.below(2) as usize];
        let pages = 1 + inp.below(8);
        let start = region.base + u64::from(inp.below((region.size / PAGE) as u32 - pages)) * PAGE;
        let size = u64::from(pages) * PAGE;
        let create = Command::ResourceCreateBlob(CreateBlob {
            resource_id,
            blob_mem: BLOB_MEM_GUEST,
            blob_flags: BLOB_FLAG_USE_MAPPABLE,
            blob_id: 0,
            size,
            entries: split(inp, start, size),
        });
        self.send(inp, create);
        let offset = self.map_offset(inp, resource_id);
        self.send(
            inp,
            Command::ResourceMapBlob {
                resource_id,
                offset,
            },
        );
    }

    /// A fresh 2D resource taken all the way to the display: backing, transfer, scanout, flush.
    fn frame(&mut self, inp: &mut Input) {
        let resource_id = self.free_id(inp);
        let (width, height) = (1 + inp.below(64), 1 + inp.below(64));
        let bytes = u64::from(width * height * 4);
        let region = REGIONS[inp.below(3) as usize];
        let start =
            region.base + u64::from(inp.below(((region.size - bytes) / PAGE) as u32)) * PAGE;
        let full = Rect {
            x: 0,
            y: 0,
            width,
            height,
        };
        let steps = [
            Command::ResourceCreate2d {
                resource_id,
                format: inp.pick(&FORMATS),
                width,
                height,
            },
            Command::ResourceAttachBacking {
                resource_id,
                entries: split(inp, start, bytes),
            },
            Command::TransferToHost2d {
                rect: full,
                offset: 0,
                resource_id,
            },
            Command::SetScanout {
                rect: rect_in(inp, width, height),
                scanout_id: self.scanout(inp),
                resource_id,
            },
            Command::ResourceFlush {
                rect: full,
                resource_id,
            },
        ];
        for cmd in steps {
            self.send(inp, cmd);
        }
    }

    /// One well-formed control request with a random header.
    fn send(&mut self, inp: &mut Input, cmd: Command) {
        let hdr = self.header(inp);
        self.submit(Queue::Control, &Request { hdr, cmd }.encode(), inp);
    }

    /// An id in 1..=6 that is not live, if there is one.
    fn free_id(&self, inp: &mut Input) -> u32 {
        let free: Vec<u32> = (1..=6)
            .filter(|id| !self.model.res.contains_key(id))
            .collect();
        if free.is_empty() {
            id(inp)
        } else {
            inp.pick(&free)
        }
    }

    /// Where to map blob `resource_id`: often right against an existing mapping, on either
    /// side, or one page into it; else anywhere in (or just past) the window, now and then
    /// unaligned or wild.
    fn map_offset(&self, inp: &mut Input, resource_id: u32) -> u64 {
        let pages = (self.model.hostmem / PAGE) as u32;
        let mapped: Vec<(u64, u64)> = self
            .model
            .window
            .iter()
            .map(|(&o, &(l, _))| (o, l))
            .collect();
        let len = match self.model.res.get(&resource_id).map(|r| r.kind) {
            Some(Kind::Blob { size, .. }) => size.next_multiple_of(PAGE),
            _ => PAGE,
        };
        match inp.u8() % 8 {
            0..=3 if !mapped.is_empty() => {
                let (o, l) = inp.pick(&mapped);
                match inp.u8() % 4 {
                    0 => o + l,
                    1 => o.wrapping_sub(len),
                    2 => o + l - PAGE,
                    _ => o.wrapping_sub(len).wrapping_add(PAGE),
                }
            }
            0..=5 => u64::from(inp.below(pages + 4)) * PAGE,
            6 => u64::from(inp.below(pages + 4)) * PAGE + 1 + u64::from(inp.below(4095)),
            _ => inp.wild_u64(),
        }
    }

    /// A well-formed request, aimed at live objects most of the time.
    fn build(&mut self, op: u8, inp: &mut Input) -> (Queue, Request) {
        let hdr = self.header(inp);
        let control = |cmd| (Queue::Control, Request { hdr, cmd });
        match op {
            0..=2 => control(Command::ResourceCreate2d {
                resource_id: id(inp),
                format: if inp.chance(240) {
                    inp.pick(&FORMATS)
                } else {
                    inp.wild_u32()
                },
                width: dim(inp),
                height: dim(inp),
            }),
            3 | 4 => {
                let resource_id = self.live_id(inp, |_| true);
                let want = match self.model.res.get(&resource_id).map(|r| r.kind) {
                    Some(Kind::TwoD { width, height }) => u64::from(width) * u64::from(height) * 4,
                    _ => 1 + u64::from(inp.below(1 << 16)),
                };
                let want = match inp.u8() % 8 {
                    0 => want.saturating_sub(1 + u64::from(inp.below(64))),
                    1 => want + u64::from(inp.below(8192)),
                    _ => want,
                };
                control(Command::ResourceAttachBacking {
                    resource_id,
                    entries: entries(inp, want),
                })
            }
            5 => control(Command::ResourceDetachBacking {
                resource_id: self.live_id(inp, |_| true),
            }),
            6..=8 => {
                let resource_id = self.live_id(inp, is_2d);
                let (w, h) = self.dims(resource_id, inp);
                let rect = rect_in(inp, w, h);
                let implied = (u64::from(rect.y) * u64::from(w) + u64::from(rect.x)) * 4;
                let offset = match inp.u8() % 8 {
                    0..=5 => implied,
                    6 => implied + 4 * u64::from(inp.below(64)),
                    _ => inp.wild_u64(),
                };
                control(Command::TransferToHost2d {
                    rect,
                    offset,
                    resource_id,
                })
            }
            9 | 10 => {
                let resource_id = if inp.chance(24) {
                    0
                } else {
                    self.live_id(inp, is_2d)
                };
                let (w, h) = self.dims(resource_id, inp);
                control(Command::SetScanout {
                    rect: rect_in(inp, w, h),
                    scanout_id: self.scanout(inp),
                    resource_id,
                })
            }
            11 | 12 => {
                // Mostly resources on a screen, whose flush reaches the display.
                let shown: Vec<u32> = self
                    .model
                    .screens
                    .iter()
                    .map(|s| s.resource)
                    .filter(|&r| r != 0)
                    .collect();
                let resource_id = if !shown.is_empty() && inp.chance(160) {
                    inp.pick(&shown)
                } else {
                    self.live_id(inp, |_| true)
                };
                let (w, h) = self.dims(resource_id, inp);
                control(Command::ResourceFlush {
                    rect: rect_in(inp, w, h),
                    resource_id,
                })
            }
            13 | 14 => control(Command::ResourceUnref {
                resource_id: self.live_id(inp, |_| true),
            }),
            15 => control(Command::ResourceAssignUuid {
                resource_id: self.live_id(inp, |_| true),
            }),
            16 | 17 => control(Command::ResourceCreateBlob(create_blob(inp))),
            18 | 19 => {
                let resource_id = self.live_id(inp, is_unmapped_blob);
                control(Command::ResourceMapBlob {
                    resource_id,
                    offset: self.map_offset(inp, resource_id),
                })
            }
            20 => control(Command::ResourceUnmapBlob {
                resource_id: self.live_id(inp, is_blob),
            }),
            21 => {
                let resource_id = if inp.chance(16) {
                    0
                } else {
                    self.live_id(inp, is_blob)
                };
                let size = match self.model.res.get(&resource_id).map(|r| r.kind) {
                    Some(Kind::Blob { size, .. }) => size,
                    _ => 1 << 16,
                };
                let scanout_id = self.scanout(inp);
                control(Command::SetScanoutBlob(scanout_blob(
                    inp,
                    scanout_id,
                    resource_id,
                    size,
                )))
            }
            22 | 23 => {
                let c = UpdateCursor {
                    pos: CursorPos {
                        scanout_id: self.scanout(inp),
                        x: u32::from(inp.u16()),
                        y: u32::from(inp.u16()),
                    },
                    resource_id: if inp.chance(32) {
                        0
                    } else {
                        self.live_id(inp, |_| true)
                    },
                    hot_x: inp.below(64),
                    hot_y: inp.below(64),
                };
                let cmd = if op == 22 {
                    Command::UpdateCursor(c)
                } else {
                    Command::MoveCursor(c)
                };
                // Now and then on the wrong queue.
                let queue = if inp.chance(16) {
                    Queue::Control
                } else {
                    Queue::Cursor
                };
                (queue, Request { hdr, cmd })
            }
            24 => control(match inp.u8() % 4 {
                0 => Command::GetDisplayInfo,
                1 => Command::GetEdid {
                    scanout: self.scanout(inp),
                },
                2 => Command::GetCapsetInfo {
                    capset_index: inp.wild_u32(),
                },
                _ => Command::GetCapset {
                    capset_id: inp.below(10),
                    capset_version: inp.wild_u32(),
                },
            }),
            _ => {
                let cmd = self.three_d(inp);
                // Now and then on the wrong queue.
                let queue = if inp.chance(16) {
                    Queue::Cursor
                } else {
                    Queue::Control
                };
                (queue, Request { hdr, cmd })
            }
        }
    }

    /// Contexts and 3D: the 2D renderer refuses them all, whatever their fields.
    fn three_d(&mut self, inp: &mut Input) -> Command {
        let resource_id = self.live_id(inp, |_| true);
        match inp.u8() % 8 {
            0 => {
                let len = inp.below(81) as usize;
                Command::CtxCreate {
                    context_init: inp.wild_u32(),
                    debug_name: inp.bytes(len).to_vec(),
                }
            }
            1 => Command::CtxDestroy,
            2 => Command::CtxAttachResource { resource_id },
            3 => Command::CtxDetachResource { resource_id },
            4 => Command::ResourceCreate3d(ResourceCreate3d {
                resource_id,
                target: inp.below(10),
                format: inp.pick(&FORMATS),
                bind: inp.wild_u32(),
                width: dim(inp),
                height: dim(inp),
                depth: 1,
                array_size: 1,
                ..Default::default()
            }),
            5 | 6 => {
                let t = Transfer3d {
                    box_: Box3d {
                        x: 0,
                        y: 0,
                        z: 0,
                        w: dim(inp),
                        h: dim(inp),
                        d: 1,
                    },
                    offset: inp.wild_u64(),
                    resource_id,
                    ..Default::default()
                };
                if inp.chance(128) {
                    Command::TransferToHost3d(t)
                } else {
                    Command::TransferFromHost3d(t)
                }
            }
            _ => {
                let len = inp.below(65) as usize;
                Command::Submit3d {
                    commands: inp.bytes(len).to_vec(),
                }
            }
        }
    }

    /// What the frontend does besides the queues: a display connects, reports its modes and
    /// EDIDs (within what the vhost-user-gpu protocol can carry).
    fn frontend(&mut self, inp: &mut Input) {
        match inp.u8() % 4 {
            0 => {
                self.dev.attach_display();
                self.model.limit = MAX_SCANOUTS as u32;
            }
            1 => {
                let modes: Vec<DisplayOne> = (0..1 + inp.below(MAX_SCANOUTS as u32))
                    .map(|_| DisplayOne {
                        rect: Rect {
                            x: inp.wild_u32(),
                            y: inp.wild_u32(),
                            width: inp.wild_u32(),
                            height: inp.wild_u32(),
                        },
                        enabled: inp.chance(128),
                        flags: inp.wild_u32(),
                    })
                    .collect();
                self.dev.set_display_modes(&modes);
            }
            2 => {
                let len = 1 + inp.below(EDID_BLOB_SIZE as u32) as usize;
                let edid: Vec<u8> = (0..len).map(|i| i as u8).collect();
                self.dev.set_edid(inp.below(20), edid);
            }
            _ => {
                // The queue's view of a display that refreshes before each request.
                let cmd = Command::GetDisplayInfo;
                let req = Request {
                    hdr: CtrlHeader::default(),
                    cmd,
                };
                self.submit(Queue::Control, &req.encode(), inp);
            }
        }
    }

    fn header(&mut self, inp: &mut Input) -> CtrlHeader {
        let mut h = CtrlHeader::default();
        match inp.u8() {
            0..=191 => {}
            192..=223 => {
                h.flags = FLAG_FENCE;
                self.fence_seq += 1;
                h.fence_id = self.fence_seq;
            }
            224..=239 => {
                h.flags = FLAG_FENCE | FLAG_INFO_RING_IDX;
                h.ctx_id = inp.below(3);
                h.ring_idx = inp.below(4) as u8;
                self.fence_seq += 1;
                h.fence_id = self.fence_seq;
            }
            _ => {
                h.flags = inp.wild_u32();
                h.fence_id = inp.u64();
                h.ctx_id = inp.wild_u32();
                h.ring_idx = inp.u8();
            }
        }
        h
    }

    /// A resource id: most of the time a live one of the wanted kind, else from the small space.
    fn live_id(&self, inp: &mut Input, want: fn(&Res) -> bool) -> u32 {
        if inp.chance(192) {
            let live: Vec<u32> = self
                .model
                .res
                .iter()
                .filter(|(_, r)| want(r))
                .map(|(id, _)| *id)
                .collect();
            if !live.is_empty() {
                return inp.pick(&live);
            }
        }
        id(inp)
    }

    /// The size rects are drawn from: the resource's own, else small.
    fn dims(&self, id: u32, inp: &mut Input) -> (u32, u32) {
        match self.model.res.get(&id).map(|r| r.kind) {
            Some(Kind::TwoD { width, height }) => (width, height),
            _ => (1 + inp.below(64), 1 + inp.below(64)),
        }
    }

    fn scanout(&self, inp: &mut Input) -> u32 {
        let limit = self.model.limit;
        match inp.u8() {
            b @ 0..=219 => u32::from(b) % limit,
            b @ 220..=239 => limit + u32::from(b) % 3,
            _ => inp.wild_u32(),
        }
    }

    /// Hands the bytes to the device the way src/vhost/queue.rs does, then checks everything.
    fn submit(&mut self, queue: Queue, bytes: &[u8], inp: &mut Input) {
        self.stats.requests += 1;
        let req = match Request::decode(bytes, &Limits::default()) {
            Ok(req) => req,
            Err(e) => {
                self.stats.decode_errors += 1;
                if queue == Queue::Control {
                    let hdr = CtrlHeader::decode(bytes).unwrap_or_default();
                    check_encodes(&hdr, &Response::Err(e.error_code()));
                }
                return;
            }
        };
        match queue {
            Queue::Cursor => {
                let cmds = self.dev.handle_cursor(&req.cmd);
                if self.h.trace {
                    eprintln!("cursor {:?} -> {cmds:?}", req.cmd);
                }
                self.model
                    .display(&cmds, &req.cmd, Queue::Cursor, &mut self.stats);
            }
            Queue::Control => self.control(&req, inp),
        }
    }

    fn control(&mut self, req: &Request, inp: &mut Input) {
        self.model.begin();
        let mut out = self.dev.handle(req, &self.h.mem);
        // As the transport: window changes first (the device lock released), then the display,
        // then the response; a refused mapping fails the request.
        let mut refused = false;
        for r in std::mem::take(&mut out.shmem) {
            let refuse = matches!(r, ShmemRequest::Map { .. }) && inp.chance(8);
            if let Some(id) = self.model.apply(&r, refuse, &mut self.stats) {
                self.dev.map_failed(id);
                refused = true;
            }
        }
        if refused {
            out.response = Response::Err(ErrorCode::Unspec);
        }
        if self.h.trace {
            eprintln!("{req:?} -> {:?} {:?}", out.response, out.display);
        }
        self.model
            .display(&out.display, &req.cmd, Queue::Control, &mut self.stats);
        check_encodes(&req.hdr, &out.response);
        self.model.observe(&req.cmd, &out.response, &mut self.stats);
        // The 2D renderer finishes its work at once: a fenced answer never waits.
        assert!(out.fence.is_none(), "a 2D answer parked behind a fence");
        if req.hdr.is_fenced() {
            self.stats.fences += 1;
        }
        self.model.check(&self.dev);
        // Updates go out right after the request, as the transport sends them; now and then
        // later, after other requests changed what is shown.
        if !self.model.pending.is_empty() && !inp.chance(96) {
            self.deliver();
        }
    }

    /// Sends the pending updates as the transport does: band by band, each band's pixels read
    /// from the device just before it goes. A read must succeed while the scanout still shows
    /// that area of that resource at the same place, and fail once it does not.
    fn deliver(&mut self) {
        for update in std::mem::take(&mut self.model.pending) {
            let DisplayCmd::Update {
                scanout,
                rect,
                resource_id,
                area,
            } = update
            else {
                continue;
            };
            let screen = self.model.screens[scanout as usize];
            let current = screen.resource == resource_id
                && inside(&area, &screen.rect)
                && (area.x - rect.x, area.y - rect.y) == (screen.rect.x, screen.rect.y);
            // A blob that lost its pages may have nothing left to read from.
            let readable = self
                .model
                .res
                .get(&resource_id)
                .is_some_and(|r| matches!(r.kind, Kind::TwoD { .. }) || r.backing.is_some());
            for (_, band) in bands(area, BAND_BYTES) {
                match self.dev.update_pixels(&update, band) {
                    Ok(pixels) => {
                        assert!(current, "pixels of {area:?} of resource {resource_id} sent to scanout {scanout}, which shows {screen:?}");
                        let want = band.width as usize * band.height as usize * 4;
                        assert_eq!(pixels.len(), want, "pixels for band {band:?}");
                        self.stats.update_bands += 1;
                    }
                    Err(failure) => {
                        assert!(
                            !(current && readable),
                            "update of {band:?} of resource {resource_id} on scanout {scanout} failed: {failure}"
                        );
                        self.stats.stale_updates += 1;
                        break;
                    }
                }
            }
        }
    }

    fn reset(&mut self) {
        self.dev.reset();
        self.model.reset();
        self.stats.resets += 1;
        assert_eq!(self.dev.resource_count(), 0, "resources survived a reset");
        assert_eq!(
            self.dev.resource_bytes(),
            0,
            "bytes still charged after a reset"
        );
    }

    /// The VM goes away: everything is freed and the frontend is told to unmap everything.
    fn wind_down(&mut self) {
        self.deliver();
        self.reset();
        let req = Request {
            hdr: CtrlHeader::default(),
            cmd: Command::GetDisplayInfo,
        };
        self.control(&req, &mut Input::new(&[]));
        assert!(
            self.model.window.is_empty(),
            "mappings outlived a reset: {:?}",
            self.model.window
        );
    }
}

fn is_2d(r: &Res) -> bool {
    matches!(r.kind, Kind::TwoD { .. })
}

fn is_blob(r: &Res) -> bool {
    matches!(r.kind, Kind::Blob { .. })
}

fn is_unmapped_blob(r: &Res) -> bool {
    is_blob(r) && r.mapped.is_none()
}

/// A fresh resource id: mostly 1..=6, sometimes 0 or just past, rarely anything.
fn id(inp: &mut Input) -> u32 {
    match inp.u8() {
        b @ 0..=219 => 1 + u32::from(b) % 6,
        220..=235 => 0,
        b @ 236..=247 => 7 + u32::from(b) % 4,
        _ => inp.wild_u32(),
    }
}

/// A width or height: mostly small, sometimes large, now and then absurd.
fn dim(inp: &mut Input) -> u32 {
    match inp.u8() {
        b @ 0..=199 => 1 + u32::from(b) % 64,
        200..=229 => 1 + inp.below(1024),
        230..=244 => inp.pick(&[0, 16384, 16385, 65536, 0x4000_0000, 0x4000_0001, u32::MAX]),
        _ => inp.u32(),
    }
}

/// A rect of a `w`x`h` image: mostly inside, sometimes just over an edge, sometimes wild.
fn rect_in(inp: &mut Input, w: u32, h: u32) -> Rect {
    match inp.u8() % 8 {
        0 => Rect {
            x: 0,
            y: 0,
            width: w,
            height: h,
        },
        1..=5 => {
            let x = inp.below(w.max(1));
            let y = inp.below(h.max(1));
            Rect {
                x,
                y,
                width: 1 + inp.below(w.saturating_sub(x).max(1)),
                height: 1 + inp.below(h.saturating_sub(y).max(1)),
            }
        }
        6 => Rect {
            x: inp.below(2),
            y: inp.below(2),
            width: w.saturating_add(inp.below(2)),
            height: h.saturating_add(inp.below(2)),
        },
        _ => Rect {
            x: inp.wild_u32(),
            y: inp.wild_u32(),
            width: inp.wild_u32(),
            height: inp.wild_u32(),
        },
    }
}

/// `want` bytes of guest memory as backing entries: mostly page-aligned and contiguous in one
/// region (in pieces), sometimes unaligned, scattered, over a region's end, repeated or wild.
fn entries(inp: &mut Input, want: u64) -> Vec<MemEntry> {
    let region = REGIONS[[0, 0, 0, 0, 1, 1, 1, 2][inp.below(8) as usize]];
    let want = want.clamp(1, region.size);
    let pages = region.size / PAGE;
    let need = want.div_ceil(PAGE);
    let start = region.base + u64::from(inp.below((pages - need + 1) as u32)) * PAGE;
    match inp.u8() % 16 {
        0..=10 => split(inp, start, want),
        11 => {
            let slack = (region.base + region.size - start - want).min(PAGE - 1);
            let start = start + u64::from(inp.below(slack as u32 + 1));
            split(inp, start, want)
        }
        12 => {
            // Pieces of the size wanted, each somewhere else.
            let mut left = want;
            let mut out = Vec::new();
            while left > 0 && out.len() < 8 {
                let r = REGIONS[inp.below(3) as usize];
                let len = left.min(PAGE * u64::from(1 + inp.below(8)));
                let at = r.base + u64::from(inp.below(((r.size - len) / PAGE) as u32)) * PAGE;
                out.push(MemEntry {
                    addr: at,
                    length: len as u32,
                });
                left -= len;
            }
            out
        }
        13 => split(inp, region.base + region.size - want / 2, want),
        14 => (0..inp.below(5))
            .map(|_| MemEntry {
                addr: inp.wild_u64(),
                length: inp.wild_u32(),
            })
            .collect(),
        _ => {
            // The same pages again and again, and empty entries in between.
            let e = MemEntry {
                addr: start,
                length: want as u32,
            };
            let empty = MemEntry {
                addr: inp.wild_u64(),
                length: 0,
            };
            (0..2 + inp.below(7))
                .map(|i| if i % 3 == 2 { empty } else { e })
                .collect()
        }
    }
}

/// `[start, start + len)` as 1 to 4 contiguous entries (some possibly empty).
fn split(inp: &mut Input, start: u64, len: u64) -> Vec<MemEntry> {
    let pieces = 1 + inp.below(4);
    let mut cuts: Vec<u64> = (1..pieces)
        .map(|_| {
            if inp.chance(192) {
                // Page boundaries, as a guest's scatter list has them.
                (u64::from(inp.below(((len / PAGE) as u32).max(1))) * PAGE).min(len)
            } else {
                u64::from(inp.u32()) % (len + 1)
            }
        })
        .collect();
    cuts.push(0);
    cuts.push(len);
    cuts.sort_unstable();
    cuts.windows(2)
        .map(|w| MemEntry {
            addr: start + w[0],
            length: (w[1] - w[0]) as u32,
        })
        .collect()
}

fn create_blob(inp: &mut Input) -> CreateBlob {
    let resource_id = id(inp);
    let blob_mem = match inp.u8() % 16 {
        0..=11 => BLOB_MEM_GUEST,
        12 => BLOB_MEM_HOST3D,
        13 => BLOB_MEM_HOST3D_GUEST,
        14 => 0,
        _ => inp.wild_u32(),
    };
    let blob_flags = match inp.u8() % 8 {
        0..=4 => BLOB_FLAG_USE_MAPPABLE,
        5 => BLOB_FLAG_USE_MAPPABLE | BLOB_FLAG_USE_SHAREABLE,
        6 => 0,
        _ => inp.wild_u32(),
    };
    let mut bytes = u64::from(1 + inp.below(16)) * PAGE;
    if inp.chance(48) {
        bytes -= u64::from(inp.below(PAGE as u32));
    }
    let entries = if blob_mem == BLOB_MEM_HOST3D && inp.chance(192) {
        Vec::new()
    } else {
        entries(inp, bytes)
    };
    let total = entry_bytes(&entries);
    let size = match inp.u8() % 8 {
        0..=4 => total,
        5 => total.saturating_sub(u64::from(inp.below(PAGE as u32))),
        6 => total + 1,
        _ => inp.wild_u64(),
    };
    CreateBlob {
        resource_id,
        blob_mem,
        blob_flags,
        blob_id: inp.u64(),
        size,
        entries,
    }
}

/// A blob scanout that mostly fits the blob's `size` bytes.
fn scanout_blob(inp: &mut Input, scanout_id: u32, resource_id: u32, size: u64) -> ScanoutBlob {
    let format = if inp.chance(240) {
        inp.pick(&FORMATS)
    } else {
        inp.wild_u32()
    };
    let width = if inp.chance(224) {
        1 + inp.below(64)
    } else {
        dim(inp)
    };
    let row = width.saturating_mul(4);
    let stride = match inp.u8() % 8 {
        0..=4 => row,
        5 => row.saturating_add(4 * inp.below(16)),
        6 => row.saturating_sub(4),
        _ => inp.wild_u32(),
    };
    let offset = match inp.u8() % 8 {
        0..=4 => 0,
        5 | 6 => 4 * inp.below(1024),
        _ => inp.wild_u32(),
    };
    let fits = size.saturating_sub(u64::from(offset)) / u64::from(stride.max(1));
    let height = match inp.u8() % 8 {
        0..=5 => fits.clamp(1, 64) as u32,
        6 => (fits + 1).min(u64::from(u32::MAX)) as u32,
        _ => dim(inp),
    };
    let mut strides = [0; 4];
    let mut offsets = [0; 4];
    strides[0] = stride;
    offsets[0] = offset;
    if inp.chance(16) {
        strides[1] = inp.wild_u32();
        offsets[1] = inp.wild_u32();
    }
    ScanoutBlob {
        rect: rect_in(inp, width, height),
        scanout_id,
        resource_id,
        width,
        height,
        format,
        strides,
        offsets,
    }
}

/// Every response must encode, and decode back to itself (within the wire's fixed sizes).
fn check_encodes(hdr: &CtrlHeader, resp: &Response) {
    let bytes = resp.encode(hdr);
    let (back_hdr, back) =
        Response::decode(&bytes).unwrap_or_else(|e| panic!("{resp:?} does not decode back: {e}"));
    assert_eq!(back_hdr.type_, resp.type_code());
    assert_eq!(
        (back_hdr.fence_id, back_hdr.ctx_id),
        (hdr.fence_id, hdr.ctx_id)
    );
    match (resp, &back) {
        (Response::OkDisplayInfo(sent), Response::OkDisplayInfo(got)) => {
            assert!(sent.len() <= MAX_SCANOUTS, "{} scanouts", sent.len());
            assert_eq!(got.get(..sent.len()), Some(&sent[..]));
        }
        _ => assert_eq!(&back, resp),
    }
}
