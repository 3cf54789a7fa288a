//! A backend process started for a test.

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::util::{err, make_temp_dir};

const LISTEN_WAIT: Duration = Duration::from_secs(10);

/// A backend process; killed (SIGKILL) and its temp dir removed on drop.
pub struct Daemon {
    child: Child,
    dir: PathBuf,
    sockets: Vec<PathBuf>,
}

impl Daemon {
    /// Runs `program` with `args`. Every `--socket-path P` (or `--socket-path=P`) in `args` is
    /// waited for (up to 10 s) until P is listening. Stdout and stderr go to files in a fresh
    /// temp dir (see `stderr_log`).
    pub fn spawn(program: &Path, args: &[String]) -> io::Result<Daemon> {
        let dir = make_temp_dir("vgpud-harness")?;
        Self::spawn_in(dir, program, args, None)
    }

    /// A fresh temp dir with `n` sockets `vm0.sock`.. passed as `--socket-path`, then `extra`.
    pub fn spawn_with_sockets(program: &Path, n: usize, extra: &[&str]) -> io::Result<Daemon> {
        Self::spawn_with_sockets_limited(program, n, extra, None)
    }

    /// One socket per entry of `settings`, each followed by that VM's own settings
    /// (`--socket-path PATH,SETTINGS`, or just PATH for ""), then `extra`.
    pub fn spawn_with_vm_settings(
        program: &Path,
        settings: &[&str],
        extra: &[&str],
    ) -> io::Result<Daemon> {
        let dir = make_temp_dir("vgpud-harness")?;
        let mut args = Vec::new();
        for (i, own) in settings.iter().enumerate() {
            let path = dir
                .join(format!("vm{i}.sock"))
                .to_string_lossy()
                .into_owned();
            args.push("--socket-path".to_string());
            args.push(if own.is_empty() {
                path
            } else {
                format!("{path},{own}")
            });
        }
        args.extend(extra.iter().map(|s| s.to_string()));
        Self::spawn_in(dir, program, &args, None)
    }

    /// Runs `program` with `args` and `fds` as its descriptors 3, 4, ... The sockets are the
    /// test's own (`sockets` names those that listen, for `socket(i)`). With `activation` set
    /// to the sockets' names (colon-separated), they are passed as systemd does it:
    /// LISTEN_FDS, LISTEN_FDNAMES and LISTEN_PID (the program's own pid, so it starts through
    /// `sh -c 'LISTEN_PID=$$ exec ...'`).
    pub fn spawn_inheriting(
        program: &Path,
        args: &[String],
        fds: Vec<std::os::fd::OwnedFd>,
        sockets: Vec<PathBuf>,
        activation: Option<&str>,
    ) -> io::Result<Daemon> {
        use std::os::fd::AsRawFd;
        use std::os::unix::process::CommandExt;
        let dir = make_temp_dir("vgpud-harness")?;
        let mut cmd = match activation {
            Some(names) => {
                let mut c = Command::new("/bin/sh");
                c.arg("-c")
                    .arg("LISTEN_PID=$$ exec \"$0\" \"$@\"")
                    .arg(program)
                    .env("LISTEN_FDS", fds.len().to_string())
                    .env("LISTEN_FDNAMES", names);
                c
            }
            None => Command::new(program),
        };
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(File::create(dir.join("stdout.log"))?)
            .stderr(File::create(dir.join("stderr.log"))?);
        let raw: Vec<i32> = fds.iter().map(|f| f.as_raw_fd()).collect();
        // SAFETY: only fcntl and dup2 (async-signal-safe) between fork and exec. Each fd is
        // first moved above the target range, so no dup2 overwrites a source still needed.
        unsafe {
            cmd.pre_exec(move || {
                // No allocation after fork: a fixed array.
                let mut high = [-1i32; 16];
                if raw.len() > high.len() {
                    return Err(io::Error::other("too many descriptors"));
                }
                for (h, &fd) in high.iter_mut().zip(&raw) {
                    *h = libc::fcntl(fd, libc::F_DUPFD, 100);
                    if *h < 0 {
                        return Err(io::Error::last_os_error());
                    }
                }
                for (i, &h) in high.iter().take(raw.len()).enumerate() {
                    if libc::dup2(h, 3 + i as i32) < 0 {
                        return Err(io::Error::last_os_error());
                    }
                }
                Ok(())
            });
        }
        let child = cmd.spawn();
        drop(fds);
        let child = match child {
            Ok(c) => c,
            Err(e) => {
                let _ = std::fs::remove_dir_all(&dir);
                return Err(e);
            }
        };
        Ok(Daemon {
            child,
            dir,
            sockets,
        })
    }

    /// As `spawn_with_sockets`, with at most `max_fds` open descriptors (RLIMIT_NOFILE) if given.
    pub fn spawn_with_sockets_limited(
        program: &Path,
        n: usize,
        extra: &[&str],
        max_fds: Option<u64>,
    ) -> io::Result<Daemon> {
        let dir = make_temp_dir("vgpud-harness")?;
        let mut args = Vec::new();
        for i in 0..n {
            args.push("--socket-path".to_string());
            args.push(
                dir.join(format!("vm{i}.sock"))
                    .to_string_lossy()
                    .into_owned(),
            );
        }
        args.extend(extra.iter().map(|s| s.to_string()));
        Self::spawn_in(dir, program, &args, max_fds)
    }

    fn spawn_in(
        dir: PathBuf,
        program: &Path,
        args: &[String],
        max_fds: Option<u64>,
    ) -> io::Result<Daemon> {
        let sockets = socket_args(args);
        let spawned = File::create(dir.join("stderr.log")).and_then(|stderr| {
            let mut cmd = Command::new(program);
            cmd.args(args)
                .stdin(Stdio::null())
                .stdout(File::create(dir.join("stdout.log"))?)
                .stderr(stderr);
            if let Some(n) = max_fds {
                use std::os::unix::process::CommandExt;
                let limit = libc::rlimit {
                    rlim_cur: n,
                    rlim_max: n,
                };
                // SAFETY: setrlimit is async-signal-safe and touches only the child.
                unsafe {
                    cmd.pre_exec(move || {
                        if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                            return Err(io::Error::last_os_error());
                        }
                        Ok(())
                    });
                }
            }
            cmd.spawn()
        });
        let child = match spawned {
            Ok(c) => c,
            Err(e) => {
                let _ = std::fs::remove_dir_all(&dir);
                return Err(io::Error::new(
                    e.kind(),
                    format!("spawning {program:?}: {e}"),
                ));
            }
        };
        // From here on Drop cleans up.
        let mut d = Daemon {
            child,
            dir,
            sockets,
        };
        let deadline = Instant::now() + LISTEN_WAIT;
        for s in d.sockets.clone() {
            loop {
                if is_listening(&s) {
                    break;
                }
                if !d.is_running() {
                    return Err(err(
                        io::ErrorKind::ConnectionRefused,
                        format!(
                            "{program:?} exited ({:?}) before listening on {s:?}; stderr:\n{}",
                            d.child.try_wait().ok().flatten(),
                            d.stderr_log()
                        ),
                    ));
                }
                if Instant::now() >= deadline {
                    return Err(err(
                        io::ErrorKind::TimedOut,
                        format!(
                            "{program:?} not listening on {s:?} after {LISTEN_WAIT:?}; stderr:\n{}",
                            d.stderr_log()
                        ),
                    ));
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        Ok(d)
    }

    /// The i-th `--socket-path` argument.
    pub fn socket(&self, i: usize) -> PathBuf {
        self.sockets[i].clone()
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Exit status, once the process has exited.
    pub fn exit_status(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// SIGKILL and reap.
    pub fn kill(&mut self) {
        if self.is_running() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }

    /// What /proc says of the process now.
    pub fn stats(&self) -> io::Result<ProcStats> {
        ProcStats::of(self.child.id())
    }

    /// The child's stderr so far.
    pub fn stderr_log(&self) -> String {
        std::fs::read(self.dir.join("stderr.log"))
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Values of every `--socket-path P` / `--socket-path=P` argument.
/// The socket paths of `--socket-path PATH[,KEY=VALUE...]` arguments.
fn socket_args(args: &[String]) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut it = args.iter();
    let path = |a: &str| PathBuf::from(a.split(',').next().unwrap_or(a));
    while let Some(a) = it.next() {
        if a == "--socket-path" {
            if let Some(p) = it.next() {
                out.push(path(p));
            }
        } else if let Some(p) = a.strip_prefix("--socket-path=") {
            out.push(path(p));
        }
    }
    out
}

/// Whether a UNIX socket bound to `path` is in the listening state.
///
/// Probing with connect() is not an option: some backends (QEMU's vhost-user-gpu among them)
/// accept exactly one connection, which the probe would use up. /proc/net/unix lists bound
/// sockets with their flags; __SO_ACCEPTCON (0x10000) marks a listener.
fn is_listening(path: &Path) -> bool {
    let Ok(table) = std::fs::read_to_string("/proc/net/unix") else {
        return false;
    };
    let mut names = vec![path.to_string_lossy().into_owned()];
    if let Ok(abs) = std::path::absolute(path) {
        names.push(abs.to_string_lossy().into_owned());
    }
    listening_in(&table, &names)
}

fn listening_in(table: &str, names: &[String]) -> bool {
    // Fields: Num RefCount Protocol Flags Type St Inode Path; the path may contain spaces.
    table.lines().skip(1).any(|line| {
        let flags = line.split_whitespace().nth(3);
        let flags = flags
            .and_then(|f| u32::from_str_radix(f, 16).ok())
            .unwrap_or(0);
        let mut rest = line;
        for _ in 0..7 {
            rest = rest.trim_start();
            rest = &rest[rest.find(char::is_whitespace).unwrap_or(rest.len())..];
        }
        let path = rest.trim_start();
        flags & 0x10000 != 0 && names.iter().any(|n| n == path)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_socket_args() {
        let a: Vec<String> = [
            "--x",
            "--socket-path",
            "/a",
            "--socket-path=/b",
            "--socket-path",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        assert_eq!(
            socket_args(&a),
            vec![PathBuf::from("/a"), PathBuf::from("/b")]
        );
    }

    #[test]
    fn proc_net_unix_listener() {
        let table = "Num       RefCount Protocol Flags    Type St Inode Path\n\
            0000000000000000: 00000002 00000000 00010000 0001 01 12345 /tmp/d/vm0.sock\n\
            0000000000000000: 00000003 00000000 00000000 0001 03 12346 /tmp/d/vm1.sock\n";
        assert!(listening_in(table, &["/tmp/d/vm0.sock".into()]));
        assert!(!listening_in(table, &["/tmp/d/vm1.sock".into()]));
        assert!(!listening_in(table, &["d/vm0.sock".into()]));
    }
}

/// A process's resource use, read from /proc: what soak and leak tests compare.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProcStats {
    pub fds: usize,
    pub threads: usize,
    /// Resident set now and its peak, in KiB.
    pub rss_kib: u64,
    pub hwm_kib: u64,
    /// User plus system CPU time, in clock ticks.
    pub cpu_ticks: u64,
}

impl ProcStats {
    pub fn of(pid: u32) -> io::Result<ProcStats> {
        let dir = PathBuf::from(format!("/proc/{pid}"));
        let fds = std::fs::read_dir(dir.join("fd"))?.count();
        let threads = std::fs::read_dir(dir.join("task"))?.count();
        let status = std::fs::read_to_string(dir.join("status"))?;
        let kib = |key: &str| -> u64 {
            status
                .lines()
                .find_map(|l| l.strip_prefix(key))
                .and_then(|v| v.split_whitespace().next())
                .and_then(|v| v.parse().ok())
                .unwrap_or(0)
        };
        // Fields 14 and 15 of stat (utime, stime) come after the parenthesised command name.
        let stat = std::fs::read_to_string(dir.join("stat"))?;
        let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
        let fields: Vec<u64> = after
            .split_whitespace()
            .map(|f| f.parse().unwrap_or(0))
            .collect();
        let cpu_ticks = fields.get(11).copied().unwrap_or(0) + fields.get(12).copied().unwrap_or(0);
        Ok(ProcStats {
            fds,
            threads,
            rss_kib: kib("VmRSS:"),
            hwm_kib: kib("VmHWM:"),
            cpu_ticks,
        })
    }
}
