//! The few-row kernels for AVX-512 (F, BW) CPUs: decoding and image
//! steps multiply 1–16 input rows by every weight, so these stream the
//! weights once per group of rows and decode them in registers.

use super::blocks::q4k_scale_min;
use super::format::RowFormat;
use super::input_rows::{Int16Rows, Int8Rows};
use std::arch::x86_64::*;
use std::sync::OnceLock;

/// How far ahead of the bytes being read the few-row kernels prefetch:
/// some rows ahead in the thread's run of consecutive weight rows. The
/// hardware prefetcher alone leaves these loads late once a block feeds
/// several input rows. The distance was measured (BENCHMARKS.md): shorter
/// and longer ones were slower.
const PREFETCH: usize = 32768;

/// AVX-512 (F, BW) and F16C: the few-row kernels' requirement.
pub fn available() -> bool {
    crate::cpu::avx512()
}

/// `acc[r] = <row, x[r]>` for `rows` (1..=8) rows of `x`, each `k` long.
pub fn dot(fmt: RowFormat, row: &[u8], x: &[f32], k: usize, rows: usize, acc: &mut [f32; 8]) {
    macro_rules! go {
        // SAFETY: `available()` gates every caller; sizes checked by few_row_matmul.
        ($f:ident) => {
            unsafe { by_rows!(rows, $f(row, x, k, acc)) }
        };
    }
    match fmt {
        RowFormat::F32 => go!(dot_f32),
        RowFormat::Bf16 => go!(dot_bf16),
        RowFormat::Q4K => go!(dot_q4k),
        RowFormat::Q8_0 => unreachable!("q8_0 goes to dot_q8_0_i16"),
    }
}

/// `acc[w][r] = <row w, x[r]>` for 4 weight rows (`rb` bytes apart) and
/// `rows` (1..=4) input rows.
pub fn dot4(
    fmt: RowFormat,
    w: &[u8],
    rb: usize,
    x: &[f32],
    k: usize,
    rows: usize,
    acc: &mut [[f32; 4]; 4],
) {
    macro_rules! go {
        ($f:ident) => {
            // SAFETY: `available()` gates every caller; sizes checked by few_row_matmul.
            unsafe {
                match rows {
                    1 => $f::<1>(w.as_ptr(), rb, x.as_ptr(), k, acc),
                    2 => $f::<2>(w.as_ptr(), rb, x.as_ptr(), k, acc),
                    3 => $f::<3>(w.as_ptr(), rb, x.as_ptr(), k, acc),
                    _ => $f::<4>(w.as_ptr(), rb, x.as_ptr(), k, acc),
                }
            }
        };
    }
    match fmt {
        RowFormat::F32 => go!(dot4_f32),
        RowFormat::Bf16 => go!(dot4_bf16),
        RowFormat::Q4K => go!(dot4_q4k),
        RowFormat::Q8_0 => unreachable!("q8_0 goes to dot_q8_0_i16"),
    }
}

#[inline]
#[target_feature(enable = "avx512f,avx512bw,f16c")]
unsafe fn finish4<const R: usize>(s: &[[__m512; R]; 4], acc: &mut [[f32; 4]; 4]) {
    for w in 0..4 {
        for r in 0..R {
            acc[w][r] = _mm512_reduce_add_ps(s[w][r]);
        }
    }
}

/// Loads `x[r][l..l + 16]` for every input row.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,f16c")]
unsafe fn load_x<const R: usize>(x: *const f32, k: usize, l: usize) -> [__m512; R] {
    let mut v = [_mm512_setzero_ps(); R];
    for (r, v) in v.iter_mut().enumerate() {
        *v = _mm512_loadu_ps(x.add(r * k + l));
    }
    v
}

#[inline]
#[target_feature(enable = "avx512f,avx512bw,f16c")]
unsafe fn fma4<const R: usize>(s: &mut [__m512; R], w: __m512, xv: &[__m512; R]) {
    for r in 0..R {
        s[r] = _mm512_fmadd_ps(w, xv[r], s[r]);
    }
}

#[target_feature(enable = "avx512f,avx512bw,f16c")]
unsafe fn dot4_f32<const R: usize>(
    w: *const u8,
    rb: usize,
    x: *const f32,
    k: usize,
    acc: &mut [[f32; 4]; 4],
) {
    let mut s = [[_mm512_setzero_ps(); R]; 4];
    let main = k / 16 * 16;
    let mut l = 0;
    while l < main {
        let xv = load_x::<R>(x, k, l);
        for (wr, sw) in s.iter_mut().enumerate() {
            let wv = _mm512_loadu_ps((w.add(wr * rb) as *const f32).add(l));
            fma4::<R>(sw, wv, &xv);
        }
        l += 16;
    }
    finish4::<R>(&s, acc);
    for wr in 0..4 {
        for r in 0..R {
            for t in main..k {
                acc[wr][r] += *(w.add(wr * rb) as *const f32).add(t) * *x.add(r * k + t);
            }
        }
    }
}

#[target_feature(enable = "avx512f,avx512bw,f16c")]
unsafe fn dot4_bf16<const R: usize>(
    w: *const u8,
    rb: usize,
    x: *const f32,
    k: usize,
    acc: &mut [[f32; 4]; 4],
) {
    let mut s = [[_mm512_setzero_ps(); R]; 4];
    let main = k / 16 * 16;
    let mut l = 0;
    while l < main {
        let xv = load_x::<R>(x, k, l);
        for (wr, sw) in s.iter_mut().enumerate() {
            let raw = _mm256_loadu_si256((w.add(wr * rb) as *const u16).add(l) as *const __m256i);
            let wv = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(raw), 16));
            fma4::<R>(sw, wv, &xv);
        }
        l += 16;
    }
    finish4::<R>(&s, acc);
    for wr in 0..4 {
        for r in 0..R {
            for t in main..k {
                let bits = *(w.add(wr * rb) as *const u16).add(t);
                acc[wr][r] += f32::from_bits((bits as u32) << 16) * *x.add(r * k + t);
            }
        }
    }
}

#[target_feature(enable = "avx512f,avx512bw,f16c")]
unsafe fn dot4_q4k<const R: usize>(
    w: *const u8,
    rb: usize,
    x: *const f32,
    k: usize,
    acc: &mut [[f32; 4]; 4],
) {
    let mut s = [[_mm512_setzero_ps(); R]; 4];
    let nib = _mm512_set1_epi32(0xF);
    for b in 0..k / 256 {
        for wr in 0..4 {
            for line in 0..3 {
                let p = w.add(wr * rb + b * 144 + PREFETCH + 64 * line);
                _mm_prefetch::<_MM_HINT_T0>(p as *const i8);
            }
        }
        for j in 0..4 {
            // Per weight row: the two sub-blocks' (scale, -min) of this 64-value group.
            let mut sc = [(
                _mm512_setzero_ps(),
                _mm512_setzero_ps(),
                _mm512_setzero_ps(),
                _mm512_setzero_ps(),
            ); 4];
            for (wr, c) in sc.iter_mut().enumerate() {
                let blk = w.add(wr * rb + b * 144);
                let d = f16_at(blk);
                let dmin = f16_at(blk.add(2));
                let scales = std::slice::from_raw_parts(blk.add(4), 12);
                let (s0, m0) = q4k_scale_min(2 * j, scales);
                let (s1, m1) = q4k_scale_min(2 * j + 1, scales);
                *c = (
                    _mm512_set1_ps(d * s0 as f32),
                    _mm512_set1_ps(-dmin * m0 as f32),
                    _mm512_set1_ps(d * s1 as f32),
                    _mm512_set1_ps(-dmin * m1 as f32),
                );
            }
            for h in 0..2 {
                let off = b * 256 + 64 * j + 16 * h;
                let xl = load_x::<R>(x, k, off);
                let xh = load_x::<R>(x, k, off + 32);
                for (wr, sw) in s.iter_mut().enumerate() {
                    let qs = w.add(wr * rb + b * 144 + 16 + 32 * j + 16 * h);
                    let bytes = _mm512_cvtepu8_epi32(_mm_loadu_si128(qs as *const __m128i));
                    let lo = _mm512_cvtepi32_ps(_mm512_and_si512(bytes, nib));
                    let hi = _mm512_cvtepi32_ps(_mm512_srli_epi32(bytes, 4));
                    let (d0, n0, d1, n1) = sc[wr];
                    fma4::<R>(sw, _mm512_fmadd_ps(lo, d0, n0), &xl);
                    fma4::<R>(sw, _mm512_fmadd_ps(hi, d1, n1), &xh);
                }
            }
        }
    }
    finish4::<R>(&s, acc);
}

#[inline]
#[target_feature(enable = "avx512f,avx512bw,f16c")]
unsafe fn fma_rows<const R: usize>(
    s: &mut [__m512; R],
    w: __m512,
    x: *const f32,
    k: usize,
    l: usize,
) {
    for (r, acc) in s.iter_mut().enumerate() {
        *acc = _mm512_fmadd_ps(w, _mm512_loadu_ps(x.add(r * k + l)), *acc);
    }
}

#[inline]
#[target_feature(enable = "avx512f,avx512bw,f16c")]
unsafe fn finish<const R: usize>(s: &[__m512; R], acc: &mut [f32; 8]) {
    for r in 0..R {
        acc[r] = _mm512_reduce_add_ps(s[r]);
    }
}

#[target_feature(enable = "avx512f,avx512bw,f16c")]
unsafe fn dot_f32<const R: usize>(row: &[u8], x: &[f32], k: usize, acc: &mut [f32; 8]) {
    let w = row.as_ptr() as *const f32;
    let xp = x.as_ptr();
    let mut s = [_mm512_setzero_ps(); R];
    let main = k / 16 * 16;
    let mut l = 0;
    while l < main {
        fma_rows::<R>(&mut s, _mm512_loadu_ps(w.add(l)), xp, k, l);
        l += 16;
    }
    finish::<R>(&s, acc);
    for r in 0..R {
        for t in main..k {
            acc[r] += *w.add(t) * x[r * k + t];
        }
    }
}

#[target_feature(enable = "avx512f,avx512bw,f16c")]
unsafe fn dot_bf16<const R: usize>(row: &[u8], x: &[f32], k: usize, acc: &mut [f32; 8]) {
    let w = row.as_ptr() as *const u16;
    let xp = x.as_ptr();
    let mut s = [_mm512_setzero_ps(); R];
    let main = k / 16 * 16;
    let mut l = 0;
    while l < main {
        if l % 32 == 0 {
            _mm_prefetch::<_MM_HINT_T0>((w.add(l) as *const u8).add(PREFETCH) as *const i8);
        }
        let raw = _mm256_loadu_si256(w.add(l) as *const __m256i);
        let wv = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(raw), 16));
        fma_rows::<R>(&mut s, wv, xp, k, l);
        l += 16;
    }
    finish::<R>(&s, acc);
    for r in 0..R {
        for t in main..k {
            acc[r] += f32::from_bits((*w.add(t) as u32) << 16) * x[r * k + t];
        }
    }
}

#[inline]
#[target_feature(enable = "avx512f,avx512bw,f16c")]
unsafe fn f16_at(p: *const u8) -> f32 {
    _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(
        std::ptr::read_unaligned(p as *const u16) as i32,
    )))
}

/// `x` rounded to bf16 (to nearest even), two values per word (the
/// first in the low half); `x.len()` is even. One instruction per 32
/// values: a scalar conversion per value was a serial share of each step.
pub fn bf16_pairs(x: &[f32]) -> Vec<u32> {
    assert!(x.len().is_multiple_of(2));
    let mut out = vec![0u32; x.len() / 2];
    // SAFETY: AVX-512-BF16 checked by the caller (bf16_gemm::available).
    unsafe { bf16_pairs_avx512(x, &mut out) };
    out
}

#[target_feature(enable = "avx512f,avx512bf16")]
unsafe fn bf16_pairs_avx512(x: &[f32], out: &mut [u32]) {
    let mut c = x.chunks_exact(32);
    for (src, dst) in (&mut c).zip(out.chunks_exact_mut(16)) {
        let (lo, hi) = (
            _mm512_loadu_ps(src.as_ptr()),
            _mm512_loadu_ps(src.as_ptr().add(16)),
        );
        let v = std::mem::transmute::<__m512bh, __m512i>(_mm512_cvtne2ps_pbh(hi, lo));
        _mm512_storeu_si512(dst.as_mut_ptr() as *mut __m512i, v);
    }
    let done = x.len() / 32 * 16;
    for (p, d) in c.remainder().chunks_exact(2).zip(&mut out[done..]) {
        let bits = |v: f32| half::bf16::from_f32(v).to_bits() as u32;
        *d = bits(p[0]) | bits(p[1]) << 16;
    }
}

/// `acc[c][r] = <rows4[c], x[r]>` for four bf16 weight rows (`k`
/// values each; repeat a row to fill) and `m` (1..=16) input rows given
/// as bf16 pairs (`k / 2` words each); `k` is a multiple of 32 and the
/// CPU has AVX-512-BF16 (checked by the caller).
pub fn dot4_bf16_rows(rows4: [&[u8]; 4], xb: &[u32], k: usize, m: usize, acc: &mut [[f32; 16]; 4]) {
    assert!(k.is_multiple_of(32) && (1..=16).contains(&m) && xb.len() >= m * k / 2);
    assert!(rows4
        .iter()
        .all(|r| r.len() >= RowFormat::Bf16.row_bytes(k)));
    // SAFETY: AVX-512-BF16 checked by the caller (bf16_gemm::available);
    // sizes checked above.
    unsafe {
        let w = rows4.map(|r| r.as_ptr() as *const u32);
        dot4_bf16_chunks(w, xb.as_ptr(), k, m, acc)
    }
}

/// Values per depth chunk of [`dot4_bf16_rows`]: the chunk of the four weight
/// rows (4 KiB) and of up to 16 input rows (16 KiB) stay in L1 while
/// every group of four input rows meets the weights. Only the first
/// group reads the weights from memory.
const BF16_CHUNK: usize = 512;

#[target_feature(enable = "avx512f,avx512bf16")]
unsafe fn dot4_bf16_chunks(
    w: [*const u32; 4],
    xb: *const u32,
    k: usize,
    m: usize,
    acc: &mut [[f32; 16]; 4],
) {
    let words = k / 2;
    // Partial sums [input row][weight row], 16 lanes each.
    let mut part = [[_mm512_setzero_ps(); 4]; 16];
    for l0 in (0..k).step_by(BF16_CHUNK) {
        let (p0, iters) = (l0 / 2, BF16_CHUNK.min(k - l0) / 32);
        let wp = w.map(|r| r.add(p0));
        for i0 in (0..m).step_by(4) {
            let (x, s) = (xb.add(i0 * words + p0), &mut part[i0..]);
            let first = i0 == 0;
            match m - i0 {
                1 => dot4_group::<1>(wp, x, words, iters, s, first),
                2 => dot4_group::<2>(wp, x, words, iters, s, first),
                3 => dot4_group::<3>(wp, x, words, iters, s, first),
                _ => dot4_group::<4>(wp, x, words, iters, s, first),
            }
        }
    }
    for (c, out) in acc.iter_mut().enumerate() {
        for (o, p) in out[..m].iter_mut().zip(&part) {
            *o = _mm512_reduce_add_ps(p[c]);
        }
    }
}

/// `iters` × 32 values of four weight rows against `R` input rows
/// (`words` apart), added to the sums `s[r][c]`; `prefetch` asks for the
/// weights ahead (the group that reads them first from memory).
#[inline(always)]
unsafe fn dot4_group<const R: usize>(
    w: [*const u32; 4],
    x: *const u32,
    words: usize,
    iters: usize,
    s: &mut [[__m512; 4]],
    prefetch: bool,
) {
    let mut a = [[_mm512_setzero_ps(); 4]; R];
    a.copy_from_slice(&s[..R]);
    for it in 0..iters {
        if prefetch {
            for r in w {
                _mm_prefetch::<_MM_HINT_T0>((r.add(16 * it) as *const i8).add(PREFETCH));
            }
        }
        let wv = w.map(|r| {
            let v = _mm512_loadu_si512(r.add(16 * it) as *const __m512i);
            std::mem::transmute::<__m512i, __m512bh>(v)
        });
        for (r, ar) in a.iter_mut().enumerate() {
            let xv = _mm512_loadu_si512(x.add(r * words + 16 * it) as *const __m512i);
            let xv = std::mem::transmute::<__m512i, __m512bh>(xv);
            for (acc, &wc) in ar.iter_mut().zip(&wv) {
                *acc = _mm512_dpbf16_ps(*acc, wc, xv);
            }
        }
    }
    s[..R].copy_from_slice(&a);
}

/// `acc[c][r] = <weight row c, x[i0 + r]>` for the consecutive q8_0
/// weight rows in `w` (`acc.len()` of them) and `rows` (1..=8) rows of
/// 16-bit inputs.
pub fn dot_q8_0_i16(
    w: &[u8],
    x: &Int16Rows,
    i0: usize,
    rows: usize,
    k: usize,
    acc: &mut [[f32; 8]],
) {
    assert!(w.len() >= acc.len() * (k / 32 * 34) && x.q.len() >= (i0 + rows) * k);
    assert!(k % x.chunk == 0);
    let (p, cols, a) = (w.as_ptr(), acc.len(), acc.as_mut_ptr());
    // SAFETY: `available()` gates every caller; sizes checked above.
    unsafe { by_rows!(rows, q8_0_i16(p, cols, x, i0, k, a)) }
}

#[target_feature(enable = "avx512f,avx512bw,avx2,f16c")]
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
        let mut s = [_mm512_setzero_ps(); R];
        for ch in 0..nc {
            // Sums over one chunk, in units of its input scale.
            let mut t = [_mm512_setzero_ps(); R];
            for b in ch * per..(ch + 1) * per {
                let blk = row.add(b * 34);
                // Past the row's end this reaches the next row, which comes next.
                _mm_prefetch::<_MM_HINT_T0>(blk.add(PREFETCH) as *const i8);
                let d = _mm512_cvtph_ps(_mm256_set1_epi16(std::ptr::read_unaligned(
                    blk as *const i16,
                )));
                let wv = _mm512_cvtepi8_epi16(_mm256_loadu_si256(blk.add(2) as *const _));
                for r in 0..R {
                    let xv = _mm512_loadu_si512(xq.add(r * k + b * 32) as *const _);
                    let p = _mm512_cvtepi32_ps(_mm512_madd_epi16(wv, xv));
                    t[r] = _mm512_fmadd_ps(p, d, t[r]);
                }
            }
            for r in 0..R {
                s[r] = _mm512_fmadd_ps(t[r], _mm512_set1_ps(*xd.add(r * nc + ch)), s[r]);
            }
        }
        let out = &mut *acc.add(c);
        for r in 0..R {
            out[r] = _mm512_reduce_add_ps(s[r]);
        }
    }
}

/// AVX-512-VNNI, for [`dot_q4k_int8`]; `JANUS_VNNI=0` turns it off (to
/// test the f32 kernel on machines that have it).
pub fn vnni_available() -> bool {
    static F: OnceLock<bool> = OnceLock::new();
    *F.get_or_init(|| {
        available()
            && is_x86_feature_detected!("avx512vnni")
            && std::env::var("JANUS_VNNI").as_deref() != Ok("0")
    })
}

/// `acc[c][r] = <weight row c, x[i0 + r]>` for the consecutive weight
/// rows in `w` (`acc.len()` of them) and `rows` (1..=8) rows of `x`, q4_K
/// weights against 8-bit inputs; `k` is a multiple of 256 and the CPU
/// has AVX-512-VNNI (checked by the caller). One call covers a run of
/// weight rows so that its set-up is paid once, not per row.
///
/// A 64-byte load of q4_K nibbles holds, in its low nibbles, values
/// 0..32 and 64..96 of its 128 and, in its high nibbles, 32..64 and
/// 96..128: two 32-value sub-blocks per half, each with its own 6-bit
/// scale and minimum. [`super::input_rows::Int8Rows`] stores the inputs in that
/// order, so `vpdpbusd` of a nibble half with 64 input bytes gives 16
/// sums of 4 products, lanes 0..8 in one sub-block and 8..16 in the other.
pub fn dot_q4k_int8(
    w: &[u8],
    x: &Int8Rows,
    i0: usize,
    rows: usize,
    k: usize,
    acc: &mut [[f32; 8]],
) {
    assert!(w.len() >= acc.len() * (k / 256 * 144) && x.q.len() >= (i0 + rows) * k);
    let (p, cols, a) = (w.as_ptr(), acc.len(), acc.as_mut_ptr());
    // SAFETY: the caller checked the CPU; sizes checked above.
    unsafe { by_rows!(rows, q4k_int8(p, cols, x, i0, k, a)) }
}

#[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,f16c")]
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
    let nib = _mm512_set1_epi8(0x0F);
    let lanes = |a: i32, b: i32| _mm512_set_epi32(b, b, b, b, b, b, b, b, a, a, a, a, a, a, a, a);
    // [d x 8, dmin x 8] from the block's two f16s.
    let spread = lanes(0, 1);
    // Sub-block scales of each nibble half: (low, high) x (first, second 128).
    let pick = [lanes(0, 2), lanes(1, 3), lanes(4, 6), lanes(5, 7)];
    // The eight 6-bit scales and minimums from the header's dwords
    // u0 u1 u2 (bytes 4..16), as llama.cpp unpacks them, four dwords at
    // once: [u0 & m1, (u2 & m2) | hi(u0), u1 & m1, ((u2 >> 4) & m2) | hi(u1)]
    // where hi(u) = ((u >> 6) & 3) << 4 per byte = (u >> 2) & 0x30.
    let (m1, m2) = (0x3f3f_3f3f, 0x0f0f_0f0f);
    let low_mask = _mm_set_epi32(m2, m1, m2, m1);
    let low_shift = _mm_set_epi32(4, 0, 0, 0);
    let high_mask = _mm_set_epi32(0x3030_3030, 0, 0x3030_3030, 0);
    for c in 0..cols {
        let row = w.add(c * nb * 144);
        let mut s = [_mm512_setzero_ps(); R];
        for b in 0..nb {
            let blk = row.add(b * 144);
            // With many input rows per block the loads of the next blocks
            // are issued late: ask for them ahead (past the row's end this
            // reaches the next row, which comes next).
            for line in 0..3 {
                _mm_prefetch::<_MM_HINT_T0>(blk.add(PREFETCH + 64 * line) as *const i8);
            }
            let head = _mm_loadu_si128(blk as *const __m128i);
            let dd = _mm512_permutexvar_ps(spread, _mm512_castps128_ps512(_mm_cvtph_ps(head)));
            // dwords (u0, u2, u1, u2) and (u0, u0, u1, u1).
            let low = _mm_srlv_epi32(_mm_shuffle_epi32::<0b11_10_11_01>(head), low_shift);
            let high = _mm_srli_epi32::<2>(_mm_shuffle_epi32::<0b10_10_01_01>(head));
            let bytes = _mm_or_si128(_mm_and_si128(low, low_mask), _mm_and_si128(high, high_mask));
            // [d * scale_j, dmin * min_j] for j = 0..8.
            let scm = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(bytes)), dd);
            let mut wq = [_mm512_setzero_si512(); 4];
            let mut ws = [_mm512_setzero_ps(); 4];
            for h in 0..2 {
                let v = _mm512_loadu_si512(blk.add(16 + 64 * h) as *const _);
                wq[2 * h] = _mm512_and_si512(v, nib);
                wq[2 * h + 1] = _mm512_and_si512(_mm512_srli_epi16(v, 4), nib);
                ws[2 * h] = _mm512_permutexvar_ps(pick[2 * h], scm);
                ws[2 * h + 1] = _mm512_permutexvar_ps(pick[2 * h + 1], scm);
            }
            for r in 0..R {
                let xr = xq.add(r * k + b * 256);
                let mut t = _mm512_setzero_ps();
                for (q, (wv, wsc)) in wq.iter().zip(&ws).enumerate() {
                    let xv = _mm512_loadu_si512(xr.add(64 * q) as *const _);
                    let dot = _mm512_dpbusd_epi32(_mm512_setzero_si512(), *wv, xv);
                    t = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot), *wsc, t);
                }
                s[r] = _mm512_fmadd_ps(t, _mm512_set1_ps(*xd.add(r * nb + b)), s[r]);
                // Minus the minimums: sums sit in lanes 8..16, beside dmin * min_j.
                let sums = _mm512_loadu_ps(xs.add((r * nb + b) * 16));
                s[r] = _mm512_fnmadd_ps(scm, sums, s[r]);
            }
        }
        let out = &mut *acc.add(c);
        for r in 0..R {
            out[r] = _mm512_reduce_add_ps(s[r]);
        }
    }
}

#[target_feature(enable = "avx512f,avx512bw,f16c")]
unsafe fn dot_q4k<const R: usize>(row: &[u8], x: &[f32], k: usize, acc: &mut [f32; 8]) {
    let xp = x.as_ptr();
    let mut s = [_mm512_setzero_ps(); R];
    let nib = _mm512_set1_epi32(0xF);
    for b in 0..k / 256 {
        let blk = row.as_ptr().add(b * 144);
        for line in 0..3 {
            _mm_prefetch::<_MM_HINT_T0>(blk.add(PREFETCH + 64 * line) as *const i8);
        }
        let d = f16_at(blk);
        let dmin = f16_at(blk.add(2));
        let scales = std::slice::from_raw_parts(blk.add(4), 12);
        let qs = blk.add(16);
        let base = b * 256;
        for j in 0..4 {
            let (sc0, m0) = q4k_scale_min(2 * j, scales);
            let (sc1, m1) = q4k_scale_min(2 * j + 1, scales);
            let (d0, n0) = (
                _mm512_set1_ps(d * sc0 as f32),
                _mm512_set1_ps(-dmin * m0 as f32),
            );
            let (d1, n1) = (
                _mm512_set1_ps(d * sc1 as f32),
                _mm512_set1_ps(-dmin * m1 as f32),
            );
            for h in 0..2 {
                let bytes = _mm512_cvtepu8_epi32(_mm_loadu_si128(
                    qs.add(32 * j + 16 * h) as *const __m128i
                ));
                let lo = _mm512_cvtepi32_ps(_mm512_and_si512(bytes, nib));
                let hi = _mm512_cvtepi32_ps(_mm512_srli_epi32(bytes, 4));
                let off = base + 64 * j + 16 * h;
                fma_rows::<R>(&mut s, _mm512_fmadd_ps(lo, d0, n0), xp, k, off);
                fma_rows::<R>(&mut s, _mm512_fmadd_ps(hi, d1, n1), xp, k, off + 32);
            }
        }
    }
    finish::<R>(&s, acc);
}
