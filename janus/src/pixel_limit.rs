//! The largest image this crate decodes, checked from a file's header
//! before its pixels are decoded (a guard against decompression bombs).

/// `Err(message)` when an image of `w` x `h` is over [`MAX_IMAGE_PIXELS`],
/// checked before decoding it.
pub(crate) fn within_pixel_limit(w: usize, h: usize) -> std::result::Result<(), String> {
    let pixels = w as u64 * h as u64;
    if pixels > MAX_IMAGE_PIXELS {
        return Err(format!(
            "{w}x{h} is {:.1} megapixels, over the limit of {} megapixels",
            pixels as f64 / 1e6,
            MAX_IMAGE_PIXELS / 1_000_000
        ));
    }
    Ok(())
}

/// The largest image, in pixels, that [`crate::ImageProcessor::open`] will decode
/// (100 megapixels). Larger files are refused before their pixels are
/// decoded, as a guard against decompression bombs.
pub const MAX_IMAGE_PIXELS: u64 = 100_000_000;
