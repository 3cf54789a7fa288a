//! The 2D device over a real vhost-user connection: negotiation, every 2D command, and what
//! reaches the display.

mod common;

use std::time::Duration;

use common::*;
use vgpud_harness::DisplayEvent;
use vgpud_protocol::{
    resp, Command, CtrlHeader, CursorPos, ErrorCode, GpuConfig, Request, Response, UpdateCursor,
    FLAG_FENCE, FLAG_INFO_RING_IDX, F_EDID, F_RESOURCE_UUID, F_VIRGL,
};

const VERSION_1: u64 = 1 << 32;
const EVENT_IDX: u64 = 1 << 29;
const INDIRECT_DESC: u64 = 1 << 28;

#[test]
fn negotiation_and_config_space() {
    let d = daemon(1, &["--scanouts", "3"]);
    let mut vm = connect(&d, 0);
    let f = vm.offered_features();
    for bit in [
        VERSION_1,
        EVENT_IDX,
        INDIRECT_DESC,
        1 << F_EDID,
        1 << F_RESOURCE_UUID,
    ] {
        assert_ne!(f & bit, 0, "feature {bit:#x} offered");
    }
    assert_eq!(f & (1 << F_VIRGL), 0, "the 2D renderer offers no virgl");
    assert_eq!(vm.queue_num(), 2);
    // CONFIG, MQ, REPLY_ACK, BACKEND_REQ, BACKEND_SEND_FD: bits 9, 0, 3, 5, 10 (memory slots,
    // which this frontend does not ask for, are tests/mem_table.rs's).
    let p = vm.protocol_features();
    for bit in [9, 0, 3, 5, 10] {
        assert_ne!(p & (1 << bit), 0, "protocol feature {bit}");
    }
    // QEMU 11 acks RING_RESET (bit 40) whatever is offered; it must be offered or SET_FEATURES fails.
    assert_ne!(vm.offered_features() & (1 << 40), 0, "RING_RESET offered");
    // QEMU 11 reads 20 bytes of config; the answer must be exactly that long.
    let wide = vm.get_config(0, 20).unwrap();
    assert_eq!(wide.len(), 20);
    assert_eq!(&wide[16..], &[0; 4], "no blobs here: no blob_alignment");
    let cfg = GpuConfig::from_bytes(&wide).unwrap();
    assert_eq!(
        cfg,
        GpuConfig {
            events_read: 0,
            events_clear: 0,
            num_scanouts: 3,
            num_capsets: 0,
            blob_alignment: 0,
        }
    );
    let Response::OkDisplayInfo(modes) = call(&mut vm, Command::GetDisplayInfo) else {
        panic!()
    };
    assert_eq!(modes.iter().filter(|m| m.enabled).count(), 1);
    assert_eq!((modes[0].rect.width, modes[0].rect.height), (1280, 800));
}

#[test]
fn full_frame_reaches_the_display_pixel_exact() {
    let d = daemon(1, &[]);
    let mut vm = connect_with_display(&d, 0, vec![(320, 200)]);
    let Response::OkDisplayInfo(modes) = call(&mut vm, Command::GetDisplayInfo) else {
        panic!()
    };
    assert_eq!(
        (modes[0].rect.width, modes[0].rect.height),
        (320, 200),
        "modes come from the display"
    );
    let pixels = pattern(320, 200, 0);
    upload(&mut vm, 1, 320, 200, &pixels);
    show(&mut vm, 1, 320, 200);
    let display = vm.display().unwrap();
    assert!(display.wait_updates(1, Duration::from_secs(5)));
    let frame = display.frame(0).unwrap();
    assert_eq!((frame.width, frame.height), (320, 200));
    assert!(
        frame.pixels == pixels,
        "frame differs from what the guest drew"
    );
    assert!(display.events().contains(&DisplayEvent::Scanout {
        scanout: 0,
        width: 320,
        height: 200
    }));
}

#[test]
fn partial_update_lands_in_place() {
    let d = daemon(1, &[]);
    let mut vm = connect_with_display(&d, 0, vec![(64, 64)]);
    upload(&mut vm, 1, 64, 64, &pattern(64, 64, 1));
    show(&mut vm, 1, 64, 64);
    // Redraw a 5x3 box at (10, 20) in guest memory and transfer only that box.
    let second = pattern(64, 64, 2);
    let backing = vm.alloc(second.len() as u64, 4096);
    vm.write_mem(backing, &second);
    ok(&mut vm, Command::ResourceDetachBacking { resource_id: 1 });
    let entries = vec![vgpud_protocol::MemEntry {
        addr: backing,
        length: second.len() as u32,
    }];
    ok(
        &mut vm,
        Command::ResourceAttachBacking {
            resource_id: 1,
            entries,
        },
    );
    let offset = (20 * 64 + 10) * 4;
    ok(
        &mut vm,
        Command::TransferToHost2d {
            rect: rect(10, 20, 5, 3),
            offset,
            resource_id: 1,
        },
    );
    ok(
        &mut vm,
        Command::ResourceFlush {
            rect: rect(10, 20, 5, 3),
            resource_id: 1,
        },
    );
    let display = vm.display().unwrap();
    assert!(display.wait_updates(2, Duration::from_secs(5)));
    assert!(display.events().contains(&DisplayEvent::Update {
        scanout: 0,
        x: 10,
        y: 20,
        width: 5,
        height: 3
    }));
    let mut expected = pattern(64, 64, 1);
    for y in 20..23 {
        let row = (y * 64 + 10) * 4;
        expected[row..row + 20].copy_from_slice(&second[row..row + 20]);
    }
    assert!(display.frame(0).unwrap().pixels == expected);
}

#[test]
fn scanout_disable_and_unref_while_scanned_out() {
    let d = daemon(1, &["--scanouts", "2"]);
    let mut vm = connect_with_display(&d, 0, vec![(32, 32), (32, 32)]);
    upload(&mut vm, 1, 32, 32, &pattern(32, 32, 0));
    ok(
        &mut vm,
        Command::SetScanout {
            rect: rect(0, 0, 32, 32),
            scanout_id: 1,
            resource_id: 1,
        },
    );
    ok(&mut vm, Command::ResourceUnref { resource_id: 1 });
    let off = DisplayEvent::Scanout {
        scanout: 1,
        width: 0,
        height: 0,
    };
    let display = vm.display().unwrap();
    assert!(
        display.wait_event(&off, Duration::from_secs(5)),
        "scanout 1 turned off before the resource went away"
    );
    let err = call(
        &mut vm,
        Command::ResourceFlush {
            rect: rect(0, 0, 1, 1),
            resource_id: 1,
        },
    );
    assert_eq!(err, Response::Err(ErrorCode::InvalidResourceId));
    ok(
        &mut vm,
        Command::SetScanout {
            rect: rect(0, 0, 0, 0),
            scanout_id: 0,
            resource_id: 0,
        },
    );
}

#[test]
fn edid_comes_from_the_display_or_is_generated() {
    let d = daemon(2, &["--resolution", "1024x768"]);
    let mut headless = connect(&d, 0);
    let Response::OkEdid(edid) = call(&mut headless, Command::GetEdid { scanout: 0 }) else {
        panic!()
    };
    assert_eq!(&edid[..8], &[0, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0]);
    assert_eq!(
        edid.iter().take(128).fold(0u8, |a, b| a.wrapping_add(*b)),
        0,
        "checksum"
    );
    let width = u32::from(edid[56]) | (u32::from(edid[58] >> 4) << 8);
    assert_eq!(width, 1024);
    assert!(
        edid.windows(5).any(|w| w == b"vgpud"),
        "generated by the daemon"
    );
    let mut shown = connect_with_display(&d, 1, vec![(800, 600)]);
    let Response::OkEdid(edid) = call(&mut shown, Command::GetEdid { scanout: 0 }) else {
        panic!()
    };
    assert!(
        edid.windows(13).any(|w| w == b"vgpud-harness"),
        "supplied by the display"
    );
    // With a display attached the frontend owns the scanout count; virtio-gpu's own limit holds.
    assert_eq!(
        call(&mut shown, Command::GetEdid { scanout: 16 }),
        Response::Err(ErrorCode::InvalidScanoutId)
    );
    assert_eq!(
        call(&mut headless, Command::GetEdid { scanout: 1 }),
        Response::Err(ErrorCode::InvalidScanoutId),
        "headless: the configured count"
    );
}

/// A display resized behind the guest's back: the device sets EVENT_DISPLAY and tells the VMM
/// (CONFIG_CHANGE_MSG on the backend channel), which raises the config interrupt that makes the
/// driver ask for the new layout. Once read and cleared, the next resize does it again.
#[test]
/// QEMU's vhost-user-gpu keeps the config's display events itself and logs an error for
/// CONFIG_CHANGE_MSG; the harness display plays that VMM, so the event is set and nothing sent.
fn a_resized_display_sets_the_display_event_and_sends_qemus_display_no_config_change() {
    let d = daemon(1, &[]);
    let mut vm = connect_with_display(&d, 0, vec![(800, 600)]);
    let events_read = |vm: &mut vgpud_harness::Vm| {
        GpuConfig::from_bytes(&vm.get_config(0, 20).unwrap())
            .unwrap()
            .events_read
    };
    assert!(matches!(
        call(&mut vm, Command::GetDisplayInfo),
        Response::OkDisplayInfo(_)
    ));
    assert!(matches!(
        call(&mut vm, Command::GetEdid { scanout: 0 }),
        Response::OkEdid(_)
    ));
    assert_eq!(vm.config_change_count(), 0, "nothing changed yet");
    assert_eq!(events_read(&mut vm), 0);
    let display = vm.display().unwrap();
    for (round, mode) in [(1, (1024, 768)), (2, (640, 480))] {
        display.set_modes(vec![mode]);
        assert!(matches!(
            call(&mut vm, Command::GetEdid { scanout: 0 }),
            Response::OkEdid(_)
        ));
        assert_eq!(events_read(&mut vm), 1, "EVENT_DISPLAY set (round {round})");
        assert_eq!(
            vm.config_change_count(),
            0,
            "no CONFIG_CHANGE_MSG to this VMM"
        );
        let Response::OkDisplayInfo(modes) = call(&mut vm, Command::GetDisplayInfo) else {
            panic!()
        };
        assert_eq!((modes[0].rect.width, modes[0].rect.height), mode);
        vm.set_config(4, &1u32.to_le_bytes()).unwrap();
        assert_eq!(events_read(&mut vm), 0, "cleared by the driver");
    }
}

#[test]
fn uuid_capsets_and_unsupported_commands() {
    let d = daemon(1, &[]);
    let mut vm = connect(&d, 0);
    ok(&mut vm, create(1, 4, 4));
    let Response::OkResourceUuid(a) = call(&mut vm, Command::ResourceAssignUuid { resource_id: 1 })
    else {
        panic!()
    };
    assert_eq!(
        call(&mut vm, Command::ResourceAssignUuid { resource_id: 1 }),
        Response::OkResourceUuid(a)
    );
    assert_eq!(a[6] >> 4, 4, "version 4");
    let none = call(&mut vm, Command::GetCapsetInfo { capset_index: 0 });
    assert_eq!(none, Response::Err(ErrorCode::InvalidParameter));
    let none = call(
        &mut vm,
        Command::GetCapset {
            capset_id: 1,
            capset_version: 0,
        },
    );
    assert_eq!(none, Response::Err(ErrorCode::InvalidParameter));
    // 3D commands without the VIRGL feature.
    assert_eq!(
        call(&mut vm, Command::CtxDestroy),
        Response::Err(ErrorCode::Unspec)
    );
    let submit = Command::Submit3d {
        commands: vec![0; 64],
    };
    assert_eq!(call(&mut vm, submit), Response::Err(ErrorCode::Unspec));
}

#[test]
fn fenced_commands_echo_the_fence() {
    let d = daemon(1, &[]);
    let mut vm = connect(&d, 0);
    let hdr = CtrlHeader {
        flags: FLAG_FENCE | FLAG_INFO_RING_IDX,
        fence_id: 77,
        ctx_id: 0,
        ring_idx: 2,
        ..Default::default()
    };
    let req = Request {
        hdr,
        cmd: create(1, 8, 8),
    }
    .encode();
    let (rh, r) = Response::decode(&vm.request(&req).unwrap()).unwrap();
    assert_eq!(r, Response::OkNodata);
    assert_eq!(rh.type_, resp::OK_NODATA);
    assert_eq!(
        (rh.flags & FLAG_FENCE, rh.fence_id, rh.ring_idx),
        (FLAG_FENCE, 77, 2)
    );
}

#[test]
fn cursor_queue_updates_moves_and_hides() {
    let d = daemon(1, &[]);
    let mut vm = connect_with_display(&d, 0, vec![(640, 480)]);
    upload(&mut vm, 9, 64, 64, &pattern(64, 64, 3));
    let pos = CursorPos {
        scanout_id: 0,
        x: 100,
        y: 50,
    };
    let update = UpdateCursor {
        pos,
        resource_id: 9,
        hot_x: 3,
        hot_y: 4,
    };
    vm.cursor(&encode(Command::UpdateCursor(update))).unwrap();
    let moved = UpdateCursor {
        pos: CursorPos { x: 101, ..pos },
        ..update
    };
    vm.cursor(&encode(Command::MoveCursor(moved))).unwrap();
    vm.cursor(&encode(Command::UpdateCursor(UpdateCursor {
        resource_id: 0,
        ..update
    })))
    .unwrap();
    let display = vm.display().unwrap();
    // Display messages are one-way: allow the peer a moment to record the last one.
    let want = [
        DisplayEvent::CursorUpdate {
            scanout: 0,
            x: 100,
            y: 50,
            hot_x: 3,
            hot_y: 4,
        },
        DisplayEvent::CursorPos {
            scanout: 0,
            x: 101,
            y: 50,
        },
        DisplayEvent::CursorHide { scanout: 0 },
    ];
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !want.iter().all(|e| display.events().contains(e)) {
        assert!(
            std::time::Instant::now() < deadline,
            "cursor events: {:?}",
            display.events()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn events_clear_is_writable() {
    let d = daemon(1, &[]);
    let mut vm = connect(&d, 0);
    vm.set_config(4, &1u32.to_le_bytes()).unwrap();
    // QEMU 11 acks RING_RESET (bit 40) whatever is offered; it must be offered or SET_FEATURES fails.
    assert_ne!(vm.offered_features() & (1 << 40), 0, "RING_RESET offered");
    // QEMU 11 reads 20 bytes of config; the answer must be exactly that long.
    let wide = vm.get_config(0, 20).unwrap();
    assert_eq!(wide.len(), 20);
    assert_eq!(&wide[16..], &[0; 4]);
    let cfg = GpuConfig::from_bytes(&wide).unwrap();
    assert_eq!(cfg.events_read, 0);
    assert_eq!(cfg.num_scanouts, 1);
}

/// crosvm offers split rings of 32768 entries unless told otherwise (its devices/src/virtio/
/// queue.rs), and Linux drivers take the size offered.
#[test]
fn a_ring_of_32768_entries_is_served() {
    let d = daemon(1, &[]);
    let cfg = vgpud_harness::VmConfig {
        // The harness gives every two entries a 16 KiB buffer: 256 MiB per queue.
        regions: vec![(0, 768 << 20), (0x1_0000_0000, 64 << 20)],
        queue_size: 32768,
        ..vgpud_harness::VmConfig::default()
    };
    let mut vm = vgpud_harness::Vm::connect(&d.socket(0), cfg).expect("connect");
    assert!(matches!(
        call(&mut vm, Command::GetDisplayInfo),
        Response::OkDisplayInfo(_)
    ));
    upload(&mut vm, 1, 16, 16, &pattern(16, 16, 7));
}
