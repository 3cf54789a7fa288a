//! A minimal, valid EDID 1.4 base block describing one mode, for GET_EDID answers.

/// Builds a 128-byte EDID whose preferred (first detailed) timing is `width` x `height` @ 60 Hz.
/// Sizes above what EDID can express (4095) are clamped.
pub fn edid_for_mode(width: u32, height: u32) -> [u8; 128] {
    let w = width.clamp(1, 4095);
    let h = height.clamp(1, 4095);
    let mut e = [0u8; 128];
    e[0..8].copy_from_slice(&[0x00, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x00]);
    // Manufacturer "VGD": three 5-bit letters, big endian.
    let id: u16 = (22 << 10) | (7 << 5) | 4;
    e[8..10].copy_from_slice(&id.to_be_bytes());
    e[10..12].copy_from_slice(&1u16.to_le_bytes()); // product code
    e[16] = 1; // week
    e[17] = 34; // year - 1990
    e[18] = 1; // EDID version 1.4
    e[19] = 4;
    e[20] = 0x80; // digital input
                  // Physical size in cm at ~96 dpi.
    e[21] = (w * 254 / 9600).clamp(1, 255) as u8;
    e[22] = (h * 254 / 9600).clamp(1, 255) as u8;
    e[23] = 120; // gamma 2.2
    e[24] = 0x06; // sRGB default, preferred timing is native
                  // sRGB chromaticity coordinates.
    e[25..35].copy_from_slice(&[0xee, 0x91, 0xa3, 0x54, 0x4c, 0x99, 0x26, 0x0f, 0x50, 0x54]);
    // No established timings (35..38); standard timings unused.
    for i in 0..8 {
        e[38 + 2 * i] = 0x01;
        e[39 + 2 * i] = 0x01;
    }
    e[54..72].copy_from_slice(&detailed_timing(w, h));
    e[72..90].copy_from_slice(&text_descriptor(0xfc, b"vgpud-harness"));
    e[90..108].copy_from_slice(&text_descriptor(0xff, b"0"));
    e[108..126].copy_from_slice(&[0, 0, 0, 0x10, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
    e[126] = 0; // no extensions
    let sum = e[..127].iter().fold(0u8, |a, b| a.wrapping_add(*b));
    e[127] = 0u8.wrapping_sub(sum);
    e
}

fn detailed_timing(w: u32, h: u32) -> [u8; 18] {
    let (hblank, hfront, hsync) = (160u32, 48u32, 32u32);
    let (vblank, vfront, vsync) = (35u32, 3u32, 5u32);
    let clock = ((w + hblank) as u64 * (h + vblank) as u64 * 60 / 10_000).clamp(1, 0xffff) as u16;
    let hmm = w * 254 / 960; // mm at ~96 dpi
    let vmm = h * 254 / 960;
    let mut d = [0u8; 18];
    d[0..2].copy_from_slice(&clock.to_le_bytes());
    d[2] = w as u8;
    d[3] = hblank as u8;
    d[4] = (((w >> 8) & 0xf) << 4 | ((hblank >> 8) & 0xf)) as u8;
    d[5] = h as u8;
    d[6] = vblank as u8;
    d[7] = (((h >> 8) & 0xf) << 4 | ((vblank >> 8) & 0xf)) as u8;
    d[8] = hfront as u8;
    d[9] = hsync as u8;
    d[10] = (((vfront & 0xf) << 4) | (vsync & 0xf)) as u8;
    d[11] = (((hfront >> 8) & 3) << 6
        | ((hsync >> 8) & 3) << 4
        | ((vfront >> 4) & 3) << 2
        | ((vsync >> 4) & 3)) as u8;
    d[12] = hmm as u8;
    d[13] = vmm as u8;
    d[14] = (((hmm >> 8) & 0xf) << 4 | ((vmm >> 8) & 0xf)) as u8;
    d[17] = 0x1e; // digital separate sync, both polarities positive
    d
}

fn text_descriptor(tag: u8, text: &[u8]) -> [u8; 18] {
    let mut d = [0u8; 18];
    d[3] = tag;
    let body = &mut d[5..18];
    body.fill(b' ');
    let n = text.len().min(13);
    body[..n].copy_from_slice(&text[..n]);
    if n < 13 {
        body[n] = b'\n';
    }
    d
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_checksum_and_mode() {
        let e = edid_for_mode(1024, 768);
        assert_eq!(&e[..8], &[0, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0]);
        assert_eq!(e.iter().fold(0u8, |a, b| a.wrapping_add(*b)), 0);
        let hactive = e[56] as u32 | ((e[58] as u32 >> 4) << 8);
        let vactive = e[59] as u32 | ((e[61] as u32 >> 4) << 8);
        assert_eq!((hactive, vactive), (1024, 768));
        let big = edid_for_mode(8000, 8000);
        assert_eq!(big.iter().fold(0u8, |a, b| a.wrapping_add(*b)), 0);
    }
}
