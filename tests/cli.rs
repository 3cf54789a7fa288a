//! The command line: capabilities JSON, inherited listening sockets, and bad options.

mod common;

use std::os::fd::AsRawFd;
use std::os::unix::net::UnixListener;
use std::process::Command as Process;

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
    assert!(text.contains("\"features\":["), "{text}");
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
    ] {
        let out = Process::new(vgpud()).args(bad).output().unwrap();
        assert!(!out.status.success(), "{bad:?} accepted");
    }
}
