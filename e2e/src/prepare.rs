//! What a run needs before its first case, built when missing: the testbed root (root.sh), the
//! guest image (guest-image.sh), the guest tests (in the root) and vgpud.

use std::env;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::testbed::{Settings, Testbed};
use crate::{log, procs, Error};

/// Runs `cmd` to its end in a process group of its own, its output on our stderr.
pub fn run_to_end(cmd: &mut Command, what: &str) -> Result<(), Error> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::from(std::io::stderr()))
        .stderr(Stdio::from(std::io::stderr()));
    let pid = procs::spawn(cmd, what)?;
    match procs::wait(pid, None) {
        Some(status) if status.success() => Ok(()),
        Some(status) => Err(Error::msg(format!(
            "{what} failed (exit status {})",
            procs::code(status)
        ))),
        None => Err(Error::msg(format!("{what} was stopped"))),
    }
}

fn modified(path: &Path) -> Option<std::time::SystemTime> {
    fs::metadata(path).and_then(|m| m.modified()).ok()
}

/// Rebuilds the guest image when it is missing or older than what it is made from. Done once
/// here: guests booted at the same time would each rebuild a stale image.
fn ensure_guest_image(tb: &Testbed) -> Result<(), Error> {
    let img = tb.guest.join("initramfs.cpio.gz");
    let built = modified(&img);
    let stale = built.is_none()
        || !tb.guest.join("vmlinuz").is_file()
        || [
            tb.script("guest-init.sh"),
            tb.script("guest-image.sh"),
            tb.root_stamp.clone(),
        ]
        .iter()
        .any(|src| modified(src) > built);
    if stale {
        run_to_end(
            &mut Command::new(tb.script("guest-image.sh")),
            "guest-image.sh",
        )?;
    }
    Ok(())
}

/// Builds what is missing and stages vgpud as `<run_dir>/vgpud` (visible in the root wherever
/// the original lives, and safe from rebuilds during the run); returns the staged path.
pub fn build_all(
    tb: &Testbed,
    settings: &Settings,
    guest_tests: &Path,
    run_dir: &Path,
) -> Result<PathBuf, Error> {
    run_to_end(&mut Command::new(tb.script("root.sh")), "root.sh")?;
    ensure_guest_image(tb)?;
    log(&format!(
        "building guest tests into {} (inside the root)",
        guest_tests.display()
    ));
    run_to_end(
        Command::new(tb.script("run.sh"))
            .arg(tb.project.join("guest-tests/build.sh"))
            .arg(guest_tests),
        "building the guest tests",
    )?;
    let bin = match &settings.vgpud_bin {
        Some(b) => b.clone(),
        None => build_vgpud(tb, settings)?,
    };
    let executable = fs::metadata(&bin).is_ok_and(|m| {
        use std::os::unix::fs::PermissionsExt;
        m.is_file() && m.permissions().mode() & 0o111 != 0
    });
    if !executable {
        return Err(Error::msg(format!(
            "vgpud binary {} is missing or not executable",
            bin.display()
        )));
    }
    let staged = run_dir.join("vgpud");
    fs::copy(&bin, &staged).map_err(|e| Error::io(&bin, e))?;
    log(&format!("vgpud: {}", bin.display()));
    Ok(staged)
}

/// Builds vgpud: on the host for 2D only, with --features virgl inside the root when a GL or
/// Venus case is to run (that feature needs sid's virglrenderer).
fn build_vgpud(tb: &Testbed, settings: &Settings) -> Result<PathBuf, Error> {
    let manifest = tb.project.join("Cargo.toml");
    let target = env::var_os("CARGO_TARGET_DIR")
        .filter(|t| !t.is_empty())
        .map(|t| absolute(Path::new(&t)));
    if !settings.virgl && !settings.venus {
        log("cargo build --release");
        run_to_end(
            Command::new("cargo")
                .args(["build", "--release", "--manifest-path"])
                .arg(&manifest),
            "cargo build",
        )?;
        let dir = target.unwrap_or_else(|| tb.project.join("target"));
        return Ok(dir.join("release/vgpud"));
    }
    log("cargo build --release --features virgl (inside the root)");
    let mut cmd = Command::new(tb.script("run.sh"));
    cmd.args(["cargo", "build", "--release", "--features", "virgl"])
        .arg("--manifest-path")
        .arg(&manifest);
    if let Some(t) = &target {
        cmd.env("CARGO_TARGET_DIR", t);
    }
    run_to_end(&mut cmd, "cargo build --features virgl (in the root)")?;
    // run.sh's default target dir is target/testbed; one outside the project was the root's own.
    let dir = target.unwrap_or_else(|| tb.project.join("target/testbed"));
    let dir = if dir.starts_with(&tb.project) {
        dir
    } else {
        tb.in_root(&dir.to_string_lossy())
    };
    Ok(dir.join("release/vgpud"))
}

/// `path` made absolute against the current directory (not resolved).
fn absolute(path: &Path) -> PathBuf {
    if path.is_absolute() {
        path.to_path_buf()
    } else {
        env::current_dir()
            .map(|d| d.join(path))
            .unwrap_or_else(|_| path.to_path_buf())
    }
}
