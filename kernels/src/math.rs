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

#[cfg(test)]
mod tests {
    #[test]
    fn fast_exp_is_accurate() {
        for i in -8700..8800 {
            let x = i as f32 / 100.0;
            let (a, b) = (super::fast_exp(x), x.exp());
            assert!(((a - b) / b).abs() < 1e-6, "{x}: {a} vs {b}");
        }
    }
}
