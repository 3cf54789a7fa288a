//! The fuzzer's bytes read as a stream of small choices. Past the end every read is zero, so any
//! input, however short, is a complete program.

pub struct Input<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> Input<'a> {
    pub fn new(data: &'a [u8]) -> Self {
        Input { data, pos: 0 }
    }

    pub fn is_empty(&self) -> bool {
        self.pos >= self.data.len()
    }

    pub fn u8(&mut self) -> u8 {
        let b = self.data.get(self.pos).copied().unwrap_or(0);
        self.pos = self.pos.saturating_add(1);
        b
    }

    pub fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.u8(), self.u8()])
    }

    pub fn u32(&mut self) -> u32 {
        u32::from_le_bytes([self.u8(), self.u8(), self.u8(), self.u8()])
    }

    pub fn u64(&mut self) -> u64 {
        u64::from(self.u32()) | (u64::from(self.u32()) << 32)
    }

    /// A value in `0..n` (0 when `n` is 0), from one byte when `n` fits in one.
    pub fn below(&mut self, n: u32) -> u32 {
        match n {
            0 => 0,
            1..=256 => u32::from(self.u8()) % n,
            _ => u32::from(self.u16()) % n,
        }
    }

    /// True with probability `k`/256.
    pub fn chance(&mut self, k: u8) -> bool {
        self.u8() < k
    }

    pub fn pick<T: Copy>(&mut self, from: &[T]) -> T {
        from[self.below(from.len() as u32) as usize]
    }

    /// Up to `n` of the remaining bytes, as they are.
    pub fn bytes(&mut self, n: usize) -> &'a [u8] {
        let start = self.pos.min(self.data.len());
        let end = start.saturating_add(n).min(self.data.len());
        self.pos = end;
        &self.data[start..end]
    }

    /// A u32 biased to the values that break arithmetic.
    pub fn wild_u32(&mut self) -> u32 {
        const EDGES: [u32; 10] = [
            0,
            1,
            4095,
            4096,
            16384,
            0x7fff_ffff,
            0x8000_0000,
            0x4000_0001,
            u32::MAX - 1,
            u32::MAX,
        ];
        if self.chance(128) {
            self.pick(&EDGES)
        } else {
            self.u32()
        }
    }

    pub fn wild_u64(&mut self) -> u64 {
        const EDGES: [u64; 6] = [0, 4096, 1 << 32, u64::MAX - 4095, u64::MAX - 1, u64::MAX];
        if self.chance(128) {
            self.pick(&EDGES)
        } else {
            self.u64()
        }
    }
}
