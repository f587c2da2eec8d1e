//! Image bytes → the model's input, exactly as the reference made it
//! (tests/data/efficientnet/reference.json, `method`): decode to 8-bit RGB, the TF EfficientNet
//! centre crop, Pillow's fixed-point BICUBIC resize to 224×224, then `(v − 127) / 128` as CHW.

use std::io::Cursor;

use image::{DynamicImage, ImageDecoder, ImageReader, Limits, RgbImage};

use super::{MAX_PIXELS, SIZE};

/// Why an upload is not a usable image; every variant is the client's fault (HTTP 4xx), and the
/// message says what to fix.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("not an image in a supported format (PNG, JPEG, WebP or GIF)")]
    NotAnImage,
    #[error("unsupported image: {0}")]
    Unsupported(String),
    #[error("truncated or corrupt image: {0}")]
    Corrupt(String),
    #[error("the image is empty ({width}×{height})")]
    Empty { width: u32, height: u32 },
    #[error("the image is {width}×{height} = {} pixels, over the limit of {MAX_PIXELS}", *width as u64 * *height as u64)]
    TooLarge { width: u32, height: u32 },
}

impl ImageError {
    fn from_image(e: image::ImageError) -> ImageError {
        use image::ImageError as E;
        match e {
            E::Unsupported(u) => ImageError::Unsupported(u.to_string()),
            E::Limits(l) => ImageError::Unsupported(format!("decoding needs more memory than allowed: {l}")),
            // Reading from memory, an I/O error can only be the data ending early.
            E::IoError(io) => ImageError::Corrupt(io.to_string()),
            E::Decoding(d) => ImageError::Corrupt(d.to_string()),
            E::Parameter(p) => ImageError::Corrupt(p.to_string()),
            E::Encoding(x) => ImageError::Corrupt(x.to_string()),
        }
    }
}

/// Bytes a decode may allocate: a 50 MP image as 16-bit RGBA is 400 MB.
const MAX_ALLOC: u64 = MAX_PIXELS * 8 + (64 << 20);

/// Decodes PNG, JPEG, WebP or GIF (its first frame) to 8-bit RGB: alpha dropped (not blended),
/// grey expanded, 16-bit reduced to 8-bit, the EXIF orientation applied. The dimensions are
/// checked against [`MAX_PIXELS`] from the header, before any pixel is decoded.
pub fn decode(bytes: &[u8]) -> Result<RgbImage, ImageError> {
    let mut reader =
        ImageReader::new(Cursor::new(bytes)).with_guessed_format().map_err(|e| ImageError::Corrupt(e.to_string()))?;
    if reader.format().is_none() {
        return Err(ImageError::NotAnImage);
    }
    let mut limits = Limits::default();
    limits.max_image_width = None;
    limits.max_image_height = None;
    limits.max_alloc = Some(MAX_ALLOC);
    reader.limits(limits);
    let mut decoder = reader.into_decoder().map_err(ImageError::from_image)?;
    let (width, height) = decoder.dimensions();
    if width == 0 || height == 0 {
        return Err(ImageError::Empty { width, height });
    }
    if width as u64 * height as u64 > MAX_PIXELS {
        return Err(ImageError::TooLarge { width, height });
    }
    let orientation = decoder.orientation().map_err(ImageError::from_image)?;
    let mut img = DynamicImage::from_decoder(decoder).map_err(ImageError::from_image)?;
    img.apply_orientation(orientation);
    Ok(match img {
        DynamicImage::ImageRgb8(rgb) => rgb,
        other => other.to_rgb8(),
    })
}

/// The centre crop of the official TF EfficientNet eval (CROP_PADDING 32):
/// `(left, top, side)` of the square `c = floor(224/256 · min(W, H))` (at least 1).
pub fn crop_box(width: u32, height: u32) -> (u32, u32, u32) {
    let c = ((SIZE as u64 * width.min(height) as u64) / 256).max(1) as u32;
    // ((W − c) + 1) // 2 and ((H − c) + 1) // 2.
    ((width - c).div_ceil(2), (height - c).div_ceil(2), c)
}

/// Centre crop, then Pillow's BICUBIC resize to 224×224: HWC RGB bytes, row-major.
pub fn crop_resize(img: &RgbImage) -> Vec<u8> {
    let (left, top, c) = crop_box(img.width(), img.height());
    let (c, left, top) = (c as usize, left as usize, top as usize);
    let w = img.width() as usize;
    let raw = img.as_raw();
    let mut square = Vec::with_capacity(c * c * 3);
    for y in top..top + c {
        square.extend_from_slice(&raw[(y * w + left) * 3..(y * w + left + c) * 3]);
    }
    // Pillow skips a pass whose size does not change; horizontal first, then vertical.
    let wide = if c == SIZE { square } else { resample(&square, c, c, SIZE, Axis::Horizontal) };
    if c == SIZE { wide } else { resample(&wide, SIZE, c, SIZE, Axis::Vertical) }
}

/// `(v − 127) / 128` per channel, HWC → CHW (the TF EfficientNet-Lite normalisation).
pub fn normalise(hwc: &[u8]) -> Vec<f32> {
    let plane = SIZE * SIZE;
    assert_eq!(hwc.len(), plane * 3, "normalise takes {SIZE}×{SIZE}×3 bytes");
    let mut out = vec![0f32; plane * 3];
    for (i, px) in hwc.chunks_exact(3).enumerate() {
        for (ch, &v) in px.iter().enumerate() {
            out[ch * plane + i] = (v as f32 - 127.0) / 128.0;
        }
    }
    out
}

/// [`decode`], [`crop_resize`], [`normalise`]: one image's `3 × 224 × 224` CHW input.
pub fn prepare(bytes: &[u8]) -> Result<Vec<f32>, ImageError> {
    Ok(normalise(&crop_resize(&decode(bytes)?)))
}

/// Pillow's fixed-point precision for 8-bit images (`PRECISION_BITS = 32 - 8 - 2`).
const PRECISION_BITS: u32 = 22;

/// Pillow's `bicubic_filter` (Keys, a = −0.5), with its order of operations.
fn bicubic(x: f64) -> f64 {
    const A: f64 = -0.5;
    let x = x.abs();
    if x < 1.0 {
        ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
    } else if x < 2.0 {
        (((x - 5.0) * x + 8.0) * x - 4.0) * A
    } else {
        0.0
    }
}

/// Pillow's `precompute_coeffs` + `normalize_coeffs_8bpc` for BICUBIC: per output index, the first
/// input index and the fixed-point weights of its taps.
pub(crate) fn coefficients(in_size: usize, out_size: usize) -> Vec<(usize, Vec<i32>)> {
    let scale = in_size as f64 / out_size as f64;
    let filterscale = scale.max(1.0);
    let support = 2.0 * filterscale;
    let ss = 1.0 / filterscale;
    (0..out_size)
        .map(|o| {
            let center = (o as f64 + 0.5) * scale;
            // C's (int) cast truncates toward zero, as `as` does.
            let xmin = ((center - support + 0.5) as i64).max(0) as usize;
            let xmax = ((center + support + 0.5) as i64).min(in_size as i64) as usize;
            let mut w: Vec<f64> = (xmin..xmax).map(|x| bicubic((x as f64 - center + 0.5) * ss)).collect();
            let total: f64 = w.iter().sum();
            if total != 0.0 {
                w.iter_mut().for_each(|v| *v /= total);
            }
            let one = (1u32 << PRECISION_BITS) as f64;
            let fixed =
                w.iter().map(|&v| if v < 0.0 { (v * one - 0.5) as i32 } else { (v * one + 0.5) as i32 }).collect();
            (xmin, fixed)
        })
        .collect()
}

#[derive(Clone, Copy)]
enum Axis {
    Horizontal,
    Vertical,
}

/// One pass of Pillow's `ImagingResampleHorizontal_8bpc` / `ImagingResampleVertical_8bpc` on RGB
/// bytes `width × height`, resizing the given axis to `out`; uint8 after the pass.
fn resample(src: &[u8], width: usize, height: usize, out: usize, axis: Axis) -> Vec<u8> {
    let (in_size, (ow, oh)) = match axis {
        Axis::Horizontal => (width, (out, height)),
        Axis::Vertical => (height, (width, out)),
    };
    let coeffs = coefficients(in_size, out);
    let mut dst = vec![0u8; ow * oh * 3];
    let clip8 = |ss: i64| -> u8 {
        if ss >= 1 << (PRECISION_BITS + 8) {
            255
        } else if ss <= 0 {
            0
        } else {
            (ss >> PRECISION_BITS) as u8
        }
    };
    for y in 0..oh {
        for x in 0..ow {
            let (o, fixed) = match axis {
                Axis::Horizontal => (x, y),
                Axis::Vertical => (y, x),
            };
            let (first, k) = &coeffs[o];
            for ch in 0..3 {
                let mut ss: i64 = 1 << (PRECISION_BITS - 1);
                for (i, &w) in k.iter().enumerate() {
                    let (sx, sy) = match axis {
                        Axis::Horizontal => (first + i, fixed),
                        Axis::Vertical => (fixed, first + i),
                    };
                    ss += src[(sy * width + sx) * 3 + ch] as i64 * w as i64;
                }
                dst[(y * ow + x) * 3 + ch] = clip8(ss);
            }
        }
    }
    dst
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::{ImageEncoder, Rgb, Rgba};

    fn png_of(img: DynamicImage) -> Vec<u8> {
        let mut out = Vec::new();
        img.write_to(&mut Cursor::new(&mut out), image::ImageFormat::Png).unwrap();
        out
    }

    fn crc32(bytes: &[u8]) -> u32 {
        let mut crc = !0u32;
        for &b in bytes {
            crc ^= b as u32;
            for _ in 0..8 {
                crc = if crc & 1 != 0 { (crc >> 1) ^ 0xEDB8_8320 } else { crc >> 1 };
            }
        }
        !crc
    }

    /// A PNG signature and IHDR claiming `w × h` 8-bit RGB, then an empty IDAT and IEND.
    fn png_header(w: u32, h: u32) -> Vec<u8> {
        let chunk = |kind: &[u8], data: &[u8]| {
            let mut c = (data.len() as u32).to_be_bytes().to_vec();
            let mut body = kind.to_vec();
            body.extend_from_slice(data);
            c.extend_from_slice(&body);
            c.extend_from_slice(&crc32(&body).to_be_bytes());
            c
        };
        let mut ihdr = w.to_be_bytes().to_vec();
        ihdr.extend_from_slice(&h.to_be_bytes());
        ihdr.extend_from_slice(&[8, 2, 0, 0, 0]);
        let mut f = b"\x89PNG\r\n\x1a\n".to_vec();
        f.extend(chunk(b"IHDR", &ihdr));
        f.extend(chunk(b"IDAT", &[]));
        f.extend(chunk(b"IEND", &[]));
        f
    }

    #[test]
    fn garbage_is_not_an_image() {
        assert!(matches!(decode(b"hello, this is not an image at all"), Err(ImageError::NotAnImage)));
        assert!(matches!(decode(b""), Err(ImageError::NotAnImage)));
        // A format the build does not decode (BMP magic).
        let e = decode(b"BM\x00\x00\x00\x00\x00\x00\x00\x00\x36\x00\x00\x00").unwrap_err();
        assert!(matches!(e, ImageError::Unsupported(_) | ImageError::NotAnImage), "{e:?}");
    }

    #[test]
    fn truncated_png_is_corrupt() {
        let img = DynamicImage::ImageRgb8(RgbImage::from_fn(64, 48, |x, y| Rgb([x as u8 * 3, y as u8 * 5, 7])));
        let png = png_of(img);
        for n in [40, png.len() / 2, png.len() - 20] {
            let e = decode(&png[..n]).unwrap_err();
            assert!(matches!(e, ImageError::Corrupt(_)), "{n}: {e:?}");
        }
        let mut bad = png.clone();
        let mid = bad.len() / 2;
        bad[mid..mid + 8].copy_from_slice(b"garbage!");
        assert!(matches!(decode(&bad), Err(ImageError::Corrupt(_))));
    }

    #[test]
    fn empty_image_is_refused() {
        let e = decode(&png_header(0, 0)).unwrap_err();
        // The PNG decoder itself refuses a zero dimension in IHDR; either way a typed 4xx.
        assert!(matches!(e, ImageError::Empty { .. } | ImageError::Corrupt(_)), "{e:?}");
        // A 0×0 GIF (logical screen and frame both empty) reaches our own check.
        let gif = b"GIF89a\x00\x00\x00\x00\x00\x00\x00,\x00\x00\x00\x00\x00\x00\x00\x00\x00\x02\x02D\x01\x00;";
        let e = decode(gif).unwrap_err();
        assert!(matches!(e, ImageError::Empty { .. } | ImageError::Corrupt(_)), "{e:?}");
    }

    #[test]
    fn huge_dimensions_are_refused_before_decoding() {
        let e = decode(&png_header(100_000, 100_000)).unwrap_err();
        assert!(matches!(e, ImageError::TooLarge { width: 100_000, height: 100_000 }), "{e:?}");
        assert!(e.to_string().contains("10000000000 pixels, over the limit of 50000000"), "{e}");
        // Just over and just under the limit by pixel count, one long side.
        assert!(matches!(decode(&png_header(50_001, 1000)), Err(ImageError::TooLarge { .. })));
        assert!(matches!(decode(&png_header(50_000, 1000)), Err(ImageError::Corrupt(_))));
    }

    #[test]
    fn grey_and_rgba_become_rgb() {
        let grey = image::GrayImage::from_fn(5, 4, |x, y| image::Luma([(x * 40 + y) as u8]));
        let rgb = decode(&png_of(DynamicImage::ImageLuma8(grey))).unwrap();
        assert_eq!(rgb.dimensions(), (5, 4));
        assert_eq!(rgb.get_pixel(3, 2), &Rgb([122, 122, 122]));
        // Alpha is dropped, not blended: a transparent pixel keeps its colour.
        let rgba = image::RgbaImage::from_fn(3, 2, |x, _| Rgba([200, 100, x as u8 * 50, (x * 100) as u8]));
        let rgb = decode(&png_of(DynamicImage::ImageRgba8(rgba))).unwrap();
        assert_eq!(rgb.get_pixel(0, 0), &Rgb([200, 100, 0]));
        assert_eq!(rgb.get_pixel(2, 1), &Rgb([200, 100, 100]));
        // 16-bit grey reduced to 8 bits.
        let g16 = image::ImageBuffer::<image::Luma<u16>, _>::from_fn(2, 2, |_, _| image::Luma([0xFFFFu16]));
        let rgb = decode(&png_of(DynamicImage::ImageLuma16(g16))).unwrap();
        assert_eq!(rgb.get_pixel(1, 1), &Rgb([255, 255, 255]));
    }

    #[test]
    fn exif_orientation_is_applied() {
        // 32 wide × 16 high: left half red, right half blue.
        let img = RgbImage::from_fn(32, 16, |x, _| if x < 16 { Rgb([255, 0, 0]) } else { Rgb([0, 0, 255]) });
        let mut jpeg = Vec::new();
        image::codecs::jpeg::JpegEncoder::new_with_quality(&mut jpeg, 95)
            .write_image(img.as_raw(), 32, 16, image::ExtendedColorType::Rgb8)
            .unwrap();
        // APP1 "Exif": big-endian TIFF, one IFD entry: Orientation (0x0112) SHORT = 6 (rotate 90° CW).
        let mut exif = b"Exif\0\0MM\0\x2a\0\0\0\x08\0\x01".to_vec();
        exif.extend_from_slice(&[0x01, 0x12, 0, 3, 0, 0, 0, 1, 0, 6, 0, 0]);
        exif.extend_from_slice(&[0, 0, 0, 0]);
        let mut app1 = vec![0xFF, 0xE1];
        app1.extend_from_slice(&((exif.len() + 2) as u16).to_be_bytes());
        app1.extend_from_slice(&exif);
        let mut rotated = jpeg[..2].to_vec();
        rotated.extend_from_slice(&app1);
        rotated.extend_from_slice(&jpeg[2..]);

        let plain = decode(&jpeg).unwrap();
        assert_eq!(plain.dimensions(), (32, 16));
        let out = decode(&rotated).unwrap();
        assert_eq!(out.dimensions(), (16, 32), "rotated to portrait");
        // Rotating 90° clockwise puts the left (red) half on top.
        let (top, bottom) = (out.get_pixel(8, 4), out.get_pixel(8, 28));
        assert!(top[0] > 200 && top[2] < 60, "top {top:?}");
        assert!(bottom[2] > 200 && bottom[0] < 60, "bottom {bottom:?}");
    }

    #[test]
    fn crop_matches_the_reference_boxes() {
        // reference.json crop_box_ltrb: chelsea 451×300 → [95, 19, 357, 281], coffee 600×400 → [125, 25, 475, 375].
        assert_eq!(crop_box(451, 300), (95, 19, 262));
        assert_eq!(crop_box(600, 400), (125, 25, 350));
        assert_eq!(crop_box(1, 1), (0, 0, 1));
        assert_eq!(crop_box(256, 1000), (16, 388, 224));
    }

    #[test]
    fn resize_coefficients_sum_to_one_and_identity_is_kept() {
        for (i, o) in [(262, 224), (350, 224), (100, 224), (3, 224)] {
            for (_, k) in coefficients(i, o) {
                let s: i64 = k.iter().map(|&w| w as i64).sum();
                assert!((s - (1 << PRECISION_BITS)).abs() <= k.len() as i64, "{i}->{o}: {s}");
            }
        }
        // A flat image stays flat; a 224-pixel square is not resampled at all.
        let flat = RgbImage::from_pixel(300, 262, Rgb([10, 200, 255]));
        assert!(crop_resize(&flat).chunks(3).all(|p| p == [10, 200, 255]));
        let img = RgbImage::from_fn(256, 300, |x, y| Rgb([x as u8, y as u8, (x ^ y) as u8]));
        let out = crop_resize(&img);
        assert_eq!(crop_box(256, 300), (16, 38, 224));
        for (row, got) in out.chunks(224 * 3).enumerate() {
            assert_eq!(got, &img.as_raw()[((38 + row) * 256 + 16) * 3..][..224 * 3], "row {row}");
        }
    }
}
