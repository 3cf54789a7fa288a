//! The command line: capabilities JSON, inherited sockets (listening ones, a connection handed
//! over as libvirt does it, sockets systemd passes), and bad options.

mod common;

use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::process::Command as Process;
use std::time::{Duration, Instant};

use common::*;
use vgpud_harness::{Daemon, Vm, VmConfig};
use vgpud_protocol::{Command, Response};

#[test]
fn print_capabilities_is_the_gpu_backend_json() {
    let out = Process::new(vgpud())
        .arg("--print-capabilities")
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.starts_with("{\"type\":\"gpu\""), "{text}");
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    let features: Vec<&str> = v["features"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f.as_str().unwrap())
        .collect();
    // libvirt passes --virgl only to a backend that lists it.
    assert_eq!(
        features.contains(&"virgl"),
        cfg!(feature = "virgl"),
        "{text}"
    );
    // ... and, told a backend takes a render node, wants one for every VM.
    let render_nodes = std::fs::read_dir("/dev/dri").is_ok_and(|d| {
        d.flatten()
            .any(|e| e.file_name().to_string_lossy().starts_with("renderD"))
    });
    assert_eq!(
        features.contains(&"render-node"),
        cfg!(feature = "virgl") && render_nodes,
        "{text}"
    );
}

/// Waits (at most 10 s) for the daemon to exit; its exit status.
fn exit_of(d: &mut Daemon) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if let Some(status) = d.exit_status() {
            return Some(status);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}

/// libvirt starts a GPU backend with `--fd=N`, one end of a socketpair whose other end QEMU
/// gets: a connection, not a listener. It is served (memory table, rings and all) and the
/// daemon exits once that VMM has gone.
#[test]
fn serves_a_vmm_handed_over_as_a_connected_socket_then_exits() {
    let (ours, theirs) = UnixStream::pair().unwrap();
    let mut d = Daemon::spawn_inheriting(
        vgpud(),
        &["--fd=3".into(), "--renderer".into(), "2d".into()],
        vec![OwnedFd::from(theirs)],
        Vec::new(),
        None,
    )
    .unwrap();
    let cfg = VmConfig {
        display: Some(vec![(64, 48)]),
        ..VmConfig::default()
    };
    let mut vm = Vm::over(ours, cfg).unwrap();
    // Guest memory and the display socket, both handed over as descriptors through the relay:
    // the picture uploaded from guest memory is the one the display shows.
    let image = pattern(64, 48, 3);
    upload(&mut vm, 1, 64, 48, &image);
    show(&mut vm, 1, 64, 48);
    let display = vm.display().unwrap();
    assert!(display.wait_updates(1, Duration::from_secs(5)));
    assert!(display.frame(0).unwrap().pixels == image);
    assert!(d.is_running(), "still serving");
    vm.disconnect();
    let status = exit_of(&mut d).expect("the daemon exits after its only VMM");
    assert!(status.success(), "{status:?}\n{}", d.stderr_log());
}

/// Starts the daemon on a connected `--fd=3` through `sh -c SCRIPT` (the script ends by
/// exec'ing the daemon, so `$$` is the daemon's pid), with TMPDIR as the script sets it.
fn spawn_handed_over(script: &str, theirs: UnixStream) -> Daemon {
    let args: Vec<String> = ["-c", script, vgpud().to_str().unwrap(), "--fd=3"]
        .iter()
        .chain(&["--renderer", "2d"])
        .map(|s| s.to_string())
        .collect();
    Daemon::spawn_inheriting(
        std::path::Path::new("/bin/sh"),
        &args,
        vec![OwnedFd::from(theirs)],
        Vec::new(),
        None,
    )
    .unwrap()
}

/// The relay's private socket cannot be taken first: another user who creates the path the
/// daemon would use (once `$TMPDIR/vgpud-PID-0`) does not stop the VM being served.
#[test]
fn a_squatted_relay_path_does_not_stop_a_handed_over_vmm() {
    let dir = std::env::temp_dir().join(format!("vgpud-squat-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let script = format!(
        "export TMPDIR='{}'; unset RUNTIME_DIRECTORY XDG_RUNTIME_DIR; \
         mkdir -m 0777 \"$TMPDIR/vgpud-$$-0\" \"$TMPDIR/vgpud-relay-XXXXXX\" && exec \"$0\" \"$@\"",
        dir.display()
    );
    let (ours, theirs) = UnixStream::pair().unwrap();
    let mut d = spawn_handed_over(&script, theirs);
    let mut vm = Vm::over(ours, VmConfig::default()).unwrap();
    assert!(
        matches!(
            call(&mut vm, Command::GetDisplayInfo),
            Response::OkDisplayInfo(_)
        ),
        "{}",
        d.stderr_log()
    );
    vm.disconnect();
    let status = exit_of(&mut d).expect("the daemon exits after its only VMM");
    assert!(status.success(), "{status:?}\n{}", d.stderr_log());
    // Nothing of the relay is left behind.
    let left: Vec<_> = std::fs::read_dir(&dir).unwrap().flatten().collect();
    assert_eq!(left.len(), 2, "{left:?}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// A VMM handed over that the daemon cannot serve is a failure its supervisor (libvirt) sees:
/// a non-zero exit and a line that says why, never a clean exit.
#[test]
fn a_handed_over_vmm_that_cannot_be_served_fails_the_exit_status() {
    let script = "export TMPDIR=/nonexistent/vgpud; unset RUNTIME_DIRECTORY XDG_RUNTIME_DIR; \
                  exec \"$0\" \"$@\"";
    let (_ours, theirs) = UnixStream::pair().unwrap();
    let mut d = spawn_handed_over(script, theirs);
    let status = exit_of(&mut d).expect("the daemon exits");
    assert!(!status.success(), "{status:?}\n{}", d.stderr_log());
    assert!(
        d.stderr_log().contains("cannot serve the VM"),
        "{}",
        d.stderr_log()
    );
}

/// systemd socket activation: the listening sockets systemd passes (LISTEN_FDS) are VMs named
/// after their sockets (LISTEN_FDNAMES), with --vm NAME,... settings of their own.
#[test]
fn serves_the_sockets_systemd_passes_under_their_names() {
    let dir = std::env::temp_dir().join(format!("vgpud-activation-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let paths = [dir.join("alpha.sock"), dir.join("beta.sock")];
    let fds: Vec<OwnedFd> = paths
        .iter()
        .map(|p| OwnedFd::from(UnixListener::bind(p).unwrap()))
        .collect();
    let control = dir.join("control.sock");
    let args: Vec<String> = [
        "--renderer",
        "2d",
        "--vm",
        "beta,scanouts=2",
        "--control-socket",
        control.to_str().unwrap(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let _d =
        Daemon::spawn_inheriting(vgpud(), &args, fds, paths.to_vec(), Some("alpha:beta")).unwrap();
    let mut vms: Vec<Vm> = paths
        .iter()
        .map(|p| Vm::connect(p, VmConfig::default()).unwrap())
        .collect();
    let scanouts = |vm: &mut Vm| {
        let config = vm.get_config(0, 20).unwrap();
        vgpud_protocol::GpuConfig::from_bytes(&config)
            .unwrap()
            .num_scanouts
    };
    assert_eq!(scanouts(&mut vms[0]), 1, "alpha: the daemon's default");
    assert_eq!(scanouts(&mut vms[1]), 2, "beta: its --vm settings");
    let deadline = Instant::now() + Duration::from_secs(10);
    let names = loop {
        let out = Process::new(vgpud())
            .args(["status", "--json", "--control-socket"])
            .arg(&control)
            .output()
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        let mut names: Vec<String> = (v["vms"].as_array().into_iter().flatten())
            .map(|vm| format!("{}@{}", vm["name"], vm["socket"]).replace('"', ""))
            .collect();
        names.sort();
        if names.len() == 2 || Instant::now() >= deadline {
            break names;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(names, ["alpha@systemd:alpha", "beta@systemd:beta"]);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn serves_an_inherited_listening_socket() {
    let dir = std::env::temp_dir().join(format!("vgpud-fd-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("inherited.sock");
    let _ = std::fs::remove_file(&path);
    let listener = UnixListener::bind(&path).unwrap();
    let fd = listener.as_raw_fd();
    // SAFETY: clears close-on-exec on a socket this test owns, so the daemon inherits it.
    assert_eq!(unsafe { libc::fcntl(fd, libc::F_SETFD, 0) }, 0);
    let _daemon = Daemon::spawn(vgpud(), &["--fd".into(), fd.to_string()]).unwrap();
    let mut vm = Vm::connect(&path, VmConfig::default()).unwrap();
    assert!(matches!(
        call(&mut vm, Command::GetDisplayInfo),
        Response::OkDisplayInfo(_)
    ));
    vm.disconnect();
    // The same inherited socket takes the next VM.
    let mut vm = Vm::connect(&path, VmConfig::default()).unwrap();
    ok(&mut vm, create(1, 4, 4));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn refuses_to_start_without_work_or_with_bad_options() {
    let none = Process::new(vgpud()).output().unwrap();
    assert_eq!(none.status.code(), Some(2));
    for bad in [
        ["--scanouts", "17"],
        ["--resolution", "0x5"],
        ["--max-resource-memory", "lots"],
        ["--fd", "1"],
        // Settings for a socket systemd did not pass.
        ["--vm", "ghost,scanouts=2"],
    ] {
        let out = Process::new(vgpud()).args(bad).output().unwrap();
        assert!(!out.status.success(), "{bad:?} accepted");
    }
}
