//! The RFB 3.8 wire format (RFC 6143) as a VNC server speaks it: what a viewer may send, decoded
//! from a bounded buffer, and the messages and pixel formats the server writes. Pure, no I/O:
//! the fuzz target `vnc` feeds it whatever bytes it likes.

use thiserror::Error;

/// What the server says first.
pub const VERSION: &[u8; 12] = b"RFB 003.008\n";

/// Encodings (RFC 6143 7.7 and 7.8).
pub mod encoding {
    pub const RAW: i32 = 0;
    pub const ZRLE: i32 = 16;
    /// Pseudo-encodings: the viewer draws the cursor, and follows desktop resizes.
    pub const CURSOR: i32 = -239;
    pub const DESKTOP_SIZE: i32 = -223;
}

/// Longest SetEncodings list read; real viewers send a few dozen.
pub const MAX_ENCODINGS: usize = 256;
/// Longest clipboard text a viewer may send. It is skipped, never stored.
pub const MAX_CUT_TEXT: u32 = 1 << 20;
/// The longest message a viewer sends, clipboard text aside: SetEncodings at `MAX_ENCODINGS`.
pub const MAX_MESSAGE: usize = 4 + 4 * MAX_ENCODINGS;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum ProtocolError {
    #[error("not an RFB 3.x viewer")]
    Version,
    #[error("security type {0} (only 1, none, is offered)")]
    Security(u8),
    #[error("message type {0} is not one this server knows")]
    UnknownMessage(u8),
    #[error("{0} encodings (at most {MAX_ENCODINGS})")]
    TooManyEncodings(usize),
    #[error("clipboard text of {0} bytes (at most {MAX_CUT_TEXT})")]
    CutTextTooLong(u32),
    #[error("pixel format: {0}")]
    PixelFormat(&'static str),
}

/// How pixels are laid out on the wire (RFC 6143 7.4). Only true colour is served.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PixelFormat {
    pub bits_per_pixel: u8,
    pub depth: u8,
    pub big_endian: bool,
    pub red_max: u16,
    pub green_max: u16,
    pub blue_max: u16,
    pub red_shift: u8,
    pub green_shift: u8,
    pub blue_shift: u8,
}

impl PixelFormat {
    /// The server's own: 32-bit little-endian xRGB, the bytes of the screens as they are stored
    /// (B, G, R, X).
    pub const NATIVE: PixelFormat = PixelFormat {
        bits_per_pixel: 32,
        depth: 24,
        big_endian: false,
        red_max: 255,
        green_max: 255,
        blue_max: 255,
        red_shift: 16,
        green_shift: 8,
        blue_shift: 0,
    };

    pub fn bytes_per_pixel(&self) -> usize {
        usize::from(self.bits_per_pixel / 8)
    }

    pub fn encode(&self) -> [u8; 16] {
        let mut b = [0u8; 16];
        b[0] = self.bits_per_pixel;
        b[1] = self.depth;
        b[2] = u8::from(self.big_endian);
        b[3] = 1;
        b[4..6].copy_from_slice(&self.red_max.to_be_bytes());
        b[6..8].copy_from_slice(&self.green_max.to_be_bytes());
        b[8..10].copy_from_slice(&self.blue_max.to_be_bytes());
        b[10] = self.red_shift;
        b[11] = self.green_shift;
        b[12] = self.blue_shift;
        b
    }

    /// A viewer's SetPixelFormat body, checked: true colour, 8, 16 or 32 bits, every channel
    /// inside the pixel.
    pub fn decode(b: &[u8; 16]) -> Result<Self, ProtocolError> {
        let be16 = |i: usize| u16::from_be_bytes([b[i], b[i + 1]]);
        let pf = PixelFormat {
            bits_per_pixel: b[0],
            depth: b[1],
            big_endian: b[2] != 0,
            red_max: be16(4),
            green_max: be16(6),
            blue_max: be16(8),
            red_shift: b[10],
            green_shift: b[11],
            blue_shift: b[12],
        };
        if b[3] == 0 {
            return Err(ProtocolError::PixelFormat("colour maps are not served"));
        }
        if !matches!(pf.bits_per_pixel, 8 | 16 | 32) {
            return Err(ProtocolError::PixelFormat("bits per pixel not 8, 16 or 32"));
        }
        let fits = |max: u16, shift: u8| {
            u32::from(shift) < u32::from(pf.bits_per_pixel)
                && (u64::from(max) << shift) < (1u64 << pf.bits_per_pixel)
        };
        if !(fits(pf.red_max, pf.red_shift)
            && fits(pf.green_max, pf.green_shift)
            && fits(pf.blue_max, pf.blue_shift))
        {
            return Err(ProtocolError::PixelFormat("a channel outside the pixel"));
        }
        Ok(pf)
    }

    /// One native pixel (B, G, R, X bytes) as this format's value.
    fn value(&self, bgrx: &[u8]) -> u32 {
        let scale = |v: u8, max: u16| (u32::from(v) * u32::from(max) + 127) / 255;
        let (b, g, r) = match bgrx {
            [b, g, r, ..] => (*b, *g, *r),
            _ => (0, 0, 0),
        };
        scale(r, self.red_max) << self.red_shift
            | scale(g, self.green_max) << self.green_shift
            | scale(b, self.blue_max) << self.blue_shift
    }

    /// Appends native pixels (4 bytes each) in this format.
    pub fn translate(&self, native: &[u8], out: &mut Vec<u8>) {
        if *self == PixelFormat::NATIVE {
            out.extend_from_slice(native);
            return;
        }
        let n = self.bytes_per_pixel();
        for px in native.chunks_exact(4) {
            let v = self.value(px);
            match (n, self.big_endian) {
                (4, false) => out.extend_from_slice(&v.to_le_bytes()),
                (4, true) => out.extend_from_slice(&v.to_be_bytes()),
                (2, false) => out.extend_from_slice(&(v as u16).to_le_bytes()),
                (2, true) => out.extend_from_slice(&(v as u16).to_be_bytes()),
                _ => out.push(v as u8),
            }
        }
    }

    /// ZRLE's compact pixel (RFC 6143 7.7.6): which bytes of a translated pixel are sent. Three
    /// of four when a 32-bit pixel's colour fits in its low or high three bytes.
    pub fn cpixel(&self) -> std::ops::Range<usize> {
        let n = self.bytes_per_pixel();
        if n != 4 || self.depth > 24 {
            return 0..n;
        }
        let mask = u32::from(self.red_max) << self.red_shift
            | u32::from(self.green_max) << self.green_shift
            | u32::from(self.blue_max) << self.blue_shift;
        // Bytes as they sit in memory: the low three come first in little-endian.
        let low = mask & 0xff00_0000 == 0;
        let high = mask & 0x0000_00ff == 0;
        match (low, high, self.big_endian) {
            (true, _, false) | (_, true, true) => 0..3,
            (true, _, true) | (_, true, false) => 1..4,
            _ => 0..4,
        }
    }
}

/// What a viewer asked for, once connected.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ViewerMessage {
    SetPixelFormat(PixelFormat),
    SetEncodings(Vec<i32>),
    UpdateRequest {
        incremental: bool,
        x: u16,
        y: u16,
        width: u16,
        height: u16,
    },
    /// Keyboard and pointer: read and dropped (vgpud has no input device).
    Input,
    /// Clipboard text of this many bytes follows; it is skipped.
    CutText(u32),
}

/// Decodes the first message of `buf`: `Ok(None)` until it is whole, else the message and the
/// bytes it took. A clipboard's text is not part of the message (see `CutText`).
pub fn decode(buf: &[u8]) -> Result<Option<(ViewerMessage, usize)>, ProtocolError> {
    let Some(&kind) = buf.first() else {
        return Ok(None);
    };
    let need = match kind {
        0 => 20,
        2 => match buf.get(2..4) {
            Some(&[hi, lo]) => {
                let n = usize::from(u16::from_be_bytes([hi, lo]));
                if n > MAX_ENCODINGS {
                    return Err(ProtocolError::TooManyEncodings(n));
                }
                4 + 4 * n
            }
            _ => return Ok(None),
        },
        3 => 10,
        4 => 8,
        5 => 6,
        6 => 8,
        k => return Err(ProtocolError::UnknownMessage(k)),
    };
    let Some(msg) = buf.get(..need) else {
        return Ok(None);
    };
    let be16 = |i: usize| u16::from_be_bytes([msg[i], msg[i + 1]]);
    let decoded = match kind {
        0 => {
            let mut pf = [0u8; 16];
            pf.copy_from_slice(&msg[4..20]);
            ViewerMessage::SetPixelFormat(PixelFormat::decode(&pf)?)
        }
        2 => ViewerMessage::SetEncodings(
            msg[4..]
                .chunks_exact(4)
                .map(|c| i32::from_be_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
        ),
        3 => ViewerMessage::UpdateRequest {
            incremental: msg[1] != 0,
            x: be16(2),
            y: be16(4),
            width: be16(6),
            height: be16(8),
        },
        6 => {
            let len = u32::from_be_bytes([msg[4], msg[5], msg[6], msg[7]]);
            if len > MAX_CUT_TEXT {
                return Err(ProtocolError::CutTextTooLong(len));
            }
            ViewerMessage::CutText(len)
        }
        _ => ViewerMessage::Input,
    };
    Ok(Some((decoded, need)))
}

/// The viewer's ProtocolVersion: 3.3, 3.7 and 3.8 are served (others answer as 3.3 would,
/// RFC 6143 7.1.1). Returns the minor version.
pub fn decode_version(msg: &[u8; 12]) -> Result<u8, ProtocolError> {
    if &msg[..8] != b"RFB 003." || msg[11] != b'\n' {
        return Err(ProtocolError::Version);
    }
    let minor = std::str::from_utf8(&msg[8..11])
        .ok()
        .and_then(|m| m.parse::<u16>().ok())
        .ok_or(ProtocolError::Version)?;
    Ok(match minor {
        7 => 7,
        m if m >= 8 => 8,
        _ => 3,
    })
}

/// ServerInit: the desktop's size, the server's pixel format and the desktop's name.
pub fn server_init(width: u16, height: u16, name: &str) -> Vec<u8> {
    let mut m = Vec::with_capacity(24 + name.len());
    m.extend_from_slice(&width.to_be_bytes());
    m.extend_from_slice(&height.to_be_bytes());
    m.extend_from_slice(&PixelFormat::NATIVE.encode());
    m.extend_from_slice(&(name.len() as u32).to_be_bytes());
    m.extend_from_slice(name.as_bytes());
    m
}

/// A FramebufferUpdate's header for `rects` rectangles.
pub fn update_header(rects: u16) -> [u8; 4] {
    let [hi, lo] = rects.to_be_bytes();
    [0, 0, hi, lo]
}

/// A rectangle's header.
pub fn rect_header(x: u16, y: u16, width: u16, height: u16, encoding: i32) -> [u8; 12] {
    let mut h = [0u8; 12];
    h[0..2].copy_from_slice(&x.to_be_bytes());
    h[2..4].copy_from_slice(&y.to_be_bytes());
    h[4..6].copy_from_slice(&width.to_be_bytes());
    h[6..8].copy_from_slice(&height.to_be_bytes());
    h[8..12].copy_from_slice(&encoding.to_be_bytes());
    h
}

/// The cursor pseudo-rectangle (RFC 6143 7.8.1): `image` is `width`x`height` native pixels whose
/// fourth byte is alpha; a pixel is drawn where alpha is at least half.
pub fn cursor_rect(
    pf: &PixelFormat,
    hot: (u16, u16),
    width: u16,
    height: u16,
    image: &[u8],
) -> Vec<u8> {
    let mut m = rect_header(hot.0, hot.1, width, height, encoding::CURSOR).to_vec();
    pf.translate(image, &mut m);
    let row_bytes = usize::from(width).div_ceil(8);
    for row in image
        .chunks_exact(usize::from(width).max(1) * 4)
        .take(usize::from(height))
    {
        let mut mask = vec![0u8; row_bytes];
        for (i, px) in row.chunks_exact(4).enumerate() {
            if px.get(3).is_some_and(|a| *a >= 0x80) {
                if let Some(byte) = mask.get_mut(i / 8) {
                    *byte |= 0x80 >> (i % 8);
                }
            }
        }
        m.extend_from_slice(&mask);
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_decode_once_whole() {
        let req = [3u8, 1, 0, 1, 0, 2, 0, 3, 0, 4];
        assert_eq!(decode(&req[..9]), Ok(None));
        let want = ViewerMessage::UpdateRequest {
            incremental: true,
            x: 1,
            y: 2,
            width: 3,
            height: 4,
        };
        assert_eq!(decode(&req), Ok(Some((want, 10))));
        let enc = [2u8, 0, 0, 2, 0, 0, 0, 16, 0xff, 0xff, 0xff, 0x11];
        assert_eq!(
            decode(&enc),
            Ok(Some((ViewerMessage::SetEncodings(vec![16, -239]), 12)))
        );
    }

    #[test]
    fn hostile_sizes_are_refused_before_reading() {
        assert_eq!(
            decode(&[2, 0, 0xff, 0xff]),
            Err(ProtocolError::TooManyEncodings(65535))
        );
        assert_eq!(
            decode(&[6, 0, 0, 0, 0xff, 0xff, 0xff, 0xff]),
            Err(ProtocolError::CutTextTooLong(u32::MAX))
        );
        assert_eq!(decode(&[77]), Err(ProtocolError::UnknownMessage(77)));
    }

    #[test]
    fn pixel_formats_translate() {
        let bgrx = [0x10, 0x20, 0xff, 0x00];
        let mut out = Vec::new();
        PixelFormat::NATIVE.translate(&bgrx, &mut out);
        assert_eq!(out, bgrx);
        // RGB565 big-endian: red full, green 0x20 -> 8 of 63, blue 0x10 -> 2 of 31.
        let rgb565 = PixelFormat {
            bits_per_pixel: 16,
            depth: 16,
            big_endian: true,
            red_max: 31,
            green_max: 63,
            blue_max: 31,
            red_shift: 11,
            green_shift: 5,
            blue_shift: 0,
        };
        let mut out = Vec::new();
        rgb565.translate(&bgrx, &mut out);
        assert_eq!(out, (31u16 << 11 | 8 << 5 | 2).to_be_bytes());
        assert_eq!(rgb565.cpixel(), 0..2);
        assert_eq!(PixelFormat::NATIVE.cpixel(), 0..3);
        let bad = PixelFormat {
            red_shift: 30,
            ..PixelFormat::NATIVE
        };
        assert!(PixelFormat::decode(&bad.encode()).is_err());
        assert_eq!(
            PixelFormat::decode(&rgb565.encode()),
            Ok(rgb565),
            "round trip"
        );
    }

    #[test]
    fn versions() {
        assert_eq!(decode_version(b"RFB 003.008\n"), Ok(8));
        assert_eq!(decode_version(b"RFB 003.889\n"), Ok(8));
        assert_eq!(decode_version(b"RFB 003.003\n"), Ok(3));
        assert!(decode_version(b"GET / HTTP/1").is_err());
    }
}
