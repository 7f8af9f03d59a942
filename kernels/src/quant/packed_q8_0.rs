//! q8_0 weights repacked 16 rows at a time for the integer few-row kernel.
//!
//! As with [`super::packed_q4k`], the 16 rows of a group sit side by side:
//! lane `j` of a vector holds two consecutive weights of row `j` widened to
//! 16 bits, so one `vpdpwssd` against a broadcast pair of 16-bit inputs
//! advances 16 outputs, and each block's scale is applied once for all 16
//! rows. The inputs keep the 16-bit rounding of the GGUF-layout q8_0
//! kernel (`Int16Rows`), so the results are those of
//! that kernel up to the order of f32 sums. The bytes stay those of q8_0:
//! 544 per 16 x 32 weights.
//!
//! Layout, per group of 16 rows `g` and block of 32 columns `b`, at
//! `(g * nb + b) * PACKED_BLOCK`: `d[16]` as f16 (32 bytes), then per pair
//! `p` (0..16) 32 bytes: byte `2j + e` is weight `2p + e` of row `j`.

use super::input_rows::{InputRows, Int16Rows};

/// Rows per packed group.
pub const GROUP: usize = 16;
/// Bytes of one packed block: 16 rows x 32 weights.
pub const PACKED_BLOCK: usize = 32 + 512;

/// Whether this CPU runs the packed kernel (AVX-512 with VNNI).
pub fn available() -> bool {
    super::packed_q4k::available()
}

/// Whether a weight of `n` rows of `k` values can be packed.
pub fn packable(n: usize, k: usize) -> bool {
    n % GROUP == 0 && k % 32 == 0 && n > 0
}

/// The packed form of `n` rows of `k` values stored as q8_0 blocks (34
/// bytes per 32 values, rows one after another). Needs [`packable`].
pub fn pack(blocks: &[u8], n: usize, k: usize) -> Vec<u8> {
    assert!(packable(n, k) && blocks.len() >= n * k / 32 * 34);
    let nb = k / 32;
    let mut out = vec![0u8; n / GROUP * nb * PACKED_BLOCK];
    for (gb, dst) in out.chunks_exact_mut(PACKED_BLOCK).enumerate() {
        let (g, b) = (gb / nb, gb % nb);
        for j in 0..GROUP {
            let src = &blocks[((g * GROUP + j) * nb + b) * 34..][..34];
            dst[2 * j..2 * j + 2].copy_from_slice(&src[0..2]);
            for p in 0..16 {
                dst[32 + 32 * p + 2 * j] = src[2 + 2 * p];
                dst[32 + 32 * p + 2 * j + 1] = src[3 + 2 * p];
            }
        }
    }
    out
}

/// `out[i, j] = sum_l x[i, l] * W[j, l]` for `m` input rows and a packed
/// weight of `n` rows of `k` values; the inputs are rounded to 16 bits per
/// 256 values (32 where `k` is not a multiple of 256). Groups of 16 weight
/// rows are split across threads, two groups per task.
/// Needs [`available`].
pub fn matmul(packed: &[u8], x: &[f32], m: usize, k: usize, n: usize, out: &mut [f32]) {
    assert!(available() && packable(n, k));
    let nb = k / 32;
    // The rounded rows hold m x k values (or this panics); packed_groups
    // checks the weight's and the output's sizes.
    let xq = Int16Rows::new(x, m, k);
    super::packed_groups(packed, nb * PACKED_BLOCK, m, n, out, |w, i0, rows, acc| {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `available()` checked the CPU; sizes checked as above.
        unsafe {
            by_rows!(rows, group_rows(w.as_ptr(), &xq, i0, k, acc))
        };
        #[cfg(not(target_arch = "x86_64"))]
        let _ = (w, i0, rows, acc, &xq);
    });
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,f16c")]
unsafe fn group_rows<const R: usize>(
    w: *const u8,
    x: &Int16Rows,
    i0: usize,
    k: usize,
    acc: &mut [[f32; GROUP]; 8],
) {
    use std::arch::x86_64::*;
    let nb = k / 32;
    // Blocks per input scale.
    let per_scale = x.chunk / 32;
    let xq = x.q.as_ptr().add(i0 * k);
    let xd = x.scale.as_ptr().add(i0 * k / x.chunk);
    let mut total = [_mm512_setzero_ps(); R];
    let mut chunk = [_mm512_setzero_ps(); R];
    for b in 0..nb {
        let blk = w.add(b * PACKED_BLOCK);
        for line in 0..9 {
            _mm_prefetch::<_MM_HINT_T0>(blk.add(8 * PACKED_BLOCK + 64 * line) as *const i8);
        }
        let d = _mm512_cvtph_ps(_mm256_loadu_si256(blk as *const __m256i));
        let mut dots = [_mm512_setzero_si512(); R];
        for p in 0..16 {
            let wv =
                _mm512_cvtepi8_epi16(_mm256_loadu_si256(blk.add(32 + 32 * p) as *const __m256i));
            for r in 0..R {
                let xr = xq.add(r * k + 32 * b + 2 * p);
                let xv = _mm512_set1_epi32((xr as *const i32).read_unaligned());
                dots[r] = _mm512_dpwssds_epi32(dots[r], wv, xv);
            }
        }
        for r in 0..R {
            chunk[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dots[r]), d, chunk[r]);
        }
        if (b + 1) % per_scale == 0 {
            let c = b / per_scale;
            for r in 0..R {
                let scale = _mm512_set1_ps(*xd.add(r * (k / x.chunk) + c));
                total[r] = _mm512_fmadd_ps(chunk[r], scale, total[r]);
                chunk[r] = _mm512_setzero_ps();
            }
        }
    }
    for r in 0..R {
        _mm512_storeu_ps(acc[r].as_mut_ptr(), total[r]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::quantized::k_quants::BlockQ8_0;
    use candle_core::quantized::GgmlDType;

    /// The kernel against f64 sums of the dequantised blocks times the
    /// inputs as rounded ([`Int16Rows`]): only the order of f32 sums
    /// separates them, for 1 to 11 rows (a second pass of 8), a zero row,
    /// and row lengths with one input scale per 256 and per 32 values.
    #[test]
    fn packed_kernel_equals_dequantised_weights_times_rounded_inputs() {
        if !available() {
            crate::untested("no AVX-512 VNNI, so no packed q8_0 kernel");
            return;
        }
        for (n, k) in [(32, 512), (16, 96)] {
            let w = crate::random::randn(0f32, 0.05, (n, k), 1).unwrap();
            let q = super::super::quantize_rows(&w, GgmlDType::Q8_0).unwrap();
            let blocks = q.data().unwrap().to_vec();
            let packed = pack(&blocks, n, k);
            assert_eq!(packed.len(), n * k / 32 * 34);
            let mut wd = vec![0f32; n * k];
            for (j, row) in wd.chunks_exact_mut(k).enumerate() {
                super::super::dequant_row::<BlockQ8_0>(&blocks, k, j, 0, row);
            }
            for m in [1, 2, 3, 8, 11] {
                let mut x: Vec<f32> = crate::random::normal_values(0.0, 1.0, m * k, 2);
                if m >= 3 {
                    x[k..2 * k].fill(0.0);
                }
                let xq = Int16Rows::new(&x, m, k);
                let mut out = vec![f32::NAN; m * n];
                matmul(&packed, &x, m, k, n, &mut out);
                for i in 0..m {
                    for j in 0..n {
                        let want: f64 = (0..k)
                            .map(|l| {
                                let e = i * k + l;
                                let xr = xq.q[e] as f64 * xq.scale[e / xq.chunk] as f64;
                                xr * wd[j * k + l] as f64
                            })
                            .sum();
                        let got = out[i * n + j] as f64;
                        assert!(
                            (got - want).abs() <= 1e-5 * (1.0 + want.abs()),
                            "k {k}, {m} rows, ({i}, {j}): {got} against {want}"
                        );
                    }
                }
            }
        }
    }
}
