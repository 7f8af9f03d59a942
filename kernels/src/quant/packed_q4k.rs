//! q4_K weights repacked 16 rows at a time for the integer few-row kernel.
//!
//! In GGUF's layout each row's block is read alone, so a kernel multiplies
//! one weight row by each input row and pays, per input row, the scaling of
//! eight sub-block sums and a horizontal sum. Here the 16 rows of a group
//! sit side by side: lane `j` of a 64-byte vector holds four consecutive
//! weights of row `j`, so one `vpdpbusd` against four broadcast input
//! bytes advances 16 outputs, and a sub-block's scale is applied once per
//! 32 weights for all 16 rows (llama.cpp repacks q4_K the same way for its
//! AVX-512 and ARM kernels). The same kernel serves every row count, a
//! prompt's as well as a decoding step's. The bytes per weight stay nearly
//! those of q4_K: 2368 per 16 x 256 weights against 2304.
//!
//! Layout, per group of 16 rows `g` and block of 256 columns `b`, at
//! `(g * nb + b) * PACKED_BLOCK`:
//! - `d[16]`, `dmin[16]` as f16 (64 bytes);
//! - the 6-bit sub-block scales `sc[8][16]` and minimums `mn[8][16]`, one
//!   byte each (256 bytes);
//! - per sub-block `s` four 64-byte vectors `t`: byte `4j + i` of vector
//!   `t` holds weight `32s + 4t + i` of row `j` in its low nibble and weight
//!   `32s + 16 + 4t + i` in its high nibble (2048 bytes).

use super::blocks::q4k_scale_min;

/// Rows per packed group.
pub const GROUP: usize = 16;
/// Bytes of one packed block: 16 rows x 256 weights.
pub const PACKED_BLOCK: usize = 64 + 256 + 2048;
const QS: usize = 64 + 256;

/// Whether this CPU runs the packed kernels (AVX-512 with VNNI).
pub fn available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        super::avx512::vnni_available()
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Whether a weight of `n` rows of `k` values can be packed.
pub fn packable(n: usize, k: usize) -> bool {
    n % GROUP == 0 && k % 256 == 0 && n > 0
}

/// The packed form of `n` rows of `k` values stored as q4_K blocks (144
/// bytes per 256 values, rows one after another). Needs [`packable`].
pub fn pack(blocks: &[u8], n: usize, k: usize) -> Vec<u8> {
    assert!(packable(n, k) && blocks.len() >= n * k / 256 * 144);
    let nb = k / 256;
    let mut out = vec![0u8; n / GROUP * nb * PACKED_BLOCK];
    for (gb, dst) in out.chunks_exact_mut(PACKED_BLOCK).enumerate() {
        let (g, b) = (gb / nb, gb % nb);
        for j in 0..GROUP {
            let src = &blocks[((g * GROUP + j) * nb + b) * 144..][..144];
            dst[2 * j..2 * j + 2].copy_from_slice(&src[0..2]);
            dst[32 + 2 * j..32 + 2 * j + 2].copy_from_slice(&src[2..4]);
            for s in 0..8 {
                let (sc, mn) = q4k_scale_min(s, &src[4..16]);
                dst[64 + 16 * s + j] = sc;
                dst[64 + 128 + 16 * s + j] = mn;
            }
            // q4_K: sub-block s is the low (even s) or high (odd s) nibbles
            // of bytes 16 + 32 (s / 2) .. + 32, in order.
            for s in 0..8 {
                let bytes = &src[16 + 32 * (s / 2)..][..32];
                let shift = 4 * (s % 2);
                for t in 0..4 {
                    for i in 0..4 {
                        let lo = (bytes[4 * t + i] >> shift) & 15;
                        let hi = (bytes[16 + 4 * t + i] >> shift) & 15;
                        dst[QS + 256 * s + 64 * t + 4 * j + i] = lo | hi << 4;
                    }
                }
            }
        }
    }
    out
}

/// Input rows quantised to 8 bits per 256 values, in their own order: an
/// f32 scale per 256 and, per 32 values, the sum of the rounded values times
/// the scale (for the minimum terms, so that the result is exactly the
/// dequantised weights times the rounded inputs).
pub(crate) struct Int8Natural {
    pub(crate) q: Vec<i8>,
    pub(crate) scale: Vec<f32>,
    pub(crate) sums: Vec<f32>,
}

impl Int8Natural {
    pub(crate) fn new(x: &[f32], m: usize, k: usize) -> Self {
        let blocks = m * k / 256;
        let mut this = Self {
            q: vec![0; m * k],
            scale: vec![0.0; blocks],
            sums: vec![0.0; blocks * 8],
        };
        for (b, xb) in x[..m * k].chunks_exact(256).enumerate() {
            let d = super::input_rows::abs_max(xb) / 127.0;
            let id = if d > 0.0 { 1.0 / d } else { 0.0 };
            this.scale[b] = d;
            let q = &mut this.q[b * 256..b * 256 + 256];
            for (qv, &xv) in q.iter_mut().zip(xb) {
                *qv = super::input_rows::nearest(xv * id) as i8;
            }
            for (s, sum) in this.sums[b * 8..b * 8 + 8].iter_mut().enumerate() {
                let total: i32 = q[32 * s..32 * s + 32].iter().map(|&v| v as i32).sum();
                *sum = d * total as f32;
            }
        }
        this
    }
}

/// `out[i, j] = sum_l x[i, l] * W[j, l]` for `m` input rows and a packed
/// weight of `n` rows of `k` values; the inputs are rounded to 8 bits per
/// 256 values (as the GGUF-layout q4_K kernel does). Groups of 16 weight
/// rows are split across threads, two groups per task.
/// Needs [`available`].
pub fn matmul(packed: &[u8], x: &[f32], m: usize, k: usize, n: usize, out: &mut [f32]) {
    assert!(available() && packable(n, k));
    let nb = k / 256;
    // The rounded rows hold m x k values (or this panics); packed_groups
    // checks the weight's and the output's sizes.
    let xq = Int8Natural::new(x, m, k);
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
    x: &Int8Natural,
    i0: usize,
    k: usize,
    acc: &mut [[f32; GROUP]; 8],
) {
    use std::arch::x86_64::*;
    let nb = k / 256;
    let xq = x.q.as_ptr().add(i0 * k);
    let (xd, xs) = (
        x.scale.as_ptr().add(i0 * nb),
        x.sums.as_ptr().add(i0 * nb * 8),
    );
    let nib = _mm512_set1_epi8(0x0F);
    let mut total = [_mm512_setzero_ps(); R];
    for b in 0..nb {
        let blk = w.add(b * PACKED_BLOCK);
        _mm_prefetch::<_MM_HINT_T0>(blk.add(4 * PACKED_BLOCK) as *const i8);
        let d = _mm512_cvtph_ps(_mm256_loadu_si256(blk as *const __m256i));
        let dmin = _mm512_cvtph_ps(_mm256_loadu_si256(blk.add(32) as *const __m256i));
        let mut block = [_mm512_setzero_ps(); R];
        for s in 0..8 {
            let qs = blk.add(QS + 256 * s);
            for line in 0..4 {
                _mm_prefetch::<_MM_HINT_T0>(qs.add(2 * PACKED_BLOCK + 64 * line) as *const i8);
            }
            let sc = _mm512_cvtepu8_epi32(_mm_loadu_si128(blk.add(64 + 16 * s) as *const __m128i));
            let mn = _mm512_cvtepu8_epi32(_mm_loadu_si128(blk.add(192 + 16 * s) as *const __m128i));
            let scale = _mm512_mul_ps(d, _mm512_cvtepi32_ps(sc));
            let min = _mm512_mul_ps(dmin, _mm512_cvtepi32_ps(mn));
            let mut dots = [_mm512_setzero_si512(); R];
            for t in 0..4 {
                let v = _mm512_loadu_si512(qs.add(64 * t) as *const _);
                let lo = _mm512_and_si512(v, nib);
                let hi = _mm512_and_si512(_mm512_srli_epi16::<4>(v), nib);
                for r in 0..R {
                    let xr = xq.add(r * k + b * 256 + 32 * s + 4 * t);
                    let xlo = _mm512_set1_epi32((xr as *const i32).read_unaligned());
                    let xhi = _mm512_set1_epi32((xr.add(16) as *const i32).read_unaligned());
                    dots[r] = _mm512_dpbusd_epi32(dots[r], lo, xlo);
                    dots[r] = _mm512_dpbusd_epi32(dots[r], hi, xhi);
                }
            }
            for r in 0..R {
                block[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dots[r]), scale, block[r]);
                let sum = _mm512_set1_ps(*xs.add((r * nb + b) * 8 + s));
                total[r] = _mm512_fnmadd_ps(min, sum, total[r]);
            }
        }
        for r in 0..R {
            total[r] = _mm512_fmadd_ps(block[r], _mm512_set1_ps(*xd.add(r * nb + b)), total[r]);
        }
    }
    for r in 0..R {
        _mm512_storeu_ps(acc[r].as_mut_ptr(), total[r]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::quantized::k_quants::BlockQ4K;
    use candle_core::quantized::GgmlDType;

    /// Row `j` of a packed weight of rows of `k` values, as f32:
    /// `d·scale·q − dmin·min`, the products of the GGUF-layout dequantisation.
    fn packed_row(packed: &[u8], k: usize, j: usize) -> Vec<f32> {
        let f16 = |p: &[u8]| half::f16::from_le_bytes([p[0], p[1]]).to_f32();
        let (g, lane, nb) = (j / GROUP, j % GROUP, k / 256);
        let mut out = vec![0f32; k];
        for (b, o) in out.chunks_exact_mut(256).enumerate() {
            let blk = &packed[(g * nb + b) * PACKED_BLOCK..][..PACKED_BLOCK];
            let (d, dmin) = (f16(&blk[2 * lane..]), f16(&blk[32 + 2 * lane..]));
            for s in 0..8 {
                let scale = d * blk[64 + 16 * s + lane] as f32;
                let min = dmin * blk[64 + 128 + 16 * s + lane] as f32;
                for t in 0..4 {
                    for i in 0..4 {
                        let byte = blk[QS + 256 * s + 64 * t + 4 * lane + i];
                        o[32 * s + 4 * t + i] = scale * (byte & 15) as f32 - min;
                        o[32 * s + 16 + 4 * t + i] = scale * (byte >> 4) as f32 - min;
                    }
                }
            }
        }
        out
    }

    fn q4k_weight(n: usize, k: usize) -> Vec<u8> {
        let w = crate::random::randn(0f32, 0.05, (n, k), 1).unwrap();
        super::super::quantize_rows(&w, GgmlDType::Q4K)
            .unwrap()
            .data()
            .unwrap()
            .to_vec()
    }

    /// Every row read back from the packed form equals the GGUF block's own
    /// dequantisation, bit for bit.
    #[test]
    fn packed_rows_dequantise_as_the_blocks() {
        let (n, k) = (32, 768);
        let blocks = q4k_weight(n, k);
        let packed = pack(&blocks, n, k);
        assert_eq!(packed.len(), n * k / 256 / GROUP * PACKED_BLOCK);
        for j in [0, 5, 15, 16, 31] {
            let mut want = vec![0f32; k];
            super::super::dequant_row::<BlockQ4K>(&blocks, k, j, 0, &mut want);
            assert_eq!(packed_row(&packed, k, j), want, "row {j}");
        }
    }

    /// The kernel against f64 sums of the dequantised weights times the
    /// inputs as rounded ([`Int8Natural`]): only the order of f32 sums
    /// separates them, for 1 to 11 rows (a second pass of 8) and a zero row.
    #[test]
    fn packed_kernel_equals_dequantised_weights_times_rounded_inputs() {
        if !available() {
            crate::untested("no AVX-512 VNNI, so no packed q4_K kernel");
            return;
        }
        let (n, k) = (48, 512);
        let blocks = q4k_weight(n, k);
        let packed = pack(&blocks, n, k);
        let wd: Vec<f32> = (0..n).flat_map(|j| packed_row(&packed, k, j)).collect();
        for m in [1, 2, 3, 8, 11] {
            let mut x: Vec<f32> = crate::random::normal_values(0.0, 1.0, m * k, 2);
            if m >= 3 {
                x[k..2 * k].fill(0.0);
            }
            let xq = Int8Natural::new(&x, m, k);
            let mut out = vec![f32::NAN; m * n];
            matmul(&packed, &x, m, k, n, &mut out);
            for i in 0..m {
                for j in 0..n {
                    let want: f64 = (0..k)
                        .map(|l| {
                            let xr = xq.q[i * k + l] as f64 * xq.scale[(i * k + l) / 256] as f64;
                            xr * wd[j * k + l] as f64
                        })
                        .sum();
                    let got = out[i * n + j] as f64;
                    assert!(
                        (got - want).abs() <= 1e-5 * (1.0 + want.abs()),
                        "{m} rows, ({i}, {j}): {got} against {want}"
                    );
                }
            }
        }
    }
}
