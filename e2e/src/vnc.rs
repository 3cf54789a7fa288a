//! vgpud's VNC output seen through two real viewers in the root: gvnccapture (gtk-vnc) and
//! vncdotool, each taking a picture that must pass a screen check.

use std::fs;
use std::path::Path;
use std::process::{Command, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

use crate::daemon::tail;
use crate::picture::Size;
use crate::screen::{self, Expected, PictureWait};
use crate::{log, procs};

/// What a viewer's picture must show.
#[derive(Clone, Copy, Debug)]
pub enum Want {
    /// Exactly this picture at this size.
    Exactly(Size, Expected),
    /// A rendered picture, not one flat colour.
    Picture,
    /// Every pixel black.
    Black,
}

const VIEWERS: [(&str, &str); 2] = [("gvnc", "gvnccapture"), ("vncdo", "vncdotool")];

/// Runs `program args` in the root with its output in `log`, for at most 70 s (timeout(1)
/// gives it 60).
fn run_viewer(run_sh: &Path, args: &[String], log_path: &Path) -> Result<bool, String> {
    let log = fs::File::create(log_path).map_err(|e| format!("{}: {e}", log_path.display()))?;
    let log2 = log
        .try_clone()
        .map_err(|e| format!("{}: {e}", log_path.display()))?;
    let mut cmd = Command::new(run_sh);
    cmd.args(["timeout", "60"])
        .args(args)
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log2);
    let pid = procs::spawn(&mut cmd, &args[0]).map_err(|e| e.to_string())?;
    match procs::wait(pid, Some(Instant::now() + Duration::from_secs(70))) {
        Some(status) => Ok(status.success()),
        None => {
            procs::stop_group(pid);
            Ok(false)
        }
    }
}

/// Both viewers take a picture of display `display`: OUT/NAME-gvnc.png, OUT/NAME-vncdo.png.
fn capture(run_sh: &Path, out: &Path, name: &str, display: u32) -> Result<(), String> {
    let gvnc = out.join(format!("{name}-gvnc.png"));
    let gvnc_log = out.join(format!("{name}-gvnc.log"));
    let args = [
        "gvnccapture".to_string(),
        format!("127.0.0.1:{display}"),
        gvnc.to_string_lossy().into_owned(),
    ];
    if !run_viewer(run_sh, &args, &gvnc_log)? {
        return Err(format!("gvnccapture failed: {}", tail(&gvnc_log, 1)));
    }
    let vncdo = out.join(format!("{name}-vncdo.png"));
    let vncdo_log = out.join(format!("{name}-vncdo.log"));
    let args = [
        "vncdo".to_string(),
        "-s".to_string(),
        format!("127.0.0.1::{}", 5900 + display),
        "capture".to_string(),
        vncdo.to_string_lossy().into_owned(),
    ];
    if !run_viewer(run_sh, &args, &vncdo_log)? {
        return Err(format!("vncdotool failed: {}", tail(&vncdo_log, 1)));
    }
    Ok(())
}

/// Takes both viewers' pictures until both pass `want` (5 tries, 1 s apart: the guest may
/// still be flushing). Each verdict is in OUT/NAME-VIEWER.txt.
pub fn check(
    run_sh: &Path,
    out: &Path,
    vm: &str,
    name: &str,
    display: u32,
    want: Want,
) -> Result<(), String> {
    let mut lines = Vec::new();
    for _ in 0..5 {
        capture(run_sh, out, name, display)?;
        lines.clear();
        let mut ok = true;
        for (short, _) in VIEWERS {
            let file = out.join(format!("{name}-{short}.png"));
            let verdict = match want {
                Want::Exactly(size, expected) => screen::matches(None, &file, size, expected, 1),
                Want::Picture => screen::shows_picture(None, &file, None, PictureWait::default()),
                Want::Black => screen::black(&file),
            };
            let _ = fs::write(
                out.join(format!("{name}-{short}.txt")),
                format!("{}\n", verdict.line),
            );
            ok &= verdict.ok;
            lines.push(verdict.line);
        }
        if ok {
            for ((_, viewer), line) in VIEWERS.iter().zip(&lines) {
                log(&format!("  {vm} VNC: {viewer}: {line}"));
            }
            return Ok(());
        }
        sleep(Duration::from_secs(1));
    }
    Err(format!(
        "{vm} VNC {name}: gvnccapture: {}; vncdotool: {}",
        lines[0], lines[1]
    ))
}
