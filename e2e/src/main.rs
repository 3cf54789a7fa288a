//! vgpud's real-guest end-to-end suite. Each case starts vgpud in the testbed root, boots Debian
//! guests under QEMU (TCG) with vhost-user-gpu-pci attached to it (Venus cases: the generic
//! vhost-user-test-device-pci, which has the host-visible window and no display), and runs
//! test programs from guest-tests/ in them. See `vgpud-e2e --help` and guest-tests/README.md.

mod cases;
mod daemon;
mod error;
mod guest;
mod guest_code;
mod picture;
mod prepare;
mod procs;
mod qmp;
mod runner;
mod screen;
mod testbed;
mod vnc;

use std::fs;
use std::process::ExitCode;
use std::time::Instant;

use clap::{Parser, Subcommand};

pub use error::Error;

use crate::cases::{Renderer, Table};
use crate::runner::Suite;
use crate::testbed::{Settings, Testbed};

/// Says something on stderr, as "[e2e] ...".
pub fn log(text: &str) {
    eprintln!("[e2e] {text}");
}

#[derive(Parser, Debug)]
#[command(
    name = "vgpud-e2e",
    about = "vgpud's real-guest end-to-end tests: vgpud in the testbed root, Debian guests under QEMU (TCG)",
    args_conflicts_with_subcommands = true,
    after_help = "\
Environment:
  VGPUD_BIN          vgpud binary to test (default: cargo build --release on the host; with
                     VGPUD_E2E_VIRGL=1 or VGPUD_E2E_VENUS=1, --features virgl inside the root,
                     as virglrenderer 1.3 is sid's)
  VGPUD_E2E_VIRGL=1  also run the cases that need vgpud --renderer virgl
  VGPUD_E2E_VENUS=1  also run the cases that need vgpud --renderer venus (Vulkan through Venus;
                     QEMU >= 11.1 for the generic device, as the testbed root has)
  VGPUD_E2E_TIMEOUT  per-guest timeout in seconds (default 240)
  VGPUD_E2E_PROBE_STALL  seconds without console output before the GPU probe after which a
                     guest counts as hung (default 60)
  VGPUD_TESTBED, VGPUD_PROJECT  as for scripts/testbed (lib.sh)

Builds what is missing first: the testbed root (root.sh), the guest image (guest-image.sh), the
guest tests (in the root, into target/guest-tests) and vgpud. Each case's logs go to
$VGPUD_TESTBED/runs/e2e-<time>-<pid>/<case>/: vgpud.log (vk-churn: also churn.txt), and per
guest vm<N>/ with console.log, output.log, boot.log and screen.txt (plus screen.ppm when a
screendump did not match; kmscube cases: screen.png; VNC cases: the viewers' pictures).

A guest that hangs before its GPU is probed (no console output for VGPUD_E2E_PROBE_STALL s after
the kernel started, and no line about the device yet) is no vgpud result: its QEMU is stopped
and the case runs once more (the first run's logs stay in <case>.hung/). A hang after the probe
is a failure like any other.

Prints one PASS/FAIL/SKIP line per case, a line \"retried: K boot(s) hung before the device
probe\" when there were such retries, then the summary line \"N passed, N failed[, N skipped]\"
alone, and exits non-zero if any case failed. Needs root (chroot, mount), like the testbed
scripts. Every QEMU, vgpud and viewer a case started is stopped when it ends, and when the run
is interrupted."
)]
struct Cli {
    /// Print the cases and exit.
    #[arg(long)]
    list: bool,
    /// Run only this case (repeatable).
    #[arg(long, value_name = "NAME")]
    only: Vec<String>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Check a screen: a QMP screendump, or a picture file, against a guest test's picture.
    Screen(screen::ScreenArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(Command::Screen(args)) = cli.command {
        return ExitCode::from(screen::main(args) as u8);
    }
    match run(cli) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            log(&format!("error: {e}"));
            procs::shutdown();
            ExitCode::FAILURE
        }
    }
}

fn list(cases: &[cases::Case]) {
    for c in cases {
        let need = match c.renderer {
            Renderer::TwoD => "",
            Renderer::Virgl => " [needs VGPUD_E2E_VIRGL=1]",
            Renderer::Venus => " [needs VGPUD_E2E_VENUS=1]",
        };
        println!("{:<18} {}{need}", c.name, c.description);
    }
}

/// Ends everything the run started however `run` ends (an error, a panic).
struct Cleanup;

impl Drop for Cleanup {
    fn drop(&mut self) {
        procs::shutdown();
    }
}

/// The local time as YYYYmmdd-HHMMSS.
fn timestamp() -> String {
    // SAFETY: time and localtime_r write only to the locals given.
    unsafe {
        let t = libc::time(std::ptr::null_mut());
        let mut tm: libc::tm = std::mem::zeroed();
        if libc::localtime_r(&t, &mut tm).is_null() {
            return t.to_string();
        }
        format!(
            "{:04}{:02}{:02}-{:02}{:02}{:02}",
            tm.tm_year + 1900,
            tm.tm_mon + 1,
            tm.tm_mday,
            tm.tm_hour,
            tm.tm_min,
            tm.tm_sec
        )
    }
}

/// The suite; Ok(false) when a case failed.
fn run(cli: Cli) -> Result<bool, Error> {
    let tb = Testbed::from_env()?;
    let settings = Settings::from_env()?;
    let guest_tests = tb.project.join("target/guest-tests");
    let cases = Table::new(&guest_tests, settings.guest_timeout).cases();
    if cli.list {
        list(&cases);
        return Ok(true);
    }
    for name in &cli.only {
        if !cases.iter().any(|c| c.name == name) {
            return Err(Error::msg(format!("unknown case '{name}' (see --list)")));
        }
    }
    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return Err(Error::msg("must run as root (chroot, mount)"));
    }
    procs::handle_signals()?;
    let _cleanup = Cleanup;

    let t_start = Instant::now();
    let pid = std::process::id();
    let run_dir = tb.runs.join(format!("e2e-{}-{pid}", timestamp()));
    fs::create_dir_all(&run_dir).map_err(|e| Error::io(&run_dir, e))?;
    let sock_dir = format!("/tmp/vgpud-e2e-{pid}");
    let sock_dir_host = tb.in_root(&sock_dir);
    // QMP sockets are opened from the host through the root's path, and a UNIX socket path
    // has at most 107 bytes.
    let longest = sock_dir_host.join("kms-pattern-virgl-vm0.qemu.pid");
    if longest.as_os_str().len() > 107 {
        return Err(Error::msg(format!(
            "testbed root path too long for UNIX sockets: {}",
            tb.root.display()
        )));
    }
    fs::create_dir_all(&sock_dir_host).map_err(|e| Error::io(&sock_dir_host, e))?;
    procs::remove_at_exit(sock_dir_host.clone());
    procs::set_qemu_pid_dir(sock_dir_host);

    let vgpud = prepare::build_all(&tb, &settings, &guest_tests, &run_dir)?;
    log(&format!(
        "build steps took {:.1} s; results in {}",
        runner::since(t_start),
        run_dir.display()
    ));

    let mut suite = Suite {
        tb,
        settings,
        run_dir: run_dir.clone(),
        sock_dir,
        vgpud: vgpud.clone(),
        vnc_display: 40 + pid % 50,
        retried: 0,
    };
    let (mut passed, mut failed, mut skipped) = (0, 0, 0);
    for case in &cases {
        if procs::closing() {
            break;
        }
        if !cli.only.is_empty() && !cli.only.iter().any(|n| n == case.name) {
            continue;
        }
        let missing = match case.renderer {
            Renderer::Virgl if !suite.settings.virgl => Some("VGPUD_E2E_VIRGL=1"),
            Renderer::Venus if !suite.settings.venus => Some("VGPUD_E2E_VENUS=1"),
            _ => None,
        };
        if let Some(var) = missing {
            println!("SKIP: {} (needs {var})", case.name);
            skipped += 1;
            continue;
        }
        log(&format!("{}: {}", case.name, case.description));
        let t0 = Instant::now();
        let (result, note) = suite.run_case(case);
        runner::report(case.name, &result, runner::since(t0), &note, &run_dir);
        if result.is_ok() {
            passed += 1;
        } else {
            failed += 1;
        }
    }

    if suite.retried > 0 {
        println!(
            "retried: {} boot(s) hung before the device probe and were booted again",
            suite.retried
        );
    }
    let mut summary = format!("{passed} passed, {failed} failed");
    if skipped > 0 {
        summary.push_str(&format!(", {skipped} skipped"));
    }
    println!("{summary}");
    // The staged binary is only worth keeping to reproduce a failure.
    if failed == 0 {
        let _ = fs::remove_file(&vgpud);
    }
    log(&format!(
        "total {:.1} s; results in {}",
        runner::since(t_start),
        run_dir.display()
    ));
    Ok(failed == 0)
}
