//! Render workers: one process per 3D VM, here with the scripted fake renderer (src/render/fake.rs)
//! so that default CI tests the machinery without a GPU stack: isolation of VMs that use the
//! same ids, fence order under out-of-order completion, and what a dead or hung worker costs.
//! tests/venus.rs does the same with virglrenderer in the testbed.

mod common;

use std::sync::atomic::{AtomicU64, Ordering};

use std::time::{Duration, Instant};

use common::metrics::{scrape, wait_for};
use common::*;
use vgpud_harness::{Daemon, ProcStats, Token, Vm, VmConfig};
use vgpud_protocol::{Box3d, Command, MemEntry, ResourceCreate3d, Response, Transfer3d, F_VIRGL};

fn fake(n: usize, extra: &[&str]) -> Daemon {
    let mut args = vec!["--renderer", "fake"];
    args.extend_from_slice(extra);
    daemon(n, &args)
}

const CTX: u32 = 1;

/// Context 1 with resource 1 (a 3D buffer) backed by `len` bytes of guest memory; returns
/// where the backing is.
fn setup(vm: &mut Vm, len: u32) -> u64 {
    let (_, r) = answer(
        vm,
        &in_ctx(
            CTX,
            Command::CtxCreate {
                context_init: 0,
                debug_name: b"test".to_vec(),
            },
        ),
    );
    assert_eq!(r, Response::OkNodata);
    let create = ResourceCreate3d {
        resource_id: 1,
        width: len,
        height: 1,
        depth: 1,
        array_size: 1,
        ..ResourceCreate3d::default()
    };
    ok(vm, Command::ResourceCreate3d(create));
    let gpa = vm.alloc(u64::from(len), 4096);
    ok(
        vm,
        Command::ResourceAttachBacking {
            resource_id: 1,
            entries: vec![MemEntry {
                addr: gpa,
                length: len,
            }],
        },
    );
    let (_, r) = answer(
        vm,
        &in_ctx(CTX, Command::CtxAttachResource { resource_id: 1 }),
    );
    assert_eq!(r, Response::OkNodata);
    gpa
}

/// A transfer of the first `len` bytes of resource 1.
fn transfer_cmd(to_host: bool, len: u32) -> Command {
    let t = Transfer3d {
        box_: Box3d {
            w: len,
            h: 1,
            d: 1,
            ..Box3d::default()
        },
        resource_id: 1,
        ..Transfer3d::default()
    };
    if to_host {
        Command::TransferToHost3d(t)
    } else {
        Command::TransferFromHost3d(t)
    }
}

/// A fenced transfer, as a guest makes one whose bytes it needs: an unfenced one may be
/// answered before the worker did it.
fn transfer(vm: &mut Vm, to_host: bool, len: u32) {
    static FENCES: AtomicU64 = AtomicU64::new(1000);
    let fence = FENCES.fetch_add(1, Ordering::Relaxed);
    let cmd = transfer_cmd(to_host, len);
    let (hdr, r) = answer(vm, &fenced_cmd(CTX, 0, fence, cmd));
    assert_eq!((hdr.fence_id, r), (fence, Response::OkNodata));
}

fn submit(script: &str) -> Command {
    Command::Submit3d {
        commands: script.as_bytes().to_vec(),
    }
}

#[test]
fn vms_with_the_same_ids_each_get_their_own_worker_and_content() {
    const LEN: u32 = 4096;
    let d = fake(3, &[]);
    let mut vms: Vec<Vm> = (0..3).map(|i| connect(&d, i)).collect();
    for (i, vm) in vms.iter_mut().enumerate() {
        assert_ne!(vm.offered_features() & (1 << F_VIRGL), 0);
        let gpa = setup(vm, LEN);
        vm.write_mem(gpa, &pattern(LEN / 4, 1, i as u32));
        transfer(vm, true, LEN);
    }
    assert!(
        eventually(Duration::from_secs(5), || workers(&d).len() == 3),
        "workers: {:?}",
        workers(&d)
    );
    for (i, vm) in vms.iter_mut().enumerate() {
        // Same resource id, same context id in every VM: each reads back its own bytes, into
        // fresh pages.
        let backing = {
            let cmd = Command::ResourceDetachBacking { resource_id: 1 };
            ok(vm, cmd);
            let at = vm.alloc(u64::from(LEN), 4096);
            ok(
                vm,
                Command::ResourceAttachBacking {
                    resource_id: 1,
                    entries: vec![MemEntry {
                        addr: at,
                        length: LEN,
                    }],
                },
            );
            at
        };
        transfer(vm, false, LEN);
        assert_eq!(
            vm.read_mem(backing, LEN as usize),
            pattern(LEN / 4, 1, i as u32),
            "VM {i} reads back what it wrote, not another VM's"
        );
    }
    drop(vms);
    assert!(
        eventually(Duration::from_secs(5), || workers(&d).is_empty()),
        "workers outlive their VMs: {:?}",
        workers(&d)
    );
}

/// Every failed command's log line says why: the renderer's words (from the worker), or the
/// check that refused it.
#[test]
fn a_failed_commands_log_line_names_its_cause() {
    let d = fake(1, &["--hostmem", "1M"]);
    let mut vm = connect(&d, 0);
    // A host blob outside any context of the renderer: the fake refuses it, as virglrenderer.
    let blob = Command::ResourceCreateBlob(vgpud_protocol::CreateBlob {
        resource_id: 5,
        blob_mem: vgpud_protocol::BLOB_MEM_HOST3D,
        blob_flags: 0,
        blob_id: 0,
        size: 4096,
        entries: vec![],
    });
    assert!(matches!(call(&mut vm, blob), Response::Err(_)));
    let map = Command::ResourceMapBlob {
        resource_id: 99,
        offset: 0,
    };
    assert!(matches!(call(&mut vm, map), Response::Err(_)));
    let lines = [
        "command 0x10c (fence 0) failed: Unspec (renderer rejected the request: a host blob \
         needs a context of the renderer)",
        "command 0x208 (fence 0) failed: InvalidResourceId (no resource 99)",
    ];
    // The daemon writes its log before it answers; give the file a moment all the same.
    let deadline = Instant::now() + Duration::from_secs(10);
    let log = loop {
        let log = d.stderr_log();
        if lines.iter().all(|l| log.contains(l)) || Instant::now() > deadline {
            break log;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    for line in lines {
        assert!(log.contains(line), "no {line:?} in:\n{log}");
    }
}

/// Posts a fenced SUBMIT_3D of `script` on `ring` of the test context.
fn post_fenced(vm: &mut Vm, ring: u8, fence: u64, script: &str) -> Token {
    vm.post(0, &fenced_cmd(CTX, ring, fence, submit(script)), 1024)
        .unwrap()
}

/// Waits for the answer to `token` and checks that it is an OK with `fence`.
fn answered_ok(vm: &mut Vm, token: Token, fence: u64) {
    let (hdr, r) = Response::decode(&vm.wait(token).unwrap()).unwrap();
    assert_eq!((hdr.fence_id, r), (fence, Response::OkNodata));
}

#[test]
fn rings_complete_out_of_order_and_each_answers_in_order() {
    let d = fake(1, &[]);
    let mut vm = connect(&d, 0);
    setup(&mut vm, 4096);
    // Ring 0: a fence due in 500 ms, then one due at once (it must wait its turn). Ring 1: one
    // due at once, which overtakes ring 0.
    let slow = post_fenced(&mut vm, 0, 1, "delay 500");
    let behind = post_fenced(&mut vm, 0, 2, "");
    let other_ring = post_fenced(&mut vm, 1, 3, "");
    let overtook = Response::decode(&vm.wait(other_ring).unwrap()).unwrap();
    assert_eq!(overtook.0.fence_id, 3);
    assert!(!vm.is_done(slow).unwrap(), "ring 0 waited for ring 1");
    assert!(
        !vm.is_done(behind).unwrap(),
        "answered before the earlier fence on its ring"
    );
    answered_ok(&mut vm, slow, 1);
    answered_ok(&mut vm, behind, 2);
}

#[test]
fn a_fence_told_done_in_its_reply_is_answered_no_sooner_than_the_earlier_ones_of_its_ring() {
    let dir = std::env::temp_dir().join(format!("vgpud-in-reply-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let socket = dir.join("metrics.sock");
    let d = fake(1, &["--metrics-socket", socket.to_str().unwrap()]);
    let mut vm = connect(&d, 0);
    setup(&mut vm, 4096);
    wait_for(&socket);
    let in_reply = || scrape(&socket).get("vgpud_fences_in_reply_total").copied();
    let before = in_reply().unwrap_or(0.0);
    // Ring 0: a fence due in 5 s, then one the renderer signals while making it (so the
    // worker says in its reply that it is done), ahead of the first.
    let slow = post_fenced(&mut vm, 0, 1, "delay 5000");
    let early = post_fenced(&mut vm, 0, 2, "early");
    answered_ok(&mut vm, early, 2);
    assert_eq!(in_reply(), Some(before + 1.0), "not told in the reply");
    // A later fence of a ring done means the earlier ones are: answered with it, in order.
    assert!(
        vm.is_done(slow).unwrap(),
        "the later fence's answer overtook the earlier one"
    );
    answered_ok(&mut vm, slow, 1);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_killed_worker_costs_only_its_vm() {
    let d = fake(2, &[]);
    let mut victim = connect(&d, 0);
    let mut other = connect(&d, 1);
    setup(&mut victim, 4096);
    setup(&mut other, 4096);
    let before: Vec<u32> = workers(&d);
    assert_eq!(before.len(), 2);
    // Fenced work in flight on the victim, then its worker is killed.
    let pending = victim
        .post(0, &fenced_cmd(CTX, 0, 1, submit("delay 5000")), 1024)
        .unwrap();
    std::thread::sleep(Duration::from_millis(100));
    let victim_worker = *workers(&d)
        .iter()
        .min()
        .expect("the first VM's worker started first");
    // SAFETY: kill only sends a signal.
    unsafe { libc::kill(victim_worker as i32, libc::SIGKILL) };
    // The victim is disconnected (not left waiting); the other VM goes on.
    victim.set_timeout(Duration::from_secs(8));
    let err = victim
        .wait(pending)
        .expect_err("the dead worker's fence was answered");
    assert_ne!(err.kind(), std::io::ErrorKind::TimedOut, "{err}");
    transfer(&mut other, true, 4096);
    let (hdr, r) = answer(&mut other, &fenced_cmd(CTX, 0, 9, submit("")));
    assert_eq!((hdr.fence_id, r), (9, Response::OkNodata));
    assert!(d
        .stderr_log()
        .contains(&format!("event=worker-end pid={victim_worker} ")));
    // The socket takes the next VM, with a worker of its own.
    drop(victim);
    let mut next = connect(&d, 0);
    setup(&mut next, 4096);
    transfer(&mut next, true, 4096);
}

#[test]
fn a_hung_worker_is_killed_but_slow_work_is_not() {
    let d = fake(2, &["--worker-timeout", "1s"]);
    let mut slow = connect(&d, 1);
    setup(&mut slow, 4096);
    // Slow work: a fence that takes 3 s, from a worker that keeps answering.
    let (_, r) = answer(&mut slow, &in_ctx(CTX, submit("delay 3000")));
    assert_eq!(r, Response::OkNodata);
    let fence = slow
        .post(0, &fenced_cmd(CTX, 0, 1, submit("")), 1024)
        .unwrap();
    let mut hung = connect(&d, 0);
    setup(&mut hung, 4096);
    hung.set_timeout(Duration::from_secs(8));
    let start = Instant::now();
    // A fenced request waits for the worker, which never answers.
    let err = hung
        .request(&fenced_cmd(CTX, 0, 1, submit("hang")))
        .expect_err("a hung worker answered");
    assert_ne!(
        err.kind(),
        std::io::ErrorKind::TimedOut,
        "not detected: {err}"
    );
    assert!(start.elapsed() < Duration::from_secs(5));
    assert!(d.stderr_log().contains("render worker"));
    slow.set_timeout(Duration::from_secs(10));
    let (hdr, r) = Response::decode(&slow.wait(fence).expect("slow work finishes")).unwrap();
    assert_eq!((hdr.fence_id, r), (1, Response::OkNodata));
}

/// An unfenced submit is answered once it is on its way to the worker; a worker that then
/// hangs on it is found by the alive timer all the same, though the guest asks nothing more.
#[test]
fn a_worker_that_hangs_after_the_answer_is_killed_all_the_same() {
    let d = fake(1, &["--worker-timeout", "1s"]);
    let mut vm = connect(&d, 0);
    setup(&mut vm, 4096);
    let (_, r) = answer(&mut vm, &in_ctx(CTX, submit("hang")));
    assert_eq!(
        r,
        Response::OkNodata,
        "an unfenced submit waited for the worker"
    );
    let hung = workers(&d);
    assert_eq!(hung.len(), 1);
    // Nothing more from the guest: within two timer periods and a call's timeout the worker
    // is killed and the VM disconnected.
    assert!(
        eventually(Duration::from_secs(6), || workers(&d).is_empty()),
        "the hung worker lives on: {:?}\n{}",
        workers(&d),
        d.stderr_log()
    );
    assert!(d.stderr_log().contains("render worker"));
    assert!(
        disconnected_within(&mut vm, Duration::from_secs(5)),
        "the VM of a killed worker goes on"
    );
}

/// A posted request the renderer refuses after its answer went out costs neither the worker nor
/// the VM: the refusal is logged and counted, and the next request is served. Requests stay in
/// order: what a transfer before the refused submit wrote is what a fenced read after it sees.
#[test]
fn a_refusal_after_the_answer_is_logged_and_counted_and_the_vm_goes_on() {
    const LEN: u32 = 4096;
    let dir = std::env::temp_dir().join(format!("vgpud-late-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let socket = dir.join("metrics.sock");
    let d = fake(1, &["--metrics-socket", socket.to_str().unwrap()]);
    let mut vm = connect(&d, 0);
    let gpa = setup(&mut vm, LEN);
    let worker = workers(&d);
    vm.write_mem(gpa, &pattern(LEN / 4, 1, 7));
    let (_, r) = answer(&mut vm, &in_ctx(CTX, transfer_cmd(true, LEN)));
    assert_eq!(r, Response::OkNodata);
    // "delay" with no number: the scripted renderer refuses the stream.
    let (_, r) = answer(&mut vm, &in_ctx(CTX, submit("delay soon")));
    assert_eq!(r, Response::OkNodata, "answered before the worker saw it");
    vm.write_mem(gpa, &vec![0; LEN as usize]);
    transfer(&mut vm, false, LEN);
    assert_eq!(vm.read_mem(gpa, LEN as usize), pattern(LEN / 4, 1, 7));
    assert_eq!(workers(&d), worker, "the worker was replaced");
    let line = "SUBMIT_3D refused after it was answered: renderer rejected the request: bad delay";
    assert!(
        eventually(Duration::from_secs(5), || d.stderr_log().contains(line)),
        "no {line:?} in:\n{}",
        d.stderr_log()
    );
    wait_for(&socket);
    assert_eq!(scrape(&socket).get("vgpud_late_refusals_total"), Some(&1.0));
    let _ = std::fs::remove_dir_all(&dir);
}

/// A VM on the daemon's first socket, set up as `setup` does.
fn set_up_vm(d: &Daemon) -> Vm {
    let mut vm = Vm::connect(&d.socket(0), VmConfig::default()).expect("connect");
    setup(&mut vm, 4096);
    vm
}

/// Runs `cycle` once, then `n` times more: afterwards the broker has no more descriptors or
/// threads than after the first (once its workers are gone), and about the same memory.
fn stays_flat(d: &Daemon, what: &str, n: usize, cycle: impl Fn(&Daemon)) {
    cycle(d);
    let base = quiet_stats(d);
    for _ in 0..n {
        cycle(d);
    }
    let settled = eventually(Duration::from_secs(10), || {
        let now = d.stats().unwrap();
        now.fds <= base.fds && now.threads <= base.threads && workers(d).is_empty()
    });
    let end = d.stats().unwrap();
    eprintln!("{n} {what}: {base:?} -> {end:?}");
    assert!(settled, "the broker grew: {base:?} -> {end:?}");
    assert!(
        end.rss_kib <= base.rss_kib + 8 * 1024,
        "{base:?} -> {end:?}"
    );
    assert!(workers(d).is_empty(), "left behind: {:?}", workers(d));
}

#[test]
fn a_hundred_worker_deaths_leave_the_broker_flat() {
    let d = fake(1, &["--max-renderer-failures", "1000"]);
    stays_flat(&d, "worker deaths", 100, |d| {
        let _ = set_up_vm(d).request(&in_ctx(CTX, submit("crash")));
    });
}

#[test]
fn a_worker_signalling_fences_nobody_asked_for_is_killed() {
    let d = fake(1, &[]);
    let mut vm = connect(&d, 0);
    setup(&mut vm, 4096);
    let before = stats(&d);
    vm.set_timeout(Duration::from_secs(8));
    let _ = vm.request(&in_ctx(CTX, submit("spurious 1000000")));
    assert!(
        eventually(Duration::from_secs(8), || d
            .stderr_log()
            .contains("which it was never asked for")),
        "the rogue worker was not stopped:\n{}",
        d.stderr_log()
    );
    // The flood cost the broker nothing lasting, and the socket serves the next VM.
    drop(vm);
    let mut next = connect(&d, 0);
    setup(&mut next, 4096);
    let after = stats(&d);
    assert!(
        after.rss_kib < before.rss_kib + 16 * 1024,
        "{before:?} -> {after:?}"
    );
}

/// `vgpud status --json` against the daemon's control socket.
fn status(socket: &std::path::Path) -> Vec<serde_json::Value> {
    let out = std::process::Command::new(vgpud())
        .args(["status", "--json", "--control-socket"])
        .arg(socket)
        .output()
        .expect("run vgpud status");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    v["vms"].as_array().expect("a list of VMs").clone()
}

fn named<'a>(vms: &'a [serde_json::Value], name: &str) -> &'a serde_json::Value {
    vms.iter()
        .find(|v| v["name"] == name)
        .unwrap_or_else(|| panic!("no VM {name} in {vms:?}"))
}

#[test]
fn the_status_command_shows_each_vm_its_worker_and_counters() {
    use std::os::unix::fs::PermissionsExt;
    let control = std::env::temp_dir().join(format!("vgpud-control-{}.sock", std::process::id()));
    let control_arg = control.to_string_lossy().into_owned();
    let d = Daemon::spawn_with_vm_settings(
        vgpud(),
        &["name=gl,renderer=fake", "name=plain,renderer=2d"],
        &["--control-socket", &control_arg],
    )
    .expect("start vgpud");
    assert!(eventually(Duration::from_secs(5), || control.exists()));
    let mode = std::fs::metadata(&control).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "owner-only");
    assert!(status(&control).is_empty(), "no VM yet");

    let mut gl = connect(&d, 0);
    let mut plain = connect(&d, 1);
    setup(&mut gl, 4096);
    ok(&mut plain, create(7, 64, 64));
    let refused = call(&mut plain, Command::ResourceUnref { resource_id: 99 });
    assert_ne!(refused, Response::OkNodata);
    // A fence the fake renderer holds back for a while: it shows as pending.
    let slow = gl
        .post(0, &fenced_cmd(CTX, 0, 1, submit("delay 1500")), 1024)
        .unwrap();
    let _ = gl
        .post(0, &fenced_cmd(CTX, 0, 2, submit("")), 1024)
        .unwrap();
    let vms = status(&control);
    assert_eq!(vms.len(), 2, "{vms:?}");
    let (g, p) = (named(&vms, "gl"), named(&vms, "plain"));
    assert_eq!(g["renderer"], "fake");
    assert_eq!(p["renderer"], "2d");
    assert_eq!(
        g["worker_pid"].as_u64(),
        workers(&d).first().map(|&p| u64::from(p))
    );
    assert!(p["worker_pid"].is_null(), "2D VMs have no worker");
    assert_eq!(
        (g["state"].as_str(), p["state"].as_str()),
        (Some("running"), Some("running"))
    );
    assert_eq!(g["resources"], 1);
    assert_eq!(p["resources"], 1);
    assert_eq!(p["resource_bytes"], 64 * 64 * 4);
    assert_eq!(
        (p["commands"].as_u64(), p["errors"].as_u64()),
        (Some(2), Some(1))
    );
    assert_eq!(g["errors"], 0);
    assert!(
        eventually(Duration::from_secs(1), || named(&status(&control), "gl")
            ["fences_pending"]
            == 2),
        "both fenced submits wait on ring 0"
    );
    assert!(g["socket"].as_str().unwrap().ends_with("vm0.sock"));
    gl.wait(slow).unwrap();
    assert!(eventually(Duration::from_secs(5), || {
        let g = status(&control);
        let g = named(&g, "gl");
        g["fences_pending"] == 0 && g["fences_signalled"] == 2
    }));

    // A VM that goes leaves the registry; the next one on its socket is a new VM.
    let old_id = named(&status(&control), "gl")["id"].as_u64().unwrap();
    drop(gl);
    assert!(eventually(Duration::from_secs(5), || status(&control)
        .len()
        == 1));
    let _gl = connect(&d, 0);
    assert!(eventually(Duration::from_secs(5), || status(&control)
        .len()
        == 2));
    let new_id = named(&status(&control), "gl")["id"].as_u64().unwrap();
    assert!(new_id > old_id, "ids are not reused");

    let table = std::process::Command::new(vgpud())
        .args(["status", "--control-socket"])
        .arg(&control)
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&table.stdout);
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 3, "a header and a line per VM:\n{table}");
    assert!(
        lines[0].starts_with("ID") && table.contains(" plain "),
        "{table}"
    );
    let _ = std::fs::remove_file(&control);
}

/// CPU time (user and system) of `pid` so far.
fn cpu_time(pid: u32) -> Duration {
    let ticks = ProcStats::of(pid).map_or(0, |s| s.cpu_ticks);
    // SAFETY: sysconf only reads a constant.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Duration::from_millis(ticks * 1000 / per_second)
}

#[test]
fn spinning_stops_when_a_vm_goes_quiet() {
    // The longest budget. The broker spins only while it waits for a reply; the worker after
    // each reply, for one budget: a spin that did not end would burn the worker's quiet second
    // below. (That renderer work does not start a new spin is a unit test in
    // src/render/worker.rs.)
    let d = fake(1, &["--worker-spin", "1ms"]);
    let mut vm = connect(&d, 0);
    setup(&mut vm, 4096);
    for i in 0..500 {
        transfer(&mut vm, i % 2 == 0, 64);
    }
    let worker = *workers(&d).first().expect("a worker");
    let pids = [d.pid(), worker];
    let before: Duration = pids.iter().map(|&p| cpu_time(p)).sum();
    std::thread::sleep(Duration::from_secs(1));
    let quiet: Duration = pids.iter().map(|&p| cpu_time(p)).sum::<Duration>() - before;
    eprintln!("a quiet second after 500 requests: broker and worker used {quiet:?} of CPU");
    assert!(
        quiet < Duration::from_millis(100),
        "still spinning: {quiet:?}"
    );
    // And the VM is served as before.
    transfer(&mut vm, true, 64);
}

#[test]
fn spinning_vms_that_come_and_go_leave_the_broker_flat() {
    let d = fake(1, &["--worker-spin", "1ms"]);
    // A burst of requests (both sides spinning), then a hang-up while the worker spins.
    stays_flat(&d, "spinning VMs", 100, |d| {
        let mut vm = set_up_vm(d);
        for i in 0..50 {
            transfer(&mut vm, i % 2 == 0, 64);
        }
    });
}

/// A `w`x`h` 3D resource `id` on context 1 holding `pixels`, shown on scanout 0 and flushed.
fn flush_frame(vm: &mut Vm, id: u32, w: u32, h: u32, pixels: &[u8]) {
    let create = ResourceCreate3d {
        resource_id: id,
        target: 2, // PIPE_TEXTURE_2D
        format: vgpud_protocol::format::B8G8R8X8_UNORM,
        width: w,
        height: h,
        depth: 1,
        array_size: 1,
        ..ResourceCreate3d::default()
    };
    ok(vm, Command::ResourceCreate3d(create));
    let gpa = vm.alloc(pixels.len() as u64, 4096);
    vm.write_mem(gpa, pixels);
    let entries = vec![MemEntry {
        addr: gpa,
        length: pixels.len() as u32,
    }];
    ok(
        vm,
        Command::ResourceAttachBacking {
            resource_id: id,
            entries,
        },
    );
    let attach = Command::CtxAttachResource { resource_id: id };
    assert_eq!(answer(vm, &in_ctx(CTX, attach)).1, Response::OkNodata);
    let t = Transfer3d {
        box_: Box3d {
            w,
            h,
            d: 1,
            ..Box3d::default()
        },
        resource_id: id,
        stride: w * 4,
        ..Transfer3d::default()
    };
    let upload = in_ctx(CTX, Command::TransferToHost3d(t));
    assert_eq!(answer(vm, &upload).1, Response::OkNodata);
    show(vm, id, w, h);
}

/// A flushed frame crosses the worker (its pixels written straight into the mailbox) and the
/// broker's kept buffer whole, flush after flush, as that buffer changes size: a frame, a
/// smaller one, then the first size again with new content.
#[test]
fn flushed_frames_cross_the_worker_to_the_display_whole() {
    let d = fake(1, &[]);
    let mut vm = connect_with_display(&d, 0, vec![(64, 48)]);
    let create = Command::CtxCreate {
        context_init: 0,
        debug_name: b"frames".to_vec(),
    };
    assert_eq!(answer(&mut vm, &in_ctx(CTX, create)).1, Response::OkNodata);
    let display = vm.display().expect("a display");
    let frames = [(1, 64, 48, 1), (2, 16, 8, 2), (3, 64, 48, 3)];
    for (n, &(id, w, h, seed)) in frames.iter().enumerate() {
        let pixels = pattern(w, h, seed);
        flush_frame(&mut vm, id, w, h, &pixels);
        assert!(display.wait_updates(n + 1, Duration::from_secs(10)));
        let frame = display.frame(0).expect("a frame on scanout 0");
        assert_eq!((frame.width, frame.height), (w, h));
        assert!(frame.pixels == pixels, "frame {n} ({w}x{h}) differs");
    }
    assert_eq!(display.errors(), Vec::<String>::new());
}

/// A process's `Cpus_allowed_list` (all its threads: the main thread's).
fn allowed_cpus(pid: &str) -> String {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let line = status.lines().find(|l| l.starts_with("Cpus_allowed_list:"));
    line.and_then(|l| l.split_whitespace().nth(1))
        .unwrap_or_default()
        .to_string()
}

#[test]
fn workers_run_on_the_cpus_they_are_given_and_the_broker_where_it_was() {
    // The last CPU this test may use: there is always one.
    let mine = allowed_cpus("self");
    let last = mine
        .rsplit([',', '-'])
        .next()
        .expect("a CPU list")
        .to_string();
    let d = fake(1, &["--worker-cpus", &last]);
    let mut vm = connect(&d, 0);
    setup(&mut vm, 4096);
    let worker = *workers(&d).first().expect("a worker");
    assert_eq!(allowed_cpus(&worker.to_string()), last);
    assert_eq!(allowed_cpus(&d.pid().to_string()), mine, "the broker moved");
    // Every thread of the worker, the renderer's included.
    let tasks = std::fs::read_dir(format!("/proc/{worker}/task")).expect("its threads");
    for task in tasks.flatten() {
        let tid = task.file_name().to_string_lossy().to_string();
        assert_eq!(allowed_cpus(&format!("{worker}/task/{tid}")), last);
    }
}

/// A fenced command is answered when it is done, so a refusal the renderer finds after the
/// broker's call returned is its answer, and a resource refused so is not kept. Unfenced, the
/// same command is answered at once, and its refusal is logged.
#[test]
fn a_fenced_command_the_renderer_refuses_is_answered_with_the_refusal() {
    let d = fake(1, &[]);
    let mut vm = connect(&d, 0);
    setup(&mut vm, 4096);
    let texture = |resource_id, format| {
        Command::ResourceCreate3d(ResourceCreate3d {
            resource_id,
            target: 2,
            format,
            width: 4,
            height: 4,
            depth: 1,
            array_size: 1,
            ..ResourceCreate3d::default()
        })
    };
    // A format the scripted renderer does not know (UNKNOWN_FORMAT in src/render/fake.rs).
    let unknown = u32::MAX;
    let (hdr, r) = answer(&mut vm, &fenced_cmd(CTX, 0, 7, texture(5, unknown)));
    assert_eq!(hdr.fence_id, 7);
    assert!(matches!(r, Response::Err(_)), "{r:?}");
    let (_, r) = answer(&mut vm, &fenced_cmd(CTX, 0, 8, texture(5, 2)));
    assert_eq!(r, Response::OkNodata, "the refused resource was kept");
    let (_, r) = answer(&mut vm, &in_ctx(CTX, texture(6, unknown)));
    assert_eq!(
        r,
        Response::OkNodata,
        "an unfenced create waited for the worker"
    );
    // The next request reads that refusal. Fenced, it is refused in turn: the renderer never
    // made resource 6, which only the worker can tell.
    let attach = Command::CtxAttachResource { resource_id: 6 };
    let (_, r) = answer(&mut vm, &fenced_cmd(CTX, 0, 9, attach));
    assert!(matches!(r, Response::Err(_)), "{r:?}");
    let line = "RESOURCE_CREATE_3D refused after it was answered";
    assert!(
        eventually(Duration::from_secs(5), || d.stderr_log().contains(line)),
        "no {line:?} in:\n{}",
        d.stderr_log()
    );
}
