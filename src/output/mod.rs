//! vgpud's own display output: a VNC server per VM that shows its scanouts, whatever its
//! frontend (the generic vhost-user device and crosvm give the backend no display path).
//!
//! The queue thread feeds it what flushes and blob scanouts already name (`Screens`): it copies
//! the damaged pixels into a per-scanout picture and wakes the output's own thread, which serves
//! the viewers (server.rs). Nothing here waits for a viewer: a viewer's socket is written only by
//! that thread, without blocking, from a buffer that holds at most one update.
//!
//! Why the protocol is written here rather than taken from a crate: the Rust VNC servers on
//! crates.io (rustvncserver 2.2) listen on TCP on every address and nowhere else, run their own
//! multi-threaded tokio runtime and keep no bound on what a viewer may queue; rfb-encodings' ZRLE
//! starts a fresh zlib stream per rectangle, which RFC 6143 viewers cannot inflate; and Debian's
//! libvncserver would bring C, a thread per viewer and its own allocations past our quotas. The
//! part of RFB a server needs is small (rfb.rs); compression is flate2's.

mod damage;
pub mod rfb;
mod server;
pub mod zrle;

use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use vgpud_protocol::Rect;
use vmm_sys_util::eventfd::EventFd;

use crate::device::{CursorImage, DisplayCmd, CURSOR_SIZE};
use crate::guestlog::GuestLog;
use crate::hub::registry::OutputGauges;
use crate::sync::lock;

/// The largest screen served (RFB sizes are 16-bit; this keeps one picture under 1 GiB).
pub const MAX_SCREEN_SIDE: u32 = 16384;
/// What a viewer is charged beyond one picture: its zlib stream and buffers.
const VIEWER_OVERHEAD: usize = 512 << 10;

/// Where a VM's VNC screens listen: screen N of a VM at PATH (N = 0), PATH.N otherwise; or at
/// PORT + N on a TCP address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum VncAddress {
    Unix(PathBuf),
    Tcp(SocketAddr),
}

impl VncAddress {
    /// `vnc=PATH` (absolute) or `vnc=HOST:PORT` (an IP address).
    pub fn parse(s: &str) -> Result<Self, String> {
        if s.starts_with('/') {
            return Ok(VncAddress::Unix(PathBuf::from(s)));
        }
        let addr: SocketAddr = s
            .parse()
            .map_err(|_| "an absolute socket path or IP:PORT".to_string())?;
        Ok(VncAddress::Tcp(addr))
    }

    /// Where screen `n` listens.
    pub fn screen(&self, n: u32) -> io::Result<VncAddress> {
        Ok(match self {
            VncAddress::Unix(p) if n == 0 => VncAddress::Unix(p.clone()),
            VncAddress::Unix(p) => {
                let mut s = p.clone().into_os_string();
                s.push(format!(".{n}"));
                VncAddress::Unix(s.into())
            }
            VncAddress::Tcp(a) => {
                let port = u16::try_from(u32::from(a.port()) + n)
                    .map_err(|_| io::Error::other("screen ports past 65535"))?;
                VncAddress::Tcp(SocketAddr::new(a.ip(), port))
            }
        })
    }
}

/// Checks that no two screens (of `outputs`: address and scanout count each) listen at the same
/// address, and that none is one of the daemon's other sockets (`taken`): binding one would
/// replace the other's socket, and its viewers would see another VM.
pub fn check_addresses(outputs: &[(&VncAddress, u32)], taken: &[PathBuf]) -> Result<(), String> {
    let mut seen: Vec<VncAddress> = taken.iter().cloned().map(VncAddress::Unix).collect();
    for (address, scanouts) in outputs {
        for n in 0..*scanouts {
            let screen = address.screen(n).map_err(|e| e.to_string())?;
            if seen.contains(&screen) {
                return Err(format!(
                    "{screen:?} is named twice (vnc= screens and sockets)"
                ));
            }
            seen.push(screen);
        }
    }
    Ok(())
}

/// A VM's output settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VncConfig {
    pub address: VncAddress,
    /// Most bytes the output may hold for this VM: its pictures and every viewer's buffer.
    pub memory: u64,
    /// Most viewers at once, all screens together.
    pub max_viewers: usize,
    /// The group that may connect to UNIX sockets too (mode 0660), else owner-only.
    pub group: Option<u32>,
}

pub const DEFAULT_VNC_MEMORY: u64 = 128 << 20;
pub const DEFAULT_MAX_VIEWERS: usize = 8;

/// The guest's cursor, as the viewers draw it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cursor {
    pub hot: (u16, u16),
    pub image: CursorImage,
}

/// One scanout's picture, native pixels (B, G, R, X), and what changed in it.
#[derive(Default)]
pub(crate) struct Screen {
    pub width: u32,
    pub height: u32,
    /// Empty while the scanout is off: the screen is black.
    pub pixels: Vec<u8>,
    /// The scanout is on (its picture may still be unfed).
    pub on: bool,
    /// Changed since the output thread last looked.
    pub damage: Vec<Rect>,
    /// Bumped when the size changes (a viewer that follows resizes is told).
    pub size_serial: u64,
    pub cursor: Option<Cursor>,
    pub cursor_serial: u64,
}

impl Screen {
    fn damage(&mut self, r: Rect) {
        damage::add(&mut self.damage, r);
    }

    fn full(&self) -> Rect {
        Rect {
            x: 0,
            y: 0,
            width: self.width,
            height: self.height,
        }
    }
}

/// The bytes of a VM's output, against its cap.
pub(crate) struct Budget {
    used: AtomicUsize,
    limit: usize,
}

impl Budget {
    /// Takes `bytes` if they fit under the cap.
    pub fn take(&self, bytes: usize) -> bool {
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |u| {
                u.checked_add(bytes).filter(|n| *n <= self.limit)
            })
            .is_ok()
    }

    pub fn give(&self, bytes: usize) {
        let _ = self
            .used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |u| {
                Some(u.saturating_sub(bytes))
            });
    }

    pub fn used(&self) -> usize {
        self.used.load(Ordering::Acquire)
    }
}

/// What the queue thread and the output thread share.
pub(crate) struct Shared {
    pub name: String,
    pub screens: Mutex<Vec<Screen>>,
    pub budget: Budget,
    pub viewers: AtomicUsize,
    /// Pixels were left out while no viewer watched: the next viewer asks for a refresh.
    pub stale: std::sync::atomic::AtomicBool,
    /// Wakes the output thread.
    pub wake: EventFd,
    /// Asks the connected VM's queue thread to feed the whole picture again.
    pub refresh: Mutex<Option<EventFd>>,
    /// A refresh was asked for and not fed yet: new viewers wait for it (a while) rather than
    /// get a stale first picture.
    pub refreshing: std::sync::atomic::AtomicBool,
    pub log: GuestLog,
}

impl Shared {
    fn wake(&self) {
        let _ = self.wake.write(1);
    }
}

/// A VM's VNC output. It lives as long as the VM's socket, across VMM connections.
#[derive(Clone)]
pub struct VncOutput {
    shared: Arc<Shared>,
}

impl VncOutput {
    /// Binds every screen's listener and starts the output thread.
    pub fn start(
        name: &str,
        config: &VncConfig,
        scanouts: u32,
        (width, height): (u32, u32),
        log: GuestLog,
    ) -> io::Result<VncOutput> {
        let screens = (0..scanouts)
            .map(|_| Screen {
                width: width.clamp(1, MAX_SCREEN_SIDE),
                height: height.clamp(1, MAX_SCREEN_SIDE),
                ..Screen::default()
            })
            .collect();
        let shared = Arc::new(Shared {
            name: name.to_string(),
            screens: Mutex::new(screens),
            budget: Budget {
                used: AtomicUsize::new(0),
                limit: usize::try_from(config.memory).unwrap_or(usize::MAX),
            },
            viewers: AtomicUsize::new(0),
            stale: Default::default(),
            wake: EventFd::new(libc::EFD_NONBLOCK)?,
            refresh: Mutex::new(None),
            refreshing: Default::default(),
            log,
        });
        let listeners = (0..scanouts)
            .map(|n| server::Listening::bind(&config.address.screen(n)?, config.group))
            .collect::<io::Result<Vec<_>>>()?;
        server::spawn(shared.clone(), listeners, config.max_viewers)?;
        Ok(VncOutput { shared })
    }

    /// A VMM connected: `refresh` asks its queue thread to feed the whole picture again.
    pub fn attach(&self, refresh: EventFd) {
        *lock(&self.shared.refresh) = Some(refresh);
        // Whatever the last VM left is stale.
        self.shared.stale.store(true, Ordering::Release);
    }

    /// The queue thread fed the whole picture it was asked for.
    pub fn refreshed(&self) {
        self.shared.refreshing.store(false, Ordering::Release);
        self.shared.wake();
    }

    /// The VM went away: every screen goes black; the viewers stay.
    pub fn detach(&self) {
        *lock(&self.shared.refresh) = None;
        self.shared.refreshing.store(false, Ordering::Release);
        let mut screens = lock(&self.shared.screens);
        for s in screens.iter_mut() {
            self.blank(s);
        }
        s_cursor_off(&mut screens);
        drop(screens);
        self.shared.wake();
    }

    /// Bytes the output holds for this VM now (pictures and viewers' buffers).
    pub fn bytes(&self) -> usize {
        self.shared.budget.used()
    }

    pub fn viewers(&self) -> usize {
        self.shared.viewers.load(Ordering::Acquire)
    }

    /// What the status command and metrics show of it.
    pub fn gauges(&self) -> Box<dyn OutputGauges> {
        Box::new(self.clone())
    }

    /// Whether pixels should be read for it now: only while someone watches. Otherwise the
    /// picture is marked stale and fed whole when a viewer comes.
    pub fn watched(&self) -> bool {
        if self.shared.viewers.load(Ordering::SeqCst) > 0 {
            return true;
        }
        self.shared.stale.store(true, Ordering::SeqCst);
        // A viewer that came meanwhile may have found the picture fresh: feed it after all.
        self.shared.viewers.load(Ordering::SeqCst) > 0
    }

    /// Applies one display command; an update's pixels come with it (rows of `area`, packed).
    pub fn apply(&self, cmd: &DisplayCmd) {
        let mut screens = lock(&self.shared.screens);
        match cmd {
            DisplayCmd::Scanout {
                scanout,
                width,
                height,
            } => {
                let Some(s) = screens.get_mut(*scanout as usize) else {
                    return;
                };
                if *width == 0 || *height == 0 {
                    self.blank(s);
                } else {
                    self.resize(*scanout, s, *width, *height);
                }
            }
            DisplayCmd::CursorUpdate {
                scanout,
                hot_x,
                hot_y,
                image,
                ..
            } => {
                let side = CURSOR_SIZE as u16 - 1;
                let cursor = Cursor {
                    hot: (
                        (*hot_x).min(side.into()) as u16,
                        (*hot_y).min(side.into()) as u16,
                    ),
                    image: image.clone(),
                };
                s_cursor_off(&mut screens);
                if let Some(s) = screens.get_mut(*scanout as usize) {
                    s.cursor = Some(cursor);
                    s.cursor_serial += 1;
                }
            }
            DisplayCmd::CursorHide { .. } => s_cursor_off(&mut screens),
            // The viewer draws the cursor where its own pointer is.
            DisplayCmd::CursorMove { .. } | DisplayCmd::Update { .. } => return,
        }
        drop(screens);
        self.shared.wake();
    }

    /// New pixels for `rect` of a scanout (screen coordinates), rows packed.
    pub fn update(&self, scanout: u32, rect: Rect, pixels: &[u8]) {
        let mut screens = lock(&self.shared.screens);
        let Some(s) = screens.get_mut(scanout as usize) else {
            return;
        };
        let Some(r) = crate::device::intersect(&rect, &s.full()) else {
            return;
        };
        if s.pixels.is_empty() {
            return;
        }
        let (src_stride, dst_stride) = (rect.width as usize * 4, s.width as usize * 4);
        let skip_x = (r.x - rect.x) as usize * 4;
        for row in 0..r.height as usize {
            let src = (row + (r.y - rect.y) as usize) * src_stride + skip_x;
            let dst = (r.y as usize + row) * dst_stride + r.x as usize * 4;
            let len = r.width as usize * 4;
            if let (Some(from), Some(to)) =
                (pixels.get(src..src + len), s.pixels.get_mut(dst..dst + len))
            {
                to.copy_from_slice(from);
            }
        }
        s.damage(r);
        drop(screens);
        self.shared.wake();
    }

    fn blank(&self, s: &mut Screen) {
        self.shared.budget.give(s.pixels.len());
        s.pixels = Vec::new();
        s.on = false;
        s.damage.clear();
        s.damage(s.full());
    }

    fn resize(&self, scanout: u32, s: &mut Screen, width: u32, height: u32) {
        let (w, h) = (width.min(MAX_SCREEN_SIDE), height.min(MAX_SCREEN_SIDE));
        let bytes = w as usize * h as usize * 4;
        if (w, h) != (s.width, s.height) {
            s.width = w;
            s.height = h;
            s.size_serial += 1;
        }
        s.on = true;
        // What the scanout showed before (maybe another VM's buffer, since revoked) is gone
        // either way: the new picture starts black until it is flushed.
        s.pixels.fill(0);
        if s.pixels.len() != bytes {
            self.shared.budget.give(s.pixels.len());
            s.pixels = Vec::new();
            if !self.shared.budget.take(bytes) {
                self.shared.log.warn(format_args!(
                    "vnc: screen {scanout} of {w}x{h} is past the output's memory cap: shown \
                     black"
                ));
            } else {
                s.pixels = vec![0; bytes];
            }
        }
        s.damage.clear();
        s.damage(s.full());
    }
}

impl OutputGauges for VncOutput {
    fn viewers(&self) -> u64 {
        VncOutput::viewers(self) as u64
    }

    fn bytes(&self) -> u64 {
        VncOutput::bytes(self) as u64
    }
}

fn s_cursor_off(screens: &mut [Screen]) {
    for s in screens.iter_mut().filter(|s| s.cursor.is_some()) {
        s.cursor = None;
        s.cursor_serial += 1;
    }
}

/// What a viewer is charged for a picture of `screen_bytes`: at most one whole picture copied
/// out and one encoded (damage never adds up to more than the picture), plus its zlib stream.
pub(crate) fn viewer_charge(screen_bytes: usize) -> usize {
    screen_bytes
        .saturating_mul(2)
        .saturating_add(screen_bytes / 8)
        .saturating_add(VIEWER_OVERHEAD)
}
