//! What operators run the daemon with: the Prometheus endpoint, lifecycle log lines, stop and
//! reload signals, and who may use the control socket.

mod common;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use common::*;
use vgpud_harness::{Daemon, Vm};
use vgpud_protocol::{Command, Response};

/// `GET path` over the UNIX socket at `socket`: (status line, body).
fn http_get(socket: &Path, path: &str) -> (String, String) {
    let mut s = UnixStream::connect(socket).expect("connect to the metrics socket");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(s, "GET {path} HTTP/1.0\r\nHost: vgpud\r\n\r\n").unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head.lines().next().unwrap_or_default().to_string();
    (status, body.to_string())
}

/// The exposition's samples: `name{labels}` -> value.
fn samples(text: &str) -> HashMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| {
            let (key, value) = l.rsplit_once(' ')?;
            Some((key.to_string(), value.parse().ok()?))
        })
        .collect()
}

/// The operator sockets are made next to the VM sockets the harness waits for, maybe a moment
/// after them.
fn wait_for(socket: &Path) {
    assert!(
        eventually(Duration::from_secs(10), || socket.exists()),
        "{socket:?} never appeared"
    );
}

fn scrape(socket: &Path) -> HashMap<String, f64> {
    let (status, body) = http_get(socket, "/metrics");
    assert!(status.contains(" 200 "), "{status}");
    samples(&body)
}

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
    // The fenced submit was answered 60 ms (the script's delay) or more after it came.
    assert_eq!(v(r#"vgpud_fence_latency_seconds_count{vm="a"}"#), 1.0);
    assert!(v(r#"vgpud_fence_latency_seconds_sum{vm="a"}"#) >= 0.06);
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
