//! vgpud in the testbed root: started for a case (run.sh, a session of its own, log in the
//! case's dir), checked at its end (still serving, no panic), its warnings shown, and its
//! processes found and measured.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

use crate::{log, procs};

/// A started vgpud: the process group of run.sh and everything it started.
pub struct Vgpud {
    /// The session's leader (run.sh).
    pub pid: u32,
    pub log: PathBuf,
}

/// The last `n` lines of `path`, joined by spaces.
pub fn tail(path: &Path, n: usize) -> String {
    let text = read_lossy(path);
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join(" ")
}

/// A file's text, empty when it cannot be read (a log not written yet).
pub fn read_lossy(path: &Path) -> String {
    fs::read(path)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default()
}

/// Starts `vgpud args` in the root (run.sh) with its output in `log`, and waits (at most 30 s)
/// for every socket in `sockets` (host paths) to appear.
pub fn start(
    run_sh: &Path,
    vgpud: &Path,
    args: &[String],
    log: &Path,
    sockets: &[PathBuf],
) -> Result<Vgpud, String> {
    let out = fs::File::create(log).map_err(|e| format!("{}: {e}", log.display()))?;
    let err = out
        .try_clone()
        .map_err(|e| format!("{}: {e}", log.display()))?;
    let mut cmd = Command::new(run_sh);
    cmd.arg(vgpud)
        .args(args)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err);
    let pid = procs::spawn(&mut cmd, "vgpud").map_err(|e| e.to_string())?;
    let daemon = Vgpud {
        pid,
        log: log.to_path_buf(),
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        use std::os::unix::fs::FileTypeExt;
        let ready = sockets
            .iter()
            .all(|s| fs::metadata(s).is_ok_and(|m| m.file_type().is_socket()));
        if ready {
            return Ok(daemon);
        }
        if !procs::running(pid) {
            return Err(format!("vgpud exited at start: {}", tail(log, 3)));
        }
        sleep(Duration::from_millis(100));
    }
    Err("vgpud sockets did not appear within 30 s".into())
}

impl Vgpud {
    /// vgpud must still be serving at the end of a case, and must not have panicked.
    pub fn check(&self) -> Result<(), String> {
        let text = read_lossy(&self.log);
        if let Some(line) = text.lines().find(|l| l.contains("panicked")) {
            return Err(format!("vgpud panicked: {line}"));
        }
        if !procs::running(self.pid) {
            return Err(format!(
                "vgpud died during the case: {}",
                tail(&self.log, 2)
            ));
        }
        Ok(())
    }

    /// The vgpud process itself (comm "vgpud" in the session run.sh leads).
    pub fn process(&self) -> Option<u32> {
        procs::all_pids().into_iter().find(|&p| {
            procs::comm(p).as_deref() == Some("vgpud") && procs::session(p) == Some(self.pid)
        })
    }

    /// vgpud's render workers and the render servers they start (vgpud-worker, virgl*) in its
    /// session: (processes, VmRSS kB, open fds), for information.
    pub fn render_server_sample(&self) -> (usize, u64, usize) {
        let mut total = (0, 0, 0);
        for p in procs::all_pids() {
            let Some(name) = procs::comm(p) else { continue };
            if !(name.starts_with("virgl") || name == "vgpud-worker") {
                continue;
            }
            if procs::session(p) != Some(self.pid) {
                continue;
            }
            if let Some((rss, fds)) = process_sample(p) {
                total.0 += 1;
                total.1 += rss;
                total.2 += fds;
            }
        }
        total
    }

    pub fn log_text(&self) -> String {
        read_lossy(&self.log)
    }
}

/// (VmRSS in kB, open fds) of `pid`.
pub fn process_sample(pid: u32) -> Option<(u64, usize)> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    let fds = fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count();
    Some((rss, fds))
}

/// The render worker vgpud started for the guest whose socket is named `socket_name` (its
/// command line names that socket after "render-worker").
pub fn render_worker_of(socket_name: &str) -> Option<u32> {
    procs::all_pids().into_iter().find(|p| {
        let Ok(raw) = fs::read(format!("/proc/{p}/cmdline")) else {
            return false;
        };
        let line = String::from_utf8_lossy(&raw).replace('\0', " ");
        line.find("render-worker")
            .is_some_and(|i| line[i..].contains(socket_name))
    })
}

/// vgpud's warnings and errors do not fail a case by themselves, but are shown: how many there
/// were, and the first five distinct ones without their timestamps.
pub fn show_warnings(log_path: &Path) {
    let text = read_lossy(log_path);
    let warnings: Vec<&str> = text.lines().filter(|l| is_warning(l)).collect();
    if warnings.is_empty() {
        return;
    }
    log(&format!(
        "  vgpud logged {} WARN/ERROR lines; the first distinct ones:",
        warnings.len()
    ));
    let mut seen = std::collections::HashSet::new();
    for line in warnings {
        let bare = without_timestamp(line);
        if seen.len() == 5 {
            break;
        }
        if seen.insert(bare) {
            log(&format!("    {bare}"));
        }
    }
}

/// A log line "[<time> WARN  module] ..." or "[<time> ERROR module] ...".
fn is_warning(line: &str) -> bool {
    let Some(rest) = line.strip_prefix('[') else {
        return false;
    };
    let head = &rest[..rest.find(']').unwrap_or(rest.len())];
    head.contains(" WARN ") || head.contains(" ERROR ")
}

/// The line without its leading "[<time> ".
pub fn without_timestamp(line: &str) -> &str {
    match line.strip_prefix('[').and_then(|r| r.split_once(' ')) {
        Some((_, rest)) => rest,
        None => line,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warnings_are_told_by_their_level() {
        assert!(is_warning(
            "[2026-12-06T20:51:08Z WARN  vgpud::device] odd request"
        ));
        assert!(is_warning("[2026-12-06T20:51:08Z ERROR vgpud] bad"));
        assert!(!is_warning("[2026-12-06T20:51:08Z INFO  vgpud] WARN here"));
        assert!(!is_warning("plain WARN line"));
        assert_eq!(
            without_timestamp("[2026-12-06T20:51:08Z WARN  vgpud] x"),
            "WARN  vgpud] x"
        );
    }
}
