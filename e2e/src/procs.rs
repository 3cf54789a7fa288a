//! Every process the runner starts, in one place. Each runs in a session (and process group) of
//! its own (setsid), so one signal reaches everything it started; the registry knows them all
//! and stops them (TERM, then KILL after 10 s) when a case ends, when the runner ends, fails, or
//! is interrupted (SIGINT, SIGTERM: a thread of its own waits for those). QEMU is a special
//! case: boot.sh runs it under timeout(1), which moves itself into a group of its own, so QEMU
//! is stopped through its pidfile.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus};
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::thread::sleep;
use std::time::{Duration, Instant};

use crate::Error;

struct Registry {
    groups: Vec<Group>,
    /// Where the running case's QEMU pidfiles are (`*.qemu.pid`).
    qemu_pid_dir: Option<PathBuf>,
    /// Removed at the end (the sockets' directory).
    remove_at_exit: Vec<PathBuf>,
    /// Set once the runner is going down: nothing new is started.
    closing: bool,
}

struct Group {
    child: Child,
    status: Option<ExitStatus>,
}

fn registry() -> MutexGuard<'static, Registry> {
    static REGISTRY: OnceLock<Mutex<Registry>> = OnceLock::new();
    let m = REGISTRY.get_or_init(|| {
        Mutex::new(Registry {
            groups: Vec::new(),
            qemu_pid_dir: None,
            remove_at_exit: Vec::new(),
            closing: false,
        })
    });
    // A panic while holding the lock leaves the data as it was: still usable for cleanup.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Starts `cmd` as the leader of a new session and process group; returns its pid.
pub fn spawn(cmd: &mut Command, what: &str) -> Result<u32, Error> {
    use std::os::unix::process::CommandExt;
    // SAFETY: setsid and sigprocmask are async-signal-safe and touch nothing of the parent's.
    unsafe {
        cmd.pre_exec(|| {
            if libc::setsid() == -1 {
                return Err(std::io::Error::last_os_error());
            }
            // This thread blocks SIGINT and SIGTERM (handle_signals); a child inherits its
            // mask, and a QEMU or vgpud with TERM blocked would not stop when told to.
            let mut none: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut none);
            if libc::sigprocmask(libc::SIG_SETMASK, &none, std::ptr::null_mut()) == -1 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut reg = registry();
    if reg.closing {
        return Err(Error::msg(format!(
            "not starting {what}: the runner is stopping"
        )));
    }
    let child = cmd.spawn().map_err(|e| Error::during(what, e))?;
    let pid = child.id();
    reg.groups.push(Group {
        child,
        status: None,
    });
    Ok(pid)
}

/// The exit status of `pid` (started here) if it has ended.
pub fn exit_status(pid: u32) -> Option<ExitStatus> {
    let mut reg = registry();
    let g = reg.groups.iter_mut().find(|g| g.child.id() == pid)?;
    if g.status.is_none() {
        g.status = g.child.try_wait().ok().flatten();
    }
    g.status
}

/// Is `pid` (started here) still running?
pub fn running(pid: u32) -> bool {
    let known = registry().groups.iter().any(|g| g.child.id() == pid);
    known && exit_status(pid).is_none()
}

/// A shell's view of an exit status: the code, or 128 + the signal.
pub fn code(status: ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    status
        .code()
        .or_else(|| status.signal().map(|s| 128 + s))
        .unwrap_or(255)
}

/// Waits for `pid` (started here) to end, at most until `deadline`; then forgets it.
/// None when the deadline passed (the process is left running, still registered).
pub fn wait(pid: u32, deadline: Option<Instant>) -> Option<ExitStatus> {
    loop {
        if let Some(status) = exit_status(pid) {
            forget(pid);
            return Some(status);
        }
        if !registry().groups.iter().any(|g| g.child.id() == pid) {
            return None;
        }
        if deadline.is_some_and(|d| Instant::now() >= d) {
            return None;
        }
        sleep(Duration::from_millis(50));
    }
}

fn forget(pid: u32) {
    registry().groups.retain(|g| g.child.id() != pid);
}

fn group_alive(pgid: u32) -> bool {
    // SAFETY: kill with signal 0 only checks.
    unsafe { libc::kill(-(pgid as libc::pid_t), 0) == 0 }
}

fn signal_group(pgid: u32, sig: libc::c_int) {
    // SAFETY: a signal to a process group this runner created.
    unsafe {
        libc::kill(-(pgid as libc::pid_t), sig);
    }
}

/// Stops the process group led by `pid`: TERM, then KILL after 10 s; reaps the leader.
pub fn stop_group(pid: u32) {
    stop_groups(&[pid]);
}

/// Stops the process groups led by `pids` together: TERM to all, then KILL to those still
/// there after 10 s; reaps the leaders.
fn stop_groups(pids: &[u32]) {
    for &pid in pids {
        signal_group(pid, libc::SIGTERM);
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        // A leader must be reaped, or its zombie keeps its group alive.
        for &pid in pids {
            let _ = exit_status(pid);
        }
        if !pids.iter().any(|&pid| group_alive(pid)) {
            break;
        }
        sleep(Duration::from_millis(100));
    }
    for &pid in pids {
        signal_group(pid, libc::SIGKILL);
        let child = {
            let mut reg = registry();
            let i = reg.groups.iter().position(|g| g.child.id() == pid);
            i.map(|i| reg.groups.swap_remove(i))
        };
        if let Some(mut g) = child {
            if g.status.is_none() {
                let _ = g.child.wait();
            }
        }
    }
}

/// Is `pid` alive (a zombie is not)?
pub fn pid_alive(pid: u32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(") ")
            .and_then(|(_, rest)| rest.split(' ').next())
            .is_some_and(|state| state != "Z"),
        Err(_) => false,
    }
}

/// The command name of `pid` (/proc/PID/comm).
pub fn comm(pid: u32) -> Option<String> {
    fs::read_to_string(format!("/proc/{pid}/comm"))
        .ok()
        .map(|s| s.trim_end().to_string())
}

/// The session id of `pid`.
pub fn session(pid: u32) -> Option<u32> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command: state ppid pgrp session ...
    let (_, rest) = stat.rsplit_once(") ")?;
    rest.split(' ').nth(3)?.parse().ok()
}

/// Every pid in /proc.
pub fn all_pids() -> Vec<u32> {
    let Ok(dir) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect()
}

/// Stops the QEMU whose pidfile is `pidfile` (TERM), if that pid is still a QEMU.
pub fn stop_qemu(pidfile: &Path) {
    let Ok(text) = fs::read_to_string(pidfile) else {
        return;
    };
    let Ok(pid) = text.trim().parse::<u32>() else {
        return;
    };
    if comm(pid).is_some_and(|c| c.starts_with("qemu-system-")) {
        // SAFETY: a QEMU started for this run (its pidfile is in the run's socket dir).
        unsafe {
            libc::kill(pid as libc::pid_t, libc::SIGTERM);
        }
    }
}

/// Stops every QEMU with a pidfile in `dir`, and removes the pidfiles.
pub fn stop_qemus_in(dir: &Path) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let path = e.path();
        if path.to_string_lossy().ends_with(".qemu.pid") {
            stop_qemu(&path);
            let _ = fs::remove_file(&path);
        }
    }
}

/// The directory where the QEMU pidfiles are (the run's socket directory, seen from here).
pub fn set_qemu_pid_dir(dir: PathBuf) {
    registry().qemu_pid_dir = Some(dir);
}

/// A directory removed when the runner ends, however it ends.
pub fn remove_at_exit(dir: PathBuf) {
    registry().remove_at_exit.push(dir);
}

/// Stops every QEMU and every process group started here.
pub fn stop_all() {
    let dir = registry().qemu_pid_dir.clone();
    if let Some(dir) = dir {
        stop_qemus_in(&dir);
    }
    let pids: Vec<u32> = registry().groups.iter().map(|g| g.child.id()).collect();
    stop_groups(&pids);
}

/// Is the runner going down (interrupted)?
pub fn closing() -> bool {
    registry().closing
}

/// The end of the runner: nothing new starts, everything started is stopped, and the
/// directories to remove are removed.
pub fn shutdown() {
    registry().closing = true;
    stop_all();
    let dirs = std::mem::take(&mut registry().remove_at_exit);
    for d in dirs {
        let _ = fs::remove_dir_all(d);
    }
}

/// SIGINT and SIGTERM stop the runner: a thread of its own waits for them (they are blocked
/// in every other thread; children get a clean signal mask), says so, shuts everything down
/// and exits with 130 or 143. Call before starting any other thread.
pub fn handle_signals() -> Result<(), Error> {
    // SAFETY: plain signal-set manipulation on local storage.
    let set = unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
        let rc = libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        if rc != 0 {
            return Err(Error::during(
                "blocking SIGINT and SIGTERM",
                std::io::Error::from_raw_os_error(rc),
            ));
        }
        set
    };
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || loop {
            let mut sig: libc::c_int = 0;
            // SAFETY: waits on the set blocked above.
            if unsafe { libc::sigwait(&set, &mut sig) } != 0 {
                continue;
            }
            let (word, code) = if sig == libc::SIGINT {
                ("interrupted", 130)
            } else {
                ("terminated", 143)
            };
            crate::log(word);
            shutdown();
            std::process::exit(code);
        })
        .map_err(|e| Error::during("starting the signal thread", e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stopped_group_takes_its_children_along() {
        let dir = std::env::temp_dir().join(format!("vgpud-e2e-procs-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let pidfile = dir.join("sleeper");
        // A shell with a child of its own, both in the session spawn() made.
        let leader = spawn(
            Command::new("/bin/sh")
                .arg("-c")
                .arg("sleep 100 & echo $! >\"$0\"; wait")
                .arg(&pidfile),
            "sh",
        )
        .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        let sleeper = loop {
            let text = fs::read_to_string(&pidfile).unwrap_or_default();
            if let Ok(pid) = text.trim().parse::<u32>() {
                break pid;
            }
            assert!(
                Instant::now() < deadline,
                "the shell never started its child"
            );
            sleep(Duration::from_millis(20));
        };
        assert!(running(leader));
        assert!(pid_alive(sleeper));
        assert_eq!(session(sleeper), Some(leader));
        let t0 = Instant::now();
        stop_group(leader);
        assert!(t0.elapsed() < Duration::from_secs(5), "TERM was enough");
        assert!(!running(leader));
        // The child went too (reaped by init, maybe a moment later).
        while pid_alive(sleeper) && Instant::now() < deadline {
            sleep(Duration::from_millis(20));
        }
        assert!(!pid_alive(sleeper));
        fs::remove_dir_all(&dir).unwrap();
    }
}
