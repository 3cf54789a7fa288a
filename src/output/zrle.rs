//! ZRLE (RFC 6143 7.7.6): 64x64 tiles, each solid, packed-palette or raw, through one zlib
//! stream per viewer that lasts as long as its connection (viewers keep one inflater too).

use std::io::Write;

use flate2::write::ZlibEncoder;
use flate2::Compression;

use super::rfb::{encoding, rect_header, PixelFormat};

const TILE: usize = 64;
/// Scratch kept between rectangles up to this size.
const KEEP_BUFFER: usize = 1 << 20;
/// Tiles with up to this many colours are sent as palette indices.
const MAX_PALETTE: usize = 16;

/// One viewer's ZRLE state: its zlib stream and scratch buffers, reused between updates.
pub struct ZrleEncoder {
    /// Writes into its own buffer, emptied onto the update after each rectangle.
    zlib: ZlibEncoder<Vec<u8>>,
    tiles: Vec<u8>,
    row: Vec<u8>,
}

impl Default for ZrleEncoder {
    fn default() -> Self {
        ZrleEncoder {
            // A low level: a viewer on loopback or a LAN gains little from more, and the output
            // thread serves every viewer of the VM. Not 1: miniz_oxide 0.9's fast (level 1)
            // deflater loses the tail of a sync-flushed run of incompressible tiles (see
            // `incompressible_tiles_after_a_solid_screen`).
            zlib: ZlibEncoder::new(Vec::new(), Compression::new(2)),
            tiles: Vec::new(),
            row: Vec::new(),
        }
    }
}

impl ZrleEncoder {
    /// Appends one ZRLE rectangle at (`x`, `y`): `native` holds its `width`x`height` pixels,
    /// 4 bytes each, rows packed.
    pub fn encode(
        &mut self,
        pf: &PixelFormat,
        (x, y, width, height): (u16, u16, u16, u16),
        native: &[u8],
        out: &mut Vec<u8>,
    ) -> std::io::Result<()> {
        let (w, h) = (usize::from(width), usize::from(height));
        if native.len() < w * h * 4 {
            return Err(std::io::Error::other(
                "fewer pixels than the rectangle holds",
            ));
        }
        self.tiles.clear();
        let mut tile = Vec::with_capacity(TILE * TILE * 4);
        for ty in (0..h).step_by(TILE) {
            for tx in (0..w).step_by(TILE) {
                let (tw, th) = ((w - tx).min(TILE), (h - ty).min(TILE));
                tile.clear();
                for r in ty..ty + th {
                    let start = (r * w + tx) * 4;
                    tile.extend_from_slice(native.get(start..start + tw * 4).unwrap_or_default());
                }
                self.tile(pf, tw, &tile);
            }
        }
        out.extend_from_slice(&rect_header(x, y, width, height, encoding::ZRLE));
        let len_at = out.len();
        out.extend_from_slice(&[0; 4]);
        self.deflate(out)?;
        let len = u32::try_from(out.len() - len_at - 4)
            .map_err(|_| std::io::Error::other("a ZRLE rectangle past 4 GiB"))?;
        out[len_at..len_at + 4].copy_from_slice(&len.to_be_bytes());
        Ok(())
    }

    /// Appends one tile's uncompressed encoding to `self.tiles`.
    fn tile(&mut self, pf: &PixelFormat, width: usize, native: &[u8]) {
        let cpixel = pf.cpixel();
        let mut palette: Vec<[u8; 4]> = Vec::with_capacity(MAX_PALETTE + 1);
        for px in native.chunks_exact(4) {
            let px = [px[0], px[1], px[2], 0];
            if !palette.contains(&px) {
                palette.push(px);
                if palette.len() > MAX_PALETTE {
                    break;
                }
            }
        }
        let put = |tiles: &mut Vec<u8>, row: &mut Vec<u8>, native: &[u8]| {
            row.clear();
            pf.translate(native, row);
            for px in row.chunks_exact(pf.bytes_per_pixel()) {
                tiles.extend_from_slice(px.get(cpixel.clone()).unwrap_or_default());
            }
        };
        match palette.len() {
            1 => {
                self.tiles.push(1);
                put(&mut self.tiles, &mut self.row, &palette.concat());
            }
            n @ 2..=MAX_PALETTE => {
                self.tiles.push(n as u8);
                put(&mut self.tiles, &mut self.row, &palette.concat());
                let bits = match n {
                    2 => 1,
                    3 | 4 => 2,
                    _ => 4,
                };
                for row in native.chunks_exact(width * 4) {
                    let (mut byte, mut used) = (0u8, 0);
                    for px in row.chunks_exact(4) {
                        let index =
                            palette.iter().position(|p| p[..3] == px[..3]).unwrap_or(0) as u8;
                        byte |= index << (8 - bits - used);
                        used += bits;
                        if used == 8 {
                            self.tiles.push(byte);
                            (byte, used) = (0, 0);
                        }
                    }
                    if used > 0 {
                        self.tiles.push(byte);
                    }
                }
            }
            _ => {
                self.tiles.push(0);
                put(&mut self.tiles, &mut self.row, native);
            }
        }
    }

    /// Compresses `self.tiles` onto `out` and flushes the stream to a byte boundary (a sync
    /// flush, which flate2's writer completes), so the viewer can inflate this rectangle whole.
    fn deflate(&mut self, out: &mut Vec<u8>) -> std::io::Result<()> {
        self.zlib.write_all(&self.tiles)?;
        self.zlib.flush()?;
        let compressed = self.zlib.get_mut();
        out.append(compressed);
        // A big picture's buffers are not kept for the next, maybe small, update.
        if compressed.capacity() > KEEP_BUFFER {
            *compressed = Vec::new();
        }
        if self.tiles.capacity() > KEEP_BUFFER {
            self.tiles = Vec::new();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flate2::{Decompress, FlushDecompress};

    /// Decodes our own ZRLE rectangle back to native pixels (raw, solid and packed palette).
    fn decode(data: &[u8], inflater: &mut Decompress, w: usize, h: usize) -> Vec<u8> {
        let len = u32::from_be_bytes(data[12..16].try_into().unwrap()) as usize;
        let mut raw = Vec::with_capacity(w * h * 4 + 4096);
        let mut input = &data[16..16 + len];
        loop {
            let (i, o) = (inflater.total_in(), inflater.total_out());
            inflater
                .decompress_vec(input, &mut raw, FlushDecompress::Sync)
                .unwrap();
            input = &input[(inflater.total_in() - i) as usize..];
            if inflater.total_out() == o && input.is_empty() {
                break;
            }
        }
        let mut img = vec![0u8; w * h * 4];
        let mut at = 0;
        let cpixel = |at: &mut usize| {
            let p = [raw[*at], raw[*at + 1], raw[*at + 2], 0];
            *at += 3;
            p
        };
        for ty in (0..h).step_by(TILE) {
            for tx in (0..w).step_by(TILE) {
                let (tw, th) = ((w - tx).min(TILE), (h - ty).min(TILE));
                let kind = raw[at];
                at += 1;
                let mut pixels = Vec::new();
                match kind {
                    0 => (0..tw * th).for_each(|_| pixels.push(cpixel(&mut at))),
                    1 => pixels = vec![cpixel(&mut at); tw * th],
                    n @ 2..=16 => {
                        let pal: Vec<_> = (0..n).map(|_| cpixel(&mut at)).collect();
                        let bits = match n {
                            2 => 1,
                            3 | 4 => 2,
                            _ => 4,
                        };
                        for _ in 0..th {
                            let mut used = 8;
                            let mut byte = 0;
                            for _ in 0..tw {
                                if used == 8 {
                                    byte = raw[at];
                                    at += 1;
                                    used = 0;
                                }
                                let i = (byte >> (8 - bits - used)) & ((1 << bits) - 1);
                                used += bits;
                                pixels.push(pal[i as usize]);
                            }
                        }
                    }
                    k => panic!("subencoding {k}"),
                }
                for (i, p) in pixels.iter().enumerate() {
                    let (px, py) = (tx + i % tw, ty + i / tw);
                    img[(py * w + px) * 4..][..4].copy_from_slice(p);
                }
            }
        }
        img
    }

    /// One rectangle of all of `img`, native format.
    fn whole(enc: &mut ZrleEncoder, img: &[u8], w: usize, h: usize) -> Vec<u8> {
        let mut out = Vec::new();
        let at = (0, 0, w as u16, h as u16);
        enc.encode(&PixelFormat::NATIVE, at, img, &mut out).unwrap();
        out
    }

    #[test]
    fn tiles_round_trip_through_one_stream() {
        let (w, h) = (330usize, 170usize);
        let mut enc = ZrleEncoder::default();
        let mut inflater = Decompress::new(true);
        // Solid, two-colour and many-colour areas, twice through the same stream.
        for round in 0..2u8 {
            let mut img = vec![0u8; w * h * 4];
            for (i, px) in img.chunks_exact_mut(4).enumerate() {
                let (x, y) = (i % w, i / w);
                let v = match x {
                    0..64 => [9, 9, 9],
                    64..128 => [if (x + y) % 2 == 0 { 255 } else { 0 }, 7, round],
                    128..150 => [(x * 3) as u8, (y * 5) as u8, round],
                    // Incompressible: the deflater hands such data out a block at a time.
                    _ => {
                        let r = ((i as u32).wrapping_mul(2_654_435_761) ^ u32::from(round))
                            .to_le_bytes();
                        [r[0], r[1], r[2]]
                    }
                };
                px.copy_from_slice(&[v[0], v[1], v[2], 0]);
            }
            let out = whole(&mut enc, &img, w, h);
            assert!(out.len() < img.len(), "{} bytes", out.len());
            assert_eq!(decode(&out, &mut inflater, w, h), img);
        }
    }

    #[test]
    fn incompressible_tiles_after_a_solid_screen() {
        // What a viewer gets first (a black screen), then a noisy frame, through one stream.
        let (w, h) = (200usize, 100usize);
        let mut enc = ZrleEncoder::default();
        let mut inflater = Decompress::new(true);
        for seed in [None, Some(4u32)] {
            let img: Vec<u8> = match seed {
                None => vec![0; w * h * 4],
                Some(s) => (0..(w * h) as u32)
                    .flat_map(|i| (i.wrapping_mul(2_654_435_761) ^ s).to_le_bytes())
                    .map(|b| b & 0xfe)
                    .collect(),
            };
            let out = whole(&mut enc, &img, w, h);
            let mut want = img.clone();
            want.chunks_exact_mut(4).for_each(|p| p[3] = 0);
            assert_eq!(decode(&out, &mut inflater, w, h), want);
        }
    }
}
