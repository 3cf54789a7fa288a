//! vgpud's own VNC output: what a viewer sees of a VM's scanouts, damage, resizes and cursor,
//! and what hostile viewers cannot do (crash, stall the guest, hold memory, starve others).

mod common;

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::*;
use vgpud_harness::vnc::{bgr, Received, CURSOR, DESKTOP_SIZE, RAW, ZRLE};
use vgpud_harness::{Daemon, Vm, VncViewer};
use vgpud_protocol::{Command, CursorPos, UpdateCursor};

const WAIT: Duration = Duration::from_secs(10);

/// A daemon with one VM whose output listens at `<dir>/vm0.vnc`, plus `settings`.
fn vnc_daemon(settings: &str, extra: &[&str]) -> (Daemon, PathBuf) {
    let dir = std::env::temp_dir().join(format!(
        "vgpud-vnc-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("vm0.vnc");
    let own = format!("vnc={}{settings}", path.display());
    let mut args = extra.to_vec();
    args.extend(["--renderer", "2d"]);
    let d = Daemon::spawn_with_vm_settings(vgpud(), &[&own], &args).expect("start vgpud");
    assert!(
        eventually(WAIT, || path.exists()),
        "the VNC socket appears: {}",
        d.stderr_log()
    );
    (d, path)
}

fn viewer(path: &std::path::Path, encodings: &[i32]) -> VncViewer {
    VncViewer::connect(path, encodings).expect("viewer connects")
}

/// Draws `pixels` as resource `id` on scanout 0 and flushes it.
fn draw(vm: &mut Vm, id: u32, w: u32, h: u32, pixels: &[u8]) {
    upload(vm, id, w, h, pixels);
    show(vm, id, w, h);
}

#[test]
fn a_frame_reaches_raw_and_zrle_viewers_pixel_exact() {
    let (d, path) = vnc_daemon(",name=desk", &["--resolution", "320x200"]);
    let mut raw = viewer(&path, &[RAW]);
    let mut zrle = viewer(&path, &[ZRLE, RAW]);
    assert_eq!(
        (raw.width, raw.height, raw.name.as_str()),
        (320, 200, "desk")
    );
    let mut vm = connect(&d, 0);
    let pixels = pattern(320, 200, 7);
    draw(&mut vm, 1, 320, 200, &pixels);
    let want = bgr(&pixels);
    for v in [&mut raw, &mut zrle] {
        v.wait_for(WAIT, |v| v.bgr() == want)
            .unwrap_or_else(|e| panic!("{e}: {}", d.stderr_log()));
    }
    assert!(zrle.received.iter().any(|r| r.encoding == ZRLE));
    assert!(raw.received.iter().all(|r| r.encoding == RAW));
}

#[test]
fn updates_follow_the_flushed_rectangles() {
    let (d, path) = vnc_daemon("", &["--resolution", "256x128"]);
    let mut vm = connect(&d, 0);
    let mut v = viewer(&path, &[ZRLE]);
    let first = pattern(256, 128, 1);
    draw(&mut vm, 1, 256, 128, &first);
    v.wait_for(WAIT, |v| v.bgr() == bgr(&first)).unwrap();
    // Redraw all of it, flush only a 16x8 square at (32, 40).
    let second = pattern(256, 128, 2);
    let gpa = vm.alloc_in(0, second.len() as u64, 4096);
    vm.write_mem(gpa, &second);
    ok(&mut vm, Command::ResourceDetachBacking { resource_id: 1 });
    ok(
        &mut vm,
        Command::ResourceAttachBacking {
            resource_id: 1,
            entries: vec![vgpud_protocol::MemEntry {
                addr: gpa,
                length: second.len() as u32,
            }],
        },
    );
    ok(
        &mut vm,
        Command::TransferToHost2d {
            rect: rect(0, 0, 256, 128),
            offset: 0,
            resource_id: 1,
        },
    );
    ok(
        &mut vm,
        Command::ResourceFlush {
            rect: rect(32, 40, 16, 8),
            resource_id: 1,
        },
    );
    v.request(true).unwrap();
    let rects = v.read_update().unwrap();
    assert_eq!(
        rects,
        vec![Received {
            x: 32,
            y: 40,
            width: 16,
            height: 8,
            encoding: ZRLE
        }],
        "only the flushed square is sent"
    );
    // The picture is the first frame with the second's square in it.
    let mut want = first.clone();
    for y in 40..48 {
        let at = (y * 256 + 32) * 4;
        want[at..at + 64].copy_from_slice(&second[at..at + 64]);
    }
    assert_eq!(v.bgr(), bgr(&want));
}

#[test]
fn a_mode_change_resizes_viewers_that_follow_and_clips_the_others() {
    let (d, path) = vnc_daemon("", &["--resolution", "200x100"]);
    let mut vm = connect(&d, 0);
    let mut follows = viewer(&path, &[DESKTOP_SIZE, ZRLE]);
    let mut fixed = viewer(&path, &[RAW]);
    let pixels = pattern(300, 150, 4);
    draw(&mut vm, 1, 300, 150, &pixels);
    follows
        .wait_for(WAIT, |v| {
            (v.width, v.height) == (300, 150) && v.bgr() == bgr(&pixels)
        })
        .unwrap();
    assert!(follows.received.iter().any(|r| r.encoding == DESKTOP_SIZE));
    // The other keeps its 200x100 and sees the top-left of the frame.
    let clipped: Vec<u8> = (0..100)
        .flat_map(|y| pixels[y * 1200..y * 1200 + 800].to_vec())
        .collect();
    fixed.wait_for(WAIT, |v| v.bgr() == bgr(&clipped)).unwrap();
    assert_eq!((fixed.width, fixed.height), (200, 100));
}

#[test]
fn the_cursor_reaches_viewers_that_draw_it() {
    let (d, path) = vnc_daemon("", &["--resolution", "200x100"]);
    let mut vm = connect(&d, 0);
    let mut v = viewer(&path, &[CURSOR, RAW]);
    // Opaque left half, transparent right half.
    let image: Vec<u8> = (0..64 * 64)
        .flat_map(|i| {
            let alpha = if i % 64 < 32 { 0xff } else { 0 };
            [i as u8, 0x40, 0x80, alpha]
        })
        .collect();
    upload(&mut vm, 9, 64, 64, &image);
    let update = UpdateCursor {
        pos: CursorPos {
            scanout_id: 0,
            x: 10,
            y: 20,
        },
        resource_id: 9,
        hot_x: 5,
        hot_y: 6,
    };
    vm.cursor(&encode(Command::UpdateCursor(update))).unwrap();
    v.wait_for(WAIT, |v| v.cursor.is_some()).unwrap();
    let c = v.cursor.clone().unwrap();
    assert_eq!((c.hot, c.width, c.height), ((5, 6), 64, 64));
    assert_eq!(bgr(&c.pixels), bgr(&image));
    assert!(c
        .mask
        .chunks(8)
        .all(|row| row == [0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0]));
    // Hidden: an empty cursor.
    vm.cursor(&encode(Command::UpdateCursor(UpdateCursor {
        resource_id: 0,
        ..update
    })))
    .unwrap();
    v.wait_for(WAIT, |v| v.cursor.as_ref().is_some_and(|c| c.width == 0))
        .unwrap();
}

#[test]
fn a_viewer_that_comes_later_sees_the_picture_drawn_before_it() {
    let (d, path) = vnc_daemon("", &["--resolution", "160x120"]);
    let mut vm = connect(&d, 0);
    let pixels = pattern(160, 120, 9);
    // Nobody watches: the output reads no pixels, and asks for them when a viewer comes.
    draw(&mut vm, 1, 160, 120, &pixels);
    let mut v = viewer(&path, &[ZRLE]);
    // Its very first update is the picture (not a stale one: a viewer that takes one picture,
    // as screenshot tools do, must get it).
    v.request(false).unwrap();
    v.read_update().unwrap();
    assert!(v.bgr() == bgr(&pixels), "{}", d.stderr_log());
}

#[test]
fn viewers_stay_across_a_vm_that_leaves_and_see_the_next_one() {
    let (d, path) = vnc_daemon("", &["--resolution", "64x64"]);
    let mut v = viewer(&path, &[RAW]);
    let mut vm = connect(&d, 0);
    let a = pattern(64, 64, 1);
    draw(&mut vm, 1, 64, 64, &a);
    v.wait_for(WAIT, |v| v.bgr() == bgr(&a)).unwrap();
    vm.disconnect();
    v.wait_for(WAIT, |v| v.picture.iter().all(|b| *b == 0))
        .expect("the screen goes black when its VM leaves");
    let mut vm = connect(&d, 0);
    let b = pattern(64, 64, 2);
    draw(&mut vm, 1, 64, 64, &b);
    v.wait_for(WAIT, |v| v.bgr() == bgr(&b)).unwrap();
}

#[test]
fn a_viewer_that_stops_reading_costs_only_itself() {
    let (d, path) = vnc_daemon("", &["--resolution", "1920x1080"]);
    let mut vm = connect(&d, 0);
    // Asks for full updates and never reads one.
    let mut stuck = UnixStream::connect(&path).unwrap();
    handshake(&mut stuck);
    stuck.write_all(&[2, 0, 0, 1, 0, 0, 0, 0]).unwrap();
    // Raw: ZRLE of noisy 1080p frames is slow in a debug build.
    let mut good = viewer(&path, &[RAW]);
    for i in 0..20u32 {
        let pixels = pattern(1920, 1080, i);
        if i == 0 {
            upload(&mut vm, 1, 1920, 1080, &pixels);
            show(&mut vm, 1, 1920, 1080);
        } else {
            ok(
                &mut vm,
                Command::ResourceFlush {
                    rect: rect(0, 0, 1920, 1080),
                    resource_id: 1,
                },
            );
        }
        let req = [3u8, 0, 0, 0, 0, 0, 0x07, 0x80, 0x04, 0x38];
        let _ = stuck.write_all(&req);
    }
    // The guest never waited on it; the good viewer is served.
    let want = bgr(&pattern(1920, 1080, 0));
    good.wait_for(WAIT, |v| v.bgr() == want).unwrap();
    // It is dropped once it has left an update unread for 10 s.
    assert!(
        eventually(Duration::from_secs(20), || d
            .stderr_log()
            .contains("vnc: viewer dropped: stopped reading")),
        "{}",
        d.stderr_log()
    );
    ok(
        &mut vm,
        Command::ResourceFlush {
            rect: rect(0, 0, 8, 8),
            resource_id: 1,
        },
    );
}

/// RFB 3.8, security none, shared; reads ServerInit.
fn handshake(s: &mut UnixStream) {
    s.set_read_timeout(Some(WAIT)).unwrap();
    let mut buf = [0u8; 12];
    s.read_exact(&mut buf).unwrap();
    s.write_all(b"RFB 003.008\n").unwrap();
    let mut types = [0u8; 2];
    s.read_exact(&mut types).unwrap();
    s.write_all(&[1]).unwrap();
    let mut result = [0u8; 4];
    s.read_exact(&mut result).unwrap();
    s.write_all(&[1]).unwrap();
    let mut init = [0u8; 24];
    s.read_exact(&mut init).unwrap();
    let mut name = vec![0u8; u32::from_be_bytes(init[20..24].try_into().unwrap()) as usize];
    s.read_exact(&mut name).unwrap();
}

/// Whether the server closed `s` (within `WAIT`).
fn closed(s: &mut UnixStream) -> bool {
    s.set_read_timeout(Some(WAIT)).unwrap();
    let mut buf = [0u8; 4096];
    let until = Instant::now() + WAIT;
    while Instant::now() < until {
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return false,
            Err(_) => return true,
        }
    }
    false
}

#[test]
fn hostile_viewers_are_dropped_alone() {
    let (d, path) = vnc_daemon("", &["--resolution", "64x64"]);
    let mut vm = connect(&d, 0);
    let a = pattern(64, 64, 3);
    draw(&mut vm, 1, 64, 64, &a);
    let mut v = viewer(&path, &[ZRLE]);
    v.wait_for(WAIT, |v| v.bgr() == bgr(&a)).unwrap();
    let attacks: Vec<(&str, Vec<u8>)> = vec![
        ("not RFB", b"GET / HTTP/1.1\r\n\r\n".to_vec()),
        ("unknown message", vec![99; 64]),
        ("65535 encodings", vec![2, 0, 0xff, 0xff]),
        (
            "4 GiB of clipboard",
            vec![6, 0, 0, 0, 0xff, 0xff, 0xff, 0xff],
        ),
        ("colour map format", {
            let mut m = vec![0u8, 0, 0, 0, 8, 8, 0, 0];
            m.extend_from_slice(&[0; 12]);
            m
        }),
    ];
    for (what, bytes) in attacks {
        let mut s = UnixStream::connect(&path).unwrap();
        if what != "not RFB" {
            handshake(&mut s);
        } else {
            let mut version = [0u8; 12];
            s.read_exact(&mut version).unwrap();
        }
        let _ = s.write_all(&bytes);
        assert!(closed(&mut s), "{what}: dropped");
    }
    // A clipboard within bounds is skipped, not kept, and the viewer stays.
    let mut s = UnixStream::connect(&path).unwrap();
    handshake(&mut s);
    let mut cut = vec![6u8, 0, 0, 0];
    cut.extend_from_slice(&(512u32 << 10).to_be_bytes());
    cut.extend(std::iter::repeat_n(b'x', 512 << 10));
    s.write_all(&cut).unwrap();
    s.write_all(&[3, 0, 0, 0, 0, 0, 0, 64, 0, 64]).unwrap();
    let mut hdr = [0u8; 4];
    s.read_exact(&mut hdr).unwrap();
    assert_eq!(hdr[0], 0, "an update after the clipboard");
    // Silent: dropped after the handshake time.
    let mut silent = UnixStream::connect(&path).unwrap();
    assert!(
        closed(&mut silent) || closed(&mut silent),
        "a silent viewer is dropped"
    );
    // The guest and the good viewer went on meanwhile.
    let b = pattern(64, 64, 4);
    draw(&mut vm, 2, 64, 64, &b);
    v.wait_for(WAIT, |v| v.bgr() == bgr(&b)).unwrap();
    assert!(d.stderr_log().contains("vnc: viewer dropped"));
}

#[test]
fn viewers_past_the_cap_or_the_memory_cap_are_refused() {
    let (d, path) = vnc_daemon(",vnc-viewers=2,vnc-memory=3M", &["--resolution", "320x200"]);
    let _vm = connect(&d, 0);
    let one = viewer(&path, &[RAW]);
    let two = viewer(&path, &[RAW]);
    let mut third = UnixStream::connect(&path).unwrap();
    assert!(closed(&mut third), "a third viewer is refused");
    drop((one, two));
    // 3M holds a 320x200 picture and two viewers (each two pictures and its zlib stream); 2M
    // holds not even a 1024x768 picture.
    let (d, path) = vnc_daemon(",vnc-memory=2M", &["--resolution", "1024x768"]);
    let _vm = connect(&d, 0);
    assert!(VncViewer::connect(&path, &[RAW]).is_err());
    assert!(d.stderr_log().contains("memory cap"), "{}", d.stderr_log());
}

#[test]
fn a_storm_of_viewers_leaves_no_descriptor_thread_or_memory_behind() {
    let (d, path) = vnc_daemon("", &["--resolution", "256x256"]);
    let mut vm = connect(&d, 0);
    let a = pattern(256, 256, 5);
    draw(&mut vm, 1, 256, 256, &a);
    let before = quiet_stats(&d);
    for i in 0..300 {
        let mut s = match UnixStream::connect(&path) {
            Ok(s) => s,
            Err(_) => continue,
        };
        match i % 3 {
            0 => {}
            1 => {
                let _ = s.write_all(b"RFB 003.008\n\x01\x01");
            }
            _ => {
                let mut v = VncViewer::over(s, &[ZRLE]).unwrap();
                v.request(false).unwrap();
            }
        }
    }
    let mut v = viewer(&path, &[ZRLE]);
    v.wait_for(WAIT, |v| v.bgr() == bgr(&a)).unwrap();
    drop(v);
    let after = quiet_stats(&d);
    assert!(
        after.fds <= before.fds + 1,
        "fds {} -> {}",
        before.fds,
        after.fds
    );
    assert_eq!(after.threads, before.threads);
    assert!(
        after.rss_kib < before.rss_kib + 16 * 1024,
        "RSS {} -> {} KiB",
        before.rss_kib,
        after.rss_kib
    );
}

#[test]
fn tcp_listens_on_loopback_only_unless_the_operator_says_otherwise() {
    let dir = std::env::temp_dir().join(format!("vgpud-vnc-tcp-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let sock = dir.join("vm.sock");
    let out = std::process::Command::new(vgpud())
        .args(["--renderer", "2d", "--socket-path"])
        .arg(format!("{},vnc=0.0.0.0:5999", sock.display()))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("not a loopback address"), "{err}");
    // Loopback works; a viewer connects over TCP.
    let port = free_port();
    let mut child = std::process::Command::new(vgpud())
        .args(["--renderer", "2d", "--socket-path"])
        .arg(format!("{},vnc=127.0.0.1:{port}", sock.display()))
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut connected = None;
    eventually(WAIT, || {
        connected = std::net::TcpStream::connect(("127.0.0.1", port)).ok();
        connected.is_some()
    });
    let mut s = connected.expect("TCP viewer connects");
    let mut version = [0u8; 12];
    s.read_exact(&mut version).unwrap();
    assert_eq!(&version, b"RFB 003.008\n");
    let _ = child.kill();
    let _ = child.wait();
}

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

#[test]
fn repeated_requests_for_the_whole_screen_send_it_once() {
    let (d, path) = vnc_daemon("", &["--resolution", "128x64"]);
    let mut vm = connect(&d, 0);
    let a = pattern(128, 64, 6);
    draw(&mut vm, 1, 128, 64, &a);
    let mut v = viewer(&path, &[RAW]);
    v.wait_for(WAIT, |v| v.bgr() == bgr(&a)).unwrap();
    // 32 non-incremental requests for the whole screen in one write, then one flush.
    for _ in 0..32 {
        v.request(false).unwrap();
    }
    ok(
        &mut vm,
        Command::ResourceFlush {
            rect: rect(0, 0, 128, 64),
            resource_id: 1,
        },
    );
    let rects = v.read_update().unwrap();
    let pixels: u64 = rects
        .iter()
        .map(|r| u64::from(r.width) * u64::from(r.height))
        .sum();
    assert_eq!(pixels, 128 * 64, "the screen once, not 32 times: {rects:?}");
}

#[test]
fn a_new_scanout_starts_black_not_with_the_old_pictures_pixels() {
    let (d, path) = vnc_daemon("", &["--resolution", "64x64"]);
    let mut vm = connect(&d, 0);
    let mut v = viewer(&path, &[RAW]);
    let a = pattern(64, 64, 7);
    draw(&mut vm, 1, 64, 64, &a);
    v.wait_for(WAIT, |v| v.bgr() == bgr(&a)).unwrap();
    // Another resource of the same size on the scanout, never flushed: what scanout 0 showed
    // before (another VM's buffer, say) must not stay on the screen.
    ok(&mut vm, create(2, 64, 64));
    ok(
        &mut vm,
        Command::SetScanout {
            rect: rect(0, 0, 64, 64),
            scanout_id: 0,
            resource_id: 2,
        },
    );
    v.wait_for(WAIT, |v| v.picture.iter().all(|b| *b == 0))
        .expect("black until the new resource is flushed");
}

#[test]
fn viewers_that_vanish_right_after_the_handshake_are_not_counted() {
    let (d, path) = vnc_daemon(",name=desk", &["--resolution", "64x64"]);
    drop(d);
    // The same again, with a control socket to read the counts from.
    let control = path.with_file_name("control.sock");
    let settings = format!("vnc={},name=desk", path.display());
    let args = [
        "--renderer",
        "2d",
        "--resolution",
        "64x64",
        "--control-socket",
    ];
    let mut args: Vec<&str> = args.to_vec();
    let control_arg = control.to_string_lossy().into_owned();
    args.push(&control_arg);
    let d = Daemon::spawn_with_vm_settings(vgpud(), &[&settings], &args).expect("start");
    assert!(eventually(WAIT, || path.exists() && control.exists()));
    let mut vm = connect(&d, 0);
    for _ in 0..20 {
        let mut s = UnixStream::connect(&path).unwrap();
        let mut version = [0u8; 12];
        s.read_exact(&mut version).unwrap();
        // Version, security type, ClientInit at once, then gone before ServerInit is read.
        s.write_all(b"RFB 003.008\n\x01\x01").unwrap();
        drop(s);
    }
    let mut v = viewer(&path, &[RAW]);
    let a = pattern(64, 64, 8);
    draw(&mut vm, 1, 64, 64, &a);
    v.wait_for(WAIT, |v| v.bgr() == bgr(&a))
        .unwrap_or_else(|e| {
            panic!(
                "{e}: {} updates, {:?}, {} lit, first wrong {:?}",
                v.updates,
                v.received,
                v.picture.iter().filter(|b| **b != 0).count(),
                v.bgr().iter().zip(bgr(&a)).position(|(x, y)| *x != y)
            )
        });
    let viewers = || {
        let out = std::process::Command::new(vgpud())
            .args(["status", "--json", "--control-socket"])
            .arg(&control)
            .output()
            .expect("vgpud status");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        text.split("\"vnc_viewers\":")
            .nth(1)
            .and_then(|t| t.split([',', '}']).next())
            .and_then(|n| n.trim().parse::<u64>().ok())
    };
    assert!(
        eventually(WAIT, || viewers() == Some(1)),
        "one viewer counted, not {:?}",
        viewers()
    );
}

#[test]
fn a_viewer_that_asks_for_desktop_size_late_is_told_the_size() {
    let (d, path) = vnc_daemon("", &["--resolution", "64x64"]);
    let mut vm = connect(&d, 0);
    let mut v = viewer(&path, &[RAW]);
    let a = pattern(96, 80, 9);
    draw(&mut vm, 1, 96, 80, &a);
    // Resized while it did not follow resizes: it keeps 64x64 ...
    v.wait_for(WAIT, |v| v.updates >= 1).unwrap();
    assert_eq!((v.width, v.height), (64, 64));
    // ... until it asks for DesktopSize.
    let enc = [2u8, 0, 0, 2, 0xff, 0xff, 0xff, 0x21, 0, 0, 0, 0];
    use std::io::Write as _;
    let mut raw = v.stream().try_clone().unwrap();
    raw.write_all(&enc).unwrap();
    v.wait_for(WAIT, |v| {
        (v.width, v.height) == (96, 80) && v.bgr() == bgr(&a)
    })
    .unwrap();
}

#[test]
fn a_screen_address_named_twice_stops_the_daemon() {
    let dir = std::env::temp_dir().join(format!("vgpud-vnc-twice-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let vnc = dir.join("screen");
    // VM a's second scanout is at PATH.1, which VM b names as its own.
    let a = format!(
        "{},vnc={},scanouts=2",
        dir.join("a.sock").display(),
        vnc.display()
    );
    let b = format!("{},vnc={}.1", dir.join("b.sock").display(), vnc.display());
    let out = std::process::Command::new(vgpud())
        .args(["--renderer", "2d", "--socket-path", &a, "--socket-path", &b])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("named twice"), "{err}");
}
