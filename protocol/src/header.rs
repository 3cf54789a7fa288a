//! The control header that starts every request and response.

use crate::consts::{FLAG_FENCE, FLAG_INFO_RING_IDX};
use crate::wire::{DecodeError, Reader, Writer};

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CtrlHeader {
    pub type_: u32,
    pub flags: u32,
    pub fence_id: u64,
    pub ctx_id: u32,
    pub ring_idx: u8,
}

/// type, flags, fence_id (u64), ctx_id, ring_idx (u8), 3 bytes padding.
pub const HEADER_SIZE: usize = 24;

impl CtrlHeader {
    pub fn decode(buf: &[u8]) -> Result<CtrlHeader, DecodeError> {
        Reader::new(buf).ensure(HEADER_SIZE)?;
        let mut r = Reader::new(buf);
        let hdr = CtrlHeader {
            type_: r.u32()?,
            flags: r.u32()?,
            fence_id: r.u64()?,
            ctx_id: r.u32()?,
            ring_idx: r.u8()?,
        };
        Ok(hdr)
    }

    /// Appends the 24 wire bytes; padding is zero.
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.put_u32(self.type_);
        out.put_u32(self.flags);
        out.put_u64(self.fence_id);
        out.put_u32(self.ctx_id);
        out.put_u8(self.ring_idx);
        out.put_zeros(3);
    }

    pub fn is_fenced(&self) -> bool {
        self.flags & FLAG_FENCE != 0
    }

    /// The fence ring, only meaningful when the fence flag is set too.
    pub fn ring(&self) -> Option<u8> {
        let both = FLAG_FENCE | FLAG_INFO_RING_IDX;
        (self.flags & both == both).then_some(self.ring_idx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decode_table() {
        #[rustfmt::skip]
        let cases: &[(&[u8], CtrlHeader)] = &[
            (
                &[
                    0x01, 0x01, 0x00, 0x00, // type 0x101
                    0x00, 0x00, 0x00, 0x00, // flags
                    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, // fence_id
                    0x00, 0x00, 0x00, 0x00, // ctx_id
                    0x00, 0x00, 0x00, 0x00, // ring_idx, padding
                ],
                CtrlHeader { type_: 0x101, ..Default::default() },
            ),
            (
                &[
                    0x07, 0x02, 0x00, 0x00, // type 0x207
                    0x03, 0x00, 0x00, 0x00, // FENCE | INFO_RING_IDX
                    0x88, 0x77, 0x66, 0x55, 0x44, 0x33, 0x22, 0x11, // fence_id
                    0x05, 0x00, 0x00, 0x00, // ctx_id
                    0x02, 0xaa, 0xbb, 0xcc, // ring_idx 2, garbage padding
                ],
                CtrlHeader {
                    type_: 0x207,
                    flags: 3,
                    fence_id: 0x1122_3344_5566_7788,
                    ctx_id: 5,
                    ring_idx: 2,
                },
            ),
        ];
        for (bytes, want) in cases {
            assert_eq!(CtrlHeader::decode(bytes), Ok(*want));
            assert_eq!(
                CtrlHeader::decode(&bytes[..23]),
                Err(DecodeError::Truncated { need: 24, have: 23 })
            );
        }
    }

    #[test]
    fn encode_zeroes_padding() {
        let hdr = CtrlHeader {
            type_: 0x1100,
            flags: 1,
            fence_id: 9,
            ctx_id: 0x0102_0304,
            ring_idx: 0xfe,
        };
        let mut out = Vec::new();
        hdr.encode(&mut out);
        #[rustfmt::skip]
        let want = [
            0x00, 0x11, 0, 0,  1, 0, 0, 0,  9, 0, 0, 0, 0, 0, 0, 0,
            0x04, 0x03, 0x02, 0x01,  0xfe, 0, 0, 0,
        ];
        assert_eq!(out, want);
    }

    #[test]
    fn fence_and_ring() {
        let table = [
            (0, false, None),
            (FLAG_FENCE, true, None),
            (FLAG_INFO_RING_IDX, false, None),
            (FLAG_FENCE | FLAG_INFO_RING_IDX, true, Some(7)),
            (0xffff_ffff, true, Some(7)),
        ];
        for (flags, fenced, ring) in table {
            let hdr = CtrlHeader {
                flags,
                ring_idx: 7,
                ..Default::default()
            };
            assert_eq!(hdr.is_fenced(), fenced, "flags {flags:#x}");
            assert_eq!(hdr.ring(), ring, "flags {flags:#x}");
        }
    }
}
