//! A 128-byte EDID 1.4 base block describing one display mode: what GET_EDID returns when the
//! display does not supply its own.

pub const EDID_LEN: usize = 128;

/// Builds an EDID whose preferred (and only detailed) timing is `width`x`height` at 60 Hz, for a
/// monitor called `name` (at most 13 bytes are kept).
pub fn edid_for_mode(width: u32, height: u32, name: &[u8]) -> [u8; EDID_LEN] {
    let mut e = [0u8; EDID_LEN];
    e[0..8].copy_from_slice(&[0x00, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x00]);
    // Manufacturer "VGD": three 5-bit letters, 'A' = 1, big-endian.
    let id =
        (u16::from(b'V' - b'@') << 10) | (u16::from(b'G' - b'@') << 5) | u16::from(b'D' - b'@');
    e[8..10].copy_from_slice(&id.to_be_bytes());
    e[10..12].copy_from_slice(&1u16.to_le_bytes()); // product code
    e[16] = 1; // week of manufacture
    e[17] = 36; // year of manufacture, counted from 1990
    e[18] = 1; // EDID version 1.4
    e[19] = 4;
    e[20] = 0xa5; // digital input, 8 bits per colour, DisplayPort
    e[21] = (width / 40).clamp(1, 255) as u8; // size in cm at about 100 dpi
    e[22] = (height / 40).clamp(1, 255) as u8;
    e[23] = 120; // gamma 2.2
    e[24] = 0x06; // RGB 4:4:4, preferred timing includes native format, continuous frequency
    e[25..35].copy_from_slice(&[0xee, 0x91, 0xa3, 0x54, 0x4c, 0x99, 0x26, 0x0f, 0x50, 0x54]); // sRGB
    for i in 0..8 {
        e[38 + 2 * i] = 0x01; // standard timings unused
        e[39 + 2 * i] = 0x01;
    }
    e[54..72].copy_from_slice(&detailed_timing(width, height));
    e[72..90].copy_from_slice(&range_limits());
    e[90..108].copy_from_slice(&text_descriptor(0xfc, name));
    e[108..126].copy_from_slice(&text_descriptor(0xff, b"0"));
    e[127] = checksum(&e[..127]);
    e
}

fn checksum(bytes: &[u8]) -> u8 {
    0u8.wrapping_sub(bytes.iter().fold(0u8, |a, b| a.wrapping_add(*b)))
}

/// Reduced-blanking timing: fixed 160-pixel horizontal blank, about 4% vertical blank.
fn detailed_timing(width: u32, height: u32) -> [u8; 18] {
    let width = width.clamp(1, 4095);
    let height = height.clamp(1, 4095);
    let (hblank, hfront, hsync) = (160u32, 48u32, 32u32);
    let vblank = (height / 25).max(8);
    let (vfront, vsync) = (3u32, 6u32);
    let clock_10khz = u64::from(width + hblank) * u64::from(height + vblank) * 60 / 10_000;
    let clock = u16::try_from(clock_10khz.max(1)).unwrap_or(u16::MAX);
    let (hmm, vmm) = (width * 254 / 960, height * 254 / 960); // ~96 dpi in mm
    let mut d = [0u8; 18];
    d[0..2].copy_from_slice(&clock.to_le_bytes());
    d[2] = width as u8;
    d[3] = hblank as u8;
    d[4] = (((width >> 8) & 0xf) << 4 | ((hblank >> 8) & 0xf)) as u8;
    d[5] = height as u8;
    d[6] = vblank as u8;
    d[7] = (((height >> 8) & 0xf) << 4 | ((vblank >> 8) & 0xf)) as u8;
    d[8] = hfront as u8;
    d[9] = hsync as u8;
    d[10] = ((vfront & 0xf) << 4 | (vsync & 0xf)) as u8;
    d[11] = (((hfront >> 8) & 3) << 6 | ((hsync >> 8) & 3) << 4) as u8;
    d[12] = hmm as u8;
    d[13] = vmm as u8;
    d[14] = (((hmm >> 8) & 0xf) << 4 | ((vmm >> 8) & 0xf)) as u8;
    d[17] = 0x1a; // digital separate sync, +hsync -vsync
    d
}

fn range_limits() -> [u8; 18] {
    // 24-75 Hz vertical, 30-160 kHz horizontal, 600 MHz max pixel clock, no timing formula.
    [
        0, 0, 0, 0xfd, 0, 24, 75, 30, 160, 60, 0x01, 0x0a, 0x20, 0x20, 0x20, 0x20, 0x20, 0x20,
    ]
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
        let e = edid_for_mode(1920, 1080, b"vgpud");
        assert_eq!(&e[0..8], &[0, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0]);
        assert_eq!(e.iter().fold(0u8, |a, b| a.wrapping_add(*b)), 0);
        let d = &e[54..72];
        let w = u32::from(d[2]) | (u32::from(d[4] >> 4) << 8);
        let h = u32::from(d[5]) | (u32::from(d[7] >> 4) << 8);
        assert_eq!((w, h), (1920, 1080));
        // The pixel clock is non-zero, so this is a timing and not a display descriptor.
        assert_ne!(u16::from_le_bytes([d[0], d[1]]), 0);
        assert!(e[90..108].windows(5).any(|w| w == b"vgpud"));
    }

    #[test]
    fn extreme_modes_stay_valid() {
        for (w, h) in [(1, 1), (640, 480), (7680, 4320), (u32::MAX, u32::MAX)] {
            let e = edid_for_mode(w, h, b"a-name-longer-than-13");
            assert_eq!(e.iter().fold(0u8, |a, b| a.wrapping_add(*b)), 0);
        }
    }
}
