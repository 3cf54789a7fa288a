//! Pictures: decoding what QEMU and the VNC viewers write (binary PPM, PNG), the images the
//! guest tests draw (kms-pattern's pattern, share-buffer's frame), exact comparison, and the
//! "shows a picture" measure used for kmscube.

use std::fmt;
use std::fs;
use std::io::BufWriter;
use std::path::Path;

use crate::Error;

/// Packed 8-bit RGB pixels, row by row from the top left.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Image {
    pub width: usize,
    pub height: usize,
    pub rgb: Vec<u8>,
}

impl Image {
    pub fn pixel(&self, x: usize, y: usize) -> [u8; 3] {
        let i = (y * self.width + x) * 3;
        [self.rgb[i], self.rgb[i + 1], self.rgb[i + 2]]
    }

    /// Builds an image from a function of (x, y).
    pub fn from_fn(width: usize, height: usize, f: impl Fn(usize, usize) -> [u8; 3]) -> Image {
        let mut rgb = Vec::with_capacity(width * height * 3);
        for y in 0..height {
            for x in 0..width {
                rgb.extend_from_slice(&f(x, y));
            }
        }
        Image { width, height, rgb }
    }
}

/// A picture's size, as the guests print it ("1280x800").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Size {
    pub width: usize,
    pub height: usize,
}

impl Size {
    pub fn parse(text: &str) -> Option<Size> {
        let (w, h) = text.split_once('x')?;
        Some(Size {
            width: w.parse().ok()?,
            height: h.parse().ok()?,
        })
    }
}

impl fmt::Display for Size {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}x{}", self.width, self.height)
    }
}

const PNG_MAGIC: &[u8] = b"\x89PNG\r\n\x1a\n";

/// Reads a picture file: PNG or binary 8-bit PPM, whatever its name says (QEMU writes either).
pub fn read(path: &Path) -> Result<Image, Error> {
    let data = fs::read(path).map_err(|e| Error::io(path, e))?;
    decode(&data).map_err(|e| Error::msg(format!("{}: {e}", path.display())))
}

/// Decodes PNG or binary 8-bit PPM bytes.
pub fn decode(data: &[u8]) -> Result<Image, String> {
    if data.starts_with(PNG_MAGIC) {
        decode_png(data)
    } else {
        decode_ppm(data)
    }
}

fn decode_png(data: &[u8]) -> Result<Image, String> {
    let mut decoder = png::Decoder::new(std::io::Cursor::new(data));
    // Palette and low bit depths expanded, 16-bit samples cut to 8.
    decoder.set_transformations(png::Transformations::EXPAND | png::Transformations::STRIP_16);
    let mut reader = decoder
        .read_info()
        .map_err(|e| format!("not a readable PNG: {e}"))?;
    let size = reader
        .output_buffer_size()
        .ok_or("PNG too large to decode")?;
    let mut buf = vec![0; size];
    let info = reader
        .next_frame(&mut buf)
        .map_err(|e| format!("PNG image data: {e}"))?;
    let (width, height) = (info.width as usize, info.height as usize);
    let samples = match info.color_type {
        png::ColorType::Grayscale => 1,
        png::ColorType::GrayscaleAlpha => 2,
        png::ColorType::Rgb => 3,
        png::ColorType::Rgba => 4,
        other => return Err(format!("PNG colour type {other:?} after expansion")),
    };
    if info.bit_depth != png::BitDepth::Eight {
        return Err(format!("PNG depth {:?} after expansion", info.bit_depth));
    }
    let mut rgb = Vec::with_capacity(width * height * 3);
    for y in 0..height {
        let row = &buf[y * info.line_size..][..width * samples];
        for px in row.chunks_exact(samples) {
            match samples {
                1 | 2 => rgb.extend_from_slice(&[px[0], px[0], px[0]]),
                _ => rgb.extend_from_slice(&px[..3]),
            }
        }
    }
    Ok(Image { width, height, rgb })
}

fn decode_ppm(data: &[u8]) -> Result<Image, String> {
    // Four header fields, separated by whitespace, with '#' comments up to the line's end;
    // exactly one whitespace byte before the pixels.
    let mut fields = Vec::new();
    let mut pos = 0;
    while fields.len() < 4 {
        while pos < data.len() && data[pos].is_ascii_whitespace() {
            pos += 1;
        }
        if pos >= data.len() {
            return Err("not a PPM: the header ends early".into());
        }
        if data[pos] == b'#' {
            while pos < data.len() && data[pos] != b'\n' {
                pos += 1;
            }
            continue;
        }
        let start = pos;
        while pos < data.len() && !data[pos].is_ascii_whitespace() {
            pos += 1;
        }
        fields.push(String::from_utf8_lossy(&data[start..pos]).into_owned());
    }
    pos += 1;
    let number = |s: &str| {
        s.parse::<usize>()
            .map_err(|_| format!("not a PPM: header field {s:?}"))
    };
    let (width, height, maxval) = (
        number(&fields[1])?,
        number(&fields[2])?,
        number(&fields[3])?,
    );
    if fields[0] != "P6" || maxval != 255 {
        return Err(format!(
            "not an 8-bit binary PPM ({}, maxval {maxval})",
            fields[0]
        ));
    }
    let len = width
        .checked_mul(height)
        .and_then(|n| n.checked_mul(3))
        .ok_or("PPM size overflows")?;
    let pixels = data.get(pos.min(data.len())..).unwrap_or_default();
    if pixels.len() < len {
        return Err(format!("truncated ({} pixel bytes)", pixels.len()));
    }
    Ok(Image {
        width,
        height,
        rgb: pixels[..len].to_vec(),
    })
}

pub fn write_png(path: &Path, image: &Image) -> Result<(), Error> {
    let file = fs::File::create(path).map_err(|e| Error::io(path, e))?;
    let mut encoder = png::Encoder::new(
        BufWriter::new(file),
        image.width as u32,
        image.height as u32,
    );
    encoder.set_color(png::ColorType::Rgb);
    encoder.set_depth(png::BitDepth::Eight);
    let fail = |e: png::EncodingError| Error::msg(format!("{}: {e}", path.display()));
    let mut writer = encoder.write_header().map_err(fail)?;
    writer.write_image_data(&image.rgb).map_err(fail)?;
    writer.finish().map_err(fail)
}

pub fn write_ppm(path: &Path, image: &Image) -> Result<(), Error> {
    let mut data = format!("P6\n{} {}\n255\n", image.width, image.height).into_bytes();
    data.extend_from_slice(&image.rgb);
    fs::write(path, data).map_err(|e| Error::io(path, e))
}

/// PNG when the name ends in .png, else PPM.
pub fn write(path: &Path, image: &Image) -> Result<(), Error> {
    if path.extension().is_some_and(|e| e == "png") {
        write_png(path, image)
    } else {
        write_ppm(path, image)
    }
}

/// kms-pattern's image for `seed` (pattern_pixel() in guest-tests/kms-pattern.c): eight
/// colour bands in the top half, a gradient in the bottom half.
pub fn pattern(size: Size, seed: u32) -> Image {
    let (w, h) = (size.width, size.height);
    let s = seed as usize;
    Image::from_fn(w, h, |x, y| {
        if y < h / 2 {
            let band = (x * 8 / w + s) % 8;
            let on = |bit: usize| if band & bit != 0 { 255 } else { 0 };
            [on(1), on(2), on(4)]
        } else {
            [
                ((x + s) & 255) as u8,
                (y & 255) as u8,
                ((x ^ y ^ s) & 255) as u8,
            ]
        }
    })
}

/// share-buffer's frame for `seed` (share_frame_pixel() in guest-tests/share-render.c): 16x4
/// tiles of one colour each, an RGBA word per pixel, as a scanout shows those words
/// (XRGB8888: red is the word's byte 2, green byte 1, blue byte 0).
pub fn share_frame(size: Size, seed: u32) -> Image {
    let w = size.width;
    Image::from_fn(w, size.height, |x, y| {
        let tile = ((y / 4) * (w / 16) + x / 16) as u32;
        let mut v = tile.wrapping_mul(0x9E37_79B1).wrapping_add(seed);
        v ^= v >> 15;
        v = v.wrapping_mul(0x2C1B_3C6D);
        v ^= v >> 13;
        [(v >> 16) as u8, (v >> 8) as u8, v as u8]
    })
}

/// How `got` differs from `want` (same size): the number of wrong pixels and the first one.
#[derive(Debug, PartialEq, Eq)]
pub struct Difference {
    pub wrong: usize,
    pub first: Option<String>,
}

pub fn compare(got: &Image, want: &Image) -> Difference {
    let mut diff = Difference {
        wrong: 0,
        first: None,
    };
    let stride = want.width * 3;
    for y in 0..want.height {
        let (g, w) = (
            &got.rgb[y * stride..][..stride],
            &want.rgb[y * stride..][..stride],
        );
        if g == w {
            continue;
        }
        for x in 0..want.width {
            let (gp, wp) = (got.pixel(x, y), want.pixel(x, y));
            if gp != wp {
                diff.wrong += 1;
                if diff.first.is_none() {
                    diff.first = Some(format!(
                        "({x}, {y}) is {}, expected {}",
                        colour(gp),
                        colour(wp)
                    ));
                }
            }
        }
    }
    diff
}

/// "(r, g, b)".
pub fn colour(c: [u8; 3]) -> String {
    format!("({}, {}, {})", c[0], c[1], c[2])
}

/// What a screen shows, measured on every other pixel each way: the background (the most
/// common colour of the whole screen, counted on every fourth pixel each way), the share of the
/// centre region (the middle half each way) that is not the background, and how many distinct
/// colours that part has.
#[derive(Debug, Clone, PartialEq)]
pub struct Stats {
    pub background: [u8; 3],
    pub share: f64,
    pub colours: usize,
}

pub fn stats(image: &Image) -> Stats {
    let (w, h) = (image.width, image.height);
    // Counted in first-seen order, so that a tie goes to the colour seen first.
    let mut counts: std::collections::HashMap<[u8; 3], (usize, usize)> = Default::default();
    for y in (0..h).step_by(4) {
        for x in (0..w).step_by(4) {
            let seen = counts.len();
            counts.entry(image.pixel(x, y)).or_insert((0, seen)).0 += 1;
        }
    }
    let background = counts
        .iter()
        .max_by(|a, b| a.1 .0.cmp(&b.1 .0).then(b.1 .1.cmp(&a.1 .1)))
        .map(|(c, _)| *c)
        .unwrap_or([0; 3]);
    let mut others = std::collections::HashSet::new();
    let (mut other, mut total) = (0usize, 0usize);
    for y in (h / 4..h - h / 4).step_by(2) {
        for x in (w / 4..w - w / 4).step_by(2) {
            let c = image.pixel(x, y);
            total += 1;
            if c != background {
                other += 1;
                others.insert(c);
            }
        }
    }
    Stats {
        background,
        share: if total == 0 {
            0.0
        } else {
            other as f64 / total as f64
        },
        colours: others.len(),
    }
}

/// The least a screen must show to count as a rendered picture (kmscube's shaded cube gives
/// tens of thousands of colours; a blank screen or a line of text does not pass).
#[derive(Debug, Clone, Copy)]
pub struct PictureNeed {
    pub min_share: f64,
    pub min_colours: usize,
}

impl Default for PictureNeed {
    fn default() -> Self {
        PictureNeed {
            min_share: 0.05,
            min_colours: 16,
        }
    }
}

impl Stats {
    pub fn shows_picture(&self, need: PictureNeed) -> bool {
        self.share >= need.min_share && self.colours >= need.min_colours
    }

    pub fn describe(&self, image: &Image) -> String {
        format!(
            "{}x{}, background {}, centre {:.1}% other pixels in {} colours",
            image.width,
            image.height,
            colour(self.background),
            self.share * 100.0,
            self.colours
        )
    }
}

/// Channel values that are not 0.
pub fn lit_channels(image: &Image) -> usize {
    image.rgb.iter().filter(|&&b| b != 0).count()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn size(w: usize, h: usize) -> Size {
        Size {
            width: w,
            height: h,
        }
    }

    #[test]
    fn pattern_matches_kms_pattern_c() {
        let img = pattern(size(64, 32), 3);
        // Top half: band (x*8/W + s) % 8 = (0 + 3) % 8 = 3: red and green.
        assert_eq!(img.pixel(0, 0), [255, 255, 0]);
        // x = 63: band (7 + 3) % 8 = 2: green only.
        assert_eq!(img.pixel(63, 15), [0, 255, 0]);
        // Bottom half: R = x + s, G = y, B = x ^ y ^ s.
        assert_eq!(img.pixel(10, 20), [13, 20, (10 ^ 20 ^ 3) as u8]);
        assert_eq!(
            pattern(size(1280, 800), 1).pixel(300, 700),
            [45, 188, (300 ^ 700 ^ 1) as u8]
        );
        // Two pixels of the 1024x768 seed 5 pattern, as the former Python check had them.
        let p = pattern(size(1024, 768), 5);
        assert_eq!(p.pixel(777, 500), [14, 244, 248]);
        assert_eq!(p.pixel(1000, 10), [0, 0, 255]);
    }

    #[test]
    fn share_frame_matches_the_guest_formula() {
        // tile 0, seed 4242: v = 4242; v ^= v >> 15 (0); v *= 0x2C1B3C6D; v ^= v >> 13.
        let mut v: u32 = 4242u32.wrapping_mul(0x2C1B_3C6D);
        v ^= v >> 13;
        let img = share_frame(size(256, 8), 4242);
        assert_eq!(img.pixel(0, 0), [(v >> 16) as u8, (v >> 8) as u8, v as u8]);
        // Tiles 1 and 21 (row 1 of 16-tile rows, column 5), as the former Python check had them.
        assert_eq!(img.pixel(16, 0), [166, 85, 179]);
        assert_eq!(img.pixel(5 * 16 + 3, 4), [197, 208, 169]);
        // One tile is one colour; the next tile another.
        assert_eq!(img.pixel(15, 3), img.pixel(0, 0));
        assert_ne!(img.pixel(16, 0), img.pixel(0, 0));
        assert_ne!(img.pixel(0, 4), img.pixel(0, 0));
    }

    #[test]
    fn compare_counts_and_names_the_first_wrong_pixel() {
        let want = pattern(size(16, 8), 1);
        let mut got = want.clone();
        assert_eq!(compare(&got, &want).wrong, 0);
        got.rgb[(5 * 16 + 2) * 3] ^= 1;
        got.rgb[(6 * 16 + 3) * 3 + 2] ^= 0x80;
        let d = compare(&got, &want);
        assert_eq!(d.wrong, 2);
        let expected = want.pixel(2, 5);
        let mut seen = expected;
        seen[0] ^= 1;
        assert_eq!(
            d.first.as_deref(),
            Some(format!("(2, 5) is {}, expected {}", colour(seen), colour(expected)).as_str())
        );
        // Another seed is another picture.
        assert!(compare(&pattern(size(16, 8), 2), &want).wrong > 0);
    }

    #[test]
    fn ppm_round_trip_and_comments() {
        let img = pattern(size(7, 5), 9);
        let dir = std::env::temp_dir().join(format!("vgpud-e2e-test-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join("a.ppm");
        write_ppm(&path, &img).unwrap();
        assert_eq!(read(&path).unwrap(), img);
        let mut data = b"P6\n# a comment\n7 5\n255\n".to_vec();
        data.extend_from_slice(&img.rgb);
        assert_eq!(decode(&data).unwrap(), img);
        assert!(decode(&data[..data.len() - 1])
            .unwrap_err()
            .contains("truncated"));
        assert!(decode(b"P5\n1 1\n255\n\0").unwrap_err().contains("P5"));
        fs::remove_dir_all(&dir).unwrap();
    }

    fn encode_png(width: u32, height: u32, colour: png::ColorType, data: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut enc = png::Encoder::new(&mut out, width, height);
        enc.set_color(colour);
        enc.set_depth(png::BitDepth::Eight);
        let mut w = enc.write_header().unwrap();
        w.write_image_data(data).unwrap();
        w.finish().unwrap();
        out
    }

    #[test]
    fn png_rgb_and_rgba_decode_to_rgb() {
        let img = pattern(size(9, 6), 4);
        let rgb = encode_png(9, 6, png::ColorType::Rgb, &img.rgb);
        assert_eq!(decode(&rgb).unwrap(), img);
        let rgba: Vec<u8> = img
            .rgb
            .chunks_exact(3)
            .flat_map(|p| [p[0], p[1], p[2], 0x7f])
            .collect();
        assert_eq!(
            decode(&encode_png(9, 6, png::ColorType::Rgba, &rgba)).unwrap(),
            img
        );
        // Our own writer reads back the same.
        let dir = std::env::temp_dir().join(format!("vgpud-e2e-png-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join("a.png");
        write(&path, &img).unwrap();
        assert_eq!(read(&path).unwrap(), img);
        fs::remove_dir_all(&dir).unwrap();
        assert!(decode(&rgb[..rgb.len() / 2]).is_err());
    }

    #[test]
    fn picture_measure_tells_a_picture_from_a_flat_screen() {
        let need = PictureNeed::default();
        let flat = Image::from_fn(64, 64, |_, _| [10, 20, 30]);
        let s = stats(&flat);
        assert_eq!(s.background, [10, 20, 30]);
        assert_eq!((s.share, s.colours), (0.0, 0));
        assert!(!s.shows_picture(need));
        // A shaded square in the middle of a black screen.
        let cube = Image::from_fn(64, 64, |x, y| {
            if (20..44).contains(&x) && (20..44).contains(&y) {
                [x as u8 * 4, y as u8 * 4, 100]
            } else {
                [0, 0, 0]
            }
        });
        let s = stats(&cube);
        assert_eq!(s.background, [0, 0, 0]);
        assert!(s.shows_picture(need), "{s:?}");
        // A single line of text-like pixels is too little.
        let text = Image::from_fn(64, 64, |x, y| {
            if y == 32 && x % 3 == 0 {
                [x as u8, 255, 255]
            } else {
                [0, 0, 0]
            }
        });
        assert!(!stats(&text).shows_picture(need));
        assert!(s
            .describe(&cube)
            .starts_with("64x64, background (0, 0, 0), centre "));
    }

    #[test]
    fn black_counts_lit_channels() {
        assert_eq!(lit_channels(&Image::from_fn(4, 4, |_, _| [0; 3])), 0);
        assert_eq!(
            lit_channels(&Image::from_fn(4, 4, |x, _| [0, x as u8, 0])),
            12
        );
    }
}
