//! Pillow's antialiased bicubic resampling (`src/libImaging/Resample.c`),
//! byte for byte: `fast_image_resize`'s `CatmullRom` convolution was tried
//! and does not reproduce Pillow's bytes.

use image::RgbImage;

// ---------------------------------------------------------------------------
// Pillow's antialiased bicubic resampling (libImaging/Resample.c), 8 bits per
// channel. Weights are computed in f64, normalised to sum to one, turned into
// fixed point with 22 fractional bits (rounded half away from zero), and each
// output sample is `clip8((1 << 21) + sum(pixel * weight)) >> 22`. The image
// is resized in two 1-D passes whose 8-bit intermediate is rounded, so the
// order of the passes matters; a pass is skipped when its dimension does not
// change.
// ---------------------------------------------------------------------------

/// Fractional bits of Pillow's fixed-point weights for 8-bit images.
const PRECISION_BITS: u32 = 32 - 8 - 2;
/// Support radius of the bicubic kernel at scale 1.
const BICUBIC_SUPPORT: f64 = 2.0;

/// The Keys cubic kernel with `a = -0.5`, written with Pillow's operation
/// order so the doubles agree bit for bit.
fn bicubic_kernel(x: f64) -> f64 {
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

/// The fixed-point taps of a 1-D resampling from `in_size` to `out_size`
/// samples: output `i` reads `len[i]` inputs from `start[i]`, with weights
/// `weights[i * ksize..][..len[i]]`.
struct Taps {
    ksize: usize,
    start: Vec<usize>,
    len: Vec<usize>,
    weights: Vec<i32>,
}

impl Taps {
    fn new(in_size: usize, out_size: usize) -> Self {
        let scale = in_size as f64 / out_size as f64;
        let filterscale = if scale < 1.0 { 1.0 } else { scale };
        let support = BICUBIC_SUPPORT * filterscale;
        let ksize = support.ceil() as usize * 2 + 1;
        let inv_filterscale = 1.0 / filterscale;
        let mut start = Vec::with_capacity(out_size);
        let mut len = Vec::with_capacity(out_size);
        let mut weights = vec![0i32; out_size * ksize];
        let mut row = vec![0f64; ksize];
        for i in 0..out_size {
            let center = (i as f64 + 0.5) * scale;
            // C's `(int)` truncates toward zero; negatives clamp to 0 anyway.
            let first = ((center - support + 0.5) as i64).max(0) as usize;
            let end = ((center + support + 0.5) as i64).min(in_size as i64) as usize;
            let n = end.saturating_sub(first).min(ksize);
            let mut total = 0.0;
            for (j, w) in row.iter_mut().enumerate().take(n) {
                *w = bicubic_kernel(((j + first) as f64 - center + 0.5) * inv_filterscale);
                total += *w;
            }
            let fixed = &mut weights[i * ksize..i * ksize + n];
            for (k, w) in fixed.iter_mut().zip(&row[..n]) {
                let w = if total != 0.0 { w / total } else { *w };
                let scaled = w * f64::from(1u32 << PRECISION_BITS);
                *k = if w < 0.0 {
                    (scaled - 0.5) as i32
                } else {
                    (scaled + 0.5) as i32
                };
            }
            start.push(first);
            len.push(n);
        }
        Self {
            ksize,
            start,
            len,
            weights,
        }
    }

    /// The weights of output sample `i`.
    fn of(&self, i: usize) -> &[i32] {
        &self.weights[i * self.ksize..][..self.len[i]]
    }
}

/// Pillow's `clip8`: drop the fractional bits, saturating to `0..=255`.
fn clip8(acc: i64) -> u8 {
    if acc >= (1i64 << PRECISION_BITS << 8) {
        255
    } else if acc <= 0 {
        0
    } else {
        (acc >> PRECISION_BITS) as u8
    }
}

/// Rounding bias added to every accumulator.
const HALF: i64 = 1 << (PRECISION_BITS - 1);

/// Horizontal pass over rows `rows` of an interleaved RGB buffer `width`
/// pixels wide; returns those rows resampled to `taps.start.len()` pixels.
fn horizontal_pass(src: &[u8], width: usize, rows: std::ops::Range<usize>, taps: &Taps) -> Vec<u8> {
    let out_w = taps.start.len();
    let mut out = vec![0u8; rows.len() * out_w * 3];
    for (r, y) in rows.enumerate() {
        let in_row = &src[y * width * 3..][..width * 3];
        let out_row = &mut out[r * out_w * 3..][..out_w * 3];
        for (x, px) in out_row.chunks_exact_mut(3).enumerate() {
            let mut acc = [HALF; 3];
            let base = taps.start[x] * 3;
            for (j, &w) in taps.of(x).iter().enumerate() {
                let p = &in_row[base + j * 3..][..3];
                for (a, &v) in acc.iter_mut().zip(p) {
                    *a += i64::from(v) * i64::from(w);
                }
            }
            for (o, a) in px.iter_mut().zip(acc) {
                *o = clip8(a);
            }
        }
    }
    out
}

/// Vertical pass over an interleaved RGB buffer `width` pixels wide whose
/// first row is source row `row0`; returns `taps.start.len()` rows.
fn vertical_pass(src: &[u8], width: usize, row0: usize, taps: &Taps) -> Vec<u8> {
    let out_h = taps.start.len();
    let stride = width * 3;
    let mut out = vec![0u8; out_h * stride];
    for (y, out_row) in out.chunks_exact_mut(stride).enumerate() {
        let first = taps.start[y] - row0;
        let k = taps.of(y);
        for (x, o) in out_row.iter_mut().enumerate() {
            let mut acc = HALF;
            for (j, &w) in k.iter().enumerate() {
                acc += i64::from(src[(first + j) * stride + x]) * i64::from(w);
            }
            *o = clip8(acc);
        }
    }
    out
}

/// Whether Pillow runs the vertical pass first. Pillow 13 does when the
/// height shrinks by more than twice as many pixels as the width does
/// (python-pillow/Pillow#9549); Pillow 12.1 and older always ran the
/// horizontal pass first. The two orders round the intermediate differently.
fn vertical_first(in_w: usize, in_h: usize, out_w: usize, out_h: usize) -> bool {
    let dh = in_h as i64 - out_h as i64;
    let dw = in_w as i64 - out_w as i64;
    dh > 0 && dh > dw * 2
}

/// Pillow's `Image.resize((out_w, out_h), Image.BICUBIC)` for an RGB image
/// (Pillow 13 pass order).
pub(crate) fn pillow_bicubic_resize(src: &RgbImage, out_w: u32, out_h: u32) -> RgbImage {
    let (in_w, in_h) = (src.width() as usize, src.height() as usize);
    let (ow, oh) = (out_w as usize, out_h as usize);
    let need_horizontal = ow != in_w;
    let need_vertical = oh != in_h;
    if !need_horizontal && !need_vertical {
        return src.clone();
    }
    let raw = src.as_raw();
    let data = if vertical_first(in_w, in_h, ow, oh) {
        let tall = vertical_pass(raw, in_w, 0, &Taps::new(in_h, oh));
        if need_horizontal {
            horizontal_pass(&tall, in_w, 0..oh, &Taps::new(in_w, ow))
        } else {
            tall
        }
    } else if need_vertical {
        let vert = Taps::new(in_h, oh);
        // Only the source rows the vertical pass reads are resampled.
        let rows = vert.start[0]..vert.start[oh - 1] + vert.len[oh - 1];
        let row0 = rows.start;
        if need_horizontal {
            let wide = horizontal_pass(raw, in_w, rows, &Taps::new(in_w, ow));
            vertical_pass(&wide, ow, row0, &vert)
        } else {
            vertical_pass(raw, in_w, 0, &vert)
        }
    } else {
        horizontal_pass(raw, in_w, 0..in_h, &Taps::new(in_w, ow))
    };
    RgbImage::from_raw(out_w, out_h, data).expect("buffer length matches the output size")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn taps_sum_to_one_in_fixed_point_for_downscale() {
        let t = Taps::new(200, 32);
        assert_eq!(t.ksize, 2 * (2.0f64 * 6.25).ceil() as usize + 1);
        for i in 0..32 {
            let s: i64 = t.weights[i * t.ksize..][..t.len[i]]
                .iter()
                .map(|&w| i64::from(w))
                .sum();
            assert!((s - (1 << PRECISION_BITS)).abs() <= t.len[i] as i64, "{s}");
        }
    }

    #[test]
    fn kernel_values() {
        assert_eq!(bicubic_kernel(0.0), 1.0);
        assert_eq!(bicubic_kernel(1.0), 0.0);
        assert_eq!(bicubic_kernel(0.5), 0.5625);
        assert_eq!(bicubic_kernel(-1.5), -0.0625);
        assert_eq!(bicubic_kernel(2.0), 0.0);
    }
}
