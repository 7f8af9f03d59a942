//! Few-row matmuls (decoding steps, image steps: up to [`FEW_ROWS_MAX`]
//! input rows) over weights stored as f32, bf16, q8_0 or q4_K rows, chosen
//! by CPU level ([`crate::cpu`]): AVX-512 (with BF16 / VNNI where present),
//! AVX2, or portable Rust (NEON on aarch64). Every weight row is read once
//! per group of input rows; output columns are split across threads.

pub mod blocks;
mod format;
mod input_rows;

use crate::bf16_gemm;
use crate::SendPtr;
pub use blocks::{dequant_row, quantize_rows};
pub use format::RowFormat;
use input_rows::InputRows;

/// Rows up to which the direct kernels are used (decoding: 1 row per
/// sequence, CFG pairs); above, the matmul is compute bound and goes to gemm
/// or candle's quantized matmul. (Packed q4_K weights, [`packed_q4k`], take
/// one kernel for every row count.)
pub const FEW_ROWS_MAX: usize = 16;

/// `out[i, j] = sum_l x[i, l] * W[j, l]` for few rows `m`: every weight
/// row is decoded once per 8 input rows, output columns split across threads.
pub fn few_row_matmul(
    fmt: RowFormat,
    w: &[u8],
    x: &[f32],
    m: usize,
    k: usize,
    n: usize,
    out: &mut [f32],
) {
    use rayon::prelude::*;
    let rb = fmt.row_bytes(k);
    assert!(w.len() >= rb * n && x.len() >= m * k && out.len() >= m * n);
    if !avx512::available() {
        if fmt == RowFormat::Q4K && k % 256 == 0 && crate::cpu::avx2() {
            return few_row_matmul_q4k_int8(w, x, m, k, n, out);
        }
        // Three or more rows: the integer kernel is faster. With one or two
        // the portable one reads the weights as fast and keeps the inputs
        // unrounded.
        if fmt == RowFormat::Q8_0 && m >= 3 && crate::cpu::avx2() {
            return few_row_matmul_q8_0_i16(w, x, m, k, n, out);
        }
        return column_runs::<8>(w, rb, m, n, out, |run, i0, rows, acc| {
            portable::dot_rows(fmt, run, rb, &x[i0 * k..], k, rows, acc)
        });
    }
    if m >= 3 && fmt == RowFormat::Bf16 && k % 32 == 0 && bf16_gemm::available() {
        return few_row_matmul_bf16_dot(w, x, m, k, n, out);
    }
    if fmt == RowFormat::Q4K && k % 256 == 0 && avx512::vnni_available() {
        return few_row_matmul_q4k_int8(w, x, m, k, n, out);
    }
    if fmt == RowFormat::Q8_0 {
        return few_row_matmul_q8_0_i16(w, x, m, k, n, out);
    }
    const COLS: usize = 32;
    let ptr = SendPtr(out.as_mut_ptr());
    let ptr = &ptr;
    (0..n.div_ceil(COLS)).into_par_iter().for_each(|b| {
        let (j0, j1) = (b * COLS, ((b + 1) * COLS).min(n));
        let mut j = j0;
        // Three or more input rows: tiles of 4 weight rows x 4 input rows,
        // so each input vector load feeds four weight rows.
        if m >= 3 {
            let mut acc4 = [[0f32; 4]; 4];
            while j + 4 <= j1 {
                for i0 in (0..m).step_by(4) {
                    let rows = (m - i0).min(4);
                    avx512::dot4(
                        fmt,
                        &w[j * rb..(j + 4) * rb],
                        rb,
                        &x[i0 * k..(i0 + rows) * k],
                        k,
                        rows,
                        &mut acc4,
                    );
                    for (wr, a) in acc4.iter().enumerate() {
                        for r in 0..rows {
                            // SAFETY: (i0 + r, j + wr) is written by this block only, and in bounds.
                            unsafe { *ptr.0.add((i0 + r) * n + j + wr) = a[r] };
                        }
                    }
                }
                j += 4;
            }
        }
        let mut acc = [0f32; 8];
        for j in j..j1 {
            let row = &w[j * rb..(j + 1) * rb];
            for i0 in (0..m).step_by(8) {
                let rows = (m - i0).min(8);
                avx512::dot(fmt, row, &x[i0 * k..(i0 + rows) * k], k, rows, &mut acc);
                for r in 0..rows {
                    // SAFETY: (i0 + r, j) is written by this block only, and in bounds.
                    unsafe { *ptr.0.add((i0 + r) * n + j) = acc[r] };
                }
            }
        }
    });
}

/// [`few_row_matmul`] for three or more rows of bf16 weights on CPUs with
/// AVX-512-BF16. With several images generated at once the f32 kernels are
/// bound by FMA throughput, not memory: here the bf16 weights are
/// multiplied with `vdpbf16ps` (twice the multiply-adds per instruction)
/// against the input rows rounded to bf16, as the many-row GEMM does; four
/// weight rows meet all (up to 16) input rows in one pass over the weights
/// ([`avx512::dot4_bf16_rows`]). (Variants decoding q8_0 / q4_K blocks into
/// bf16 pairs were slower than the integer and f32 kernels.)
fn few_row_matmul_bf16_dot(w: &[u8], x: &[f32], m: usize, k: usize, n: usize, out: &mut [f32]) {
    let rb = RowFormat::Bf16.row_bytes(k);
    let xb = avx512::bf16_pairs(&x[..m * k]);
    let words = k / 2;
    column_runs::<16>(w, rb, m, n, out, |run, i0, rows, acc| {
        let cols = acc.len();
        for j in (0..cols).step_by(4) {
            // Past the last row, the last row again; those sums are dropped.
            let rows4 = [0, 1, 2, 3].map(|c| {
                let jc = (j + c).min(cols - 1);
                &run[jc * rb..(jc + 1) * rb]
            });
            let mut sums = [[0f32; 16]; 4];
            avx512::dot4_bf16_rows(rows4, &xb[i0 * words..], k, rows, &mut sums);
            acc[j..].iter_mut().zip(sums).for_each(|(a, s)| *a = s);
        }
    });
}

/// [`few_row_matmul`] for q4_K weights on CPUs with AVX-512-VNNI or AVX2: the
/// input rows are quantised to 8 bits per 256 values (as llama.cpp does;
/// about 0.7 % error against 4-bit weights' ~8 %) and each block is integer
/// dot products per nibble half (`vpdpbusd`; `vpmaddubsw` + `vpmaddwd` on
/// AVX2), instead of widening every weight to f32. The f32 kernels are
/// bound by that widening, well above the time it takes to read the
/// weights.
fn few_row_matmul_q4k_int8(w: &[u8], x: &[f32], m: usize, k: usize, n: usize, out: &mut [f32]) {
    let kernel = if avx512::vnni_available() {
        avx512::dot_q4k_int8
    } else {
        avx2::dot_q4k_int8
    };
    integer_runs(kernel, w, x, m, k, n, out)
}

/// A few-row integer kernel (one of the builds): `acc[c][r]` for the run's
/// weight rows `c` and the prepared input rows `i0 + r`.
type IntegerKernel<X> = fn(&[u8], &X, usize, usize, usize, &mut [[f32; 8]]);

/// [`few_row_matmul`] through an integer `kernel`: the input rows are
/// prepared once, then threads take runs of weight rows.
fn integer_runs<X: InputRows>(
    kernel: IntegerKernel<X>,
    w: &[u8],
    x: &[f32],
    m: usize,
    k: usize,
    n: usize,
    out: &mut [f32],
) {
    let xq = X::new(x, m, k);
    column_runs::<8>(w, X::FMT.row_bytes(k), m, n, out, |wc, i0, rows, acc| {
        kernel(wc, &xq, i0, rows, k, acc)
    });
}

/// `out [m, n]` of a few-row kernel: threads take runs of 32 weight rows
/// (`rb` bytes each) and `kernel(run, i0, rows, acc)` fills `acc[c][r]`
/// with the dot product of the run's row c and input row `i0 + r`, for up
/// to `G` input rows at a time.
fn column_runs<const G: usize>(
    w: &[u8],
    rb: usize,
    m: usize,
    n: usize,
    out: &mut [f32],
    kernel: impl Fn(&[u8], usize, usize, &mut [[f32; G]]) + Sync,
) {
    use rayon::prelude::*;
    const COLS: usize = 32;
    assert!(w.len() >= rb * n && out.len() >= m * n);
    let ptr = SendPtr(out.as_mut_ptr());
    let ptr = &ptr;
    (0..n.div_ceil(COLS)).into_par_iter().for_each(|b| {
        let (j0, j1) = (b * COLS, ((b + 1) * COLS).min(n));
        let mut acc = [[0f32; G]; COLS];
        let acc = &mut acc[..j1 - j0];
        for i0 in (0..m).step_by(G) {
            let rows = (m - i0).min(G);
            kernel(&w[j0 * rb..j1 * rb], i0, rows, acc);
            for (c, a) in acc.iter().enumerate() {
                for (r, v) in a[..rows].iter().enumerate() {
                    // SAFETY: (i0 + r, j0 + c) is written by this block only, and in bounds.
                    unsafe { *ptr.0.add((i0 + r) * n + j0 + c) = *v };
                }
            }
        }
    });
}

/// `out [m, n]` of a packed kernel ([`packed_q4k`], [`packed_q8_0`]):
/// threads take pairs of 16-row groups (`group_bytes` each) and
/// `kernel(group, i0, rows, acc)` fills `acc[r]` with the group's 16
/// outputs for input row `i0 + r`, for up to 8 rows a pass.
fn packed_groups(
    packed: &[u8],
    group_bytes: usize,
    m: usize,
    n: usize,
    out: &mut [f32],
    kernel: impl Fn(&[u8], usize, usize, &mut [[f32; 16]; 8]) + Sync,
) {
    use rayon::prelude::*;
    // Two groups per task: enough tasks to balance, few enough to be cheap.
    const TASK: usize = 2;
    let groups = n / 16;
    assert!(packed.len() >= groups * group_bytes && out.len() >= m * n);
    let ptr = SendPtr(out.as_mut_ptr());
    let ptr = &ptr;
    (0..groups.div_ceil(TASK)).into_par_iter().for_each(|t| {
        for g in t * TASK..((t + 1) * TASK).min(groups) {
            let w = &packed[g * group_bytes..(g + 1) * group_bytes];
            for i0 in (0..m).step_by(8) {
                let rows = (m - i0).min(8);
                let mut acc = [[0f32; 16]; 8];
                kernel(w, i0, rows, &mut acc);
                for (r, a) in acc[..rows].iter().enumerate() {
                    for (c, v) in a.iter().enumerate() {
                        // SAFETY: row i0 + r, column 16 g + c is written by this task only.
                        unsafe { *ptr.get().add((i0 + r) * n + 16 * g + c) = *v };
                    }
                }
            }
        }
    });
}

/// [`few_row_matmul`] for q8_0 weights: the input rows rounded to 16 bits
/// ([`input_rows::Int16Rows`]) meet each block widened to 16 bits in one `vpmaddwd`
/// per row. Widening every weight to f32 instead (two conversions per 16
/// weights) bound the f32 kernel well above the time it takes to read the
/// weights. On AVX2 (two `vpmaddwd` per block and row) it serves three
/// rows and more.
fn few_row_matmul_q8_0_i16(w: &[u8], x: &[f32], m: usize, k: usize, n: usize, out: &mut [f32]) {
    let kernel = if avx512::available() {
        avx512::dot_q8_0_i16
    } else {
        avx2::dot_q8_0_i16
    };
    integer_runs(kernel, w, x, m, k, n, out)
}

/// `$f::<rows>(args)` for `rows` in 1..=8 (8 for anything above).
macro_rules! by_rows {
    ($rows:expr, $f:ident($($a:expr),*)) => {
        match $rows {
            1 => $f::<1>($($a),*),
            2 => $f::<2>($($a),*),
            3 => $f::<3>($($a),*),
            4 => $f::<4>($($a),*),
            5 => $f::<5>($($a),*),
            6 => $f::<6>($($a),*),
            7 => $f::<7>($($a),*),
            _ => $f::<8>($($a),*),
        }
    };
}

#[cfg(target_arch = "x86_64")]
mod avx2;
#[cfg(target_arch = "x86_64")]
mod avx512;
pub mod packed_q4k;
pub mod packed_q8_0;
mod portable;

#[cfg(not(target_arch = "x86_64"))]
mod avx2 {
    pub fn dot_q8_0_i16(
        _: &[u8],
        _: &super::input_rows::Int16Rows,
        _: usize,
        _: usize,
        _: usize,
        _: &mut [[f32; 8]],
    ) {
        unreachable!("gated by crate::cpu::avx2()")
    }
    pub fn dot_q4k_int8(
        _: &[u8],
        _: &super::input_rows::Int8Rows,
        _: usize,
        _: usize,
        _: usize,
        _: &mut [[f32; 8]],
    ) {
        unreachable!("gated by crate::cpu::avx2()")
    }
}

#[cfg(not(target_arch = "x86_64"))]
mod avx512 {
    use super::RowFormat;
    pub fn available() -> bool {
        false
    }
    pub fn dot(_: RowFormat, _: &[u8], _: &[f32], _: usize, _: usize, _: &mut [f32; 8]) {
        unreachable!("gated by available()")
    }
    pub fn dot4(
        _: RowFormat,
        _: &[u8],
        _: usize,
        _: &[f32],
        _: usize,
        _: usize,
        _: &mut [[f32; 4]; 4],
    ) {
        unreachable!("gated by available()")
    }
    pub fn bf16_pairs(_: &[f32]) -> Vec<u32> {
        unreachable!("gated by bf16_gemm::available()")
    }

    pub fn dot4_bf16_rows(_: [&[u8]; 4], _: &[u32], _: usize, _: usize, _: &mut [[f32; 16]; 4]) {
        unreachable!("gated by bf16_gemm::available()")
    }
    pub fn vnni_available() -> bool {
        false
    }
    pub fn dot_q8_0_i16(
        _: &[u8],
        _: &super::input_rows::Int16Rows,
        _: usize,
        _: usize,
        _: usize,
        _: &mut [[f32; 8]],
    ) {
        unreachable!("gated by available()")
    }
    pub fn dot_q4k_int8(
        _: &[u8],
        _: &super::input_rows::Int8Rows,
        _: usize,
        _: usize,
        _: usize,
        _: &mut [[f32; 8]],
    ) {
        unreachable!("gated by vnni_available()")
    }
}

/// Whether the q4_K few-row kernel multiplies with AVX-512-VNNI.
pub fn vnni_available() -> bool {
    avx512::vnni_available()
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::quantized::GgmlDType;
    use candle_core::{DType, Device, Tensor};

    fn as_bytes<T: Copy>(v: &[T]) -> &[u8] {
        // SAFETY: plain-old-data values viewed as their bytes.
        unsafe { std::slice::from_raw_parts(v.as_ptr() as *const u8, std::mem::size_of_val(v)) }
    }

    fn rel(a: &Tensor, b: &Tensor) -> f64 {
        crate::tensor::rel_l2(a, b).unwrap()
    }

    /// A few-row integer kernel (one build, through [`integer_runs`]) against
    /// f64 sums over the dequantised blocks: only the inputs' rounding
    /// separates them (`tol` per row), for every row count up to 9 (a second
    /// group of 8), an odd number of columns, an all-zero row and a row with
    /// one outlier (`outlier_tol`).
    fn check_integer_kernel<X: InputRows>(
        dtype: GgmlDType,
        k: usize,
        kernel: IntegerKernel<X>,
        tol: f64,
        outlier_tol: f64,
    ) {
        let n = 37;
        let dev = Device::Cpu;
        let w = crate::random::randn(0f32, 0.05, (n, k), 1).unwrap();
        let q = quantize_rows(&w, dtype).unwrap();
        let wd: Vec<f32> = q
            .dequantize(&dev)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let blocks = q.data().unwrap();
        for m in 1..=9 {
            let mut x: Vec<f32> = crate::random::normal_values(0.0, 1.0, m * k, 2);
            if m >= 3 {
                x[k..2 * k].fill(0.0);
                x[2 * k + 5] = 40.0;
            }
            let mut out = vec![f32::NAN; m * n];
            integer_runs(kernel, &blocks, &x, m, k, n, &mut out);
            let want: Vec<f32> = (0..m * n)
                .map(|e| {
                    let (i, j) = (e / n, e % n);
                    (0..k)
                        .map(|l| x[i * k + l] as f64 * wd[j * k + l] as f64)
                        .sum::<f64>() as f32
                })
                .collect();
            let got = Tensor::from_vec(out, (m, n), &dev).unwrap();
            let want = Tensor::from_vec(want, (m, n), &dev).unwrap();
            for i in 0..m {
                let (g, w) = (got.get(i).unwrap(), want.get(i).unwrap());
                if m >= 3 && i == 1 {
                    let zero = g.abs().unwrap().max(0).unwrap();
                    assert_eq!(zero.to_scalar::<f32>().unwrap(), 0.0, "the zero row");
                    continue;
                }
                let tol = if m >= 3 && i == 2 { outlier_tol } else { tol };
                let err = rel(&g, &w);
                assert!(
                    err < tol,
                    "{dtype:?} k {k}, {m} rows, row {i}: relative L2 {err:e}"
                );
            }
        }
    }

    /// The q4_K kernel rounds its inputs to 8 bits per 256 values (~0.7 %
    /// per row). A 40-sigma outlier sets its block's step to 40 / 127: the
    /// other 255 values there are rounded ~30x more coarsely.
    #[test]
    fn q4k_int8_kernel_matches_the_dequantised_weights() {
        if avx512::vnni_available() {
            check_integer_kernel(GgmlDType::Q4K, 768, avx512::dot_q4k_int8, 2e-2, 6e-2);
        }
        if crate::cpu::detected_avx2() {
            check_integer_kernel(GgmlDType::Q4K, 768, avx2::dot_q4k_int8, 2e-2, 6e-2);
        } else {
            crate::untested("no AVX2, so no q4_K integer kernels");
        }
    }

    /// A NaN input value makes its row's outputs NaN, an infinite one
    /// makes them NaN or infinite (as in f32), and the other rows keep
    /// finite values: every weight format, through
    /// whichever kernel this CPU level dispatches to (test-all runs this at
    /// the AVX-512, AVX2 and baseline levels), for 1 to 9 rows, and through
    /// the packed kernels where the CPU has them.
    #[test]
    fn every_kernel_keeps_non_finite_inputs_to_their_row() {
        let (n, k) = (32, 512);
        let w = crate::random::randn(0f32, 0.05, (n, k), 3).unwrap();
        let wv: Vec<f32> = w.flatten_all().unwrap().to_vec1().unwrap();
        let bf: Vec<half::bf16> = wv.iter().map(|&v| half::bf16::from_f32(v)).collect();
        let q8 = quantize_rows(&w, GgmlDType::Q8_0)
            .unwrap()
            .data()
            .unwrap()
            .to_vec();
        let q4 = quantize_rows(&w, GgmlDType::Q4K)
            .unwrap()
            .data()
            .unwrap()
            .to_vec();
        type Run<'a> = Box<dyn Fn(&[f32], usize, &mut [f32]) + 'a>;
        let direct = [
            ("f32", RowFormat::F32, as_bytes(&wv)),
            ("bf16", RowFormat::Bf16, as_bytes(&bf)),
            ("q8_0", RowFormat::Q8_0, &q8[..]),
            ("q4_K", RowFormat::Q4K, &q4[..]),
        ];
        let mut kernels: Vec<(&str, Run)> = direct
            .into_iter()
            .map(|(name, fmt, bytes)| {
                let run: Run =
                    Box::new(move |x, m, out| few_row_matmul(fmt, bytes, x, m, k, n, out));
                (name, run)
            })
            .collect();
        if packed_q4k::available() {
            let p8 = packed_q8_0::pack(&q8, n, k);
            let p4 = packed_q4k::pack(&q4, n, k);
            kernels.push((
                "packed q8_0",
                Box::new(move |x, m, out| packed_q8_0::matmul(&p8, x, m, k, n, out)),
            ));
            kernels.push((
                "packed q4_K",
                Box::new(move |x, m, out| packed_q4k::matmul(&p4, x, m, k, n, out)),
            ));
        } else {
            crate::untested("no AVX-512 VNNI, so no packed kernels");
        }
        for (name, run) in &kernels {
            for m in [1, 2, 3, 9] {
                let bad_row = m / 2;
                for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
                    let mut x = vec![0.5f32; m * k];
                    x[bad_row * k + 300] = bad;
                    let mut out = vec![0f32; m * n];
                    run(&x, m, &mut out);
                    for (i, row) in out.chunks(n).enumerate() {
                        if i == bad_row && bad.is_nan() {
                            assert!(
                                row.iter().all(|v| v.is_nan()),
                                "{name} {m} rows {bad}: {row:?}"
                            );
                        } else if i == bad_row {
                            // f32 gives ±inf here; the integer kernels NaN.
                            assert!(
                                row.iter().all(|v| !v.is_finite()),
                                "{name} {m} rows {bad}: {row:?}"
                            );
                        } else {
                            assert!(
                                row.iter().all(|v| v.is_finite()),
                                "{name} {m} rows {bad}: {row:?}"
                            );
                        }
                    }
                }
            }
        }
    }

    /// The bf16 few-row kernel (3 to 16 rows, one pass over the weights)
    /// against f64 sums of the bf16-rounded inputs and weights: only the
    /// f32 summation separates them. Depths that end inside a chunk, an odd
    /// number of weight rows (the last group of four is filled with a copy).
    #[test]
    fn bf16_few_row_kernel_matches_the_rounded_sums() {
        if !(avx512::available() && bf16_gemm::available()) {
            crate::untested("no AVX-512-BF16, so no bf16 few-row kernel");
            return;
        }
        let n = 37;
        for k in [64, 544, 1056] {
            let w = crate::random::randn(0f32, 0.05, (n, k), 4).unwrap();
            let w = w.to_dtype(DType::BF16).unwrap();
            let wv: Vec<half::bf16> = w.flatten_all().unwrap().to_vec1().unwrap();
            let wb = as_bytes(&wv);
            for m in 3..=FEW_ROWS_MAX {
                let xv = crate::random::normal_values(0.0, 1.0, m * k, 5);
                let mut out = vec![f32::NAN; m * n];
                few_row_matmul(RowFormat::Bf16, wb, &xv, m, k, n, &mut out);
                let r = |v: f32| half::bf16::from_f32(v).to_f64();
                for (e, &got) in out.iter().enumerate() {
                    let (i, j) = (e / n, e % n);
                    let want: f64 = (0..k)
                        .map(|l| r(xv[i * k + l]) * wv[j * k + l].to_f64())
                        .sum();
                    let scale: f64 = (0..k)
                        .map(|l| (r(xv[i * k + l]) * wv[j * k + l].to_f64()).abs())
                        .sum();
                    assert!(
                        (got as f64 - want).abs() <= 1e-5 * scale,
                        "k {k} m {m} ({i}, {j}): {got} vs {want}"
                    );
                }
            }
        }
        // The rounding to bf16 pairs is half's, ties to even, tails included.
        let x: Vec<f32> = (0..70)
            .map(|i| 1.0 + i as f32 * 0.001953125 * 0.5)
            .collect();
        let pairs = avx512::bf16_pairs(&x);
        for (i, p) in pairs.iter().enumerate() {
            let bits = |v: f32| half::bf16::from_f32(v).to_bits() as u32;
            assert_eq!(*p, bits(x[2 * i]) | bits(x[2 * i + 1]) << 16, "pair {i}");
        }
    }

    /// The q8_0 kernel rounds its inputs to 16 bits per 256 values, or per
    /// 32 where the rows are not a multiple of 256 long.
    #[test]
    fn q8_0_int16_kernel_matches_the_dequantised_weights() {
        for k in [768, 96] {
            if avx512::available() {
                check_integer_kernel(GgmlDType::Q8_0, k, avx512::dot_q8_0_i16, 1e-4, 1e-3);
            }
            if crate::cpu::detected_avx2() {
                check_integer_kernel(GgmlDType::Q8_0, k, avx2::dot_q8_0_i16, 1e-4, 1e-3);
            } else {
                crate::untested("no AVX2, so no q8_0 integer kernels");
            }
        }
    }
}
