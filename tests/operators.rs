//! What operators run the daemon with: the Prometheus endpoint, lifecycle log lines, stop and
//! reload signals, and who may use the control socket.

mod common;

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use common::metrics::*;
use common::*;
use vgpud_harness::{Daemon, Vm};
use vgpud_protocol::{Command, Response};

/// A renderer context on `vm` with a fenced submit on ring 0 that completes after `ms`
/// (the scripted renderer).
fn slow_work(vm: &mut Vm, ms: u32, fence_id: u64) {
    let create = Command::CtxCreate {
        context_init: 0,
        debug_name: b"work".to_vec(),
    };
    let _ = answer(vm, &in_ctx(2, create));
    let script = Command::Submit3d {
        commands: format!("delay {ms}").into_bytes(),
    };
    let token = vm
        .post(0, &fenced_cmd(2, 0, fence_id, script), 1024)
        .unwrap();
    vm.wait(token).unwrap();
}

#[test]
fn metrics_count_each_vms_commands_errors_fences_and_resources() {
    let dir = std::env::temp_dir().join(format!("vgpud-metrics-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let socket = dir.join("metrics.sock");
    let d = Daemon::spawn_with_vm_settings(
        vgpud(),
        &["name=a", "name=b"],
        &[
            "--renderer",
            "fake",
            "--metrics-socket",
            socket.to_str().unwrap(),
        ],
    )
    .expect("start vgpud");
    wait_for(&socket);
    let mode = std::fs::metadata(&socket).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "owner-only");
    let mut a = connect(&d, 0);
    let mut b = connect(&d, 1);
    ok(&mut a, create(1, 4, 4));
    ok(&mut a, create(2, 4, 4));
    let gone = Command::ResourceUnref { resource_id: 99 };
    assert!(matches!(call(&mut a, gone), Response::Err(_)));
    slow_work(&mut a, 60, 1);
    assert!(matches!(
        call(&mut b, Command::GetDisplayInfo),
        Response::OkDisplayInfo(_)
    ));

    let m = scrape(&socket);
    let v = |k: &str| {
        m.get(k)
            .copied()
            .unwrap_or_else(|| panic!("no {k} in {m:?}"))
    };
    assert_eq!(v("vgpud_vms"), 2.0);
    assert_eq!(
        v(r#"vgpud_commands_total{vm="a",command="resource_create_2d"}"#),
        2.0
    );
    assert_eq!(
        v(r#"vgpud_errors_total{vm="a",error="invalid_resource_id"}"#),
        1.0
    );
    assert_eq!(
        v(r#"vgpud_errors_total{vm="b",error="invalid_resource_id"}"#),
        0.0
    );
    assert_eq!(
        v(r#"vgpud_commands_total{vm="b",command="get_display_info"}"#),
        1.0
    );
    assert_eq!(v(r#"vgpud_resources{vm="a"}"#), 2.0);
    assert_eq!(v(r#"vgpud_resources{vm="b"}"#), 0.0);
    // The fenced submit's answer was parked when the worker replied and sent when its fence
    // signalled, 60 ms (the script's delay) after it was made. The worker may wait up to a spin
    // budget for the fence before it replies, so the parked time is a little less.
    assert_eq!(v(r#"vgpud_fence_latency_seconds_count{vm="a"}"#), 1.0);
    assert!(v(r#"vgpud_fence_latency_seconds_sum{vm="a"}"#) >= 0.05);
    assert_eq!(v(r#"vgpud_fences_signalled_total{vm="a"}"#), 1.0);
    // A worker starts when a VM first needs its renderer: a's did, b's not yet.
    assert_eq!(v("vgpud_worker_starts_total"), 1.0);
    assert_eq!(v("vgpud_vm_connects_total"), 2.0);
    assert!(http_get(&socket, "/elsewhere").0.contains(" 404 "));

    // A VM that leaves leaves the per-VM families; the daemon's counters keep it.
    b.disconnect();
    assert!(eventually(Duration::from_secs(10), || {
        let m = scrape(&socket);
        m.get("vgpud_vms") == Some(&1.0) && m.get("vgpud_vm_disconnects_total") == Some(&1.0)
    }));
    let m = scrape(&socket);
    assert!(!m.keys().any(|k| k.contains(r#"vm="b""#)), "{m:?}");
    drop(a);
    drop(d);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn lifecycle_events_are_one_greppable_line_each() {
    let d = Daemon::spawn_with_vm_settings(vgpud(), &["name=desk"], &["--renderer", "fake"])
        .expect("start vgpud");
    let mut vm = connect(&d, 0);
    slow_work(&mut vm, 1, 1);
    vm.disconnect();
    let log = || d.stderr_log();
    assert!(eventually(Duration::from_secs(10), || log()
        .contains("vm=desk event=disconnect ")));
    let log = log();
    for event in [
        "vm=desk event=connect id=1 socket=",
        "vm=desk event=features acked=",
        "vm=desk event=worker-start pid=",
        "vm=desk event=worker-end pid=",
        "vm=desk event=disconnect reason=vmm-closed",
    ] {
        assert_eq!(
            log.matches(event).count(),
            1,
            "one '{event}' line in:\n{log}"
        );
    }
    let connect = log.find("event=connect").unwrap();
    let worker_end = log.find("event=worker-end").unwrap();
    let disconnect = log.find("event=disconnect").unwrap();
    assert!(connect < worker_end && worker_end < disconnect, "{log}");
}

/// SIGTERM (systemd's stop) ends every VM, their render workers with them, and exits 0.
#[test]
fn sigterm_ends_every_vm_and_its_worker_then_the_daemon() {
    let mut d =
        Daemon::spawn_with_vm_settings(vgpud(), &["name=a", "name=b"], &["--renderer", "fake"])
            .expect("start vgpud");
    let mut a = connect(&d, 0);
    let mut b = connect(&d, 1);
    slow_work(&mut a, 1, 1);
    slow_work(&mut b, 1, 1);
    let workers = workers(&d);
    assert_eq!(workers.len(), 2, "{workers:?}");
    // SAFETY: kill only sends a signal, to the daemon this test started.
    assert_eq!(unsafe { libc::kill(d.pid() as i32, libc::SIGTERM) }, 0);
    assert!(
        eventually(Duration::from_secs(15), || d.exit_status().is_some()),
        "the daemon did not exit: {}",
        d.stderr_log()
    );
    let status = d.exit_status().unwrap();
    assert!(status.success(), "{status:?}");
    for pid in workers {
        assert!(
            !Path::new(&format!("/proc/{pid}")).exists()
                || std::fs::read_to_string(format!("/proc/{pid}/stat"))
                    .is_ok_and(|s| s.contains(") Z ")),
            "worker {pid} outlived the daemon"
        );
    }
    let log = d.stderr_log();
    assert!(
        log.contains("stopping (signal 15): disconnecting 2 VM(s)"),
        "{log}"
    );
    assert_eq!(log.matches("event=worker-end").count(), 2, "{log}");
    assert_eq!(
        log.matches("event=disconnect reason=disconnected-by-vgpud")
            .count(),
        2,
        "{log}"
    );
}

/// SIGHUP reads the share policy again (what a new policy then allows is checked in
/// hub::share's tests); a file that does not parse keeps the policy in force.
#[test]
fn sighup_reads_the_share_policy_again() {
    let dir = std::env::temp_dir().join(format!("vgpud-reload-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let policy = dir.join("policy.json");
    std::fs::write(&policy, r#"{"allow": []}"#).unwrap();
    let d = Daemon::spawn_with_vm_settings(
        vgpud(),
        &["name=a,share=on"],
        &[
            "--renderer",
            "2d",
            "--share-policy",
            policy.to_str().unwrap(),
        ],
    )
    .expect("start vgpud");
    std::fs::write(
        &policy,
        r#"{"allow": [{"exporter": "a", "importers": ["b"]}]}"#,
    )
    .unwrap();
    // SAFETY: kill only sends a signal, to the daemon this test started.
    assert_eq!(unsafe { libc::kill(d.pid() as i32, libc::SIGHUP) }, 0);
    assert!(eventually(Duration::from_secs(10), || d
        .stderr_log()
        .contains("read again")));
    // A broken file keeps the policy in force.
    std::fs::write(&policy, "{").unwrap();
    // SAFETY: as above.
    assert_eq!(unsafe { libc::kill(d.pid() as i32, libc::SIGHUP) }, 0);
    assert!(eventually(Duration::from_secs(10), || d
        .stderr_log()
        .contains("the policy in force stays")));
    let mut d = d;
    assert!(d.is_running());
    drop(d);
    let _ = std::fs::remove_dir_all(&dir);
}

/// `--control-group`: the control and metrics sockets let that group in too (mode 0660).
#[test]
fn a_control_group_may_use_the_control_and_metrics_sockets() {
    use std::os::unix::fs::MetadataExt;
    // SAFETY: getgid has no preconditions; getgrgid's entry is read at once, on this thread.
    let (gid, name) = unsafe {
        let gid = libc::getgid();
        let entry = libc::getgrgid(gid);
        assert!(!entry.is_null(), "no name for group {gid}");
        let name = std::ffi::CStr::from_ptr((*entry).gr_name)
            .to_string_lossy()
            .into_owned();
        (gid, name)
    };
    let dir = std::env::temp_dir().join(format!("vgpud-group-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (control, metrics) = (dir.join("control.sock"), dir.join("metrics.sock"));
    let d = Daemon::spawn_with_vm_settings(
        vgpud(),
        &[""],
        &[
            "--renderer",
            "2d",
            "--control-group",
            &name,
            "--control-socket",
            control.to_str().unwrap(),
            "--metrics-socket",
            metrics.to_str().unwrap(),
        ],
    )
    .expect("start vgpud");
    for socket in [&control, &metrics] {
        wait_for(socket);
        let meta = std::fs::metadata(socket).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o660, "{socket:?}");
        assert_eq!(meta.gid(), gid, "{socket:?}");
    }
    assert!(scrape(&metrics).contains_key("vgpud_vms"));
    // A group that does not exist stops the daemon before it serves anything.
    let out = std::process::Command::new(vgpud())
        .args(["--control-group", "no-such-group-vgpud", "--socket-path"])
        .arg(dir.join("x.sock"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    drop(d);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A daemon with one 2D VM socket, a control socket and a metrics socket (in `dir`), at most
/// `max_fds` descriptors if given.
fn operator_daemon(dir: &Path, max_fds: Option<u64>, extra: &[&str]) -> Daemon {
    std::fs::create_dir_all(dir).unwrap();
    let (control, metrics) = (dir.join("control.sock"), dir.join("metrics.sock"));
    let mut args = vec![
        "--renderer",
        "2d",
        "--control-socket",
        control.to_str().unwrap(),
        "--metrics-socket",
        metrics.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    let d = Daemon::spawn_with_sockets_limited(vgpud(), 1, &args, max_fds).expect("start vgpud");
    wait_for(&control);
    wait_for(&metrics);
    d
}

fn test_dir(name: &str) -> std::path::PathBuf {
    std::env::temp_dir().join(format!("vgpud-{name}-{}", std::process::id()))
}

/// `vgpud status --json`: the VMs, or why it failed.
fn status(control: &Path) -> Result<Vec<serde_json::Value>, String> {
    let out = std::process::Command::new(vgpud())
        .args(["status", "--json", "--control-socket"])
        .arg(control)
        .output()
        .expect("run vgpud status");
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).map_err(|e| e.to_string())?;
    Ok(v["vms"].as_array().cloned().unwrap_or_default())
}

/// `n` connections to `socket` that send nothing. They are made on a thread of their own, since
/// a daemon that stops accepting leaves a connect waiting once the listen backlog is full: what
/// did not connect within a few seconds is left out.
fn idle_clients(socket: &Path, n: usize) -> Vec<UnixStream> {
    let (tx, rx) = std::sync::mpsc::channel();
    let socket = socket.to_path_buf();
    std::thread::spawn(move || {
        for _ in 0..n {
            match UnixStream::connect(&socket) {
                Ok(s) => {
                    if tx.send(s).is_err() {
                        return;
                    }
                }
                Err(_) => return,
            }
        }
    });
    let mut clients = Vec::new();
    while clients.len() < n {
        match rx.recv_timeout(Duration::from_secs(5)) {
            Ok(s) => clients.push(s),
            Err(_) => break,
        }
    }
    clients
}

/// Whether the daemon ends `conn` (EOF or reset) within `limit`, whatever it answers first.
fn closed_within(mut conn: &UnixStream, limit: Duration) -> bool {
    let deadline = std::time::Instant::now() + limit;
    let mut buf = [0u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            return false;
        }
        conn.set_read_timeout(Some(left)).unwrap();
        match conn.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e) => {
                return !matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                )
            }
        }
    }
}

/// A metrics client that sends header lines and never ends its request is cut off after a
/// bounded number of bytes, and what it sent costs the daemon no memory that stays.
#[test]
fn a_metrics_client_that_never_ends_its_headers_is_cut_off() {
    // Over TCP, as a local user would: a free loopback port, found by binding it first.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .unwrap()
        .port();
    let address = format!("127.0.0.1:{port}");
    let dir = test_dir("header-flood");
    let d = operator_daemon(&dir, None, &["--metrics-address", &address]);
    let mut conn = None;
    assert!(
        eventually(Duration::from_secs(10), || {
            conn = std::net::TcpStream::connect(&address).ok();
            conn.is_some()
        }),
        "nothing listens on {address}"
    );
    let mut conn = conn.unwrap();
    let before = quiet_stats(&d);
    conn.set_write_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    conn.write_all(b"GET /metrics HTTP/1.1\r\nHost: vgpud\r\n")
        .unwrap();
    let line = format!("X-Padding: {}\r\n", "a".repeat(1000));
    let chunk = line.repeat(64);
    // What the client may send, at most, before it sees the cut: the daemon's limit plus what
    // the kernel's socket buffers take (a loopback TCP send buffer grows to a few MiB).
    const CUT_OFF_BY: usize = 16 << 20;
    let mut sent = 0;
    let cut = loop {
        if sent > 64 << 20 {
            break None;
        }
        match conn.write_all(chunk.as_bytes()) {
            Ok(()) => sent += chunk.len(),
            Err(e) => break Some(e),
        }
    };
    let after = stats(&d);
    assert!(
        matches!(&cut, Some(e) if e.kind() != std::io::ErrorKind::WouldBlock
            && e.kind() != std::io::ErrorKind::TimedOut),
        "never cut off: {sent} bytes of headers sent ({cut:?}); {before:?} -> {after:?}"
    );
    assert!(sent < CUT_OFF_BY, "cut off only after {sent} bytes");
    assert!(
        after.hwm_kib < before.hwm_kib + 16 * 1024,
        "{before:?} -> {after:?}"
    );
    // It cost no one else anything.
    assert!(scrape(&dir.join("metrics.sock")).contains_key("vgpud_vms"));
    let mut vm = connect(&d, 0);
    upload(&mut vm, 1, 16, 16, &pattern(16, 16, 1));
    drop(d);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Hundreds of operator clients that connect and say nothing: the daemon keeps its threads and
/// descriptors bounded, ends the connections it took, and under a low descriptor limit a VM still
/// connects and draws.
#[test]
fn idle_operator_clients_cost_bounded_threads_and_descriptors_and_never_refuse_a_vm() {
    let dir = test_dir("idle-clients");
    let d = operator_daemon(&dir, Some(256), &[]);
    let (control, metrics) = (dir.join("control.sock"), dir.join("metrics.sock"));
    let base = quiet_stats(&d);
    let mut clients = idle_clients(&metrics, 300);
    clients.extend(idle_clients(&control, 60));
    // A few that start a request and never finish it.
    let mut partial = idle_clients(&metrics, 20);
    for c in &mut partial {
        let _ = c.write_all(b"GET /metrics HTTP/1.1\r\nHost: vg");
    }
    clients.extend(partial);
    let held = quiet_stats(&d);
    // Two endpoints, each with its own small cap of connections (8) and no thread per
    // connection.
    assert!(held.threads <= base.threads + 2, "{base:?} -> {held:?}");
    assert!(held.fds <= base.fds + 2 * 8 + 4, "{base:?} -> {held:?}");

    // A VM still connects and draws while the endpoints are full (fresh clients, in case the
    // first ones timed out already).
    clients.extend(idle_clients(&metrics, 20));
    clients.extend(idle_clients(&control, 20));
    let mut vm = Vm::connect(
        &d.socket(0),
        vgpud_harness::VmConfig {
            display: Some(vec![(16, 16)]),
            timeout: Duration::from_secs(10),
            ..Default::default()
        },
    )
    .unwrap_or_else(|e| panic!("the VM was refused: {e}\n{}", d.stderr_log()));
    let image = pattern(16, 16, 7);
    upload(&mut vm, 1, 16, 16, &image);
    show(&mut vm, 1, 16, 16);
    let display = vm.display().unwrap();
    assert!(display.wait_updates(1, Duration::from_secs(10)));
    assert!(display.frame(0).unwrap().pixels == image);

    // Every connection ends: those past the cap at once, the others when they time out.
    let open = clients
        .iter()
        .filter(|c| !closed_within(c, Duration::from_secs(60)))
        .count();
    assert_eq!(open, 0, "of {} idle connections", clients.len());
    drop(clients);
    // Then the endpoints answer as before.
    assert!(scrape(&metrics).contains_key("vgpud_vms"));
    assert_eq!(status(&control).map(|v| v.len()), Ok(1));
    // And once the VM has gone too, nothing of theirs is left.
    vm.disconnect();
    let after = quiet_stats(&d);
    assert!(after.threads <= base.threads + 2, "{base:?} -> {after:?}");
    drop(d);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Clients of the control socket that say nothing, or ask slowly, do not hold up `vgpud status`
/// for anyone else.
#[test]
fn a_silent_status_client_does_not_hold_up_vgpud_status() {
    let dir = test_dir("silent-status");
    let d = operator_daemon(&dir, None, &[]);
    let control = dir.join("control.sock");
    let _vm = connect(&d, 0);
    let mut silent = idle_clients(&control, 3);
    assert_eq!(silent.len(), 3);
    // One sends a byte now and then, which never ends its request either.
    let _ = silent[0].write_all(b"s");
    let vms = status(&control).unwrap_or_else(|e| panic!("vgpud status: {e}"));
    assert_eq!(vms.len(), 1, "{vms:?}");
    let _ = silent[0].write_all(b"t");
    assert_eq!(status(&control).map(|v| v.len()), Ok(1));
    // A normal scrape too.
    assert!(scrape(&dir.join("metrics.sock")).contains_key("vgpud_vms"));
    drop(silent);
    drop(d);
    let _ = std::fs::remove_dir_all(&dir);
}
