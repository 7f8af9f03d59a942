//! The blocked AVX-512-BF16 kernel: packing of both sides into bf16 pairs
//! and the 6×64 register tile (`vdpbf16ps`).

// Off x86-64 nothing here is called.
#![cfg_attr(not(target_arch = "x86_64"), allow(dead_code, unused_imports))]

use rayon::prelude::*;

use super::operands::{bits, store_row, Rhs, Runs, KC, MR, NR};
use crate::SendPtr;

thread_local! {
    /// The packed left side, reused across calls from the same thread.
    pub(crate) static A_PACK: std::cell::RefCell<Vec<u32>> = const { std::cell::RefCell::new(Vec::new()) };
    /// A column panel's packed right side, rounding stage and strip of sums.
    #[allow(clippy::type_complexity)]
    static PANEL_BUFS: std::cell::RefCell<(Vec<u32>, Vec<u32>, Vec<f32>)> =
        const { std::cell::RefCell::new((Vec::new(), Vec::new(), Vec::new())) };
}

/// Packs the left side `[m, k]` into `dst`: `[block][panel][pair][MR]`
/// words of two bf16 (l, l + 1).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bf16")]
pub(crate) unsafe fn pack_lhs(
    m: usize,
    k: usize,
    a: &[f32],
    lda: usize,
    parallel: bool,
    dst: &mut Vec<u32>,
) {
    let m_panels = m.div_ceil(MR);
    let k_blocks = k.div_ceil(KC);
    let panel_len = (KC / 2) * MR;
    if dst.len() < k_blocks * m_panels * panel_len {
        *dst = vec![0u32; k_blocks * m_panels * panel_len];
    }
    let pack_a = |(idx, dst): (usize, &mut [u32])| {
        let (kb, pi) = (idx / m_panels, idx % m_panels);
        let l0 = kb * KC;
        let kc = KC.min(k - l0);
        for r in 0..MR {
            let i = pi * MR + r;
            if i < m {
                pack_a_row(&a[i * lda + l0..i * lda + l0 + kc], r, dst);
            } else {
                for p in 0..kc.div_ceil(2) {
                    dst[p * MR + r] = 0;
                }
            }
        }
    };
    let used = &mut dst[..k_blocks * m_panels * panel_len];
    if parallel {
        used.par_chunks_mut(panel_len).enumerate().for_each(pack_a);
    } else {
        used.chunks_mut(panel_len).enumerate().for_each(pack_a);
    }
}

/// Loop order: the whole left side is packed first (it is read once per
/// column panel, from L3); then each column panel runs through every depth
/// block, so its strip of `c` stays in L2 until it is final.
#[cfg(target_arch = "x86_64")]
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx512f,avx512bf16")]
pub(crate) unsafe fn blocked(
    m: usize,
    n: usize,
    k: usize,
    a_pack: &[u32],
    rhs: &Rhs,
    c: &mut [f32],
    ldc: usize,
    accumulate: bool,
    parallel: bool,
    runs: Runs,
) {
    let m_panels = m.div_ceil(MR);
    let n_panels = n.div_ceil(NR);
    let k_blocks = k.div_ceil(KC);
    let panel_len = (KC / 2) * MR;
    assert!(
        a_pack.len() >= k_blocks * m_panels * panel_len,
        "gemm: packed left side"
    );
    let a_pack_ref = a_pack;
    let c_ptr = SendPtr(c.as_mut_ptr());
    let c_ptr = &c_ptr;
    // Each column panel accumulates in its own strip of `m × NR` sums with a
    // row stride that is not a power of two: rows of `c` itself may lie a
    // multiple of 64 KiB apart (an image plane), which maps them all to the
    // same cache sets.
    const SLD: usize = NR + 16;
    let column_panel = |bufs: &mut (Vec<u32>, Vec<u32>, Vec<f32>), pj: usize| {
        let (b_pack, stage, strip) = bufs;
        let j0 = pj * NR;
        let nr = NR.min(n - j0);
        for kb in 0..k_blocks {
            let l0 = kb * KC;
            let kc = KC.min(k - l0);
            let kp = kc.div_ceil(2);
            pack_b(rhs, j0, nr, l0, kc, b_pack, stage);
            for pi in 0..m_panels {
                let ap = a_pack_ref.as_ptr().add((kb * m_panels + pi) * panel_len);
                let sp = strip.as_mut_ptr().add(pi * MR * SLD);
                kernel(kp, ap, b_pack.as_ptr(), sp, SLD, kb > 0);
            }
        }
        for i in 0..m {
            // SAFETY: row i, the stored columns of j0..j0+nr of `c` belong
            // to this task; the length was checked by gemm_runs.
            store_row(
                c_ptr.0.add(i * ldc),
                &strip[i * SLD..i * SLD + nr],
                j0,
                runs,
                accumulate,
            );
        }
    };
    // Each thread's panel buffers live on between calls: many calls are
    // small (a band of a convolution), and fresh zeroed buffers cost them a
    // few percent. Nothing is read before this call writes it. A thread
    // that comes back here while its buffers are in use (a right side
    // produced with rayon can make it run another product meanwhile) takes
    // fresh ones.
    let run = |bufs: &mut (Vec<u32>, Vec<u32>, Vec<f32>), pj: usize| {
        let (b_pack, stage, strip) = bufs;
        b_pack.resize((KC / 2) * NR, 0);
        stage.resize(16 * (KC / 2), 0);
        if strip.len() < m_panels * MR * SLD {
            strip.resize(m_panels * MR * SLD, 0.0);
        }
        column_panel(bufs, pj)
    };
    let with_bufs = |pj: usize| {
        PANEL_BUFS.with(|b| match b.try_borrow_mut() {
            Ok(mut bufs) => run(&mut bufs, pj),
            Err(_) => run(&mut Default::default(), pj),
        })
    };
    if parallel && n_panels > 1 {
        (0..n_panels).into_par_iter().for_each(with_bufs);
    } else {
        (0..n_panels).for_each(with_bufs);
    }
}

/// One row of the left side, `kc` values, into row `r` of a packed panel
/// ([pair][MR] words).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bf16")]
unsafe fn pack_a_row(src: &[f32], r: usize, dst: &mut [u32]) {
    use std::arch::x86_64::*;
    let kc = src.len();
    let idx = _mm512_mullo_epi32(
        _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
        _mm512_set1_epi32(MR as i32),
    );
    let mut p = 0;
    while 2 * p + 32 <= kc {
        let s = src.as_ptr().add(2 * p);
        let lo = _mm512_loadu_ps(s);
        let hi = _mm512_loadu_ps(s.add(16));
        // 32 bf16 in order = 16 words, pair p + i in word i.
        let w: __m512i = std::mem::transmute(_mm512_cvtne2ps_pbh(hi, lo));
        _mm512_i32scatter_epi32::<4>(dst.as_mut_ptr().add(p * MR + r) as *mut i32, idx, w);
        p += 16;
    }
    while 2 * p < kc {
        let lo = bits(src[2 * p]);
        let hi = if 2 * p + 1 < kc {
            bits(src[2 * p + 1])
        } else {
            0
        };
        dst[p * MR + r] = lo | hi << 16;
        p += 1;
    }
}

/// Packs rows `j0..j0 + nr` of `B`, values `l0..l0 + kc`, into `dst`
/// [pair][NR] words of two bf16; missing rows and the odd tail are zeros.
/// Rows go through 16×16 word transposes: straight from a bf16 source, or
/// after rounding into `stage` (16 rows of words).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bf16")]
unsafe fn pack_b(
    rhs: &Rhs,
    j0: usize,
    nr: usize,
    l0: usize,
    kc: usize,
    dst: &mut [u32],
    stage: &mut [u32],
) {
    use std::arch::x86_64::*;
    let kp = kc.div_ceil(2);
    let dst = &mut dst[..kp * NR];
    // Pairs that go through the transposes (whole 16-pair groups).
    let kp16 = kc / 32 * 16;
    let transpose_rows = |q0: usize, rows: &[*const u32; 16], dst: &mut [u32]| {
        for p0 in (0..kp16).step_by(16) {
            transpose16(rows, p0, dst.as_mut_ptr().add(p0 * NR + q0), NR);
        }
    };
    match rhs {
        Rhs::Bf16Rows { data, ld } if ld % 2 == 0 => {
            for q0 in (0..nr).step_by(16) {
                let mut rows = [std::ptr::null::<u32>(); 16];
                for (q, row) in rows.iter_mut().enumerate() {
                    // Missing rows read row j0 again and are zeroed below.
                    let j = if q0 + q < nr { j0 + q0 + q } else { j0 };
                    *row = data.as_ptr().add(j * ld + l0) as *const u32;
                }
                transpose_rows(q0, &rows, dst);
            }
            // The tail pairs (kc not a multiple of 32).
            for q in 0..nr {
                let src = &data[(j0 + q) * ld + l0..][..kc];
                for p in kp16..kp {
                    let hi = if 2 * p + 1 < kc {
                        src[2 * p + 1].to_bits() as u32
                    } else {
                        0
                    };
                    dst[p * NR + q] = src[2 * p].to_bits() as u32 | hi << 16;
                }
            }
        }
        Rhs::Bf16Rows { .. } | Rhs::F32Rows { .. } | Rhs::Rows(_) => {
            let words = KC / 2;
            let mut row_f32 = [0f32; KC];
            for q0 in (0..nr).step_by(16) {
                let mut rows = [std::ptr::null::<u32>(); 16];
                for q in 0..16 {
                    let st = &mut stage[q * words..(q + 1) * words];
                    if q0 + q < nr {
                        let j = j0 + q0 + q;
                        let src: &[f32] = match rhs {
                            Rhs::F32Rows { data, ld } => &data[j * ld + l0..][..kc],
                            _ => {
                                rhs.row_f32(j, l0, &mut row_f32[..kc]);
                                &row_f32[..kc]
                            }
                        };
                        let mut p = 0;
                        while 2 * p + 32 <= kc {
                            let s = src.as_ptr().add(2 * p);
                            let w =
                                _mm512_cvtne2ps_pbh(_mm512_loadu_ps(s.add(16)), _mm512_loadu_ps(s));
                            _mm512_storeu_si512(
                                st.as_mut_ptr().add(p) as *mut __m512i,
                                std::mem::transmute(w),
                            );
                            p += 16;
                        }
                        while 2 * p < kc {
                            let hi = if 2 * p + 1 < kc {
                                bits(src[2 * p + 1])
                            } else {
                                0
                            };
                            st[p] = bits(src[2 * p]) | hi << 16;
                            p += 1;
                        }
                    } else {
                        st[..kp].fill(0);
                    }
                    rows[q] = st.as_ptr();
                }
                transpose_rows(q0, &rows, dst);
                // The tail pairs (kc not a multiple of 32), from the stage.
                for p in kp16..kp {
                    for q in 0..16.min(nr - q0) {
                        dst[p * NR + q0 + q] = stage[q * words + p];
                    }
                }
            }
        }
        Rhs::F32Cols { data, ld } => pack_cols(|l| &data[l * ld..], j0, nr, l0, kc, dst),
        Rhs::Bf16Cols { data, ld } => {
            // Already bf16: pairs of rows interleaved as they are.
            for p in 0..kp {
                let lo = &data[(l0 + 2 * p) * ld + j0..][..nr];
                let d = &mut dst[p * NR..p * NR + nr];
                if 2 * p + 1 < kc {
                    let hi = &data[(l0 + 2 * p + 1) * ld + j0..][..nr];
                    for ((d, x), y) in d.iter_mut().zip(lo).zip(hi) {
                        *d = x.to_bits() as u32 | (y.to_bits() as u32) << 16;
                    }
                } else {
                    for (d, x) in d.iter_mut().zip(lo) {
                        *d = x.to_bits() as u32;
                    }
                }
            }
        }
        Rhs::ColRows(f) => pack_cols(f, j0, nr, l0, kc, dst),
    }
    // Columns of missing rows are zeros (the bf16 transposes fill them with
    // copies of row j0, the others leave them as they were).
    if nr < NR {
        for p in 0..kp {
            dst[p * NR + nr..(p + 1) * NR].fill(0);
        }
    }
}

/// Column-major values `(j0 + q, l0 + r)` = `row(l0 + r)[j0 + q]` into
/// [pair][NR] words, `q < nr`, `r < kc`.
#[inline(always)]
fn pack_cols<'a>(
    row: impl Fn(usize) -> &'a [f32],
    j0: usize,
    nr: usize,
    l0: usize,
    kc: usize,
    dst: &mut [u32],
) {
    // Round to nearest even in integer arithmetic (vectorises; finite
    // values as `bits`): the bf16 is the upper half of the sum.
    let up = |x: f32| {
        let u = x.to_bits();
        u.wrapping_add(0x7fff + ((u >> 16) & 1))
    };
    for p in 0..kc.div_ceil(2) {
        let lo = &row(l0 + 2 * p)[j0..j0 + nr];
        let d = &mut dst[p * NR..p * NR + nr];
        if 2 * p + 1 < kc {
            let hi = &row(l0 + 2 * p + 1)[j0..j0 + nr];
            for ((d, &x), &y) in d.iter_mut().zip(lo).zip(hi) {
                *d = up(x) >> 16 | up(y) & 0xffff_0000;
            }
        } else {
            for (d, &x) in d.iter_mut().zip(lo) {
                *d = up(x) >> 16;
            }
        }
    }
}

/// `dst[i * stride + r] = rows[r][p0 + i]` for a 16×16 block of words.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn transpose16(rows: &[*const u32; 16], p0: usize, dst: *mut u32, stride: usize) {
    use std::arch::x86_64::*;
    let mut r = [_mm512_setzero_si512(); 16];
    for (v, row) in r.iter_mut().zip(rows) {
        *v = _mm512_loadu_si512(row.add(p0) as *const __m512i);
    }
    let mut t = [_mm512_setzero_si512(); 16];
    for i in 0..8 {
        t[2 * i] = _mm512_unpacklo_epi32(r[2 * i], r[2 * i + 1]);
        t[2 * i + 1] = _mm512_unpackhi_epi32(r[2 * i], r[2 * i + 1]);
    }
    for g in 0..4 {
        let b = 4 * g;
        r[b] = _mm512_unpacklo_epi64(t[b], t[b + 2]);
        r[b + 1] = _mm512_unpackhi_epi64(t[b], t[b + 2]);
        r[b + 2] = _mm512_unpacklo_epi64(t[b + 1], t[b + 3]);
        r[b + 3] = _mm512_unpackhi_epi64(t[b + 1], t[b + 3]);
    }
    for h in 0..2 {
        let b = 8 * h;
        for i in 0..4 {
            t[b + i] = _mm512_shuffle_i32x4::<0x88>(r[b + i], r[b + 4 + i]);
            t[b + 4 + i] = _mm512_shuffle_i32x4::<0xdd>(r[b + i], r[b + 4 + i]);
        }
    }
    for i in 0..8 {
        r[i] = _mm512_shuffle_i32x4::<0x88>(t[i], t[8 + i]);
        r[8 + i] = _mm512_shuffle_i32x4::<0xdd>(t[i], t[8 + i]);
    }
    for (i, v) in r.iter().enumerate() {
        _mm512_storeu_si512(dst.add(i * stride) as *mut __m512i, *v);
    }
}

/// The 6×64 register tile: `c[r * ldc + q] (+)= Σ_p a[p][r] · b[p][q]` over
/// `kp` pairs, each word two bf16.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bf16")]
unsafe fn kernel(kp: usize, a: *const u32, b: *const u32, c: *mut f32, ldc: usize, load: bool) {
    use std::arch::x86_64::*;
    let mut acc = [[_mm512_setzero_ps(); 4]; MR];
    if load {
        for (r, row) in acc.iter_mut().enumerate() {
            for (v, x) in row.iter_mut().enumerate() {
                *x = _mm512_loadu_ps(c.add(r * ldc + 16 * v));
            }
        }
    }
    for p in 0..kp {
        let bp = b.add(p * NR) as *const __m512i;
        let bv: [__m512bh; 4] = [
            std::mem::transmute::<__m512i, __m512bh>(_mm512_loadu_si512(bp)),
            std::mem::transmute::<__m512i, __m512bh>(_mm512_loadu_si512(bp.add(1))),
            std::mem::transmute::<__m512i, __m512bh>(_mm512_loadu_si512(bp.add(2))),
            std::mem::transmute::<__m512i, __m512bh>(_mm512_loadu_si512(bp.add(3))),
        ];
        let ap = a.add(p * MR);
        for (r, row) in acc.iter_mut().enumerate() {
            let av = std::mem::transmute::<__m512i, __m512bh>(_mm512_set1_epi32(*ap.add(r) as i32));
            for (x, &bw) in row.iter_mut().zip(&bv) {
                *x = _mm512_dpbf16_ps(*x, av, bw);
            }
        }
    }
    for (r, row) in acc.iter().enumerate() {
        for (v, x) in row.iter().enumerate() {
            _mm512_storeu_ps(c.add(r * ldc + 16 * v), *x);
        }
    }
}
