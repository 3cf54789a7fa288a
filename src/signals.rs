//! Stop and reload, as a service manager asks for them: SIGTERM or SIGINT ends every VM's
//! connection (their render workers end with their teardown) and exits once they are gone, or
//! after `STOP_GRACE`; SIGHUP runs the reload (the share policy is read again).
//!
//! The signals are blocked in every thread (`block`, before any thread starts) and taken by one
//! thread with `sigwait`, so nothing runs in a signal handler.

use std::io;
use std::thread;
use std::time::{Duration, Instant};

use log::{info, warn};

use crate::hub::registry::Registry;

/// The longest a stop waits for VMs to be torn down.
pub const STOP_GRACE: Duration = Duration::from_secs(10);

const SIGNALS: [libc::c_int; 3] = [libc::SIGTERM, libc::SIGINT, libc::SIGHUP];

fn set() -> libc::sigset_t {
    // SAFETY: sigemptyset and sigaddset only write the set they are given.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for s in SIGNALS {
            libc::sigaddset(&mut set, s);
        }
        set
    }
}

/// Blocks the stop and reload signals in this thread and every thread started after it.
pub fn block() -> io::Result<()> {
    let set = set();
    // SAFETY: changes this thread's signal mask; the set is valid.
    let r = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
    if r != 0 {
        return Err(io::Error::from_raw_os_error(r));
    }
    Ok(())
}

/// Takes the signals on a thread of its own: `reload` on SIGHUP; on SIGTERM or SIGINT, every
/// VM is disconnected and the process exits (status 0) once the registry is empty.
pub fn handle(vms: std::sync::Arc<Registry>, reload: impl Fn() + Send + 'static) -> io::Result<()> {
    thread::Builder::new()
        .name("signals".into())
        .spawn(move || loop {
            let set = set();
            let mut sig: libc::c_int = 0;
            // SAFETY: sigwait waits for one of the (blocked) signals in `set` and writes its number.
            if unsafe { libc::sigwait(&set, &mut sig) } != 0 {
                continue;
            }
            if sig == libc::SIGHUP {
                info!("reloading (SIGHUP)");
                reload();
                continue;
            }
            stop(&vms, sig);
        })?;
    Ok(())
}

fn stop(vms: &Registry, sig: libc::c_int) -> ! {
    let records = vms.records();
    info!(
        "stopping (signal {sig}): disconnecting {} VM(s)",
        records.len()
    );
    for vm in &records {
        vm.stop();
    }
    let deadline = Instant::now() + STOP_GRACE;
    while !vms.records().is_empty() && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(20));
    }
    let left = vms.records().len();
    if left > 0 {
        warn!("{left} VM(s) not torn down after {STOP_GRACE:?}; exiting anyway");
    }
    info!("stopped");
    std::process::exit(0);
}
