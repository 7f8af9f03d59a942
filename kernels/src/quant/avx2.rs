//! The integer few-row kernels for AVX2 CPUs without AVX-512. q4_K: the inputs
//! rounded to 8 bits per 256 values ([`super::input_rows::Int8Rows`], as the AVX-512
//! VNNI kernel and llama.cpp do), and each 32-weight sub-block's nibbles
//! multiplied with them by `vpmaddubsw` (unsigned nibbles times signed
//! inputs, pairs summed in 16 bits: at most 2 · 15 · 127) and `vpmaddwd`
//! with the sub-block's 6-bit scale, summed over the block in 32-bit
//! integers. The portable f32 kernel spends ~20 instructions per 32 weights
//! decoding nibbles to floats; this spends 4 per input row.

use super::blocks::q4k_scale_min;
use super::input_rows::{Int16Rows, Int8Rows};
use std::arch::x86_64::*;

/// `acc[c][r] = <weight row c, x[i0 + r]>` for the consecutive q4_K weight
/// rows in `w` (`acc.len()` of them) and `rows` (1..=8) rows of `x`; `k` is
/// a multiple of 256 and the CPU has AVX2, FMA and F16C.
pub fn dot_q4k_int8(
    w: &[u8],
    x: &Int8Rows,
    i0: usize,
    rows: usize,
    k: usize,
    acc: &mut [[f32; 8]],
) {
    assert!(crate::cpu::detected_avx2(), "q4_K AVX2 kernel without AVX2");
    assert!(k % 256 == 0 && w.len() >= acc.len() * (k / 256 * 144));
    assert!(x.q.len() >= (i0 + rows.min(8)) * k);
    let (p, cols, a) = (w.as_ptr(), acc.len(), acc.as_mut_ptr());
    // SAFETY: the CPU was checked and the sizes above.
    unsafe { by_rows!(rows, q4k_int8(p, cols, x, i0, k, a)) }
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q4k_int8<const R: usize>(
    w: *const u8,
    cols: usize,
    x: &Int8Rows,
    i0: usize,
    k: usize,
    acc: *mut [f32; 8],
) {
    let nb = k / 256;
    let (xq, xd, xs) = (
        x.q.as_ptr().add(i0 * k),
        x.scale.as_ptr().add(i0 * nb),
        x.sums.as_ptr().add(i0 * nb * 16),
    );
    let nib = _mm256_set1_epi8(0x0F);
    for c in 0..cols {
        let row = w.add(c * nb * 144);
        let mut s = [_mm256_setzero_ps(); R];
        for b in 0..nb {
            let blk = row.add(b * 144);
            for line in 0..3 {
                _mm_prefetch::<_MM_HINT_T0>(blk.add(16384 + 64 * line) as *const i8);
            }
            let dm = _mm_cvtph_ps(_mm_cvtsi32_si128(std::ptr::read_unaligned(
                blk as *const i32,
            )));
            let (d, dmin) = (_mm_cvtss_f32(dm), _mm_cvtss_f32(_mm_movehdup_ps(dm)));
            let header = std::slice::from_raw_parts(blk.add(4), 12);
            let mut scale = [_mm256_setzero_si256(); 8];
            let mut mins = [0f32; 8];
            for (j, (sc, mn)) in scale.iter_mut().zip(&mut mins).enumerate() {
                let (a, m) = q4k_scale_min(j, header);
                *sc = _mm256_set1_epi16(a as i16);
                *mn = dmin * m as f32;
            }
            let mins = _mm256_loadu_ps(mins.as_ptr());
            // Sub-block 2q + n: nibble half n of bytes 32q..32q + 32.
            let mut wq = [_mm256_setzero_si256(); 8];
            for q in 0..4 {
                let v = _mm256_loadu_si256(blk.add(16 + 32 * q) as *const __m256i);
                wq[2 * q] = _mm256_and_si256(v, nib);
                wq[2 * q + 1] = _mm256_and_si256(_mm256_srli_epi16::<4>(v), nib);
            }
            for r in 0..R {
                let xr = xq.add(r * k + b * 256);
                let mut dot = _mm256_setzero_si256();
                for (sub, (wv, sc)) in wq.iter().zip(&scale).enumerate() {
                    // Int8Rows keeps sub-block 2q + n at byte 128h + 64n + 32p (q = 2h + p).
                    let (q, n) = (sub / 2, sub % 2);
                    let at = 128 * (q / 2) + 64 * n + 32 * (q % 2);
                    let xv = _mm256_loadu_si256(xr.add(at) as *const __m256i);
                    let pairs = _mm256_maddubs_epi16(*wv, xv);
                    dot = _mm256_add_epi32(dot, _mm256_madd_epi16(pairs, *sc));
                }
                let dx = _mm256_set1_ps(d * *xd.add(r * nb + b));
                s[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot), dx, s[r]);
                // Minus the minimums times the sub-blocks' sums of rounded inputs.
                let sums = _mm256_loadu_ps(xs.add((r * nb + b) * 16 + 8));
                s[r] = _mm256_fnmadd_ps(mins, sums, s[r]);
            }
        }
        let out = &mut *acc.add(c);
        for r in 0..R {
            out[r] = sum(s[r]);
        }
    }
}

/// `acc[c][r] = <weight row c, x[i0 + r]>` for the consecutive q8_0 weight
/// rows in `w` and `rows` (1..=8) rows of `x` rounded to 16 bits
/// ([`Int16Rows`], as the AVX-512 kernel takes them): each block widened to
/// 16 bits meets every row in two `vpmaddwd`. The portable f32 kernel
/// converts and scales every weight instead.
pub fn dot_q8_0_i16(
    w: &[u8],
    x: &Int16Rows,
    i0: usize,
    rows: usize,
    k: usize,
    acc: &mut [[f32; 8]],
) {
    assert!(crate::cpu::detected_avx2(), "q8_0 AVX2 kernel without AVX2");
    assert!(w.len() >= acc.len() * (k / 32 * 34) && x.q.len() >= (i0 + rows.min(8)) * k);
    assert!(k % x.chunk == 0);
    let (p, cols, a) = (w.as_ptr(), acc.len(), acc.as_mut_ptr());
    // SAFETY: the CPU was checked and the sizes above.
    unsafe { by_rows!(rows, q8_0_i16(p, cols, x, i0, k, a)) }
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q8_0_i16<const R: usize>(
    w: *const u8,
    cols: usize,
    x: &Int16Rows,
    i0: usize,
    k: usize,
    acc: *mut [f32; 8],
) {
    let (nb, per) = (k / 32, x.chunk / 32);
    let nc = k / x.chunk;
    let (xq, xd) = (x.q.as_ptr().add(i0 * k), x.scale.as_ptr().add(i0 * nc));
    for c in 0..cols {
        let row = w.add(c * nb * 34);
        let mut s = [_mm256_setzero_ps(); R];
        for ch in 0..nc {
            // Sums over one chunk, in units of its input scale; even and
            // odd blocks apart, so one row's multiply-adds do not wait on
            // each other.
            let mut t = [[_mm256_setzero_ps(); 2]; R];
            for b in ch * per..(ch + 1) * per {
                let blk = row.add(b * 34);
                _mm_prefetch::<_MM_HINT_T0>(blk.add(16384) as *const i8);
                let d =
                    _mm256_cvtph_ps(_mm_set1_epi16(std::ptr::read_unaligned(blk as *const i16)));
                let w0 = _mm256_cvtepi8_epi16(_mm_loadu_si128(blk.add(2) as *const __m128i));
                let w1 = _mm256_cvtepi8_epi16(_mm_loadu_si128(blk.add(18) as *const __m128i));
                for (r, tr) in t.iter_mut().enumerate() {
                    let xr = xq.add(r * k + b * 32);
                    let x0 = _mm256_loadu_si256(xr as *const __m256i);
                    let x1 = _mm256_loadu_si256(xr.add(16) as *const __m256i);
                    let dot =
                        _mm256_add_epi32(_mm256_madd_epi16(w0, x0), _mm256_madd_epi16(w1, x1));
                    tr[b % 2] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot), d, tr[b % 2]);
                }
            }
            for r in 0..R {
                let tr = _mm256_add_ps(t[r][0], t[r][1]);
                s[r] = _mm256_fmadd_ps(tr, _mm256_set1_ps(*xd.add(r * nc + ch)), s[r]);
            }
        }
        let out = &mut *acc.add(c);
        for r in 0..R {
            out[r] = sum(s[r]);
        }
    }
}

/// The sum of the eight lanes.
#[inline]
#[target_feature(enable = "avx2")]
unsafe fn sum(v: __m256) -> f32 {
    let h = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
    let h = _mm_add_ps(h, _mm_movehl_ps(h, h));
    _mm_cvtss_f32(_mm_add_ss(h, _mm_movehdup_ps(h)))
}
