//! Bounds-checked little-endian reading and writing, and the decode error.

use crate::response::ErrorCode;

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// `need` is the total buffer length the decoder required, `have` the actual one.
    #[error("message truncated: need {need} bytes, have {have}")]
    Truncated { need: usize, have: usize },
    #[error("unknown message type {0:#x}")]
    UnknownType(u32),
    #[error("too many memory entries: {count} (max {max})")]
    TooManyEntries { count: u32, max: u32 },
    #[error("submit too large: {size} bytes (max {max})")]
    SubmitTooLarge { size: u32, max: u32 },
    /// A field the format reserves (must be zero) is not, at byte `at` of the message.
    #[error("reserved field not zero at byte {at}")]
    Reserved { at: usize },
    /// An offset that must be 4-byte aligned is not.
    #[error("offset {offset:#x} not 4-byte aligned")]
    Misaligned { offset: u32 },
}

impl DecodeError {
    /// The error response a device should answer a malformed request with.
    pub fn error_code(&self) -> ErrorCode {
        match self {
            DecodeError::UnknownType(_) => ErrorCode::Unspec,
            _ => ErrorCode::InvalidParameter,
        }
    }
}

/// Cursor over a byte slice; every read checks bounds.
#[derive(Clone, Debug)]
pub struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        Reader { buf, pos: 0 }
    }

    /// A reader starting at `pos` (which may lie past the end; reads then fail).
    pub fn at(buf: &'a [u8], pos: usize) -> Self {
        Reader { buf, pos }
    }

    pub fn position(&self) -> usize {
        self.pos
    }

    /// Bytes left after the current position.
    pub fn remaining(&self) -> &'a [u8] {
        self.buf.get(self.pos..).unwrap_or(&[])
    }

    fn truncated(&self, need: usize) -> DecodeError {
        DecodeError::Truncated {
            need,
            have: self.buf.len(),
        }
    }

    /// End offset of the next `n` bytes, if they are all present.
    fn end_of(&self, n: usize) -> Result<usize, DecodeError> {
        let end = self
            .pos
            .checked_add(n)
            .ok_or_else(|| self.truncated(usize::MAX))?;
        if end > self.buf.len() {
            return Err(self.truncated(end));
        }
        Ok(end)
    }

    /// Fails unless `n` more bytes are present; does not advance.
    pub fn ensure(&self, n: usize) -> Result<(), DecodeError> {
        self.end_of(n).map(|_| ())
    }

    pub fn bytes(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        let end = self.end_of(n)?;
        let out = self
            .buf
            .get(self.pos..end)
            .ok_or_else(|| self.truncated(end))?;
        self.pos = end;
        Ok(out)
    }

    pub fn skip(&mut self, n: usize) -> Result<(), DecodeError> {
        self.bytes(n).map(|_| ())
    }

    pub fn array<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        let end = self.pos.saturating_add(N);
        let bytes = self.bytes(N)?;
        <[u8; N]>::try_from(bytes).map_err(|_| self.truncated(end))
    }

    pub fn u8(&mut self) -> Result<u8, DecodeError> {
        self.array::<1>().map(|[b]| b)
    }

    pub fn u32(&mut self) -> Result<u32, DecodeError> {
        self.array().map(u32::from_le_bytes)
    }

    pub fn u64(&mut self) -> Result<u64, DecodeError> {
        self.array().map(u64::from_le_bytes)
    }
}

/// Little-endian appends to a byte vector.
pub trait Writer {
    fn put_u8(&mut self, v: u8);
    fn put_u32(&mut self, v: u32);
    fn put_u64(&mut self, v: u64);
    fn put_zeros(&mut self, n: usize);
}

impl Writer for Vec<u8> {
    fn put_u8(&mut self, v: u8) {
        self.push(v);
    }

    fn put_u32(&mut self, v: u32) {
        self.extend_from_slice(&v.to_le_bytes());
    }

    fn put_u64(&mut self, v: u64) {
        self.extend_from_slice(&v.to_le_bytes());
    }

    fn put_zeros(&mut self, n: usize) {
        self.resize(self.len().saturating_add(n), 0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_little_endian_and_checks_bounds() {
        let buf = [1, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0xff];
        let mut r = Reader::new(&buf);
        assert_eq!(r.u32(), Ok(1));
        assert_eq!(r.u64(), Ok(2));
        assert_eq!(r.u32(), Err(DecodeError::Truncated { need: 16, have: 13 }));
        assert_eq!(r.u8(), Ok(0xff));
        assert_eq!(r.u8(), Err(DecodeError::Truncated { need: 14, have: 13 }));
    }

    #[test]
    fn huge_lengths_do_not_overflow() {
        let mut r = Reader::at(&[0u8; 4], 2);
        assert!(r.bytes(usize::MAX).is_err());
        assert!(r.ensure(usize::MAX).is_err());
        let r = Reader::at(&[0u8; 4], 10);
        assert!(r.remaining().is_empty());
        assert!(r.ensure(0).is_err());
    }

    #[test]
    fn writes_little_endian() {
        let mut out = Vec::new();
        out.put_u32(0x0403_0201);
        out.put_u64(0x0c0b_0a09_0807_0605);
        out.put_u8(0x0d);
        out.put_zeros(2);
        assert_eq!(out, [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 0, 0]);
    }
}
