//! Running cases: a case's vgpud, guests, steps and checks; the retry of a case whose guest hung
//! before the device probe; the PASS/FAIL/SKIP lines and the summary.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::thread::sleep;
use std::time::{Duration, Instant};

use crate::cases::{self, Case, Check, Device, Line, Renderer, Step, VncWant};
use crate::daemon::{self, Vgpud};
use crate::guest::{self, BootSpec, Guest, HUNG_FILE};
use crate::picture::Size;
use crate::screen::{self, Expected, PictureWait};
use crate::testbed::{Settings, Testbed};
use crate::vnc::{self, Want};
use crate::{log, procs, Error};

/// What every case of a run shares.
pub struct Suite {
    pub tb: Testbed,
    pub settings: Settings,
    pub run_dir: PathBuf,
    /// The sockets' directory as seen in the root (QEMU and vgpud run there).
    pub sock_dir: String,
    /// The staged vgpud.
    pub vgpud: PathBuf,
    /// vgpud's VNC outputs listen on loopback port 5900 + this in the root.
    pub vnc_display: u32,
    /// Guests that hung before the device probe and were booted again.
    pub retried: usize,
}

/// How a step or check went wrong: the reason, and whether the case cannot go on.
struct Failure {
    reason: String,
    ends_case: bool,
}

fn fails(reason: impl Into<String>) -> Failure {
    Failure {
        reason: reason.into(),
        ends_case: false,
    }
}

fn ends(reason: impl Into<String>) -> Failure {
    Failure {
        reason: reason.into(),
        ends_case: true,
    }
}

impl From<Error> for Failure {
    fn from(e: Error) -> Failure {
        ends(e.to_string())
    }
}

/// One attempt at a case.
struct CaseRun<'a> {
    suite: &'a Suite,
    case: &'a Case,
    dir: PathBuf,
    vgpud: Option<Vgpud>,
    guests: Vec<Option<Guest>>,
    /// Fields of lines waited for, by the placeholders in cases.rs.
    captures: HashMap<&'static str, String>,
    /// READY sizes by guest.
    sizes: HashMap<usize, Size>,
    /// Guests a step disconnected on purpose: their QEMU's vhost errors do not count.
    vhost_errors_expected: HashSet<usize>,
    killed_worker: Option<u32>,
    first_failure: Option<String>,
    overriding_failure: Option<String>,
}

impl Suite {
    fn vnc_address(&self) -> String {
        format!("127.0.0.1:{}", 5900 + self.vnc_display)
    }

    /// Fills in the placeholders that are the same for the whole case.
    fn fill(&self, text: &str) -> String {
        text.replace(cases::SOCK_DIR, &self.sock_dir)
            .replace(cases::VNC, &self.vnc_address())
    }

    /// The path in the root of guest `vm`'s sockets and pidfile, without the suffix.
    fn tag(&self, case: &str, vm: usize) -> String {
        format!("{}/{case}-vm{vm}", self.sock_dir)
    }

    /// Runs `case` in RUN_DIR/NAME, then stops what it started. When it failed and a guest
    /// hung before the device probe, it runs once more (the first run's logs move to
    /// NAME.hung); a second such hang is a failure. Returns the failure's reason, and a note
    /// on a retry for the PASS/FAIL line.
    pub fn run_case(&mut self, case: &Case) -> (Result<(), String>, String) {
        let dir = self.run_dir.join(case.name);
        let mut note = String::new();
        for attempt in 1..=2 {
            let outcome = self.attempt(case, &dir);
            let hung = hung_guests(&dir);
            let (outcome, vhost_error) = outcome;
            if outcome.is_ok() {
                if let Some(e) = vhost_error {
                    return (Err(format!("QEMU logged a vhost error: {e}")), note);
                }
                return (Ok(()), note);
            }
            if hung.is_empty() {
                return (outcome, note);
            }
            let why = first_line(&dir.join(&hung[0]).join(HUNG_FILE));
            let names = hung.join(" ");
            if attempt == 2 {
                return (
                    Err(format!(
                        "{names} hung before the device probe again, after a retry: {why}"
                    )),
                    note,
                );
            }
            self.retried += hung.len();
            note = format!(
                "; {names} hung before the device probe and was booted again, see {}.hung/",
                case.name
            );
            log(&format!("  {names} hung before the device probe ({why})"));
            log(&format!(
                "  not a vgpud result: running {} once more",
                case.name
            ));
            let hung_dir = self.run_dir.join(format!("{}.hung", case.name));
            let _ = fs::remove_dir_all(&hung_dir);
            if let Err(e) = fs::rename(&dir, &hung_dir) {
                return (Err(format!("keeping the hung run's logs: {e}")), note);
            }
            // vgpud's sockets and QEMU's: a stale one would look ready at once.
            self.remove_sockets(case.name);
        }
        (Err("not run".into()), note)
    }

    fn remove_sockets(&self, case: &str) {
        let dir = self.tb.in_root(&self.sock_dir);
        let prefix = format!("{case}-vm");
        if let Ok(entries) = fs::read_dir(&dir) {
            for e in entries.flatten() {
                if e.file_name().to_string_lossy().starts_with(&prefix) {
                    let _ = fs::remove_file(e.path());
                }
            }
        }
    }

    /// One attempt: the case's outcome, and the first vhost error in its QEMU logs.
    fn attempt(&self, case: &Case, dir: &Path) -> (Result<(), String>, Option<String>) {
        let mut run = CaseRun {
            suite: self,
            case,
            dir: dir.to_path_buf(),
            vgpud: None,
            guests: case.guests.iter().map(|_| None).collect(),
            captures: HashMap::new(),
            sizes: HashMap::new(),
            vhost_errors_expected: HashSet::new(),
            killed_worker: None,
            first_failure: None,
            overriding_failure: None,
        };
        let outcome = match fs::create_dir_all(dir) {
            Ok(()) => run.run(),
            Err(e) => Err(format!("{}: {e}", dir.display())),
        };
        daemon::show_warnings(&dir.join("vgpud.log"));
        // Everything the case started stops here, whatever happened.
        for g in run.guests.iter_mut().flatten() {
            g.stop_watching();
        }
        procs::stop_all();
        let vhost_error = qemu_vhost_error(dir, case.guests.len(), &run.vhost_errors_expected);
        (outcome, vhost_error)
    }
}

impl CaseRun<'_> {
    fn run(&mut self) -> Result<(), String> {
        self.start_vgpud()?;
        for step in &self.case.steps {
            if let Err(f) = self.step(step) {
                if f.ends_case {
                    self.first_failure.get_or_insert(f.reason);
                    break;
                }
                let first = matches!(step, Step::Finish { first: true, .. });
                if first {
                    self.overriding_failure.get_or_insert(f.reason);
                } else {
                    self.first_failure.get_or_insert(f.reason);
                }
            }
        }
        if let Some(reason) = self.overriding_failure.take().or(self.first_failure.take()) {
            return Err(reason);
        }
        for check in &self.case.checks {
            self.check(check)?;
        }
        match &self.vgpud {
            Some(v) => v.check(),
            None => Err("vgpud was not started".into()),
        }
    }

    fn socket(&self, vm: usize) -> String {
        format!("{}.sock", self.suite.tag(self.case.name, vm))
    }

    /// One vgpud (--renderer of the case) serving a socket per guest, with each guest's own
    /// settings; its log in <case>/vgpud.log.
    fn start_vgpud(&mut self) -> Result<(), String> {
        let suite = self.suite;
        let mut args = vec!["--renderer".to_string(), self.case.renderer.name().into()];
        args.extend(self.case.daemon.args.iter().map(|a| suite.fill(a)));
        if self.case.renderer == Renderer::Venus {
            args.extend(["--hostmem".into(), cases::VENUS_HOSTMEM.into()]);
        }
        if self.case.daemon.share_policy {
            let policy = suite
                .tb
                .in_root(&format!("{}/share-policy.json", suite.sock_dir));
            fs::write(
                &policy,
                "{\"allow\": [{\"exporter\": \"a\", \"importers\": [\"b\"]}]}\n",
            )
            .map_err(|e| format!("{}: {e}", policy.display()))?;
        }
        let mut sockets = Vec::new();
        for (vm, g) in self.case.guests.iter().enumerate() {
            let sock = self.socket(vm);
            sockets.push(suite.tb.in_root(&sock));
            let own = suite.fill(&g.settings);
            args.push("--socket-path".into());
            args.push(if own.is_empty() {
                sock
            } else {
                format!("{sock},{own}")
            });
        }
        let v = daemon::start(
            &suite.tb.script("run.sh"),
            &suite.vgpud,
            &args,
            &self.dir.join("vgpud.log"),
            &sockets,
        )?;
        self.vgpud = Some(v);
        Ok(())
    }

    fn guest(&mut self, vm: usize) -> Result<&mut Guest, Failure> {
        self.guests
            .get_mut(vm)
            .and_then(Option::as_mut)
            .ok_or_else(|| ends(format!("guest {vm} was not booted")))
    }

    fn vm_dir(&self, vm: usize) -> PathBuf {
        self.dir.join(format!("vm{vm}"))
    }

    fn boot(&mut self, vm: usize) -> Result<(), Failure> {
        let suite = self.suite;
        let spec = &self.case.guests[vm];
        let device = match spec.device {
            Device::Gpu => cases::GPU_DEVICE,
            Device::Generic => cases::GENERIC_DEVICE,
            Device::ForRenderer if self.case.renderer == Renderer::Venus => cases::GENERIC_DEVICE,
            Device::ForRenderer => cases::GPU_DEVICE,
        };
        let mut code = suite.fill(&spec.code);
        for (key, value) in &self.captures {
            code = code.replace(key, value);
        }
        let out = self.vm_dir(vm);
        let tag = suite.tag(self.case.name, vm);
        let boot_sh = suite.tb.script("boot.sh");
        let g = guest::boot(
            &BootSpec {
                boot_sh: &boot_sh,
                out: &out,
                tag_in_root: &tag,
                device,
                props: spec.props,
                memory: spec.memory,
                code: &code,
                timeout_s: suite.settings.guest_timeout,
            },
            |p| suite.tb.in_root(p),
            suite.settings.probe_stall,
        )?;
        self.guests[vm] = Some(g);
        Ok(())
    }

    fn step(&mut self, step: &Step) -> Result<(), Failure> {
        match step {
            Step::Boot(vm) => self.boot(*vm),
            Step::Await { vm, line, fail } => self.await_line(*vm, *line, fail),
            Step::Screendump { vm, seed } => self.screendump(*vm, *seed),
            Step::Picture { vm } => self.picture(*vm),
            Step::Vnc { vm, name, want } => self.vnc(*vm, name, *want),
            Step::Release { vm, file } => {
                guest::touch(&self.vm_dir(*vm).join(file))?;
                Ok(())
            }
            Step::Finish { vm, programs, .. } => self.guest(*vm)?.finish(programs).map_err(fails),
            Step::KillRenderWorker { vm } => self.kill_render_worker(*vm),
            Step::Churn { vm } => self.churn(*vm),
        }
    }

    fn await_line(&mut self, vm: usize, line: Line, fail: &str) -> Result<(), Failure> {
        let g = self.guest(vm)?;
        let see = format!("(see {})", g.out.join("output.log").display());
        let found: Option<Vec<(&'static str, String)>> = match line {
            Line::Ready => g.wait_line(|l| {
                let size = l.strip_prefix("READY ")?;
                Size::parse(size).map(|_| vec![("size", size.to_string())])
            }),
            Line::Exact(text) => g.wait_line(|l| (l == text).then(Vec::new)),
            Line::Shown(size) => {
                let text = format!("SHOWN {size}");
                g.wait_line(|l| (l == text).then(Vec::new))
            }
            Line::ShareUuidFence => g.wait_line(|l| {
                let rest = l.strip_prefix("SHARE-UUID ")?;
                let (uuid, fence) = rest.split_once(" FENCE ")?;
                let ok =
                    is_uuid(uuid) && !fence.is_empty() && fence.bytes().all(|b| b.is_ascii_digit());
                ok.then(|| {
                    vec![
                        (cases::UUID, uuid.to_string()),
                        (cases::FENCE, fence.to_string()),
                    ]
                })
            }),
            Line::ShareUuids(n) => g.wait_for(|lines| {
                let uuids: Vec<&str> = lines
                    .iter()
                    .filter_map(|l| l.strip_prefix("SHARE-UUID "))
                    .filter(|u| is_uuid(u))
                    .collect();
                (uuids.len() >= n).then(|| vec![(cases::UUIDS, uuids.join(" "))])
            }),
        };
        let Some(fields) = found else {
            return Err(ends(format!("{fail} {see}")));
        };
        for (key, value) in fields {
            if key == "size" {
                if let Some(s) = Size::parse(&value) {
                    self.sizes.insert(vm, s);
                }
            } else {
                self.captures.insert(key, value);
            }
        }
        if let (Line::ShareUuidFence, Some(u), Some(f)) = (
            line,
            self.captures.get(cases::UUID),
            self.captures.get(cases::FENCE),
        ) {
            log(&format!("  guest {vm} exported {u} and fence point {f}"));
        }
        Ok(())
    }

    /// Once kms-pattern is READY, a screendump must match its pattern; then the guest goes on.
    fn screendump(&mut self, vm: usize, seed: u32) -> Result<(), Failure> {
        let g = self.guest(vm)?;
        let name = g.name();
        let out = g.out.clone();
        let Some(size) = g.wait_line(|l| l.strip_prefix("READY ").and_then(Size::parse)) else {
            return Err(fails(format!(
                "{name}: kms-pattern never printed READY (see {}, console.log)",
                out.join("output.log").display()
            )));
        };
        let shot = out.join("screen.ppm");
        let verdict = screen::matches(Some(&g.qmp), &shot, size, Expected::Pattern { seed }, 6);
        let _ = fs::write(out.join("screen.txt"), format!("{}\n", verdict.line));
        guest::touch(&out.join(cases::DONE_NAME))?;
        log(&format!("  {name}: {}", verdict.line));
        if !verdict.ok {
            return Err(fails(format!("{name}: {}", verdict.line)));
        }
        // An exact match says all there is to say about it; a mismatch is kept.
        let _ = fs::remove_file(&shot);
        Ok(())
    }

    /// Once kmscube holds a frame, screendumps until one shows a picture (kept as
    /// screen.png); then the guest goes on.
    fn picture(&mut self, vm: usize) -> Result<(), Failure> {
        let g = self.guest(vm)?;
        let name = g.name();
        let out = g.out.clone();
        if g.wait_line(|l| (l == "KMSCUBE-HOLD").then_some(()))
            .is_none()
        {
            return Err(fails(format!(
                "{name}: kmscube never held a frame for the screendump (see {})",
                out.join("output.log").display()
            )));
        }
        let verdict = screen::shows_picture(
            Some(&g.qmp),
            &out.join("screen.png"),
            None,
            PictureWait::default(),
        );
        let _ = fs::write(out.join("screen.txt"), format!("{}\n", verdict.line));
        guest::touch(&out.join(cases::DONE_NAME))?;
        log(&format!("  {name}: {}", verdict.line));
        if verdict.ok {
            Ok(())
        } else {
            Err(fails(format!("{name}: {}", verdict.line)))
        }
    }

    fn vnc(&mut self, vm: usize, name: &str, want: VncWant) -> Result<(), Failure> {
        let want = match want {
            VncWant::Pattern { seed } => {
                let Some(size) = self.sizes.get(&vm).copied() else {
                    return Err(fails(format!("vm{vm}: no READY size for the VNC check")));
                };
                Want::Exactly(size, Expected::Pattern { seed })
            }
            VncWant::ShareFrame { seed, size } => {
                Want::Exactly(size, Expected::ShareFrame { seed })
            }
            VncWant::Picture => Want::Picture,
            VncWant::Black => Want::Black,
        };
        let out = self.vm_dir(vm);
        vnc::check(
            &self.suite.tb.script("run.sh"),
            &out,
            &format!("vm{vm}"),
            name,
            self.suite.vnc_display,
            want,
        )
        .map_err(fails)
    }

    /// Once guest `vm` is under way (its first vk-compute passed) with a render worker, that
    /// worker is killed; vgpud must disconnect that guest alone (its QEMU is then stopped; its
    /// result does not count).
    fn kill_render_worker(&mut self, vm: usize) -> Result<(), Failure> {
        let sock_name = format!("{}-vm{vm}.sock", self.case.name);
        let timeout = self.suite.settings.guest_timeout;
        let g = self.guest(vm)?;
        let mut worker = None;
        for _ in 0..timeout {
            let passed = g
                .output_lines()
                .iter()
                .any(|l| l.starts_with("PASS: vk-compute"));
            if passed {
                worker = daemon::render_worker_of(&sock_name);
                if worker.is_some() {
                    break;
                }
            }
            if !g.running() {
                break;
            }
            sleep(Duration::from_secs(1));
        }
        let Some(worker) = worker else {
            return Err(ends(format!(
                "guest {vm} never got under way with a render worker"
            )));
        };
        // SAFETY: vgpud's render worker for this case's guest, found by its command line.
        unsafe {
            libc::kill(worker as libc::pid_t, libc::SIGKILL);
        }
        // Its VM is disconnected: QEMU reports the lost backend.
        self.vhost_errors_expected.insert(vm);
        log(&format!("  killed render worker {worker} of guest {vm}"));
        let ended = format!("event=worker-end pid={worker} ");
        for _ in 0..20 {
            if self.vgpud_log().contains(&ended) {
                break;
            }
            sleep(Duration::from_millis(500));
        }
        let g = self.guest(vm)?;
        g.stop_qemu();
        g.wait_end();
        self.killed_worker = Some(worker);
        Ok(())
    }

    fn vgpud_log(&self) -> String {
        self.vgpud.as_ref().map(Vgpud::log_text).unwrap_or_default()
    }

    /// vk-churn: the guest stops at each checkpoint until the host has measured vgpud
    /// (VmRSS, open fds; repeated until the fd count holds still for 0.5 s, at most 5 s, as
    /// the guest's frees may still be on their way) and created /results/churn-sampled-<k>.
    /// Checkpoint 0 follows the warm-up; at every later one vgpud may have grown by
    /// CHURN_RSS_SLACK_KB and CHURN_FD_SLACK at most.
    fn churn(&mut self, vm: usize) -> Result<(), Failure> {
        let Some(v) = &self.vgpud else {
            return Err(ends("vgpud was not started"));
        };
        let Some(pid) = v.process() else {
            return Err(ends(format!(
                "no vgpud process found in the session of {}",
                v.pid
            )));
        };
        let table = self.dir.join("churn.txt");
        let mut lines = vec!["checkpoint vgpud-VmRSS-kB vgpud-fds render-server-processes render-server-RSS-kB render-server-fds".to_string()];
        let out = self.vm_dir(vm);
        let mut base: Option<(u64, usize)> = None;
        let mut reason: Option<String> = None;
        for k in 0..=cases::CHURN_PHASES {
            let phase = format!("vk-churn: phase {k} done");
            let g = self.guest(vm)?;
            if g.wait_line(|l| l.starts_with(&phase).then_some(()))
                .is_none()
            {
                reason = Some(format!(
                    "the guest never reached checkpoint {k} (see {})",
                    out.join("output.log").display()
                ));
                break;
            }
            let mut sample = None;
            let mut prev_fds = None;
            for _ in 0..10 {
                let Some(s) = daemon::process_sample(pid) else {
                    sample = None;
                    break;
                };
                sample = Some(s);
                if prev_fds == Some(s.1) {
                    break;
                }
                prev_fds = Some(s.1);
                sleep(Duration::from_millis(500));
            }
            let Some((rss, fds)) = sample else {
                reason = Some(format!("vgpud (pid {pid}) is gone at checkpoint {k}"));
                break;
            };
            let (n, srss, sfds) = match &self.vgpud {
                Some(v) => v.render_server_sample(),
                None => (0, 0, 0),
            };
            lines.push(format!("{k} {rss} {fds} {n} {srss} {sfds}"));
            let _ = fs::write(&table, lines.join("\n") + "\n");
            log(&format!(
                "  checkpoint {k}: vgpud VmRSS {rss} kB, {fds} fds; render server: {n} processes, {srss} kB, {sfds} fds"
            ));
            guest::touch(&out.join(format!("churn-sampled-{k}")))?;
            match base {
                None => base = Some((rss, fds)),
                Some((brss, bfds)) if reason.is_none() => {
                    if rss > brss + cases::CHURN_RSS_SLACK_KB {
                        reason = Some(format!("vgpud's VmRSS grew from {brss} kB after the warm-up to {rss} kB at checkpoint {k} (slack {} kB)", cases::CHURN_RSS_SLACK_KB));
                    } else if fds > bfds + cases::CHURN_FD_SLACK {
                        reason = Some(format!("vgpud's open fds grew from {bfds} after the warm-up to {fds} at checkpoint {k} (slack {})", cases::CHURN_FD_SLACK));
                    }
                }
                Some(_) => {}
            }
        }
        let _ = fs::write(&table, lines.join("\n") + "\n");
        // Let the guest finish either way.
        for k in 0..=cases::CHURN_PHASES {
            guest::touch(&out.join(format!("churn-sampled-{k}")))?;
        }
        match reason {
            Some(r) => Err(fails(r)),
            None => Ok(()),
        }
    }

    fn check(&self, check: &Check) -> Result<(), String> {
        match check {
            Check::Show { vm, find, last } => {
                let lines = self
                    .guests
                    .get(*vm)
                    .and_then(Option::as_ref)
                    .map(Guest::output_lines)
                    .unwrap_or_default();
                let mut found = lines.iter().filter(|l| find.matches(l));
                let line = if *last {
                    found.next_back()
                } else {
                    found.next()
                };
                let shown = line
                    .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
                    .unwrap_or_default();
                log(&format!("  {shown}"));
                Ok(())
            }
            Check::OutputHas { vm, text, reason } => {
                let output = self
                    .guests
                    .get(*vm)
                    .and_then(Option::as_ref)
                    .map(Guest::output)
                    .unwrap_or_default();
                if output.contains(text) {
                    Ok(())
                } else {
                    Err(reason.to_string())
                }
            }
            Check::VgpudLogHas { text, reason } => {
                if self.vgpud_log().contains(text.as_str()) {
                    Ok(())
                } else {
                    Err(reason.clone())
                }
            }
            Check::WorkerPerGuest => {
                let workers = self
                    .vgpud_log()
                    .lines()
                    .filter(|l| l.contains("event=worker-start "))
                    .count();
                let guests = self.case.guests.len();
                if workers < guests {
                    return Err(format!(
                        "{workers} render worker(s) started for {guests} guests"
                    ));
                }
                log(&format!("  {workers} render workers started"));
                Ok(())
            }
            Check::KilledWorkerEnded => {
                let Some(w) = self.killed_worker else {
                    return Err("no render worker was killed".into());
                };
                let ended = format!("event=worker-end pid={w} ");
                let text = self.vgpud_log();
                match text.lines().find(|l| l.contains(&ended)) {
                    Some(line) => {
                        log(&format!("  {}", daemon::without_timestamp(line)));
                        Ok(())
                    }
                    None => Err(format!("vgpud did not log the end of worker {w}")),
                }
            }
        }
    }
}

fn is_uuid(s: &str) -> bool {
    s.len() == 32
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

fn first_line(path: &Path) -> String {
    daemon::read_lossy(path)
        .lines()
        .next()
        .unwrap_or_default()
        .to_string()
}

/// The guests of the case run in `dir` that hung before the device probe.
fn hung_guests(dir: &Path) -> Vec<String> {
    let mut hung: Vec<String> = fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .filter(|e| e.path().join(HUNG_FILE).is_file())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    hung.sort();
    hung
}

/// The first of QEMU's vhost error lines in the guests' boot logs, with the guest's name,
/// leaving out the guests disconnected on purpose. QEMU goes on after many of them (a memory
/// table it could not send leaves the device with a stale view of guest memory), so no case
/// passes with one.
fn qemu_vhost_error(dir: &Path, guests: usize, expected: &HashSet<usize>) -> Option<String> {
    (0..guests)
        .filter(|vm| !expected.contains(vm))
        .find_map(|vm| {
            let text = daemon::read_lossy(&dir.join(format!("vm{vm}/boot.log")));
            let line = text.lines().find(|l| is_vhost_error(l))?;
            Some(format!("vm{vm}: {line}"))
        })
}

/// "qemu-system-x86_64: ... vhost ..." (any case).
fn is_vhost_error(line: &str) -> bool {
    let lower = line.to_ascii_lowercase();
    let Some(rest) = lower.strip_prefix("qemu-system") else {
        return false;
    };
    match rest.find(' ') {
        Some(i) => rest[..i].ends_with(':') && rest[i..].contains("vhost"),
        None => false,
    }
}

/// Prints a case's result line on stdout.
pub fn report(name: &str, result: &Result<(), String>, secs: f64, note: &str, run_dir: &Path) {
    if procs::closing() {
        // Interrupted: the case did not end by itself, and the runner is on its way out.
        return;
    }
    let line = match result {
        Ok(()) => format!("PASS: {name} ({secs:.1} s{note})"),
        Err(reason) => format!(
            "FAIL: {name}: {reason} ({secs:.1} s{note}; logs in {})",
            run_dir.join(name).display()
        ),
    };
    let mut stdout = std::io::stdout().lock();
    let _ = writeln!(stdout, "{line}");
    let _ = stdout.flush();
}

/// Seconds since `t0`.
pub fn since(t0: Instant) -> f64 {
    t0.elapsed().as_secs_f64()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vhost_errors_are_qemus_lines_about_vhost() {
        assert!(is_vhost_error(
            "qemu-system-x86_64: Failed to set msg fds. vhost VQ 0 ring restore failed"
        ));
        assert!(is_vhost_error(
            "qemu-system-x86_64: vhost_set_mem_table failed: Invalid argument (22)"
        ));
        assert!(!is_vhost_error(
            "qemu-system-x86_64: terminating on signal 15"
        ));
        assert!(!is_vhost_error("[testbed] vhost lost"));
        assert!(!is_vhost_error("qemu-system x86: vhost"));
    }

    #[test]
    fn uuids_are_32_lowercase_hex_digits() {
        assert!(is_uuid("0123456789abcdef0123456789abcdef"));
        assert!(!is_uuid("0123456789ABCDEF0123456789abcdef"));
        assert!(!is_uuid("0123"));
    }
}
