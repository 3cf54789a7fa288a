//! A guest: booted through the testbed's boot.sh (QEMU in the root, TCG) with a vhost-user
//! GPU device on vgpud's socket and a QMP socket; watched for a boot that hangs before the
//! device probe; waited for, line by line and to its end.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::{sleep, JoinHandle};
use std::time::{Duration, Instant};

use crate::daemon::read_lossy;
use crate::{procs, Error};

/// Written into a guest's dir when it hung before the device probe: why.
pub const HUNG_FILE: &str = "hung-before-probe";
/// Lines on the console that say the device probe has begun (guest-init.sh prints "loading
/// virtio_gpu" right before the driver; the driver's own lines say [drm] or virtio-gpu).
const PROBE_MARKS: [&str; 3] = ["virtio_gpu", "virtio-gpu", "[drm]"];

/// How a guest is booted.
pub struct BootSpec<'a> {
    pub boot_sh: &'a Path,
    /// Its results dir (<case>/vm<N>); the guest sees it as /results.
    pub out: &'a Path,
    /// Its sockets' common path, seen in the root: <tag>.sock (vgpud's), <tag>.qmp,
    /// <tag>.qemu.pid.
    pub tag_in_root: &'a str,
    /// The QEMU device with its properties, before ",chardev=...".
    pub device: &'a str,
    /// More device properties (",xres=1024,...").
    pub props: Option<&'a str>,
    /// Guest RAM (boot.sh -m), or boot.sh's default.
    pub memory: Option<&'a str>,
    /// bash code run in the guest.
    pub code: &'a str,
    pub timeout_s: u64,
}

/// A booted guest.
pub struct Guest {
    /// boot.sh's pid (a session of its own).
    pub pid: u32,
    pub out: PathBuf,
    /// QEMU's pidfile, seen from here.
    pub qemu_pidfile: PathBuf,
    /// QMP's socket, seen from here.
    pub qmp: PathBuf,
    pub timeout_s: u64,
    watcher: Option<(Arc<AtomicBool>, JoinHandle<()>)>,
}

/// Creates `path` if it is not there (a marker file the guest waits for).
pub fn touch(path: &Path) -> Result<(), Error> {
    fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map(drop)
        .map_err(|e| Error::io(path, e))
}

/// Boots a guest in the background. `root` turns a path in the root into the host's.
pub fn boot(
    spec: &BootSpec,
    root: impl Fn(&str) -> PathBuf,
    probe_stall: Duration,
) -> Result<Guest, Error> {
    fs::create_dir_all(spec.out).map_err(|e| Error::io(spec.out, e))?;
    let _ = fs::remove_file(spec.out.join(crate::cases::DONE_NAME));
    let tag = spec.tag_in_root;
    let log_path = spec.out.join("boot.log");
    let log = fs::File::create(&log_path).map_err(|e| Error::io(&log_path, e))?;
    let log2 = log.try_clone().map_err(|e| Error::io(&log_path, e))?;
    let mut cmd = Command::new(spec.boot_sh);
    cmd.arg("-q")
        .arg("-o")
        .arg(spec.out)
        .args(["-t", &spec.timeout_s.to_string()])
        .args([
            "-a",
            "-chardev",
            "-a",
            &format!("socket,id=vgpu0,path={tag}.sock"),
        ])
        .args([
            "-d",
            &format!(
                "{},chardev=vgpu0{}",
                spec.device,
                spec.props.map(|p| format!(",{p}")).unwrap_or_default()
            ),
        ])
        .args([
            "-a",
            "-qmp",
            "-a",
            &format!("unix:{tag}.qmp,server=on,wait=off"),
        ])
        .args(["-a", "-pidfile", "-a", &format!("{tag}.qemu.pid")]);
    if let Some(m) = spec.memory {
        cmd.args(["-m", m]);
    }
    cmd.args(["-c", spec.code])
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log2);
    let pid = procs::spawn(&mut cmd, "boot.sh")?;
    let qemu_pidfile = root(&format!("{tag}.qemu.pid"));
    let stop = Arc::new(AtomicBool::new(false));
    let watcher = {
        let (stop, out, pidfile) = (stop.clone(), spec.out.to_path_buf(), qemu_pidfile.clone());
        std::thread::Builder::new()
            .name("probe-watch".into())
            .spawn(move || watch_probe(&out, pid, &pidfile, probe_stall, &stop))
            .map_err(|e| Error::during("starting a probe watcher", e))?
    };
    Ok(Guest {
        pid,
        out: spec.out.to_path_buf(),
        qemu_pidfile,
        qmp: root(&format!("{tag}.qmp")),
        timeout_s: spec.timeout_s,
        watcher: Some((stop, watcher)),
    })
}

/// While boot.sh `pid` runs: if the guest hangs before the device probe (its console has the
/// kernel's banner, no probe line, and has not grown for `stall`), writes why to
/// OUT/hung-before-probe and stops its QEMU; the guest then fails, and the case runs again.
fn watch_probe(out: &Path, pid: u32, qemu_pidfile: &Path, stall: Duration, stop: &AtomicBool) {
    let console = out.join("console.log");
    let mut size = None;
    let mut last = Instant::now();
    while procs::pid_alive(pid) {
        // A second between looks, in steps short enough that a case's end need not wait.
        for _ in 0..10 {
            if stop.load(Ordering::Relaxed) {
                return;
            }
            sleep(Duration::from_millis(100));
        }
        let text = read_lossy(&console);
        if PROBE_MARKS.iter().any(|m| text.contains(m)) {
            return;
        }
        let cur = fs::metadata(&console).map(|m| m.len()).unwrap_or(0);
        if size != Some(cur) {
            size = Some(cur);
            last = Instant::now();
        } else if last.elapsed() >= stall && text.contains("Linux version") {
            let last_line: String = text
                .lines()
                .last()
                .unwrap_or_default()
                .chars()
                .filter(|c| (' '..='~').contains(c))
                .collect();
            let why = format!(
                "no console output for {} s before the device probe; last line: {last_line}\n",
                stall.as_secs()
            );
            let _ = fs::write(out.join(HUNG_FILE), why);
            procs::stop_qemu(qemu_pidfile);
            return;
        }
    }
}

impl Guest {
    /// The guest's name in its case: its dir's name (vm0, vm1, ...).
    pub fn name(&self) -> String {
        self.out
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    }

    pub fn output(&self) -> String {
        read_lossy(&self.out.join("output.log"))
    }

    pub fn output_lines(&self) -> Vec<String> {
        self.output()
            .lines()
            .map(|l| l.trim_end_matches('\r').to_string())
            .collect()
    }

    pub fn running(&self) -> bool {
        procs::running(self.pid)
    }

    /// Waits until the guest has printed lines for which `found` gives a result (it is given
    /// all lines so far), checking every 0.2 s while the guest runs, for at most its timeout.
    /// Read from output.log, which the guest writes through the uncached results share as it
    /// goes: unlike console.log, no kernel message can land in the middle of a line.
    pub fn wait_for<T>(&self, mut found: impl FnMut(&[String]) -> Option<T>) -> Option<T> {
        let deadline = Instant::now() + Duration::from_secs(self.timeout_s);
        loop {
            if let Some(t) = found(&self.output_lines()) {
                return Some(t);
            }
            if !self.running() || Instant::now() >= deadline {
                return None;
            }
            sleep(Duration::from_millis(200));
        }
    }

    /// Waits for a line for which `matcher` gives a result.
    pub fn wait_line<T>(&self, matcher: impl Fn(&str) -> Option<T>) -> Option<T> {
        self.wait_for(|lines| lines.iter().find_map(|l| matcher(l)))
    }

    /// Stops its QEMU (through the pidfile).
    pub fn stop_qemu(&self) {
        procs::stop_qemu(&self.qemu_pidfile);
    }

    /// Waits for boot.sh to end (bounded: the guest's timeout, plus boot.sh's own margins);
    /// its exit status as a shell gives it. A guest still running after that is stopped.
    pub fn wait_end(&mut self) -> i32 {
        let deadline = Instant::now() + Duration::from_secs(self.timeout_s + 60);
        let code = match procs::wait(self.pid, Some(deadline)) {
            Some(status) => procs::code(status),
            None => {
                self.stop_qemu();
                procs::stop_group(self.pid);
                124
            }
        };
        self.stop_watching();
        code
    }

    pub fn stop_watching(&mut self) {
        if let Some((stop, handle)) = self.watcher.take() {
            stop.store(true, Ordering::Relaxed);
            let _ = handle.join();
        }
    }

    /// Waits for the guest; it must exit 0 and print "PASS: PROGRAM" for each of `programs`.
    /// Its PASS and FAIL lines are shown.
    pub fn finish(&mut self, programs: &[&str]) -> Result<(), String> {
        let rc = self.wait_end();
        let lines = self.output_lines();
        let name = self.name();
        for l in lines
            .iter()
            .filter(|l| l.starts_with("PASS: ") || l.starts_with("FAIL: "))
        {
            eprintln!("    {name}: {l}");
        }
        if rc != 0 {
            return Err(match lines.iter().find_map(|l| l.strip_prefix("FAIL: ")) {
                Some(why) => format!("guest {why}"),
                None => format!(
                    "guest exit code {rc} (124: timeout, 125: no status; see {})",
                    self.out.join("console.log").display()
                ),
            });
        }
        for prog in programs {
            let want = format!("PASS: {prog}");
            if !lines.contains(&want) {
                return Err(format!(
                    "guest printed no '{want}' (see {})",
                    self.out.join("output.log").display()
                ));
            }
        }
        Ok(())
    }
}

impl Drop for Guest {
    fn drop(&mut self) {
        self.stop_watching();
    }
}
