//! The QEMU side of the vhost-user-gpu display socket (the one passed with GPU_SET_SOCKET).
//!
//! Messages: 12-byte header (request u32, flags u32, size u32) then `size` payload bytes.
//! Only GET_PROTOCOL_FEATURES, GET_DISPLAY_INFO, GET_EDID and DMABUF_UPDATE are answered;
//! the backend blocks on those answers, everything else is fire-and-forget.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use vmm_sys_util::sock_ctrl_msg::ScmSocket;

use vgpud_protocol::{edid_for_mode, resp};

const GET_PROTOCOL_FEATURES: u32 = 1;
const SET_PROTOCOL_FEATURES: u32 = 2;
const GET_DISPLAY_INFO: u32 = 3;
const CURSOR_POS: u32 = 4;
const CURSOR_POS_HIDE: u32 = 5;
const CURSOR_UPDATE: u32 = 6;
const SCANOUT: u32 = 7;
const UPDATE: u32 = 8;
const DMABUF_UPDATE: u32 = 10;
const GET_EDID: u32 = 11;

const FLAG_REPLY: u32 = 0x4;
/// Protocol feature bit numbers (the mask is `1 << bit`).
const PROTOCOL_F_EDID: u64 = 0;

const RESP_OK_DISPLAY_INFO: u32 = resp::OK_DISPLAY_INFO;
const RESP_OK_EDID: u32 = resp::OK_EDID;
const RESP_ERR_INVALID_SCANOUT_ID: u32 = resp::ERR_INVALID_SCANOUT_ID;

use vgpud_protocol::MAX_SCANOUTS;
const CURSOR_BYTES: usize = 64 * 64 * 4;
/// Refuse payloads above this (a corrupt size field would otherwise allocate gigabytes).
const MAX_PAYLOAD: u32 = 256 << 20;

/// The scanout image as assembled from UPDATE messages.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    pub width: u32,
    pub height: u32,
    /// 4 bytes per pixel, row-major, as the backend sent them.
    pub pixels: Vec<u8>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DisplayEvent {
    Scanout {
        scanout: u32,
        width: u32,
        height: u32,
    },
    Update {
        scanout: u32,
        x: u32,
        y: u32,
        width: u32,
        height: u32,
    },
    CursorPos {
        scanout: u32,
        x: u32,
        y: u32,
    },
    CursorHide {
        scanout: u32,
    },
    CursorUpdate {
        scanout: u32,
        x: u32,
        y: u32,
        hot_x: u32,
        hot_y: u32,
    },
    /// Any other request code (DMABUF_* included).
    Other(u32),
}

#[derive(Default)]
struct State {
    frames: HashMap<u32, Frame>,
    events: Vec<DisplayEvent>,
    updates: usize,
    protocol_features: Option<u64>,
    cursor: Option<Vec<u8>>,
    errors: Vec<String>,
    closed: bool,
}

/// See the module docs. Shared between the test and the thread serving the socket.
pub struct DisplayPeer {
    modes: Mutex<Vec<(u32, u32)>>,
    state: Mutex<State>,
    cond: Condvar,
    stall: crate::util::Stall,
}

impl DisplayPeer {
    pub(crate) fn new(modes: Vec<(u32, u32)>) -> DisplayPeer {
        DisplayPeer {
            modes: Mutex::new(modes),
            state: Mutex::new(State::default()),
            cond: Condvar::new(),
            stall: crate::util::Stall::default(),
        }
    }

    /// While on, the display stops reading its socket: requests go unanswered and, once the
    /// socket buffer is full, the backend's writes block.
    pub fn stall(&self, on: bool) {
        self.stall.set(on);
    }

    /// Resizes the display, as a user resizing QEMU's window does; the backend learns of it the
    /// next time it asks (GET_DISPLAY_INFO, GET_EDID).
    pub fn set_modes(&self, modes: Vec<(u32, u32)>) {
        *self.modes.lock().unwrap() = modes;
    }

    pub fn frame(&self, scanout: u32) -> Option<Frame> {
        self.state.lock().unwrap().frames.get(&scanout).cloned()
    }

    pub fn events(&self) -> Vec<DisplayEvent> {
        self.state.lock().unwrap().events.clone()
    }

    pub fn update_count(&self) -> usize {
        self.state.lock().unwrap().updates
    }

    /// True once at least `n` UPDATE messages were seen; false on timeout.
    pub fn wait_updates(&self, n: usize, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut st = self.state.lock().unwrap();
        while st.updates < n {
            let now = Instant::now();
            if now >= deadline || st.closed {
                return false;
            }
            st = self.cond.wait_timeout(st, deadline - now).unwrap().0;
        }
        true
    }

    /// True once `event` was seen on the socket; false on timeout or close. The
    /// backend's display messages are not acknowledged, so they can arrive after
    /// the control queue answered the command that caused them.
    pub fn wait_event(&self, event: &DisplayEvent, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut st = self.state.lock().unwrap();
        while !st.events.contains(event) {
            let now = Instant::now();
            if now >= deadline || st.closed {
                return false;
            }
            st = self.cond.wait_timeout(st, deadline - now).unwrap().0;
        }
        true
    }

    /// What the backend sent in SET_PROTOCOL_FEATURES, if it did.
    pub fn protocol_features(&self) -> Option<u64> {
        self.state.lock().unwrap().protocol_features
    }

    /// The last cursor image (64x64, 4 bytes per pixel) from CURSOR_UPDATE.
    pub fn cursor_image(&self) -> Option<Vec<u8>> {
        self.state.lock().unwrap().cursor.clone()
    }

    /// Protocol violations seen on the socket (bad sizes, updates outside the scanout, ...).
    pub fn errors(&self) -> Vec<String> {
        self.state.lock().unwrap().errors.clone()
    }

    /// Whether the backend closed the display socket.
    pub fn is_closed(&self) -> bool {
        self.state.lock().unwrap().closed
    }

    fn record(&self, f: impl FnOnce(&mut State)) {
        f(&mut self.state.lock().unwrap());
        self.cond.notify_all();
    }

    fn error(&self, msg: String) {
        self.record(|st| st.errors.push(msg));
    }

    /// Serves the socket until EOF or an I/O error. Runs on its own thread.
    pub(crate) fn serve(self: Arc<Self>, mut sock: UnixStream) {
        let mut hdr = [0u8; 12];
        loop {
            self.stall.wait_while_on();
            match read_header(&sock, &mut hdr) {
                Ok(true) => {}
                Ok(false) => break,
                Err(e) => {
                    self.error(format!("reading header: {e}"));
                    break;
                }
            }
            let req = u32::from_le_bytes(hdr[0..4].try_into().unwrap());
            let size = u32::from_le_bytes(hdr[8..12].try_into().unwrap());
            if size > MAX_PAYLOAD {
                self.error(format!("request {req}: payload size {size} too large"));
                break;
            }
            let mut payload = vec![0u8; size as usize];
            if let Err(e) = sock.read_exact(&mut payload) {
                self.error(format!("request {req}: reading {size} payload bytes: {e}"));
                break;
            }
            if let Err(e) = self.handle(&mut sock, req, &payload) {
                self.error(format!("request {req}: sending reply: {e}"));
                break;
            }
        }
        self.record(|st| st.closed = true);
    }

    fn handle(&self, sock: &mut UnixStream, req: u32, p: &[u8]) -> io::Result<()> {
        let u = |i: usize| -> Option<u32> {
            p.get(4 * i..4 * i + 4)
                .map(|b| u32::from_le_bytes(b.try_into().unwrap()))
        };
        let need = |n: usize| -> bool {
            if p.len() < n {
                self.error(format!(
                    "request {req}: payload {} bytes, expected {n}",
                    p.len()
                ));
                false
            } else {
                true
            }
        };
        match req {
            GET_PROTOCOL_FEATURES => {
                reply(sock, req, &(1u64 << PROTOCOL_F_EDID).to_le_bytes())?;
            }
            SET_PROTOCOL_FEATURES if need(8) => {
                let v = u64::from_le_bytes(p[..8].try_into().unwrap());
                self.record(|st| st.protocol_features = Some(v));
            }
            GET_DISPLAY_INFO => reply(sock, req, &self.display_info())?,
            GET_EDID => reply(sock, req, &self.edid_reply(u(0).unwrap_or(u32::MAX)))?,
            DMABUF_UPDATE => {
                self.record(|st| st.events.push(DisplayEvent::Other(req)));
                reply(sock, req, &[])?;
            }
            CURSOR_POS | CURSOR_POS_HIDE if need(12) => {
                let (scanout, x, y) = (u(0).unwrap(), u(1).unwrap(), u(2).unwrap());
                let ev = if req == CURSOR_POS {
                    DisplayEvent::CursorPos { scanout, x, y }
                } else {
                    DisplayEvent::CursorHide { scanout }
                };
                self.record(|st| st.events.push(ev));
            }
            CURSOR_UPDATE if need(20 + CURSOR_BYTES) => {
                let ev = DisplayEvent::CursorUpdate {
                    scanout: u(0).unwrap(),
                    x: u(1).unwrap(),
                    y: u(2).unwrap(),
                    hot_x: u(3).unwrap(),
                    hot_y: u(4).unwrap(),
                };
                let image = p[20..20 + CURSOR_BYTES].to_vec();
                self.record(|st| {
                    st.events.push(ev);
                    st.cursor = Some(image);
                });
            }
            SCANOUT if need(12) => {
                let (scanout, width, height) = (u(0).unwrap(), u(1).unwrap(), u(2).unwrap());
                self.record(|st| {
                    st.events.push(DisplayEvent::Scanout {
                        scanout,
                        width,
                        height,
                    });
                    if width == 0 || height == 0 {
                        st.frames.remove(&scanout);
                    } else {
                        let pixels = vec![0u8; width as usize * height as usize * 4];
                        st.frames.insert(
                            scanout,
                            Frame {
                                width,
                                height,
                                pixels,
                            },
                        );
                    }
                });
            }
            UPDATE if need(20) => self.update(
                [
                    u(0).unwrap(),
                    u(1).unwrap(),
                    u(2).unwrap(),
                    u(3).unwrap(),
                    u(4).unwrap(),
                ],
                &p[20..],
            ),
            CURSOR_POS
            | CURSOR_POS_HIDE
            | CURSOR_UPDATE
            | SCANOUT
            | UPDATE
            | SET_PROTOCOL_FEATURES => {} // short payload, already recorded as an error
            other => self.record(|st| st.events.push(DisplayEvent::Other(other))),
        }
        Ok(())
    }

    fn update(&self, [scanout, x, y, width, height]: [u32; 5], data: &[u8]) {
        let expected = width as u64 * height as u64 * 4;
        let mut st = self.state.lock().unwrap();
        st.events.push(DisplayEvent::Update {
            scanout,
            x,
            y,
            width,
            height,
        });
        st.updates += 1;
        let mut problem = None;
        if data.len() as u64 != expected {
            problem = Some(format!(
                "UPDATE {width}x{height}: {} data bytes, expected {expected}",
                data.len()
            ));
        } else if let Some(f) = st.frames.get_mut(&scanout) {
            if x as u64 + width as u64 > f.width as u64
                || y as u64 + height as u64 > f.height as u64
            {
                problem = Some(format!(
                    "UPDATE {x},{y} {width}x{height} outside scanout {scanout} ({}x{})",
                    f.width, f.height
                ));
            }
            // Apply what fits.
            let cols = width.min(f.width.saturating_sub(x)) as usize;
            let rows = height.min(f.height.saturating_sub(y)) as usize;
            for r in 0..rows {
                let src = r * width as usize * 4;
                let dst = ((y as usize + r) * f.width as usize + x as usize) * 4;
                f.pixels[dst..dst + cols * 4].copy_from_slice(&data[src..src + cols * 4]);
            }
        } else {
            problem = Some(format!("UPDATE for scanout {scanout} without a SCANOUT"));
        }
        if let Some(p) = problem {
            st.errors.push(p);
        }
        drop(st);
        self.cond.notify_all();
    }

    fn display_info(&self) -> Vec<u8> {
        // virtio_gpu_resp_display_info: 24-byte header + 16 x (rect x,y,w,h, enabled, flags).
        let mut r = vec![0u8; 24 + MAX_SCANOUTS * 24];
        r[0..4].copy_from_slice(&RESP_OK_DISPLAY_INFO.to_le_bytes());
        let modes = self.modes.lock().unwrap().clone();
        for (i, &(w, h)) in modes.iter().take(MAX_SCANOUTS).enumerate() {
            let o = 24 + i * 24;
            r[o + 8..o + 12].copy_from_slice(&w.to_le_bytes());
            r[o + 12..o + 16].copy_from_slice(&h.to_le_bytes());
            r[o + 16..o + 20].copy_from_slice(&1u32.to_le_bytes());
        }
        r
    }

    fn edid_reply(&self, scanout: u32) -> Vec<u8> {
        // virtio_gpu_resp_edid: 24-byte header, size u32, padding u32, edid[1024].
        let mut r = vec![0u8; 24 + 8 + 1024];
        let mode = self.modes.lock().unwrap().get(scanout as usize).copied();
        match mode {
            Some((w, h)) => {
                r[0..4].copy_from_slice(&RESP_OK_EDID.to_le_bytes());
                r[24..28].copy_from_slice(&128u32.to_le_bytes());
                r[32..160].copy_from_slice(&edid_for_mode(w, h, b"vgpud-harness"));
            }
            None => r[0..4].copy_from_slice(&RESP_ERR_INVALID_SCANOUT_ID.to_le_bytes()),
        }
        r
    }
}

/// Reads one 12-byte header, closing any fds that came with it (DMABUF_SCANOUT carries one).
/// Ok(false) on a clean EOF before the header.
fn read_header(sock: &UnixStream, hdr: &mut [u8; 12]) -> io::Result<bool> {
    let (n, fd): (usize, Option<File>) =
        sock.recv_with_fd(&mut hdr[..]).map_err(io::Error::from)?;
    drop(fd);
    if n == 0 {
        return Ok(false);
    }
    let mut s = sock;
    s.read_exact(&mut hdr[n..]).map(|_| true)
}

fn reply(sock: &mut UnixStream, req: u32, body: &[u8]) -> io::Result<()> {
    let mut msg = Vec::with_capacity(12 + body.len());
    msg.extend_from_slice(&req.to_le_bytes());
    msg.extend_from_slice(&FLAG_REPLY.to_le_bytes());
    msg.extend_from_slice(&(body.len() as u32).to_le_bytes());
    msg.extend_from_slice(body);
    sock.write_all(&msg)
}
