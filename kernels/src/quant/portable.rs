//! The few-row kernels in plain Rust, for CPUs without AVX-512: AVX2 ones
//! (most laptops, AMD Zen 2/3), Apple Silicon and other aarch64 machines.
//! (q4_K on AVX2 has an integer kernel of its own, [`super::avx2`].) Sums
//! run in 8–32 independent f32 lanes per input row, so the compiler
//! vectorises them without reordering any addition (8 lanes are one AVX2
//! register, two NEON ones). On x86-64 the same code is compiled a second
//! time with AVX2, FMA and F16C enabled, and chosen at run time
//! ([`crate::cpu`]).
//!
//! Every weight row is decoded to f32 once per group of up to eight input
//! rows, and the inputs stay f32: unlike the integer kernels, the inputs
//! are not rounded.

use super::blocks::q4k_scale_min;
use super::format::RowFormat;

/// `acc[c][r] = <weight row c of run, x row r>` for the run's weight rows
/// (`rb` bytes each, `acc.len()` of them) and `rows` (1..=8) input rows of
/// `x`, each `k` long. q8_0 needs `k` a multiple of 32, q4_K of 256.
pub fn dot_rows(
    fmt: RowFormat,
    run: &[u8],
    rb: usize,
    x: &[f32],
    k: usize,
    rows: usize,
    acc: &mut [[f32; 8]],
) {
    dot_rows_on(crate::cpu::avx2(), fmt, run, rb, x, k, rows, acc)
}

/// [`dot_rows`] with the AVX2 build (`avx2`, which the CPU must have) or
/// the plain one.
#[allow(clippy::too_many_arguments)]
fn dot_rows_on(
    avx2: bool,
    fmt: RowFormat,
    run: &[u8],
    rb: usize,
    x: &[f32],
    k: usize,
    rows: usize,
    acc: &mut [[f32; 8]],
) {
    assert!(run.len() >= acc.len() * rb && x.len() >= rows.min(8) * k);
    assert!(rb == fmt.row_bytes(k));
    #[cfg(target_arch = "x86_64")]
    if avx2 {
        assert!(crate::cpu::detected_avx2(), "AVX2 build without AVX2");
        // SAFETY: the CPU features were just checked.
        return unsafe { by_rows!(rows, run_avx2(fmt, run, rb, x, k, acc)) };
    }
    let _ = avx2;
    by_rows!(rows, run_plain(fmt, run, rb, x, k, acc))
}

/// aarch64 always has fused multiply-add; baseline x86-64 does not (there
/// `mul_add` would be a library call per value).
const PLAIN_FMA: bool = cfg!(target_arch = "aarch64");

fn run_plain<const R: usize>(
    fmt: RowFormat,
    run: &[u8],
    rb: usize,
    x: &[f32],
    k: usize,
    acc: &mut [[f32; 8]],
) {
    by_width::<R, PLAIN_FMA>(fmt, run, rb, x, k, acc)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn run_avx2<const R: usize>(
    fmt: RowFormat,
    run: &[u8],
    rb: usize,
    x: &[f32],
    k: usize,
    acc: &mut [[f32; 8]],
) {
    by_width::<R, true>(fmt, run, rb, x, k, acc)
}

/// [`run_rows`] with `A` lanes of sums per input row: each lane's sum is
/// one chain of dependent multiply-adds, and with few rows a single
/// register per row left the kernel waiting on their latency (measured in
/// BENCHMARKS.md).
#[inline(always)]
fn by_width<const R: usize, const FMA: bool>(
    fmt: RowFormat,
    run: &[u8],
    rb: usize,
    x: &[f32],
    k: usize,
    acc: &mut [[f32; 8]],
) {
    // f32 weights (the exact path): one lane count for every row count, so
    // a row's sum is the same however many rows share the call (a batched
    // decoding step gives each sequence what it gets alone). f32 weights are
    // memory bound: 16 lanes keep up with the bandwidth.
    if fmt == RowFormat::F32 {
        run_rows::<R, 16, FMA>(fmt, run, rb, x, k, acc)
    } else if R <= 2 {
        run_rows::<R, 32, FMA>(fmt, run, rb, x, k, acc)
    } else if R <= 4 {
        run_rows::<R, 16, FMA>(fmt, run, rb, x, k, acc)
    } else {
        run_rows::<R, 8, FMA>(fmt, run, rb, x, k, acc)
    }
}

#[inline(always)]
fn run_rows<const R: usize, const A: usize, const FMA: bool>(
    fmt: RowFormat,
    run: &[u8],
    rb: usize,
    x: &[f32],
    k: usize,
    acc: &mut [[f32; 8]],
) {
    let xs: [&[f32]; R] = std::array::from_fn(|r| &x[r * k..(r + 1) * k]);
    for (row, a) in run.chunks_exact(rb).zip(acc.iter_mut()) {
        let mut s = [[0f32; A]; R];
        let tail = match fmt {
            RowFormat::F32 => plain_row::<R, A, FMA, 4>(row, &xs, &mut s, f32::from_le_bytes),
            RowFormat::Bf16 => plain_row::<R, A, FMA, 2>(row, &xs, &mut s, |b| {
                f32::from_bits((u16::from_le_bytes(b) as u32) << 16)
            }),
            RowFormat::Q8_0 => {
                q8_0_row::<R, A, FMA>(row, &xs, &mut s);
                [0f32; R]
            }
            RowFormat::Q4K => {
                q4k_row::<R, A, FMA>(row, &xs, &mut s);
                [0f32; R]
            }
        };
        for r in 0..R {
            a[r] = s[r].iter().sum::<f32>() + tail[r];
        }
    }
}

#[inline(always)]
fn fma<const FMA: bool>(a: f32, b: f32, c: f32) -> f32 {
    if FMA {
        a.mul_add(b, c)
    } else {
        a * b + c
    }
}

/// Starts loading the weight bytes a few rows ahead: the kernels read
/// several rows' streams at once, which the hardware prefetcher alone
/// serves late (as measured for the AVX-512 kernels).
#[inline(always)]
fn prefetch(p: *const u8) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch never faults, whatever the address.
    unsafe {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(16384) as *const i8)
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}

/// Values decoded per step: one q8_0 block, one q4_K sub-block.
const W: usize = 32;

/// `s[r] += w · x[r][l..l + W]`, in `A` lanes.
#[inline(always)]
fn block<const R: usize, const A: usize, const FMA: bool>(
    s: &mut [[f32; A]; R],
    w: &[f32; W],
    xs: &[&[f32]; R],
    l: usize,
) {
    for r in 0..R {
        let xv: &[f32; W] = xs[r][l..l + W].try_into().unwrap();
        for h in 0..W / A {
            for i in 0..A {
                s[r][i] = fma::<FMA>(w[h * A + i], xv[h * A + i], s[r][i]);
            }
        }
    }
}

/// One row of `B`-byte values (f32 or bf16) decoded by `value`; returns
/// the sums of the values past the last whole block.
#[inline(always)]
fn plain_row<const R: usize, const A: usize, const FMA: bool, const B: usize>(
    row: &[u8],
    xs: &[&[f32]; R],
    s: &mut [[f32; A]; R],
    value: impl Fn([u8; B]) -> f32,
) -> [f32; R] {
    let mut chunks = row.chunks_exact(B * W);
    for (c, bytes) in (&mut chunks).enumerate() {
        prefetch(bytes.as_ptr());
        let mut w = [0f32; W];
        // A plain loop over the block: the compiler vectorises the decoding.
        for (v, b) in w.iter_mut().zip(bytes.chunks_exact(B)) {
            *v = value(b.try_into().unwrap());
        }
        block::<R, A, FMA>(s, &w, xs, c * W);
    }
    let done = row.len() / B / W * W;
    let mut tail = [0f32; R];
    for (t, b) in chunks.remainder().chunks_exact(B).enumerate() {
        for r in 0..R {
            tail[r] += value(b.try_into().unwrap()) * xs[r][done + t];
        }
    }
    tail
}

/// GGUF q8_0: per 32 weights an f16 scale and 32 i8.
#[inline(always)]
fn q8_0_row<const R: usize, const A: usize, const FMA: bool>(
    row: &[u8],
    xs: &[&[f32]; R],
    s: &mut [[f32; A]; R],
) {
    for (b, blk) in row.chunks_exact(34).enumerate() {
        if b % 2 == 0 {
            prefetch(blk.as_ptr());
        }
        let d = half::f16::from_le_bytes([blk[0], blk[1]]).to_f32();
        let q: &[u8; W] = blk[2..].try_into().unwrap();
        let mut w = [0f32; W];
        for (v, &q) in w.iter_mut().zip(q) {
            *v = q as i8 as f32 * d;
        }
        block::<R, A, FMA>(s, &w, xs, W * b);
    }
}

/// GGUF q4_K: per 256 weights f16 `d` and `dmin`, eight 6-bit (scale,
/// min) pairs, and 128 bytes of nibbles: per 64 weights, the low nibbles
/// of 32 bytes are the first 32, the high nibbles the next 32; a weight is
/// `d * scale * q - dmin * min` of its 32-weight sub-block.
#[inline(always)]
fn q4k_row<const R: usize, const A: usize, const FMA: bool>(
    row: &[u8],
    xs: &[&[f32]; R],
    s: &mut [[f32; A]; R],
) {
    for (b, blk) in row.chunks_exact(144).enumerate() {
        for line in 0..3 {
            prefetch(blk[64 * line..].as_ptr());
        }
        let d = half::f16::from_le_bytes([blk[0], blk[1]]).to_f32();
        let dmin = half::f16::from_le_bytes([blk[2], blk[3]]).to_f32();
        let scales = &blk[4..16];
        for j in 0..4 {
            let qs: &[u8; W] = blk[16 + 32 * j..][..W].try_into().unwrap();
            for (half, shift) in [(0, 0), (1, 4)] {
                let (sc, m) = q4k_scale_min(2 * j + half, scales);
                let (scale, min) = (d * sc as f32, -dmin * m as f32);
                let mut w = [0f32; W];
                for (v, &q) in w.iter_mut().zip(qs) {
                    *v = fma::<FMA>(((q >> shift) & 15) as f32, scale, min);
                }
                block::<R, A, FMA>(s, &w, xs, 256 * b + 64 * j + 32 * half);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::quantized::{GgmlDType, QTensor};
    use candle_core::Device;

    /// Each build (plain, and AVX2 where the CPU has it) against f64 sums
    /// over the decoded weights, for every format and 1–8 input rows, with
    /// depths that leave a tail (f32, bf16) or span several blocks: the sums
    /// differ only by f32 rounding (within 1e-5 of the sum of |terms|).
    /// A weight decoded one lane off, or a misplaced block, fails this.
    #[test]
    fn few_row_kernels_match_the_decoded_weights() {
        let dev = Device::Cpu;
        let mut builds = vec![false];
        if crate::cpu::detected_avx2() {
            builds.push(true);
        }
        let n = 5;
        for (fmt, k) in [
            (RowFormat::F32, 301),
            (RowFormat::Bf16, 301),
            (RowFormat::Q8_0, 544),
            (RowFormat::Q4K, 768),
        ] {
            let w = crate::random::randn(0f32, 0.05, (n, k), 1).unwrap();
            let (bytes, wd): (Vec<u8>, Vec<f32>) = match fmt {
                RowFormat::F32 => {
                    let v: Vec<f32> = w.flatten_all().unwrap().to_vec1().unwrap();
                    (v.iter().flat_map(|x| x.to_le_bytes()).collect(), v)
                }
                RowFormat::Bf16 => {
                    let v: Vec<f32> = w.flatten_all().unwrap().to_vec1().unwrap();
                    let b: Vec<half::bf16> = v.iter().map(|&x| half::bf16::from_f32(x)).collect();
                    (
                        b.iter().flat_map(|x| x.to_le_bytes()).collect(),
                        b.iter().map(|x| x.to_f32()).collect(),
                    )
                }
                RowFormat::Q8_0 | RowFormat::Q4K => {
                    let dt = if fmt == RowFormat::Q8_0 {
                        GgmlDType::Q8_0
                    } else {
                        GgmlDType::Q4K
                    };
                    let q = QTensor::quantize(&w, dt).unwrap();
                    let d = q.dequantize(&dev).unwrap().flatten_all().unwrap();
                    (q.data().unwrap().to_vec(), d.to_vec1().unwrap())
                }
            };
            let rb = fmt.row_bytes(k);
            assert_eq!(bytes.len(), n * rb);
            for rows in 1..=8 {
                let x = crate::random::normal_values(0.0, 1.0, rows * k, 2);
                for &avx2 in &builds {
                    let mut acc = vec![[f32::NAN; 8]; n];
                    dot_rows_on(avx2, fmt, &bytes, rb, &x, k, rows, &mut acc);
                    for (c, a) in acc.iter().enumerate() {
                        for r in 0..rows {
                            let terms = (0..k).map(|l| x[r * k + l] as f64 * wd[c * k + l] as f64);
                            let want: f64 = terms.clone().sum();
                            let scale: f64 = terms.map(f64::abs).sum();
                            let err = (a[r] as f64 - want).abs();
                            assert!(
                                err <= 1e-5 * scale,
                                "{fmt:?} avx2 {avx2} rows {rows}: row {c}/{r} {} vs {want}",
                                a[r]
                            );
                        }
                    }
                }
            }
        }
    }
}
