//! Input rows rounded to integers for the integer few-row kernels.

use super::format::RowFormat;

/// Input rows rounded for an integer kernel of one weight format.
pub(crate) trait InputRows: Sync + Sized {
    /// The weight format whose kernels take these rows.
    const FMT: RowFormat;
    /// `x`'s `m` rows of `k` values, rounded.
    fn new(x: &[f32], m: usize, k: usize) -> Self;
}

/// Input rows quantised for the integer q4_K kernel, as llama.cpp's q8_K:
/// per 256 values an f32 scale and 256 i8 (stored in the order the kernel
/// unpacks q4_K nibbles: see [`super::avx512::dot_q4k_int8`]), and per 32 values the
/// sum of the rounded values (for the blocks' minimum terms), eight per block
/// after eight zeros (the lanes the kernel multiplies with the minimums).
pub(crate) struct Int8Rows {
    pub(crate) q: Vec<i8>,
    pub(crate) scale: Vec<f32>,
    pub(crate) sums: Vec<f32>,
}

impl InputRows for Int8Rows {
    const FMT: RowFormat = RowFormat::Q4K;

    fn new(x: &[f32], m: usize, k: usize) -> Self {
        let blocks = m * k / 256;
        let mut this = Self {
            q: vec![0; m * k],
            scale: vec![0.0; blocks],
            sums: vec![0.0; blocks * 16],
        };
        for (b, xb) in x[..m * k].chunks_exact(256).enumerate() {
            let amax = abs_max(xb);
            let d = amax / 127.0;
            let id = if d > 0.0 { 1.0 / d } else { 0.0 };
            this.scale[b] = d;
            // Values 128h + 64p + 32n.. (half h, pair p, nibble n: low or
            // high) go to bytes 128h + 64n + 32p.., 32 at a time (so the
            // loop vectorises).
            let q = &mut this.q[b * 256..b * 256 + 256];
            let mut sums = [0i32; 8];
            for (sub, sum) in sums.iter_mut().enumerate() {
                let (h, p, n) = (sub / 4, sub / 2 % 2, sub % 2);
                let dst = &mut q[128 * h + 64 * n + 32 * p..][..32];
                for (d, &xv) in dst.iter_mut().zip(&xb[32 * sub..32 * sub + 32]) {
                    *d = nearest(xv * id) as i8;
                }
                *sum = dst.iter().map(|&r| r as i32).sum();
            }
            // Sums of the rounded values, not of x: the minimum terms then
            // cancel against the rounded products exactly, and the result is
            // the dequantised weights times the rounded inputs.
            for (s, q) in this.sums[b * 16 + 8..b * 16 + 16].iter_mut().zip(sums) {
                *s = d * q as f32;
            }
        }
        this
    }
}

/// The nearest integer to `v` (ties to even) for |v| < 2^22, by the
/// float-add trick (llama.cpp's `nearest_int`): `f32::round` is a libm call
/// per value on baseline x86-64, and this vectorises.
#[inline(always)]
pub(crate) fn nearest(v: f32) -> i32 {
    (v + 12582912.0).to_bits() as i32 - 0x4B40_0000
}

/// The largest |value| of `xs`, NaN if one is NaN or infinite: its chunk's
/// scale then makes the row's sums NaN, as f32 arithmetic would, instead
/// of rounding the value to some integer.
pub(crate) fn abs_max(xs: &[f32]) -> f32 {
    // `f32::max` skips NaN; v * 0 is NaN exactly for NaN and infinities.
    // Sixteen independent lanes, so both loops vectorise.
    let mut bad = [0f32; 16];
    let mut it = xs.chunks_exact(16);
    for c in &mut it {
        for (b, &v) in bad.iter_mut().zip(c) {
            *b += v * 0.0;
        }
    }
    let rest: f32 = it.remainder().iter().map(|&v| v * 0.0).sum();
    xs.iter().fold(0f32, |a, v| a.max(v.abs())) + bad.iter().sum::<f32>() + rest
}

/// Input rows rounded to 16-bit integers for the q8_0 few-row kernel: one
/// f32 scale (amax / 32767) per chunk of 256 values (32 where the row length
/// is not a multiple of 256), so the rounding (at most 2^-16 of the largest
/// value nearby) stays far below the 8-bit weights' own.
pub(crate) struct Int16Rows {
    pub(crate) q: Vec<i16>,
    pub(crate) scale: Vec<f32>,
    // Read by the x86-64 kernel only.
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    pub(crate) chunk: usize,
}

impl InputRows for Int16Rows {
    const FMT: RowFormat = RowFormat::Q8_0;

    fn new(x: &[f32], m: usize, k: usize) -> Self {
        let chunk = if k % 256 == 0 { 256 } else { 32 };
        let mut this = Self {
            q: vec![0; m * k],
            scale: vec![0.0; m * k / chunk],
            chunk,
        };
        for ((xb, q), d) in x[..m * k]
            .chunks_exact(chunk)
            .zip(this.q.chunks_exact_mut(chunk))
            .zip(this.scale.iter_mut())
        {
            let amax = abs_max(xb);
            *d = amax / 32767.0;
            let id = if amax > 0.0 { 32767.0 / amax } else { 0.0 };
            for (q, &v) in q.iter_mut().zip(xb) {
                *q = nearest(v * id) as i16;
            }
        }
        this
    }
}
