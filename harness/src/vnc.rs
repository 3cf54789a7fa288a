//! A VNC viewer for tests and benches: RFB 3.8 with security type none, Raw and ZRLE (32-bit
//! pixels only), desktop size and cursor pseudo-encodings. It keeps the picture it was sent, so
//! a test can compare it with what the guest drew. (Real viewers are what the e2e suite uses.)

use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use flate2::{Decompress, FlushDecompress};

pub const RAW: i32 = 0;
pub const ZRLE: i32 = 16;
pub const CURSOR: i32 = -239;
pub const DESKTOP_SIZE: i32 = -223;

/// The cursor a viewer was last sent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CursorShape {
    pub hot: (u16, u16),
    pub width: u16,
    pub height: u16,
    /// B, G, R, X per pixel.
    pub pixels: Vec<u8>,
    pub mask: Vec<u8>,
}

/// One rectangle of an update, as received.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Received {
    pub x: u16,
    pub y: u16,
    pub width: u16,
    pub height: u16,
    pub encoding: i32,
}

pub struct VncViewer {
    stream: UnixStream,
    pub width: u16,
    pub height: u16,
    pub name: String,
    /// B, G, R, X per pixel, `width` x `height`.
    pub picture: Vec<u8>,
    pub cursor: Option<CursorShape>,
    inflater: Decompress,
    /// Rectangles of every update so far.
    pub received: Vec<Received>,
    pub updates: usize,
}

impl VncViewer {
    /// Connects, shakes hands and asks for `encodings`.
    pub fn connect(path: &Path, encodings: &[i32]) -> io::Result<VncViewer> {
        let stream = UnixStream::connect(path)?;
        Self::over(stream, encodings)
    }

    pub fn over(mut stream: UnixStream, encodings: &[i32]) -> io::Result<VncViewer> {
        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        let mut version = [0u8; 12];
        stream.read_exact(&mut version)?;
        if &version != b"RFB 003.008\n" {
            return Err(io::Error::other(format!("server version {version:?}")));
        }
        stream.write_all(b"RFB 003.008\n")?;
        let mut n = [0u8; 1];
        stream.read_exact(&mut n)?;
        let mut types = vec![0u8; usize::from(n[0])];
        stream.read_exact(&mut types)?;
        if !types.contains(&1) {
            return Err(io::Error::other(format!("security types {types:?}")));
        }
        stream.write_all(&[1])?;
        let result = read_u32(&mut stream)?;
        if result != 0 {
            return Err(io::Error::other(format!("security result {result}")));
        }
        stream.write_all(&[1])?;
        let mut init = [0u8; 24];
        stream.read_exact(&mut init)?;
        let width = u16::from_be_bytes([init[0], init[1]]);
        let height = u16::from_be_bytes([init[2], init[3]]);
        if init[4] != 32 || init[6] != 0 || init[14] != 16 || init[15] != 8 || init[16] != 0 {
            return Err(io::Error::other(format!("pixel format {:?}", &init[4..20])));
        }
        let name_len = u32::from_be_bytes([init[20], init[21], init[22], init[23]]);
        let mut name = vec![0u8; name_len.min(4096) as usize];
        stream.read_exact(&mut name)?;
        let mut msg = vec![2u8, 0];
        msg.extend_from_slice(&(encodings.len() as u16).to_be_bytes());
        for e in encodings {
            msg.extend_from_slice(&e.to_be_bytes());
        }
        stream.write_all(&msg)?;
        Ok(VncViewer {
            stream,
            width,
            height,
            name: String::from_utf8_lossy(&name).into_owned(),
            picture: vec![0; usize::from(width) * usize::from(height) * 4],
            cursor: None,
            inflater: Decompress::new(true),
            received: Vec::new(),
            updates: 0,
        })
    }

    pub fn request(&mut self, incremental: bool) -> io::Result<()> {
        let mut msg = vec![3u8, u8::from(incremental), 0, 0, 0, 0];
        msg.extend_from_slice(&self.width.to_be_bytes());
        msg.extend_from_slice(&self.height.to_be_bytes());
        self.stream.write_all(&msg)
    }

    /// The connection itself, for messages this viewer does not send on its own.
    pub fn stream(&self) -> &UnixStream {
        &self.stream
    }

    pub fn set_read_timeout(&self, t: Duration) -> io::Result<()> {
        self.stream.set_read_timeout(Some(t))
    }

    /// Reads one FramebufferUpdate and applies it; returns its rectangles.
    pub fn read_update(&mut self) -> io::Result<Vec<Received>> {
        let mut hdr = [0u8; 4];
        self.stream.read_exact(&mut hdr)?;
        if hdr[0] != 0 {
            return Err(io::Error::other(format!("server message {}", hdr[0])));
        }
        let count = u16::from_be_bytes([hdr[2], hdr[3]]);
        let mut rects = Vec::new();
        for _ in 0..count {
            let mut r = [0u8; 12];
            self.stream.read_exact(&mut r)?;
            let be = |i: usize| u16::from_be_bytes([r[i], r[i + 1]]);
            let rect = Received {
                x: be(0),
                y: be(2),
                width: be(4),
                height: be(6),
                encoding: i32::from_be_bytes([r[8], r[9], r[10], r[11]]),
            };
            self.apply(rect)?;
            rects.push(rect);
        }
        self.updates += 1;
        self.received.extend_from_slice(&rects);
        Ok(rects)
    }

    /// Asks for updates and applies them until `done` holds, or fails after `timeout`.
    pub fn wait_for(
        &mut self,
        timeout: Duration,
        mut done: impl FnMut(&VncViewer) -> bool,
    ) -> io::Result<()> {
        let until = Instant::now() + timeout;
        let mut incremental = false;
        while !done(self) {
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "picture never came",
                ));
            }
            self.stream.set_read_timeout(Some(left))?;
            self.request(incremental)?;
            incremental = true;
            self.read_update()?;
        }
        Ok(())
    }

    /// The B, G, R bytes of the picture, without the unused fourth byte.
    pub fn bgr(&self) -> Vec<u8> {
        bgr(&self.picture)
    }

    fn apply(&mut self, r: Received) -> io::Result<()> {
        let (w, h) = (usize::from(r.width), usize::from(r.height));
        match r.encoding {
            DESKTOP_SIZE => {
                self.width = r.width;
                self.height = r.height;
                self.picture = vec![0; w * h * 4];
            }
            CURSOR => {
                let mut pixels = vec![0u8; w * h * 4];
                self.stream.read_exact(&mut pixels)?;
                let mut mask = vec![0u8; w.div_ceil(8) * h];
                self.stream.read_exact(&mut mask)?;
                self.cursor = Some(CursorShape {
                    hot: (r.x, r.y),
                    width: r.width,
                    height: r.height,
                    pixels,
                    mask,
                });
            }
            RAW => {
                let mut px = vec![0u8; w * h * 4];
                self.stream.read_exact(&mut px)?;
                self.blit(r, &px);
            }
            ZRLE => {
                let len = read_u32(&mut self.stream)? as usize;
                let mut data = vec![0u8; len];
                self.stream.read_exact(&mut data)?;
                let px = self.unzrle(&data, w, h)?;
                self.blit(r, &px);
            }
            e => return Err(io::Error::other(format!("encoding {e}"))),
        }
        Ok(())
    }

    fn blit(&mut self, r: Received, px: &[u8]) {
        let stride = usize::from(self.width) * 4;
        let row = usize::from(r.width) * 4;
        for (i, src) in px.chunks_exact(row.max(1)).enumerate() {
            let at = (usize::from(r.y) + i) * stride + usize::from(r.x) * 4;
            if let Some(dst) = self.picture.get_mut(at..at + row) {
                dst.copy_from_slice(src);
            }
        }
    }

    /// ZRLE with 3-byte compact pixels: raw, solid and packed-palette tiles (what vgpud sends).
    fn unzrle(&mut self, data: &[u8], w: usize, h: usize) -> io::Result<Vec<u8>> {
        let mut raw = Vec::with_capacity(w * h * 4 + 4096);
        // Inflate hands out a block at a time: go on until all input is in and a call gives
        // nothing more.
        let mut input = data;
        loop {
            raw.reserve(64 << 10);
            let (in_before, out_before) = (self.inflater.total_in(), self.inflater.total_out());
            self.inflater
                .decompress_vec(input, &mut raw, FlushDecompress::Sync)
                .map_err(io::Error::other)?;
            let used = (self.inflater.total_in() - in_before) as usize;
            input = input.get(used..).unwrap_or_default();
            if self.inflater.total_out() == out_before && (input.is_empty() || used == 0) {
                break;
            }
        }
        if !input.is_empty() {
            return Err(io::Error::other("ZRLE data inflates no further"));
        }
        let mut at = 0usize;
        let short = || {
            io::Error::other(format!(
                "ZRLE data ends early: {w}x{h} from {} bytes, {} inflated",
                data.len(),
                raw.len()
            ))
        };
        let byte = |at: &mut usize| -> io::Result<u8> {
            let b = *raw.get(*at).ok_or_else(short)?;
            *at += 1;
            Ok(b)
        };
        let mut img = vec![0u8; w * h * 4];
        for ty in (0..h).step_by(64) {
            for tx in (0..w).step_by(64) {
                let (tw, th) = ((w - tx).min(64), (h - ty).min(64));
                let kind = byte(&mut at)?;
                let cpixel = |at: &mut usize| -> io::Result<[u8; 4]> {
                    Ok([byte(at)?, byte(at)?, byte(at)?, 0])
                };
                let mut px = Vec::with_capacity(tw * th);
                match kind {
                    0 => {
                        for _ in 0..tw * th {
                            px.push(cpixel(&mut at)?);
                        }
                    }
                    1 => px = vec![cpixel(&mut at)?; tw * th],
                    n @ 2..=16 => {
                        let pal = (0..n)
                            .map(|_| cpixel(&mut at))
                            .collect::<io::Result<Vec<_>>>()?;
                        let bits = match n {
                            2 => 1,
                            3 | 4 => 2,
                            _ => 4,
                        };
                        for _ in 0..th {
                            let (mut cur, mut used) = (0u8, 8);
                            for _ in 0..tw {
                                if used == 8 {
                                    cur = byte(&mut at)?;
                                    used = 0;
                                }
                                let i = (cur >> (8 - bits - used)) & ((1 << bits) - 1);
                                used += bits;
                                px.push(*pal.get(usize::from(i)).ok_or_else(short)?);
                            }
                        }
                    }
                    k => return Err(io::Error::other(format!("ZRLE subencoding {k}"))),
                }
                for (i, p) in px.iter().enumerate() {
                    let (x, y) = (tx + i % tw, ty + i / tw);
                    if let Some(dst) = img.get_mut((y * w + x) * 4..(y * w + x) * 4 + 4) {
                        dst.copy_from_slice(p);
                    }
                }
            }
        }
        Ok(img)
    }
}

fn read_u32(s: &mut UnixStream) -> io::Result<u32> {
    let mut b = [0u8; 4];
    s.read_exact(&mut b)?;
    Ok(u32::from_be_bytes(b))
}

/// B, G, R of each 4-byte pixel.
pub fn bgr(pixels: &[u8]) -> Vec<u8> {
    pixels
        .chunks_exact(4)
        .flat_map(|p| [p[0], p[1], p[2]])
        .collect()
}
