//! The output thread of one VM: accepts viewers on each screen's socket and serves them
//! (RFB 3.3/3.7/3.8, security type none), never blocking on any of them. A viewer is as
//! untrusted as a guest: its input is decoded from a bounded buffer, its output buffer holds at
//! most one update, and one that stalls or misbehaves is dropped alone.

use std::io::{self, ErrorKind, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use vgpud_protocol::Rect;
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};

use super::damage::{self, bounding};
use super::rfb::{self, encoding, PixelFormat, ViewerMessage};
use super::zrle::ZrleEncoder;
use super::{viewer_charge, Shared, VncAddress};
use crate::device::{intersect, CURSOR_SIZE};
use crate::sync::lock;

/// How long a viewer may take to finish the handshake.
const HANDSHAKE_TIME: Duration = Duration::from_secs(10);
/// How long a connected viewer may stay silent with no update asked for.
const IDLE_TIME: Duration = Duration::from_secs(60);
/// How long a viewer may leave an update unread before it is dropped.
const STALL_TIME: Duration = Duration::from_secs(10);
/// Buffers larger than this are freed once written rather than kept for the next update.
pub(super) const KEEP_BUFFER: usize = 1 << 20;
/// A whole-picture refresh is asked for at most this often (each costs the queue thread a read
/// of every scanout).
const REFRESH_EVERY: Duration = Duration::from_secs(1);
/// A listener whose accept failed (out of descriptors) is left alone this long.
const ACCEPT_PAUSE: Duration = Duration::from_secs(1);
/// How long a new viewer's first update waits for the picture to be fed whole.
const REFRESH_WAIT: Duration = Duration::from_secs(2);
/// How often deadlines are checked when nothing happens.
const TICK_MS: i32 = 500;
/// Connections taken from one listener per wakeup: a storm of them cannot starve the viewers.
const ACCEPTS_PER_ROUND: usize = 16;
/// Bytes read from one viewer per wakeup.
const READ_PER_ROUND: usize = 64 << 10;

const WAKE: u64 = 0;
const FIRST_LISTENER: u64 = 1;
const FIRST_VIEWER: u64 = 1 << 16;

/// A screen's listening socket.
pub(super) enum Listening {
    Unix(UnixListener),
    Tcp(TcpListener),
}

impl Listening {
    pub fn bind(address: &VncAddress, group: Option<u32>) -> io::Result<Listening> {
        let l = match address {
            VncAddress::Unix(path) => Listening::Unix(crate::control::bind_private(path, group)?),
            VncAddress::Tcp(addr) => Listening::Tcp(TcpListener::bind(addr)?),
        };
        match &l {
            Listening::Unix(u) => u.set_nonblocking(true)?,
            Listening::Tcp(t) => t.set_nonblocking(true)?,
        }
        Ok(l)
    }

    fn accept(&self) -> io::Result<Stream> {
        match self {
            Listening::Unix(u) => u.accept().map(|(s, _)| Stream::Unix(s)),
            Listening::Tcp(t) => t.accept().map(|(s, _)| {
                // Updates are whole messages: no reason to hold a tail back.
                let _ = s.set_nodelay(true);
                Stream::Tcp(s)
            }),
        }
    }

    fn fd(&self) -> RawFd {
        match self {
            Listening::Unix(u) => u.as_raw_fd(),
            Listening::Tcp(t) => t.as_raw_fd(),
        }
    }
}

enum Stream {
    Unix(UnixStream),
    Tcp(TcpStream),
}

impl Stream {
    fn fd(&self) -> RawFd {
        match self {
            Stream::Unix(s) => s.as_raw_fd(),
            Stream::Tcp(s) => s.as_raw_fd(),
        }
    }

    fn set_nonblocking(&self) -> io::Result<()> {
        match self {
            Stream::Unix(s) => s.set_nonblocking(true),
            Stream::Tcp(s) => s.set_nonblocking(true),
        }
    }

    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Unix(s) => s.read(buf),
            Stream::Tcp(s) => s.read(buf),
        }
    }

    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Unix(s) => s.write(buf),
            Stream::Tcp(s) => s.write(buf),
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Phase {
    Version,
    Security,
    ClientInit,
    Normal,
}

struct Viewer {
    stream: Stream,
    screen: usize,
    phase: Phase,
    minor: u8,
    input: Vec<u8>,
    /// Clipboard bytes still to skip.
    skip: u32,
    out: Vec<u8>,
    sent: usize,
    writable_watched: bool,
    pf: PixelFormat,
    /// Made when the viewer first asks for ZRLE and kept: its zlib stream lasts the connection.
    zrle: Option<ZrleEncoder>,
    use_zrle: bool,
    wants_cursor: bool,
    follows_resize: bool,
    /// The area of a pending FramebufferUpdateRequest.
    request: Option<Rect>,
    damage: Vec<Rect>,
    /// The size this viewer was told.
    size: (u32, u32),
    size_serial: u64,
    cursor_serial: u64,
    since: Instant,
    progress: Instant,
    /// When the viewer last sent anything.
    heard: Instant,
    /// Bytes charged to the VM's output budget for this viewer.
    charged: usize,
}

impl Viewer {
    fn damage(&mut self, r: Rect) {
        damage::add(&mut self.damage, r);
    }
}

/// Why a viewer is dropped.
type Drop = String;

pub(super) fn spawn(
    shared: Arc<Shared>,
    listeners: Vec<Listening>,
    max_viewers: usize,
) -> io::Result<()> {
    let epoll = Epoll::new()?;
    epoll.ctl(
        ControlOperation::Add,
        shared.wake.as_raw_fd(),
        EpollEvent::new(EventSet::IN, WAKE),
    )?;
    for (i, l) in listeners.iter().enumerate() {
        epoll.ctl(
            ControlOperation::Add,
            l.fd(),
            EpollEvent::new(EventSet::IN, FIRST_LISTENER + i as u64),
        )?;
    }
    let name: String = format!("vnc-{}", shared.name).chars().take(15).collect();
    let paused = vec![None; listeners.len()];
    let mut server = Server {
        shared,
        listeners,
        paused,
        last_refresh: None,
        viewers: Vec::new(),
        epoll,
        max_viewers,
    };
    thread::Builder::new()
        .name(name)
        .spawn(move || server.run())?;
    Ok(())
}

struct Server {
    shared: Arc<Shared>,
    listeners: Vec<Listening>,
    /// Listeners left alone until then after a failed accept.
    paused: Vec<Option<Instant>>,
    last_refresh: Option<Instant>,
    viewers: Vec<Option<Viewer>>,
    epoll: Epoll,
    max_viewers: usize,
}

impl Server {
    fn run(&mut self) {
        let mut events = vec![EpollEvent::default(); 64];
        loop {
            let n = match self.epoll.wait(TICK_MS, &mut events) {
                Ok(n) => n,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => {
                    self.shared
                        .log
                        .warn(format_args!("vnc: output stopped: {e}"));
                    return;
                }
            };
            for ev in events.iter().take(n) {
                let token = ev.data();
                if token == WAKE {
                    let _ = self.shared.wake.read();
                } else if token < FIRST_VIEWER {
                    self.accept((token - FIRST_LISTENER) as usize);
                } else {
                    let slot = (token - FIRST_VIEWER) as usize;
                    let set = ev.event_set();
                    let mut result = Ok(());
                    if set.intersects(EventSet::IN | EventSet::HANG_UP | EventSet::ERROR) {
                        result = self.read(slot);
                    }
                    if result.is_ok() && set.contains(EventSet::OUT) {
                        result = self.with(slot, flush);
                    }
                    if let Err(why) = result {
                        self.drop_viewer(slot, &why);
                    }
                }
            }
            self.collect_damage();
            self.serve_updates();
            self.expire();
        }
    }

    fn with(
        &mut self,
        slot: usize,
        f: impl FnOnce(&mut Viewer) -> Result<(), Drop>,
    ) -> Result<(), Drop> {
        match self.viewers.get_mut(slot).and_then(Option::as_mut) {
            Some(v) => f(v),
            None => Ok(()),
        }
    }

    fn accept(&mut self, screen: usize) {
        for _ in 0..ACCEPTS_PER_ROUND {
            let Some(listener) = self.listeners.get(screen) else {
                return;
            };
            let stream = match listener.accept() {
                Ok(s) => s,
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == ErrorKind::ConnectionAborted => continue,
                Err(e) => {
                    // Out of descriptors, say: the connection stays queued, and a level-
                    // triggered listener would wake this thread again at once.
                    self.shared.log.warn(format_args!(
                        "vnc: accepting a viewer: {e}; trying again in {ACCEPT_PAUSE:?}"
                    ));
                    self.pause_listener(screen);
                    return;
                }
            };
            let mut live = self.viewers.iter().flatten().count();
            if live >= self.max_viewers {
                // Viewers that left may not have been noticed yet (their hang-up can be in this
                // very round of events): look before refusing anyone.
                self.drop_gone();
                live = self.viewers.iter().flatten().count();
            }
            if live >= self.max_viewers {
                self.shared.log.info(format_args!(
                    "vnc: viewer refused: {live} viewers already (the most this VM allows)"
                ));
                continue;
            }
            if let Err(e) = self.add(stream, screen) {
                self.shared
                    .log
                    .warn(format_args!("vnc: adding a viewer: {e}"));
            }
        }
    }

    /// Reads what every viewer sent: those that hung up or broke the protocol are dropped.
    fn drop_gone(&mut self) {
        for slot in 0..self.viewers.len() {
            if let Err(why) = self.read(slot) {
                self.drop_viewer(slot, &why);
            }
        }
    }

    fn pause_listener(&mut self, screen: usize) {
        let Some(l) = self.listeners.get(screen) else {
            return;
        };
        let token = FIRST_LISTENER + screen as u64;
        let none = EpollEvent::new(EventSet::empty(), token);
        if self
            .epoll
            .ctl(ControlOperation::Modify, l.fd(), none)
            .is_ok()
        {
            if let Some(p) = self.paused.get_mut(screen) {
                *p = Some(Instant::now() + ACCEPT_PAUSE);
            }
        }
    }

    fn resume_listeners(&mut self) {
        let now = Instant::now();
        for (screen, until) in self.paused.iter_mut().enumerate() {
            if until.is_some_and(|t| now >= t) {
                if let Some(l) = self.listeners.get(screen) {
                    let token = FIRST_LISTENER + screen as u64;
                    let ev = EpollEvent::new(EventSet::IN, token);
                    let _ = self.epoll.ctl(ControlOperation::Modify, l.fd(), ev);
                }
                *until = None;
            }
        }
    }

    fn add(&mut self, stream: Stream, screen: usize) -> io::Result<()> {
        stream.set_nonblocking()?;
        let slot = match self.viewers.iter().position(Option::is_none) {
            Some(s) => s,
            None => {
                self.viewers.push(None);
                self.viewers.len() - 1
            }
        };
        self.epoll.ctl(
            ControlOperation::Add,
            stream.fd(),
            EpollEvent::new(EventSet::IN, FIRST_VIEWER + slot as u64),
        )?;
        let now = Instant::now();
        let mut v = Viewer {
            stream,
            screen,
            phase: Phase::Version,
            minor: 8,
            input: Vec::new(),
            skip: 0,
            out: rfb::VERSION.to_vec(),
            sent: 0,
            writable_watched: false,
            pf: PixelFormat::NATIVE,
            zrle: None,
            use_zrle: false,
            wants_cursor: false,
            follows_resize: false,
            request: None,
            damage: Vec::new(),
            size: (0, 0),
            size_serial: 0,
            cursor_serial: 0,
            since: now,
            progress: now,
            heard: now,
            charged: 0,
        };
        let flushed = flush(&mut v);
        if let Some(s) = self.viewers.get_mut(slot) {
            *s = Some(v);
        }
        if let Err(why) = flushed.and_then(|()| self.watch_writable(slot)) {
            self.drop_viewer(slot, &why);
        }
        Ok(())
    }

    /// Reads what the viewer sent and acts on each whole message.
    fn read(&mut self, slot: usize) -> Result<(), Drop> {
        let mut buf = [0u8; 4096];
        let mut total = 0;
        while total < READ_PER_ROUND {
            let Some(v) = self.viewers.get_mut(slot).and_then(Option::as_mut) else {
                return Ok(());
            };
            let n = match v.stream.read(&mut buf) {
                Ok(0) => return Err("closed".into()),
                Ok(n) => n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                // A viewer that quits may reset the connection rather than close it.
                Err(e) if e.kind() == ErrorKind::ConnectionReset => return Err("closed".into()),
                Err(e) => return Err(format!("read: {e}")),
            };
            total += n;
            v.heard = Instant::now();
            let mut data = buf.get(..n).unwrap_or_default();
            let skipped = data.len().min(v.skip as usize);
            v.skip -= skipped as u32;
            data = data.get(skipped..).unwrap_or_default();
            v.input.extend_from_slice(data);
            self.handle_input(slot)?;
        }
        self.watch_writable(slot)
    }

    fn handle_input(&mut self, slot: usize) -> Result<(), Drop> {
        loop {
            let Some(v) = self.viewers.get_mut(slot).and_then(Option::as_mut) else {
                return Ok(());
            };
            // Clipboard text read past its header is skipped, not kept.
            if v.skip > 0 {
                let skipped = v.input.len().min(v.skip as usize);
                v.input.drain(..skipped);
                v.skip -= skipped as u32;
                if v.skip > 0 {
                    return Ok(());
                }
            }
            let used = match v.phase {
                Phase::Version => {
                    let Some(msg) = v.input.get(..12) else {
                        return Ok(());
                    };
                    let mut m = [0u8; 12];
                    m.copy_from_slice(msg);
                    v.minor = rfb::decode_version(&m).map_err(|e| e.to_string())?;
                    if v.minor == 3 {
                        v.out.extend_from_slice(&1u32.to_be_bytes());
                        v.phase = Phase::ClientInit;
                    } else {
                        v.out.extend_from_slice(&[1, 1]);
                        v.phase = Phase::Security;
                    }
                    12
                }
                Phase::Security => {
                    let Some(&choice) = v.input.first() else {
                        return Ok(());
                    };
                    if choice != 1 {
                        return Err(rfb::ProtocolError::Security(choice).to_string());
                    }
                    if v.minor == 8 {
                        v.out.extend_from_slice(&0u32.to_be_bytes());
                    }
                    v.phase = Phase::ClientInit;
                    1
                }
                Phase::ClientInit => {
                    if v.input.is_empty() {
                        return Ok(());
                    }
                    v.input.drain(..1);
                    return self
                        .start_viewing(slot)
                        .and_then(|()| self.handle_input(slot));
                }
                Phase::Normal => {
                    messages(v)?;
                    return flush(v);
                }
            };
            v.input.drain(..used.min(v.input.len()));
            flush(v)?;
        }
    }

    /// ClientInit arrived: charge the viewer's buffer to the VM, send ServerInit.
    fn start_viewing(&mut self, slot: usize) -> Result<(), Drop> {
        let screens = lock(&self.shared.screens);
        let Some(s) = screens.get(self.viewers_screen(slot)) else {
            return Err("no such screen".into());
        };
        let (w, h, serial) = (s.width, s.height, s.size_serial);
        drop(screens);
        let charge = viewer_charge(w as usize * h as usize * 4);
        if !self.shared.budget.take(charge) {
            return Err(format!(
                "its buffer would pass the output's memory cap ({} bytes in use)",
                self.shared.budget.used()
            ));
        }
        let Some(v) = self.viewers.get_mut(slot).and_then(Option::as_mut) else {
            self.shared.budget.give(charge);
            return Ok(());
        };
        v.charged = charge;
        v.phase = Phase::Normal;
        v.size = (w, h);
        v.size_serial = serial;
        v.damage(Rect {
            x: 0,
            y: 0,
            width: w,
            height: h,
        });
        // Counted before anything can fail: `drop_viewer` uncounts every viewer in Normal.
        self.shared.viewers.fetch_add(1, Ordering::SeqCst);
        v.out
            .extend_from_slice(&rfb::server_init(w as u16, h as u16, &self.shared.name));
        flush(v)?;
        self.maybe_refresh();
        Ok(())
    }

    /// Pixels were left out while nobody watched: asks the VM's queue thread for the whole
    /// picture, once at a time and at most once a `REFRESH_EVERY` (the tick asks again later).
    fn maybe_refresh(&mut self) {
        let due = self
            .last_refresh
            .is_none_or(|t| t.elapsed() >= REFRESH_EVERY);
        if !due || self.shared.refreshing.load(Ordering::SeqCst) {
            return;
        }
        if !self.shared.stale.swap(false, Ordering::SeqCst) {
            return;
        }
        // Without a VM there is nothing to refresh from (its screens are black).
        if let Some(refresh) = lock(&self.shared.refresh).as_ref() {
            self.shared.refreshing.store(true, Ordering::SeqCst);
            let _ = refresh.write(1);
            self.last_refresh = Some(Instant::now());
        }
    }

    fn viewers_screen(&self, slot: usize) -> usize {
        self.viewers
            .get(slot)
            .and_then(Option::as_ref)
            .map_or(usize::MAX, |v| v.screen)
    }

    /// Watches for room to write only while there is something left to write.
    fn watch_writable(&mut self, slot: usize) -> Result<(), Drop> {
        let Some(v) = self.viewers.get_mut(slot).and_then(Option::as_mut) else {
            return Ok(());
        };
        let pending = v.sent < v.out.len();
        if pending == v.writable_watched {
            return Ok(());
        }
        let set = if pending {
            EventSet::IN | EventSet::OUT
        } else {
            EventSet::IN
        };
        self.epoll
            .ctl(
                ControlOperation::Modify,
                v.stream.fd(),
                EpollEvent::new(set, FIRST_VIEWER + slot as u64),
            )
            .map_err(|e| format!("epoll: {e}"))?;
        v.writable_watched = pending;
        Ok(())
    }

    /// Hands each screen's new damage to its viewers.
    fn collect_damage(&mut self) {
        let mut screens = lock(&self.shared.screens);
        for (n, s) in screens.iter_mut().enumerate() {
            if s.damage.is_empty() {
                continue;
            }
            let damage = std::mem::take(&mut s.damage);
            for v in self.viewers.iter_mut().flatten() {
                if v.screen == n && v.phase == Phase::Normal {
                    for r in &damage {
                        v.damage(*r);
                    }
                }
            }
        }
    }

    fn serve_updates(&mut self) {
        for slot in 0..self.viewers.len() {
            let result = self.update(slot).and_then(|()| self.watch_writable(slot));
            if let Err(why) = result {
                self.drop_viewer(slot, &why);
            }
        }
    }

    /// Sends one FramebufferUpdate if the viewer asked for one, has read the last, and there is
    /// something new.
    fn update(&mut self, slot: usize) -> Result<(), Drop> {
        let Some(v) = self.viewers.get_mut(slot).and_then(Option::as_mut) else {
            return Ok(());
        };
        let Some(request) = v.request else {
            return Ok(());
        };
        if v.phase != Phase::Normal || v.sent < v.out.len() {
            return Ok(());
        }
        // A picture being fed whole (reading back a 3D scanout takes a while): a new viewer's
        // first update waits for it, a bounded while.
        if self.shared.refreshing.load(Ordering::Acquire) && v.since.elapsed() < REFRESH_WAIT {
            return Ok(());
        }
        let screens = lock(&self.shared.screens);
        let Some(s) = screens.get(v.screen) else {
            return Err("no such screen".into());
        };
        let mut pseudo = Vec::new();
        if v.size_serial != s.size_serial {
            v.size_serial = s.size_serial;
            let new = viewer_charge(s.width as usize * s.height as usize * 4);
            if new > v.charged {
                if !self.shared.budget.take(new - v.charged) {
                    return Err("a resize past the output's memory cap".into());
                }
                v.charged = new;
            }
            if v.follows_resize {
                v.size = (s.width, s.height);
                pseudo.push(rfb::rect_header(
                    0,
                    0,
                    s.width as u16,
                    s.height as u16,
                    encoding::DESKTOP_SIZE,
                ));
                v.damage = Vec::new();
                v.damage(Rect {
                    x: 0,
                    y: 0,
                    width: s.width,
                    height: s.height,
                });
            }
        }
        let mut cursor = None;
        if v.wants_cursor && v.cursor_serial != s.cursor_serial {
            v.cursor_serial = s.cursor_serial;
            cursor = Some(match &s.cursor {
                Some(c) => rfb::cursor_rect(
                    &v.pf,
                    c.hot,
                    CURSOR_SIZE as u16,
                    CURSOR_SIZE as u16,
                    &c.image.0[..],
                ),
                None => rfb::cursor_rect(&v.pf, (0, 0), 0, 0, &[]),
            });
        }
        // What the viewer asked for, of what changed, inside both its size and the screen's.
        let visible = Rect {
            x: 0,
            y: 0,
            width: v.size.0.min(s.width),
            height: v.size.1.min(s.height),
        };
        let mut rects = Vec::new();
        let mut left = Vec::new();
        for d in v.damage.drain(..) {
            // What the viewer cannot show is dropped; what it did not ask for is kept.
            let Some(d) = intersect(&d, &visible) else {
                continue;
            };
            match intersect(&d, &request) {
                Some(r) if r == d => rects.push(r),
                Some(r) => {
                    rects.push(r);
                    left.extend(damage::subtract(&d, &r));
                }
                None => left.push(d),
            }
        }
        for d in left {
            v.damage(d);
        }
        if rects.is_empty() && pseudo.is_empty() && cursor.is_none() {
            return Ok(());
        }
        // Copy the pixels out, then encode without the lock: the queue thread may be waiting.
        let pixels: Vec<(Rect, Vec<u8>)> = rects
            .iter()
            .map(|r| (*r, copy_rect(&s.pixels, s.width, r)))
            .collect();
        drop(screens);
        v.request = None;
        let count = pseudo.len() + usize::from(cursor.is_some()) + pixels.len();
        let mut out = std::mem::take(&mut v.out);
        out.clear();
        v.sent = 0;
        out.extend_from_slice(&rfb::update_header(count as u16));
        for p in pseudo {
            out.extend_from_slice(&p);
        }
        if let Some(c) = cursor {
            out.extend_from_slice(&c);
        }
        for (r, px) in pixels {
            let at = (r.x as u16, r.y as u16, r.width as u16, r.height as u16);
            match v.zrle.as_mut().filter(|_| v.use_zrle) {
                Some(z) => z
                    .encode(&v.pf, at, &px, &mut out)
                    .map_err(|e| format!("ZRLE: {e}"))?,
                None => {
                    out.extend_from_slice(&rfb::rect_header(at.0, at.1, at.2, at.3, encoding::RAW));
                    v.pf.translate(&px, &mut out);
                }
            }
        }
        v.out = out;
        v.progress = Instant::now();
        flush(v)
    }

    /// Drops viewers that took too long to say hello or stopped reading.
    fn expire(&mut self) {
        self.resume_listeners();
        if self.shared.viewers.load(Ordering::SeqCst) > 0 {
            self.maybe_refresh();
        }
        let now = Instant::now();
        for slot in 0..self.viewers.len() {
            let Some(why) = self
                .viewers
                .get(slot)
                .and_then(Option::as_ref)
                .and_then(|v| expired(&Timing::of(v), now))
            else {
                continue;
            };
            self.drop_viewer(slot, why);
        }
    }

    fn drop_viewer(&mut self, slot: usize, why: &str) {
        let Some(v) = self.viewers.get_mut(slot).and_then(Option::take) else {
            return;
        };
        let _ = self.epoll.ctl(
            ControlOperation::Delete,
            v.stream.fd(),
            EpollEvent::default(),
        );
        self.shared.budget.give(v.charged);
        if v.phase == Phase::Normal {
            self.shared.viewers.fetch_sub(1, Ordering::AcqRel);
        }
        if why != "closed" {
            self.shared
                .log
                .info(format_args!("vnc: viewer dropped: {why}"));
        }
    }
}

/// Acts on every whole message the viewer sent, then drops them from its input at once (a
/// flood of small messages costs one move of the buffer, not one per message).
fn messages(v: &mut Viewer) -> Result<(), Drop> {
    let mut at = 0;
    loop {
        let rest = v.input.get(at..).unwrap_or_default();
        if v.skip > 0 {
            let skipped = rest.len().min(v.skip as usize);
            at += skipped;
            v.skip -= skipped as u32;
            if v.skip > 0 {
                break;
            }
            continue;
        }
        match rfb::decode(rest).map_err(|e| e.to_string())? {
            Some((msg, used)) => {
                apply(v, msg);
                at += used;
            }
            None if rest.len() > rfb::MAX_MESSAGE => {
                return Err("a message past the largest one".into());
            }
            None => break,
        }
    }
    v.input.drain(..at.min(v.input.len()));
    Ok(())
}

/// What the deadlines of a viewer are judged by.
struct Timing {
    handshaken: bool,
    since: Instant,
    /// Bytes of an update still unwritten, and when the last ones went.
    unwritten: bool,
    progress: Instant,
    /// An update request is pending, and when the viewer last sent anything.
    asking: bool,
    heard: Instant,
}

impl Timing {
    fn of(v: &Viewer) -> Timing {
        Timing {
            handshaken: v.phase == Phase::Normal,
            since: v.since,
            unwritten: v.sent < v.out.len(),
            progress: v.progress,
            asking: v.request.is_some(),
            heard: v.heard,
        }
    }
}

/// Why a viewer is dropped now, if it is: no handshake in time, an update left unread, or
/// connected and asking for nothing (a viewer asks for the next update as soon as it has read
/// one; one that sits silent with nothing asked only holds a place of the VM's few).
fn expired(t: &Timing, now: Instant) -> Option<&'static str> {
    let past = |from: Instant, limit: Duration| now.saturating_duration_since(from) > limit;
    if !t.handshaken {
        return past(t.since, HANDSHAKE_TIME).then_some("no handshake within 10 s");
    }
    if t.unwritten {
        return past(t.progress, STALL_TIME).then_some("stopped reading for 10 s");
    }
    (!t.asking && past(t.heard, IDLE_TIME)).then_some("asked for nothing for 60 s")
}

/// A viewer's message, once connected.
fn apply(v: &mut Viewer, msg: ViewerMessage) {
    match msg {
        ViewerMessage::SetPixelFormat(pf) => {
            v.pf = pf;
            // Its pictures so far were in the old format.
            v.damage(Rect {
                x: 0,
                y: 0,
                width: v.size.0,
                height: v.size.1,
            });
        }
        ViewerMessage::SetEncodings(list) => {
            v.use_zrle = list.contains(&encoding::ZRLE);
            if v.use_zrle {
                v.zrle.get_or_insert_with(ZrleEncoder::default);
            }
            let wanted = list.contains(&encoding::CURSOR);
            if wanted && !v.wants_cursor {
                // Send the shape on the next update.
                v.cursor_serial = u64::MAX;
            }
            v.wants_cursor = wanted;
            let follows = list.contains(&encoding::DESKTOP_SIZE);
            if follows && !v.follows_resize {
                // Tell it the size now, whatever it was told before.
                v.size_serial = u64::MAX;
            }
            v.follows_resize = follows;
        }
        ViewerMessage::UpdateRequest {
            incremental,
            x,
            y,
            width,
            height,
        } => {
            let r = Rect {
                x: x.into(),
                y: y.into(),
                width: width.into(),
                height: height.into(),
            };
            v.request = Some(match v.request {
                Some(old) => bounding(&[old, r]),
                None => r,
            });
            if !incremental {
                v.damage(r);
            }
        }
        ViewerMessage::Input => {}
        ViewerMessage::CutText(len) => v.skip = len,
    }
}

/// Writes what the socket takes now.
fn flush(v: &mut Viewer) -> Result<(), Drop> {
    while v.sent < v.out.len() {
        match v.stream.write(v.out.get(v.sent..).unwrap_or_default()) {
            Ok(0) => return Err("closed".into()),
            Ok(n) => {
                v.sent += n;
                v.progress = Instant::now();
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(()),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(format!("write: {e}")),
        }
    }
    // An update of a big picture leaves a big buffer: let it go rather than keep it per viewer.
    if v.out.capacity() > KEEP_BUFFER {
        v.out = Vec::new();
    } else {
        v.out.clear();
    }
    v.sent = 0;
    Ok(())
}

/// The native pixels of `r` of a `width`-wide picture; black where there are none.
fn copy_rect(pixels: &[u8], width: u32, r: &Rect) -> Vec<u8> {
    let row = r.width as usize * 4;
    let mut out = vec![0u8; row * r.height as usize];
    if pixels.is_empty() {
        return out;
    }
    for (i, dst) in out.chunks_exact_mut(row.max(1)).enumerate() {
        let start = ((r.y as usize + i) * width as usize + r.x as usize) * 4;
        if let Some(src) = pixels.get(start..start + row) {
            dst.copy_from_slice(src);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deadlines() {
        let t0 = Instant::now();
        let at = |secs: u64| t0 + Duration::from_secs(secs);
        let quiet = Timing {
            handshaken: true,
            since: t0,
            unwritten: false,
            progress: t0,
            asking: false,
            heard: t0,
        };
        assert_eq!(expired(&quiet, at(59)), None);
        assert_eq!(expired(&quiet, at(61)), Some("asked for nothing for 60 s"));
        // Waiting for an update of a still screen, however long, is what viewers do.
        let waiting = Timing {
            asking: true,
            ..quiet
        };
        assert_eq!(expired(&waiting, at(3600)), None);
        let unread = Timing {
            unwritten: true,
            ..waiting
        };
        assert_eq!(expired(&unread, at(9)), None);
        assert_eq!(expired(&unread, at(11)), Some("stopped reading for 10 s"));
        let greeting = Timing {
            handshaken: false,
            ..quiet
        };
        assert_eq!(expired(&greeting, at(11)), Some("no handshake within 10 s"));
    }
}
