//! Elementwise functions written so that loops over them vectorise.

/// `e^x` in f32 without branches or library calls, so loops over it
/// vectorise: Cody-Waite range reduction and a degree-6 polynomial
/// (relative error ~2e-7 over the range where the result is finite).
#[inline(always)]
pub fn fast_exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    let x = x.clamp(-87.3, 88.7);
    // Round to nearest through the 1.5 * 2^23 trick (no `round` call); the
    // integer is read from the sum's low mantissa bits, not with `as i32`,
    // whose saturating conversion keeps loops from vectorising.
    let shifted = x * LOG2E + 12_582_912.0;
    let n = shifted - 12_582_912.0;
    let r = x - n * LN2_HI - n * LN2_LO;
    let p = 1.987_569_1e-4;
    let p = p * r + 1.398_199_9e-3;
    let p = p * r + 8.333_452e-3;
    let p = p * r + 4.166_579_6e-2;
    let p = p * r + 1.666_666_6e-1;
    let p = p * r + 0.5;
    let e = p * r * r + r + 1.0;
    let exponent = shifted.to_bits().wrapping_sub(0x4B40_0000 - 127);
    let scale = f32::from_bits(exponent << 23);
    e * scale
}

/// `x = softmax(x * scale)` in place (max and sum in 16 lanes, exponentials
/// by [`fast_exp`]).
pub fn softmax_scaled(x: &mut [f32], scale: f32) {
    #[cfg(target_arch = "x86_64")]
    if crate::cpu::avx512() {
        // SAFETY: the CPU features were just checked.
        return unsafe { softmax_scaled_avx512(x, scale) };
    }
    softmax_lanes(x, scale)
}

/// The same code compiled for AVX-512, where its lanes become one register.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn softmax_scaled_avx512(x: &mut [f32], scale: f32) {
    softmax_lanes(x, scale)
}

/// Max and sum kept in 16 independent lanes: a single running f32 sum is
/// a serial dependency the compiler may not reorder, which would leave the
/// exponentials scalar.
#[inline(always)]
fn softmax_lanes(x: &mut [f32], scale: f32) {
    const L: usize = 16;
    let bigger = |a: f32, b: f32| if b > a { b } else { a };
    let mut lanes = [f32::NEG_INFINITY; L];
    let mut chunks = x.chunks_exact(L);
    for c in &mut chunks {
        for (m, &v) in lanes.iter_mut().zip(c) {
            *m = bigger(*m, v);
        }
    }
    let max = chunks
        .remainder()
        .iter()
        .fold(f32::NEG_INFINITY, |a, &b| bigger(a, b));
    let max = lanes.iter().fold(max, |a, &b| bigger(a, b)) * scale;
    let mut sums = [0f32; L];
    let mut chunks = x.chunks_exact_mut(L);
    for c in &mut chunks {
        for (s, v) in sums.iter_mut().zip(c.iter_mut()) {
            *v = fast_exp(*v * scale - max);
            *s += *v;
        }
    }
    let mut sum: f32 = sums.iter().sum();
    for v in chunks.into_remainder() {
        *v = fast_exp(*v * scale - max);
        sum += *v;
    }
    let inv = 1.0 / sum;
    for v in x.iter_mut() {
        *v *= inv;
    }
}

/// `x Φ(x)` (GELU, exact erf form) with `erf` from Abramowitz & Stegun
/// 7.1.26 (absolute error < 1.5e-7, far below the bf16 rounding of the
/// paths that use it); branch-free so loops over it vectorise.
#[inline(always)]
pub fn gelu_erf(x: f32) -> f32 {
    let z = x.abs() * std::f32::consts::FRAC_1_SQRT_2;
    let t = 1.0 / (1.0 + 0.327_591_1 * z);
    let poly = t
        * (0.254_829_6
            + t * (-0.284_496_74 + t * (1.421_413_8 + t * (-1.453_152_1 + t * 1.061_405_4))));
    let erf_abs = 1.0 - poly * fast_exp(-z * z);
    0.5 * x * (1.0 + erf_abs.copysign(x))
}

#[cfg(test)]
mod tests {
    #[test]
    fn softmax_matches_the_definition() {
        for n in [1usize, 5, 16, 37, 600] {
            let x: Vec<f32> = (0..n)
                .map(|i| ((i * 7919) % 97) as f32 / 9.0 - 5.0)
                .collect();
            let mut y = x.clone();
            super::softmax_scaled(&mut y, 0.5);
            let max = x.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
            let z: f64 = x.iter().map(|&v| ((v - max) as f64 * 0.5).exp()).sum();
            for (a, &v) in y.iter().zip(&x) {
                let want = ((v - max) as f64 * 0.5).exp() / z;
                assert!(
                    (*a as f64 - want).abs() < 1e-6 * want.max(1e-3),
                    "{n}: {a} vs {want}"
                );
            }
        }
    }

    #[test]
    fn fast_exp_is_accurate() {
        for i in -8700..8800 {
            let x = i as f32 / 100.0;
            let (a, b) = (super::fast_exp(x), x.exp());
            assert!(((a - b) / b).abs() < 1e-6, "{x}: {a} vs {b}");
        }
    }

    #[test]
    fn gelu_matches_candle_exact_form() {
        let xs: Vec<f32> = (-1200..1200).map(|i| i as f32 / 100.0).collect();
        let t = candle_core::Tensor::new(xs.as_slice(), &candle_core::Device::Cpu).unwrap();
        let want: Vec<f32> = t.gelu_erf().unwrap().to_vec1().unwrap();
        for (x, w) in xs.iter().zip(want) {
            assert!((super::gelu_erf(*x) - w).abs() < 1e-6, "{x}");
        }
    }
}
