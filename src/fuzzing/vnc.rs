//! What a VNC viewer sends, for fuzzing: arbitrary bytes are read as the output thread reads a
//! viewer (the version, then messages, clipboard text skipped), and every update request is
//! answered by encoding a picture in the viewer's pixel format, Raw and ZRLE, through one zlib
//! stream. Nothing may panic; a message never needs more than `MAX_MESSAGE` bytes; a Raw
//! rectangle holds exactly its pixels.

use crate::output::rfb::{self, PixelFormat, ViewerMessage, MAX_MESSAGE};
use crate::output::zrle::ZrleEncoder;

/// The picture the fuzzed viewer is shown.
const W: usize = 96;
const H: usize = 80;

/// Returns how many updates were encoded.
pub fn run_vnc(data: &[u8]) -> usize {
    let Some((version, mut rest)) = data.split_first_chunk::<12>() else {
        return 0;
    };
    if rfb::decode_version(version).is_err() {
        return 0;
    }
    let mut updates = 0;
    let picture: Vec<u8> = (0..W * H * 4)
        .map(|i| data.get(i % data.len().max(1)).copied().unwrap_or(0) ^ (i / 7) as u8)
        .collect();
    let mut pf = PixelFormat::NATIVE;
    let mut zrle = ZrleEncoder::default();
    while !rest.is_empty() {
        let (msg, used) = match rfb::decode(rest) {
            Ok(Some(m)) => m,
            // Waiting for more that never comes, or a viewer that would be dropped.
            Ok(None) => {
                assert!(rest.len() <= MAX_MESSAGE, "a message past the largest one");
                return updates;
            }
            Err(_) => return updates,
        };
        assert!(used <= MAX_MESSAGE && used <= rest.len());
        rest = rest.get(used..).unwrap_or_default();
        match msg {
            ViewerMessage::SetPixelFormat(p) => pf = p,
            ViewerMessage::CutText(len) => {
                rest = rest.get(len as usize..).unwrap_or_default();
            }
            ViewerMessage::UpdateRequest {
                x,
                y,
                width,
                height,
                ..
            } => {
                // Clipped to the picture, as the server clips to its screen.
                let (x, y) = (usize::from(x) % W, usize::from(y) % H);
                let (w, h) = (
                    usize::from(width).min(W - x),
                    usize::from(height).min(H - y),
                );
                let mut pixels = Vec::with_capacity(w * h * 4);
                for row in y..y + h {
                    let at = (row * W + x) * 4;
                    pixels.extend_from_slice(picture.get(at..at + w * 4).unwrap_or_default());
                }
                let mut raw = Vec::new();
                pf.translate(&pixels, &mut raw);
                assert_eq!(raw.len(), w * h * pf.bytes_per_pixel());
                let mut out = Vec::new();
                let at = (x as u16, y as u16, w as u16, h as u16);
                zrle.encode(&pf, at, &pixels, &mut out)
                    .expect("ZRLE of a whole rectangle");
                assert!(out.len() >= 16);
                updates += 1;
            }
            ViewerMessage::SetEncodings(list) => assert!(list.len() <= rfb::MAX_ENCODINGS),
            ViewerMessage::Input => {}
        }
    }
    updates
}
