//! The harness against peers that misbehave at the socket level: everything must end in an
//! error within the configured timeout, never a hang. Runs without any real backend.

use std::io::Read;
use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use vgpud_harness::{Daemon, Vm, VmConfig};

fn sock_path(tag: &str) -> PathBuf {
    let p = std::env::temp_dir().join(format!("vgpud-harness-{tag}-{}.sock", std::process::id()));
    let _ = std::fs::remove_file(&p);
    p
}

fn short() -> VmConfig {
    VmConfig {
        timeout: Duration::from_millis(300),
        ..VmConfig::default()
    }
}

#[test]
fn silent_backend_times_out() {
    let path = sock_path("silent");
    let listener = UnixListener::bind(&path).unwrap();
    let server = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        // Read everything, answer nothing, until the harness gives up.
        let mut buf = [0u8; 256];
        while matches!(s.read(&mut buf), Ok(n) if n > 0) {}
    });
    let t = Instant::now();
    let e = Vm::connect(&path, short())
        .err()
        .expect("connect must fail");
    assert_eq!(e.kind(), std::io::ErrorKind::TimedOut, "{e}");
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    server.join().unwrap();
    let _ = std::fs::remove_file(&path);
}

#[test]
fn backend_hanging_up_is_an_error() {
    let path = sock_path("hangup");
    let listener = UnixListener::bind(&path).unwrap();
    let server = std::thread::spawn(move || drop(listener.accept().unwrap()));
    let t = Instant::now();
    assert!(Vm::connect(&path, short()).is_err());
    assert!(t.elapsed() < Duration::from_secs(2));
    server.join().unwrap();
    let _ = std::fs::remove_file(&path);
}

#[test]
fn nobody_listening_is_an_error() {
    let t = Instant::now();
    assert!(Vm::connect(&sock_path("absent"), short()).is_err());
    assert!(t.elapsed() < Duration::from_secs(2));
}

#[test]
fn daemon_that_exits_early_is_reported() {
    let e = Daemon::spawn_with_sockets(std::path::Path::new("/bin/false"), 1, &[])
        .err()
        .expect("must fail");
    assert_eq!(e.kind(), std::io::ErrorKind::ConnectionRefused, "{e}");
    assert!(Daemon::spawn_with_sockets(std::path::Path::new("/nonexistent/prog"), 1, &[]).is_err());
}

#[test]
fn daemon_lifecycle() {
    // No --socket-path, so nothing is waited for.
    let mut d = Daemon::spawn(std::path::Path::new("/bin/sleep"), &["30".to_string()]).unwrap();
    assert!(d.is_running());
    assert!(d.dir().is_dir());
    let dir = d.dir().to_path_buf();
    d.kill();
    assert!(!d.is_running());
    drop(d);
    assert!(!dir.exists());
}

#[test]
fn handles_are_send() {
    fn send<T: Send>() {}
    fn sync<T: Send + Sync>() {}
    send::<Vm>();
    send::<Daemon>();
    sync::<vgpud_harness::DisplayPeer>();
    sync::<vgpud_harness::ShmemPeer>();
}
