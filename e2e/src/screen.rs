//! Screen checks: a QMP screendump (or a file a VNC viewer wrote) compared with the picture a
//! guest test draws, or measured for "shows a rendered picture". Used by the cases and, as
//! `vgpud-e2e screen`, by scripts/demo.sh and scripts/package-test.sh.

use std::fs;
use std::path::{Path, PathBuf};
use std::thread::sleep;
use std::time::{Duration, Instant};

use clap::Args;

use crate::picture::{self, Image, PictureNeed, Size};
use crate::qmp;

/// What a check found: passed or not, and one line saying so.
#[derive(Debug)]
pub struct Verdict {
    pub ok: bool,
    pub line: String,
}

/// The picture a screen must show exactly.
#[derive(Clone, Copy, Debug)]
pub enum Expected {
    /// kms-pattern's pattern for this seed.
    Pattern { seed: u32 },
    /// share-buffer's frame for this seed.
    ShareFrame { seed: u32 },
}

impl Expected {
    fn image(self, size: Size) -> Image {
        match self {
            Expected::Pattern { seed } => picture::pattern(size, seed),
            Expected::ShareFrame { seed } => picture::share_frame(size, seed),
        }
    }

    fn seed(self) -> u32 {
        match self {
            Expected::Pattern { seed } | Expected::ShareFrame { seed } => seed,
        }
    }
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| path.display().to_string())
}

/// Takes screendumps through `qmp` into `out` (or, without `qmp`, reads `out` once) until one
/// is `expected` at `size` exactly, at most `tries` times 0.5 s apart (the guest may still be
/// flushing). On a final mismatch after screendumps, `out` is kept and the expected picture is
/// written beside it as `out.expected.ppm`.
pub fn matches(
    qmp: Option<&Path>,
    out: &Path,
    size: Size,
    expected: Expected,
    tries: u32,
) -> Verdict {
    let tries = if qmp.is_none() { 1 } else { tries.max(1) };
    let want = expected.image(size);
    let mut verdict = "no screendump taken".to_string();
    for attempt in 1..=tries {
        if attempt > 1 {
            sleep(Duration::from_millis(500));
        }
        if let Some(socket) = qmp {
            if let Err(e) = qmp::screendump(socket, out, None) {
                verdict = format!("screendump failed: {}", e.text);
                continue;
            }
        }
        let got = match picture::read(out) {
            Ok(img) => img,
            Err(e) => {
                verdict = format!("screendump failed: {e}");
                continue;
            }
        };
        if (got.width, got.height) != (size.width, size.height) {
            verdict = format!(
                "screendump is {}x{}, the guest set {size}",
                got.width, got.height
            );
            continue;
        }
        let diff = picture::compare(&got, &want);
        if diff.wrong == 0 {
            let what = match expected {
                Expected::Pattern { .. } => "pattern",
                Expected::ShareFrame { .. } => "share-buffer's frame",
            };
            return Verdict {
                ok: true,
                line: format!(
                    "{} {size} matches {what} seed {} exactly (try {attempt})",
                    file_name(out),
                    expected.seed()
                ),
            };
        }
        verdict = format!(
            "{} of {} pixels differ from pattern seed {}; first: {}",
            diff.wrong,
            size.width * size.height,
            expected.seed(),
            diff.first.unwrap_or_default()
        );
    }
    if qmp.is_some() {
        let mut expected_path = out.as_os_str().to_owned();
        expected_path.push(".expected.ppm");
        if let Err(e) = picture::write_ppm(Path::new(&expected_path), &want) {
            verdict.push_str(&format!(" (and the expected picture: {e})"));
        }
    }
    Verdict {
        ok: false,
        line: format!("{verdict} (after {tries} tries; kept {})", out.display()),
    }
}

/// How long and how often to look for a picture.
#[derive(Clone, Copy, Debug)]
pub struct PictureWait {
    pub wait: Duration,
    pub interval: Duration,
    pub need: PictureNeed,
}

impl Default for PictureWait {
    fn default() -> Self {
        PictureWait {
            wait: Duration::from_secs(30),
            interval: Duration::from_millis(500),
            need: PictureNeed::default(),
        }
    }
}

/// Takes screendumps through `qmp` until one shows a rendered picture rather than one flat
/// colour (see `picture::stats`), of `size` if given; `out` gets the picture that passed, or
/// the last screendump (PNG or PPM by its name). QMP's own file is `out.qmp.ppm`, removed
/// after. Stops early when QEMU is gone. Without `qmp`, measures the file `out` once.
pub fn shows_picture(
    qmp: Option<&Path>,
    out: &Path,
    size: Option<Size>,
    how: PictureWait,
) -> Verdict {
    let mut qmp_file = out.as_os_str().to_owned();
    qmp_file.push(".qmp.ppm");
    let qmp_file = PathBuf::from(qmp_file);
    let deadline = Instant::now() + how.wait;
    let mut verdict;
    let mut last: Option<Image> = None;
    let mut attempt = 0;
    loop {
        attempt += 1;
        let shot = match qmp {
            None => picture::read(out).map_err(|e| (e.to_string(), false)),
            Some(socket) => match qmp::screendump(socket, &qmp_file, None) {
                Err(e) => Err((e.text, e.gone)),
                Ok(()) => picture::read(&qmp_file).map_err(|e| (e.to_string(), false)),
            },
        };
        match shot {
            Err((text, gone)) => {
                if gone {
                    verdict = format!("screendump failed: {text} (QEMU gone?)");
                    break;
                }
                verdict = format!("screendump failed: {text}");
            }
            Ok(image) => {
                let stats = picture::stats(&image);
                verdict = stats.describe(&image);
                let wrong_size = size
                    .filter(|s| (s.width, s.height) != (image.width, image.height))
                    .map(|s| format!(", expected {s}"));
                if let Some(w) = wrong_size {
                    verdict.push_str(&w);
                } else if stats.shows_picture(how.need) {
                    if qmp.is_some() {
                        if let Err(e) = picture::write(out, &image) {
                            verdict.push_str(&format!("; could not keep it: {e}"));
                        }
                        let _ = fs::remove_file(&qmp_file);
                    }
                    return Verdict {
                        ok: true,
                        line: format!(
                            "screendump shows a picture: {verdict} (try {attempt}, kept {})",
                            out.display()
                        ),
                    };
                }
                last = Some(image);
            }
        }
        if qmp.is_none() || Instant::now() + how.interval > deadline {
            break;
        }
        sleep(how.interval);
    }
    let mut kept = String::new();
    if qmp.is_some() {
        if let Some(image) = &last {
            kept = match picture::write(out, image) {
                Ok(()) => format!("; kept the last screendump in {}", out.display()),
                Err(e) => format!("; could not keep the last screendump: {e}"),
            };
        }
        let _ = fs::remove_file(&qmp_file);
    }
    Verdict {
        ok: false,
        line: format!(
            "no picture on the screen after {attempt} screendumps: {verdict} (need {:.0}% of the centre in >= {} colours{kept})",
            how.need.min_share * 100.0,
            how.need.min_colours
        ),
    }
}

/// Every pixel of the picture in `file` is black.
pub fn black(file: &Path) -> Verdict {
    match picture::read(file) {
        Err(e) => Verdict {
            ok: false,
            line: e.to_string(),
        },
        Ok(image) => {
            let lit = picture::lit_channels(&image);
            Verdict {
                ok: lit == 0,
                line: format!(
                    "{}: {}x{}, {lit} of {} channel values not 0",
                    file.display(),
                    image.width,
                    image.height,
                    image.rgb.len()
                ),
            }
        }
    }
}

/// `vgpud-e2e screen`: one check on a QMP screendump or a picture file; prints one line
/// saying what matched or what did not, and exits 0 on a match, 1 otherwise.
#[derive(Args, Debug)]
#[command(after_help = "\
Modes:
  --qmp SOCKET --out FILE.ppm --size WxH --seed N [--tries N]   screendump = kms-pattern's image
  --compare-only --out FILE --size WxH --seed N [--share-frame]  a file = the pattern (or share-buffer's frame)
  --qmp SOCKET --out FILE.png --format png                       a screenshot, no check
  --qmp SOCKET --out FILE --picture [--wait S] [--size WxH]      wait until the screen shows a picture
  --picture --compare-only --out FILE                            the file shows a picture
  --compare-only --out FILE --black                              every pixel is black

The screendump is written by QEMU itself, so FILE must be a path QEMU can write (QEMU runs in the
testbed root, where the project and the testbed dir have their own paths). On a mismatch after
screendumps FILE is kept and the expected picture written beside it as FILE.expected.ppm.
The pattern is guest-tests/kms-pattern.c's pattern_pixel(); see guest-tests/README.md.")]
pub struct ScreenArgs {
    /// QEMU's QMP socket.
    #[arg(long)]
    qmp: Option<PathBuf>,
    /// Check the existing --out file instead of taking a screendump.
    #[arg(long)]
    compare_only: bool,
    /// The screendump (or the file to check).
    #[arg(long)]
    out: PathBuf,
    /// The guest's mode, WxH.
    #[arg(long, value_parser = parse_size)]
    size: Option<Size>,
    /// The pattern's seed.
    #[arg(long)]
    seed: Option<u32>,
    /// Only take a screenshot in this format (ppm, png).
    #[arg(long)]
    format: Option<String>,
    /// Screendumps taken before a mismatch counts (0.5 s apart).
    #[arg(long, default_value_t = 6)]
    tries: u32,
    /// Compare with share-buffer's frame for --seed, not kms-pattern's.
    #[arg(long)]
    share_frame: bool,
    /// With --compare-only: every pixel must be black.
    #[arg(long)]
    black: bool,
    /// Wait until the screen shows a picture, not one flat colour.
    #[arg(long)]
    picture: bool,
    /// --picture: at most this long (s).
    #[arg(long, default_value_t = 30.0)]
    wait: f64,
    /// --picture: between screendumps (s).
    #[arg(long, default_value_t = 0.5)]
    interval: f64,
    /// --picture: share of the centre that is not the background.
    #[arg(long, default_value_t = 0.05)]
    min_share: f64,
    /// --picture: distinct colours in the centre, background aside.
    #[arg(long, default_value_t = 16)]
    min_colours: usize,
}

fn parse_size(text: &str) -> Result<Size, String> {
    Size::parse(text).ok_or_else(|| format!("not a size WxH: {text:?}"))
}

fn seconds(s: f64) -> Result<Duration, String> {
    Duration::try_from_secs_f64(s).map_err(|e| format!("{s} s: {e}"))
}

/// Runs `vgpud-e2e screen`; the process's exit status (2: a usage error).
pub fn main(args: ScreenArgs) -> i32 {
    let qmp = if args.compare_only {
        None
    } else {
        match &args.qmp {
            Some(q) => Some(q.as_path()),
            None => return usage("--qmp is required unless --compare-only is given"),
        }
    };
    let verdict = if args.picture {
        let (wait, interval) = match (seconds(args.wait), seconds(args.interval)) {
            (Ok(w), Ok(i)) => (w, i),
            (Err(e), _) | (_, Err(e)) => return usage(&e),
        };
        let how = PictureWait {
            wait,
            interval,
            need: PictureNeed {
                min_share: args.min_share,
                min_colours: args.min_colours,
            },
        };
        shows_picture(qmp, &args.out, args.size, how)
    } else if let Some(format) = &args.format {
        let Some(socket) = qmp else {
            return usage("--format needs --qmp");
        };
        return match qmp::screendump(socket, &args.out, Some(format)) {
            Ok(()) => 0,
            Err(e) => {
                eprintln!("screendump failed: {}", e.text);
                1
            }
        };
    } else if args.black {
        black(&args.out)
    } else {
        let (Some(size), Some(seed)) = (args.size, args.seed) else {
            return usage("--size and --seed are needed to compare");
        };
        let expected = if args.share_frame {
            Expected::ShareFrame { seed }
        } else {
            Expected::Pattern { seed }
        };
        matches(qmp, &args.out, size, expected, args.tries)
    };
    println!("{}", verdict.line);
    if verdict.ok {
        0
    } else {
        1
    }
}

fn usage(text: &str) -> i32 {
    eprintln!("vgpud-e2e screen: {text}");
    2
}
