//! Device-model tests over the real rutabaga 2D renderer and anonymous guest memory.

use std::sync::{Arc, Mutex};

use vgpud_protocol::{
    format, Command, CtrlHeader, CursorPos, ErrorCode, MemEntry, Rect, Request, Response,
    UpdateCursor,
};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::*;
use crate::fences::FenceSink;
use crate::render::fake::Fake;
use crate::render::Soft2d;

#[derive(Default)]
struct Signals(Mutex<Vec<FenceId>>);

impl FenceSink for Signals {
    fn signalled(&self, fence: FenceId) {
        self.0.lock().unwrap().push(fence);
    }
}

struct Vm<R: Renderer = Soft2d> {
    dev: Device<R>,
    mem: Arc<GuestMemoryMmap>,
}

fn guest_memory() -> Arc<GuestMemoryMmap> {
    let mem = GuestMemoryMmap::from_ranges(&[
        (GuestAddress(0), 1 << 20),
        (GuestAddress(1 << 32), 1 << 20),
    ])
    .unwrap();
    Arc::new(mem)
}

impl Vm {
    fn new(cfg: DeviceConfig) -> Vm {
        Vm {
            dev: Device::new(Soft2d::default(), cfg),
            mem: guest_memory(),
        }
    }

    fn run(&mut self, cmd: Command) -> Outcome {
        let req = Request {
            hdr: CtrlHeader::default(),
            cmd,
        };
        self.dev.handle(&req, &self.mem)
    }

    fn ok(&mut self, cmd: Command) -> Vec<DisplayCmd> {
        let out = self.run(cmd);
        assert_eq!(out.response, Response::OkNodata);
        out.display
    }

    /// The pixels an update carries, read as the transport reads them.
    fn pixels(&mut self, update: &DisplayCmd) -> Vec<u8> {
        let DisplayCmd::Update { area, .. } = update else {
            panic!("not an update: {update:?}");
        };
        self.dev.update_pixels(update, *area).unwrap()
    }

    fn err(&mut self, cmd: Command) -> ErrorCode {
        match self.run(cmd).response {
            Response::Err(code) => code,
            other => panic!("expected an error, got {other:?}"),
        }
    }

    /// A `w`x`h` resource whose backing holds pixel value `i` at pixel i, split over both regions.
    fn frame(&mut self, id: u32, w: u32, h: u32) {
        self.ok(create(id, w, h));
        let bytes: Vec<u8> = (0..w * h).flat_map(|i| i.to_le_bytes()).collect();
        let half = bytes.len() / 2;
        self.mem
            .write_slice(&bytes[..half], GuestAddress(0x1000))
            .unwrap();
        self.mem
            .write_slice(&bytes[half..], GuestAddress(1 << 32))
            .unwrap();
        self.ok(Command::ResourceAttachBacking {
            resource_id: id,
            entries: vec![
                MemEntry {
                    addr: 0x1000,
                    length: half as u32,
                },
                MemEntry {
                    addr: 1 << 32,
                    length: (bytes.len() - half) as u32,
                },
            ],
        });
    }
}

fn create(resource_id: u32, width: u32, height: u32) -> Command {
    Command::ResourceCreate2d {
        resource_id,
        format: format::B8G8R8X8_UNORM,
        width,
        height,
    }
}

fn rect(x: u32, y: u32, width: u32, height: u32) -> Rect {
    Rect {
        x,
        y,
        width,
        height,
    }
}

fn pixel_values(bytes: &[u8]) -> Vec<u32> {
    bytes
        .chunks_exact(4)
        .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

#[test]
fn create_rejects_bad_ids_formats_and_sizes() {
    let mut vm = Vm::new(DeviceConfig::default());
    assert_eq!(vm.err(create(0, 4, 4)), ErrorCode::InvalidResourceId);
    vm.ok(create(1, 4, 4));
    assert_eq!(vm.err(create(1, 4, 4)), ErrorCode::InvalidResourceId);
    let bad_format = Command::ResourceCreate2d {
        resource_id: 2,
        format: 999,
        width: 4,
        height: 4,
    };
    assert_eq!(vm.err(bad_format), ErrorCode::InvalidParameter);
    assert_eq!(vm.err(create(2, 0, 4)), ErrorCode::InvalidParameter);
    // width * 4 does not fit 32 bits.
    assert_eq!(
        vm.err(create(2, 0x4000_0001, 1)),
        ErrorCode::InvalidParameter
    );
    // Fits 32 bits per row but not the memory quota.
    assert_eq!(vm.err(create(2, 0xffff, 0xffff)), ErrorCode::OutOfMemory);
}

#[test]
fn quotas_limit_count_and_bytes_and_are_returned_on_unref() {
    let cfg = DeviceConfig {
        max_resources: 2,
        max_resource_bytes: 64 * 64 * 4 * 2,
        ..Default::default()
    };
    let mut vm = Vm::new(cfg);
    vm.ok(create(1, 64, 64));
    vm.ok(create(2, 64, 64));
    assert_eq!(vm.err(create(3, 1, 1)), ErrorCode::OutOfMemory);
    vm.ok(Command::ResourceUnref { resource_id: 1 });
    assert_eq!(vm.err(create(3, 65, 64)), ErrorCode::OutOfMemory);
    vm.ok(create(3, 64, 64));
}

#[test]
fn full_frame_reaches_the_display_pixel_exact() {
    let mut vm = Vm::new(DeviceConfig::default());
    vm.dev.attach_display();
    vm.frame(7, 64, 48);
    vm.ok(Command::TransferToHost2d {
        rect: rect(0, 0, 64, 48),
        offset: 0,
        resource_id: 7,
    });
    let shown = vm.ok(Command::SetScanout {
        rect: rect(0, 0, 64, 48),
        scanout_id: 0,
        resource_id: 7,
    });
    assert_eq!(
        shown,
        vec![DisplayCmd::Scanout {
            scanout: 0,
            width: 64,
            height: 48
        }]
    );
    let flushed = vm.ok(Command::ResourceFlush {
        rect: rect(0, 0, 64, 48),
        resource_id: 7,
    });
    let [update @ DisplayCmd::Update {
        scanout: 0,
        rect: r,
        ..
    }] = flushed.as_slice()
    else {
        panic!("expected one update, got {flushed:?}");
    };
    assert_eq!(*r, rect(0, 0, 64, 48));
    let pixels = vm.pixels(update);
    assert_eq!(pixel_values(&pixels), (0..64 * 48).collect::<Vec<u32>>());
    // Into the buffer a display keeps between flushes: every byte of it rewritten.
    let DisplayCmd::Update { area, .. } = *update else {
        unreachable!()
    };
    let mut kept = vec![0xab; pixels.len()];
    vm.dev.update_pixels_into(update, area, &mut kept).unwrap();
    assert_eq!(kept, pixels);
    // A buffer of another size is refused.
    let mut short = vec![0; pixels.len() - 4];
    assert!(vm.dev.update_pixels_into(update, area, &mut short).is_err());
}

#[test]
fn partial_transfer_uses_the_guest_offset_once() {
    let mut vm = Vm::new(DeviceConfig::default());
    vm.dev.attach_display();
    vm.frame(1, 16, 16);
    vm.ok(Command::SetScanout {
        rect: rect(0, 0, 16, 16),
        scanout_id: 0,
        resource_id: 1,
    });
    // The rect (4,2) 3x2 starts at byte (2 * 16 + 4) * 4 of the backing.
    let offset = (2 * 16 + 4) * 4;
    vm.ok(Command::TransferToHost2d {
        rect: rect(4, 2, 3, 2),
        offset,
        resource_id: 1,
    });
    let out = vm.ok(Command::ResourceFlush {
        rect: rect(4, 2, 3, 2),
        resource_id: 1,
    });
    let [update] = out.as_slice() else {
        panic!("{out:?}")
    };
    let pixels = vm.pixels(update);
    assert_eq!(pixel_values(&pixels), vec![36, 37, 38, 52, 53, 54]);
    // An offset before the rect's own position cannot be expressed: rejected.
    let bad = Command::TransferToHost2d {
        rect: rect(4, 2, 3, 2),
        offset: 4,
        resource_id: 1,
    };
    assert_eq!(vm.err(bad), ErrorCode::InvalidParameter);
}

#[test]
fn a_transfer_past_a_short_backing_copies_what_the_backing_holds() {
    let mut vm = Vm::new(DeviceConfig::default());
    vm.dev.attach_display();
    // 16x16 pixels, 64-byte rows; a backing of 5.5 rows, right before memory holding 0xff.
    let held: Vec<u8> = (0u32..88).flat_map(|i| (i + 1).to_le_bytes()).collect();
    vm.mem.write_slice(&held, GuestAddress(0x1000)).unwrap();
    vm.mem
        .write_slice(&[0xff; 4096], GuestAddress(0x1000 + held.len() as u64))
        .unwrap();
    vm.ok(create(1, 16, 16));
    vm.ok(Command::ResourceAttachBacking {
        resource_id: 1,
        entries: vec![MemEntry {
            addr: 0x1000,
            length: held.len() as u32,
        }],
    });
    vm.ok(Command::TransferToHost2d {
        rect: rect(0, 0, 16, 16),
        offset: 0,
        resource_id: 1,
    });
    vm.ok(Command::SetScanout {
        rect: rect(0, 0, 16, 16),
        scanout_id: 0,
        resource_id: 1,
    });
    let out = vm.ok(Command::ResourceFlush {
        rect: rect(0, 0, 16, 16),
        resource_id: 1,
    });
    let pixels = pixel_values(&vm.pixels(&out[0]));
    // 5 whole rows and 8 pixels of the sixth come from the backing; nothing from past it.
    let expected: Vec<u32> = (0..256).map(|i| if i < 88 { i + 1 } else { 0 }).collect();
    assert_eq!(pixels, expected);
    // Without a backing there is nothing to copy from.
    vm.ok(create(2, 16, 16));
    let bare = Command::TransferToHost2d {
        rect: rect(0, 0, 16, 16),
        offset: 0,
        resource_id: 2,
    };
    assert_eq!(vm.err(bare), ErrorCode::InvalidParameter);
}

#[test]
fn updates_are_read_in_bands_of_whole_rows() {
    let area = rect(3, 5, 100, 50);
    // 400-byte rows: 4 rows fit 1600 bytes.
    let got: Vec<(u32, Rect)> = bands(area, 1600).collect();
    assert_eq!(got.len(), 13);
    assert_eq!(got[0], (0, rect(3, 5, 100, 4)));
    assert_eq!(got[12], (48, rect(3, 53, 100, 2)));
    assert_eq!(got.iter().map(|(_, b)| b.height).sum::<u32>(), 50);
    // A row larger than the band still goes, one row at a time.
    assert_eq!(bands(area, 10).count(), 50);
}

#[test]
fn transfers_and_scanouts_outside_the_resource_are_rejected() {
    let mut vm = Vm::new(DeviceConfig::default());
    vm.frame(1, 16, 16);
    for r in [
        rect(10, 0, 7, 1),
        rect(0, 16, 1, 1),
        rect(u32::MAX, 0, 2, 1),
        rect(0, 1, 1, u32::MAX),
    ] {
        let t = Command::TransferToHost2d {
            rect: r,
            offset: u64::MAX,
            resource_id: 1,
        };
        assert_eq!(vm.err(t), ErrorCode::InvalidParameter, "{r:?}");
        let s = Command::SetScanout {
            rect: r,
            scanout_id: 0,
            resource_id: 1,
        };
        assert_eq!(vm.err(s), ErrorCode::InvalidParameter, "{r:?}");
    }
    let s = Command::SetScanout {
        rect: rect(0, 0, 1, 1),
        scanout_id: 1,
        resource_id: 1,
    };
    assert_eq!(vm.err(s), ErrorCode::InvalidScanoutId);
    let s = Command::SetScanout {
        rect: rect(0, 0, 1, 1),
        scanout_id: 0,
        resource_id: 9,
    };
    assert_eq!(vm.err(s), ErrorCode::InvalidResourceId);
}

#[test]
fn backing_rules() {
    let mut vm = Vm::new(DeviceConfig::default());
    vm.ok(create(1, 4, 4));
    let t = Command::TransferToHost2d {
        rect: rect(0, 0, 4, 4),
        offset: 0,
        resource_id: 1,
    };
    assert_eq!(
        vm.err(t.clone()),
        ErrorCode::InvalidParameter,
        "no backing yet"
    );
    let outside = vec![MemEntry {
        addr: 1 << 40,
        length: 64,
    }];
    let attach = |entries| Command::ResourceAttachBacking {
        resource_id: 1,
        entries,
    };
    assert_eq!(vm.err(attach(outside)), ErrorCode::InvalidParameter);
    let inside = vec![MemEntry {
        addr: 0,
        length: 64,
    }];
    vm.ok(attach(inside.clone()));
    assert_eq!(
        vm.err(attach(inside)),
        ErrorCode::InvalidParameter,
        "already attached"
    );
    vm.ok(t.clone());
    vm.ok(Command::ResourceDetachBacking { resource_id: 1 });
    assert_eq!(
        vm.err(Command::ResourceDetachBacking { resource_id: 1 }),
        ErrorCode::InvalidParameter
    );
    assert_eq!(vm.err(t), ErrorCode::InvalidParameter);
}

#[test]
fn unref_while_scanned_out_turns_the_scanout_off_first() {
    let mut vm = Vm::new(DeviceConfig::default());
    vm.dev.attach_display();
    vm.frame(3, 8, 8);
    vm.ok(Command::SetScanout {
        rect: rect(0, 0, 8, 8),
        scanout_id: 0,
        resource_id: 3,
    });
    let out = vm.ok(Command::ResourceUnref { resource_id: 3 });
    assert_eq!(out, vec![DisplayCmd::disable(0)]);
    assert_eq!(
        vm.err(Command::ResourceUnref { resource_id: 3 }),
        ErrorCode::InvalidResourceId
    );
    assert_eq!(vm.dev.resource_count(), 0);
}

#[test]
fn uuid_is_random_v4_and_stable() {
    let mut vm = Vm::new(DeviceConfig::default());
    vm.ok(create(1, 4, 4));
    vm.ok(create(2, 4, 4));
    let uuid = |vm: &mut Vm, id| match vm
        .run(Command::ResourceAssignUuid { resource_id: id })
        .response
    {
        Response::OkResourceUuid(u) => u,
        other => panic!("{other:?}"),
    };
    let a = uuid(&mut vm, 1);
    assert_eq!(a, uuid(&mut vm, 1));
    assert_ne!(a, uuid(&mut vm, 2));
    assert_eq!(a[6] >> 4, 4);
    assert_eq!(a[8] >> 6, 2);
    assert_eq!(
        vm.err(Command::ResourceAssignUuid { resource_id: 9 }),
        ErrorCode::InvalidResourceId
    );
}

#[test]
fn display_info_edid_and_capsets() {
    let mut vm = Vm::new(DeviceConfig {
        num_scanouts: 2,
        width: 1920,
        height: 1080,
        ..Default::default()
    });
    let Response::OkDisplayInfo(modes) = vm.run(Command::GetDisplayInfo).response else {
        panic!()
    };
    assert_eq!(modes.len(), 2);
    assert!(modes[0].enabled && !modes[1].enabled);
    assert_eq!((modes[0].rect.width, modes[0].rect.height), (1920, 1080));
    let Response::OkEdid(edid) = vm.run(Command::GetEdid { scanout: 1 }).response else {
        panic!()
    };
    assert_eq!(edid.len(), 128);
    assert_eq!(
        vm.err(Command::GetEdid { scanout: 2 }),
        ErrorCode::InvalidScanoutId
    );
    // The 2D renderer has no capsets.
    assert_eq!(vm.dev.num_capsets(), 0);
    assert_eq!(
        vm.err(Command::GetCapsetInfo { capset_index: 0 }),
        ErrorCode::InvalidParameter
    );
}

#[test]
fn cursor_image_and_moves() {
    let mut vm = Vm::new(DeviceConfig::default());
    vm.frame(5, 64, 64);
    vm.ok(Command::TransferToHost2d {
        rect: rect(0, 0, 64, 64),
        offset: 0,
        resource_id: 5,
    });
    let pos = CursorPos {
        scanout_id: 0,
        x: 10,
        y: 20,
    };
    let up = UpdateCursor {
        pos,
        resource_id: 5,
        hot_x: 1,
        hot_y: 2,
    };
    let cmds = vm.dev.handle_cursor(&Command::UpdateCursor(up));
    let [DisplayCmd::CursorUpdate {
        x: 10,
        y: 20,
        hot_x: 1,
        hot_y: 2,
        image,
        ..
    }] = cmds.as_slice()
    else {
        panic!("{cmds:?}")
    };
    assert_eq!(
        pixel_values(&image.0[..]),
        (0..64 * 64).collect::<Vec<u32>>()
    );
    let hide = UpdateCursor {
        resource_id: 0,
        ..up
    };
    assert_eq!(
        vm.dev.handle_cursor(&Command::UpdateCursor(hide)),
        vec![DisplayCmd::CursorHide { scanout: 0 }]
    );
    let bad = UpdateCursor {
        pos: CursorPos {
            scanout_id: 4,
            ..pos
        },
        ..up
    };
    assert!(vm.dev.handle_cursor(&Command::MoveCursor(bad)).is_empty());
}

#[test]
fn reset_frees_everything() {
    let mut vm = Vm::new(DeviceConfig {
        max_resources: 1,
        ..Default::default()
    });
    vm.frame(1, 8, 8);
    vm.dev.reset();
    assert_eq!(vm.dev.resource_count(), 0);
    vm.ok(create(1, 8, 8));
}

#[test]
fn fenced_commands_wait_for_a_renderer_fence_on_their_timeline() {
    use vgpud_protocol::{FLAG_FENCE, FLAG_INFO_RING_IDX};
    let signals = Arc::new(Signals::default());
    let mut vm = Vm {
        dev: Device::new(Fake::new(signals.clone()), DeviceConfig::default()),
        mem: guest_memory(),
    };
    let hdr = CtrlHeader {
        flags: FLAG_FENCE,
        fence_id: 5,
        ..Default::default()
    };
    let fenced = |vm: &mut Vm<Fake>, hdr: CtrlHeader, cmd: Command| {
        vm.dev.handle(&Request { hdr, cmd }, &vm.mem)
    };
    let out = fenced(&mut vm, hdr, create(1, 4, 4));
    assert_eq!(out.response, Response::OkNodata);
    let (timeline, id) = out.fence.expect("fenced");
    assert_eq!(timeline, Timeline::GLOBAL);
    // The renderer reports it once done.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while signals.0.lock().unwrap().is_empty() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    assert_eq!(*signals.0.lock().unwrap(), vec![id]);
    // A failed command is still fenced, so it cannot overtake earlier fences.
    let out = fenced(&mut vm, hdr, create(1, 4, 4));
    assert_eq!(out.response, Response::Err(ErrorCode::InvalidResourceId));
    assert!(out.fence.is_some());
    // A ring fence on a context that does not exist has no timeline: answered at once.
    let ring = CtrlHeader {
        flags: FLAG_FENCE | FLAG_INFO_RING_IDX,
        ctx_id: 3,
        ring_idx: 1,
        ..hdr
    };
    assert!(fenced(&mut vm, ring, Command::GetDisplayInfo)
        .fence
        .is_none());
}

#[test]
fn two_d_fences_are_done_at_once_and_there_are_no_contexts() {
    let mut vm = Vm::new(DeviceConfig::default());
    let hdr = CtrlHeader {
        flags: vgpud_protocol::FLAG_FENCE,
        fence_id: 5,
        ..Default::default()
    };
    let out = vm.dev.handle(
        &Request {
            hdr,
            cmd: create(1, 4, 4),
        },
        &vm.mem,
    );
    assert_eq!(out.response, Response::OkNodata);
    assert!(out.fence.is_none(), "nothing to wait for: answered at once");
    let out = vm.run(Command::CtxCreate {
        context_init: 0,
        debug_name: b"x".to_vec(),
    });
    assert_eq!(out.response, Response::Err(ErrorCode::Unspec));
}

/// A renderer's words reach the log on one line and bounded (a worker is not trusted).
#[test]
fn a_renderers_cause_is_one_bounded_line() {
    let long = format!("line one\nline two{}", "x".repeat(1000));
    let failure = render_error(RenderError::Rejected(long));
    assert_eq!(failure.code, ErrorCode::Unspec);
    assert!(!failure.why.contains('\n'), "{}", failure.why);
    assert!(failure.why.len() <= MAX_CAUSE + 3, "{}", failure.why.len());
    assert!(failure
        .why
        .starts_with("renderer rejected the request: line one line two"));
}

/// A fenced SUBMIT_3D gets its fence with the submission, on its ring's timeline; a refused
/// stream is fenced all the same (after), so it cannot overtake earlier fences either.
#[test]
fn a_fenced_submit_is_fenced_on_its_ring_whether_or_not_the_stream_is_taken() {
    use vgpud_protocol::{FLAG_FENCE, FLAG_INFO_RING_IDX};
    let signals = Arc::new(Signals::default());
    let mut vm = Vm {
        dev: Device::new(Fake::new(signals.clone()), DeviceConfig::default()),
        mem: guest_memory(),
    };
    let ctx = CtrlHeader {
        ctx_id: 2,
        ..Default::default()
    };
    let created = vm.dev.handle(
        &Request {
            hdr: ctx,
            cmd: Command::CtxCreate {
                context_init: 0,
                debug_name: b"x".to_vec(),
            },
        },
        &vm.mem,
    );
    assert_eq!(created.response, Response::OkNodata);
    let on_ring = CtrlHeader {
        flags: FLAG_FENCE | FLAG_INFO_RING_IDX,
        ring_idx: 1,
        fence_id: 9,
        ..ctx
    };
    let submit = |vm: &mut Vm<Fake>, stream: &[u8]| {
        let cmd = Command::Submit3d {
            commands: stream.to_vec(),
        };
        vm.dev.handle(&Request { hdr: on_ring, cmd }, &vm.mem)
    };
    let ring = Timeline {
        ctx: GuestCtxId(2),
        ring: Some(1),
    };
    let out = submit(&mut vm, b"delay 1");
    assert_eq!(out.response, Response::OkNodata);
    let (timeline, first) = out.fence.expect("fenced");
    assert_eq!(timeline, ring);
    let out = submit(&mut vm, b"delay x");
    assert_eq!(out.response, Response::Err(ErrorCode::InvalidParameter));
    let (timeline, second) = out.fence.expect("a refused stream is fenced too");
    assert_eq!(timeline, ring);
    assert_ne!(first, second);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while signals.0.lock().unwrap().len() < 2 && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    assert_eq!(*signals.0.lock().unwrap(), vec![first, second]);
}
