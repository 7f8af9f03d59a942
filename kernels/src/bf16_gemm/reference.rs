//! The bf16 GEMM's sums in scalar code: CPUs without AVX-512-BF16, and the
//! tests' reference.

use super::operands::{bits, Rhs, Runs, KC};

/// The same sums, one row of `B` at a time (other CPUs, and the tests' reference).
#[allow(clippy::too_many_arguments)]
pub(crate) fn reference(
    m: usize,
    n: usize,
    k: usize,
    a: &[f32],
    lda: usize,
    rhs: &Rhs,
    c: &mut [f32],
    ldc: usize,
    accumulate: bool,
    runs: Runs,
) {
    let round = |x: f32| f32::from_bits(bits(x) << 16);
    let ar: Vec<f32> = (0..m)
        .flat_map(|i| a[i * lda..i * lda + k].iter().map(|&x| round(x)))
        .collect();
    let mut row = vec![0f32; k];
    for j in 0..n {
        for l0 in (0..k).step_by(KC) {
            let len = KC.min(k - l0);
            rhs.row_f32(j, l0, &mut row[l0..l0 + len]);
        }
        for v in row.iter_mut() {
            *v = round(*v);
        }
        let period = runs.run + runs.skip;
        if j % period >= runs.run {
            continue;
        }
        let col = j / period * runs.run + j % period;
        for i in 0..m {
            let s: f32 = ar[i * k..(i + 1) * k]
                .iter()
                .zip(&row)
                .map(|(x, y)| x * y)
                .sum();
            let o = &mut c[i * ldc + col];
            *o = if accumulate { *o + s } else { s };
        }
    }
}
