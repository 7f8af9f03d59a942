//! `C = A · Bᵀ` with both inputs rounded to bf16 and f32 accumulation.
//!
//! On CPUs with AVX-512-BF16 (`vdpbf16ps`: 32 multiply-adds of bf16 pairs
//! per instruction, twice what an f32 FMA does) this is a blocked GEMM in
//! the usual shape: the left side is packed one `KC`-deep block at a time
//! into `MR`-row panels (rounded from f32 while packing), the right side into
//! `NR`-column panels that stay in L1, and a 6×64 register tile accumulates
//! in f32. Elsewhere [`gemm`] computes the same sums with scalar code, so
//! callers pick it by [`available`] and keep their f32 path otherwise.
//!
//! The right side comes in the layouts the callers have without a copy:
//! weight rows (`[n, k]`, bf16 or f32, or produced on demand by dequantising
//! a quantised row) or columns (`[k, n]`: attention values, or rows found
//! where the caller keeps them, as the shifted input planes of a
//! convolution, so no im2col matrix is ever written out).

// Off x86-64 only the scalar reference path is compiled in; the blocked
// kernel's helpers and constants are then unused.
#![cfg_attr(
    not(target_arch = "x86_64"),
    allow(dead_code, unused_imports, unused_variables)
)]

use half::bf16;
use rayon::prelude::*;

/// Rows of the register tile.
const MR: usize = 6;
/// Columns of the register tile (four 16-lane vectors).
const NR: usize = 64;
/// Depth of one packed block. A multiple of 256 so that callers producing
/// dequantised rows (`Rhs::Rows`) are never asked for part of a 4-bit
/// k-quant block; `KC × NR` bf16 (32 KiB) fits the L1 cache.
const KC: usize = 256;

/// The right-hand matrix `B`, `n` rows of `k` values, in the layouts callers hold.
pub enum Rhs<'a> {
    /// Row `j` is `data[j * ld..][..k]` (a bf16 weight `[n, k]`).
    Bf16Rows { data: &'a [bf16], ld: usize },
    /// Row `j` is `data[j * ld..][..k]` (an f32 weight or activations).
    F32Rows { data: &'a [f32], ld: usize },
    /// Column-major `B`: value `(j, l)` is `data[l * ld + j]` (`Bᵀ` stored
    /// row-major, e.g. attention values `[keys, head_dim]`).
    F32Cols { data: &'a [f32], ld: usize },
    /// The same in bf16 (values of a bf16 key/value cache).
    Bf16Cols { data: &'a [bf16], ld: usize },
    /// Rows made on demand: `f(j, l0, out)` writes values `l0..l0 + out.len()`
    /// of row `j`. `l0` is always a multiple of 256.
    Rows(&'a (dyn Fn(usize, usize, &mut [f32]) + Sync)),
    /// Column-major `B` whose `k` rows lie wherever the caller keeps them:
    /// value `(j, l)` is `f(l)[j]` (e.g. each tap of a convolution as a
    /// shifted view of a zero-padded input plane).
    ColRows(&'a (dyn Fn(usize) -> &'a [f32] + Sync)),
}

impl Rhs<'_> {
    /// Writes values `l0..l0 + out.len()` of row `j` as f32 (reference path).
    fn row_f32(&self, j: usize, l0: usize, out: &mut [f32]) {
        match self {
            Rhs::Bf16Rows { data, ld } => {
                for (o, v) in out.iter_mut().zip(&data[j * ld + l0..]) {
                    *o = v.to_f32();
                }
            }
            Rhs::F32Rows { data, ld } => out.copy_from_slice(&data[j * ld + l0..][..out.len()]),
            Rhs::F32Cols { data, ld } => {
                for (i, o) in out.iter_mut().enumerate() {
                    *o = data[(l0 + i) * ld + j];
                }
            }
            Rhs::Bf16Cols { data, ld } => {
                for (i, o) in out.iter_mut().enumerate() {
                    *o = data[(l0 + i) * ld + j].to_f32();
                }
            }
            Rhs::Rows(f) => f(j, l0, out),
            Rhs::ColRows(f) => {
                for (i, o) in out.iter_mut().enumerate() {
                    *o = f(l0 + i)[j];
                }
            }
        }
    }
}

/// Whether the fast kernel runs on this CPU (AVX-512F + AVX-512-BF16, and
/// not capped by `JANUS_CPU`).
/// `JANUS_BF16_GEMM=0` turns it off, to compare against the f32 paths.
pub fn available() -> bool {
    static AVAILABLE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *AVAILABLE.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        let cpu = crate::cpu::avx512() && std::arch::is_x86_feature_detected!("avx512bf16");
        #[cfg(not(target_arch = "x86_64"))]
        let cpu = false;
        cpu && std::env::var("JANUS_BF16_GEMM").as_deref() != Ok("0")
    })
}

/// `f32` rounded to bf16 (to nearest, ties to even), as its bits.
#[inline]
fn bits(x: f32) -> u32 {
    bf16::from_f32(x).to_bits() as u32
}

/// `c[i * ldc + j] (+)= Σ_l bf16(a[i * lda + l]) · bf16(B[j, l])` for
/// `i < m`, `j < n`, `l < k`; `accumulate` adds to `c` instead of
/// overwriting it. `parallel` splits the columns across rayon's threads
/// (callers that already run in parallel pass `false`).
///
/// # Panics
/// If `a`, `c` or the right side are too short for the stated shapes.
#[allow(clippy::too_many_arguments)]
pub fn gemm(
    m: usize,
    n: usize,
    k: usize,
    a: &[f32],
    lda: usize,
    rhs: &Rhs,
    c: &mut [f32],
    ldc: usize,
    accumulate: bool,
    parallel: bool,
) {
    let runs = Runs { run: n, skip: 0 };
    gemm_runs(m, n, k, a, lda, rhs, c, ldc, accumulate, parallel, runs)
}

/// Which of the `n` columns of a product are stored, and where: runs of
/// `run` columns, each followed by `skip` columns that are computed but
/// dropped. Column `j` lands at `(j / (run + skip)) * run + j % (run + skip)`
/// of its row of `c`. A 3x3 convolution over zero-padded rows has two junk
/// columns at the end of each output row: `Runs { run: w, skip: 2 }`.
#[derive(Clone, Copy, Debug)]
pub struct Runs {
    pub run: usize,
    pub skip: usize,
}

impl Runs {
    /// Columns stored out of `n`.
    fn stored(&self, n: usize) -> usize {
        let period = self.run + self.skip;
        n / period * self.run + (n % period).min(self.run)
    }
}

/// [`gemm`] storing only some columns of the product (see [`Runs`]).
///
/// # Panics
/// As [`gemm`], and if `runs.run` is zero.
#[allow(clippy::too_many_arguments)]
pub fn gemm_runs(
    m: usize,
    n: usize,
    k: usize,
    a: &[f32],
    lda: usize,
    rhs: &Rhs,
    c: &mut [f32],
    ldc: usize,
    accumulate: bool,
    parallel: bool,
    runs: Runs,
) {
    if m == 0 || n == 0 {
        return;
    }
    assert!(runs.run > 0, "gemm: empty runs");
    assert!(a.len() >= (m - 1) * lda + k, "gemm: left side too short");
    if k == 0 {
        let stored = runs.stored(n);
        assert!(c.len() >= (m - 1) * ldc + stored, "gemm: output too short");
        if !accumulate {
            for i in 0..m {
                c[i * ldc..i * ldc + stored].fill(0.0);
            }
        }
        return;
    }
    check_shapes(m, n, k, rhs, c, ldc, runs);
    #[cfg(target_arch = "x86_64")]
    if available() {
        let mut a_pack = A_PACK.with(|p| std::mem::take(&mut *p.borrow_mut()));
        // SAFETY: the CPU has the instructions; the shapes were checked above.
        unsafe {
            pack_lhs(m, k, a, lda, parallel, &mut a_pack);
            blocked(m, n, k, &a_pack, rhs, c, ldc, accumulate, parallel, runs);
        }
        A_PACK.with(|p| *p.borrow_mut() = a_pack);
        return;
    }
    reference(m, n, k, a, lda, rhs, c, ldc, accumulate, runs);
}

/// A left side `[m, k]` rounded to bf16 and packed once, for products with
/// many right sides (e.g. one kernel matrix of a convolution against many
/// bands of an image): [`gemm_packed`] then skips [`gemm`]'s packing.
pub struct PackedLhs {
    m: usize,
    k: usize,
    /// The blocked kernel's panels, or (without it) the values as given.
    data: Packed,
}

enum Packed {
    Words(Vec<u32>),
    Plain(Vec<f32>),
}

impl PackedLhs {
    /// Packs `a[i * lda + l]`, `i < m`, `l < k`.
    ///
    /// # Panics
    /// If `a` is too short for the stated shape.
    pub fn new(m: usize, k: usize, a: &[f32], lda: usize) -> Self {
        assert!(
            m == 0 || a.len() >= (m - 1) * lda + k,
            "gemm: left side too short"
        );
        #[cfg(target_arch = "x86_64")]
        if available() {
            let mut words = Vec::new();
            // SAFETY: the CPU has the instructions; the shape was checked.
            unsafe { pack_lhs(m, k, a, lda, false, &mut words) };
            return Self {
                m,
                k,
                data: Packed::Words(words),
            };
        }
        let plain = (0..m)
            .flat_map(|i| &a[i * lda..i * lda + k])
            .copied()
            .collect();
        Self {
            m,
            k,
            data: Packed::Plain(plain),
        }
    }
}

/// [`gemm`] with a left side packed beforehand: `c[i * ldc + j] (+)= Σ_l
/// a(i, l) · bf16(B[j, l])` for `j < n`, `i < lhs.m`, `l < lhs.k`.
///
/// # Panics
/// If `c` or the right side are too short for the stated shapes.
#[allow(clippy::too_many_arguments)]
pub fn gemm_packed(
    lhs: &PackedLhs,
    n: usize,
    rhs: &Rhs,
    c: &mut [f32],
    ldc: usize,
    accumulate: bool,
    parallel: bool,
) {
    let (m, k) = (lhs.m, lhs.k);
    let runs = Runs { run: n, skip: 0 };
    if m == 0 || n == 0 || k == 0 {
        // Nothing to multiply: gemm_runs checks `c` and zeroes it as asked.
        return gemm_runs(m, n, k, &[], 0, rhs, c, ldc, accumulate, parallel, runs);
    }
    check_shapes(m, n, k, rhs, c, ldc, runs);
    match &lhs.data {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: Words exist only where the CPU has the instructions; the
        // shapes were checked.
        Packed::Words(w) => unsafe { blocked(m, n, k, w, rhs, c, ldc, accumulate, parallel, runs) },
        #[cfg(not(target_arch = "x86_64"))]
        Packed::Words(_) => unreachable!("packed words only on x86-64"),
        Packed::Plain(a) => reference(m, n, k, a, k, rhs, c, ldc, accumulate, runs),
    }
}

/// The checks of the output and right side's lengths (`m, n, k > 0`).
fn check_shapes(m: usize, n: usize, k: usize, rhs: &Rhs, c: &[f32], ldc: usize, runs: Runs) {
    assert!(runs.run > 0, "gemm: empty runs");
    assert!(
        c.len() >= (m - 1) * ldc + runs.stored(n),
        "gemm: output too short"
    );
    match rhs {
        Rhs::Bf16Rows { data, ld } => assert!(data.len() >= (n - 1) * ld + k),
        Rhs::F32Rows { data, ld } => assert!(data.len() >= (n - 1) * ld + k),
        Rhs::F32Cols { data, ld } => assert!(data.len() >= (k - 1) * ld + n),
        Rhs::Bf16Cols { data, ld } => assert!(data.len() >= (k - 1) * ld + n),
        Rhs::Rows(_) | Rhs::ColRows(_) => {}
    }
}

/// Stores columns `j0..j0 + src.len()` of one row of the product into
/// `dst_row` (a row of `c`) as `runs` says, adding when `accumulate`.
///
/// # Safety
/// `dst_row` is valid for the stored columns of this range.
#[inline(always)]
unsafe fn store_row(dst_row: *mut f32, src: &[f32], j0: usize, runs: Runs, accumulate: bool) {
    let period = runs.run + runs.skip;
    let mut q = 0;
    while q < src.len() {
        let (j, left) = (j0 + q, src.len() - q);
        let (band, col) = (j / period, j % period);
        if col >= runs.run {
            q += (period - col).min(left);
            continue;
        }
        let len = (runs.run - col).min(left);
        let dst = std::slice::from_raw_parts_mut(dst_row.add(band * runs.run + col), len);
        let src = &src[q..q + len];
        if accumulate {
            for (d, s) in dst.iter_mut().zip(src) {
                *d += s;
            }
        } else {
            dst.copy_from_slice(src);
        }
        q += len;
    }
}

/// The same sums, one row of `B` at a time (other CPUs, and the tests' reference).
#[allow(clippy::too_many_arguments)]
fn reference(
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

struct SendPtr(*mut f32);
unsafe impl Send for SendPtr {}
unsafe impl Sync for SendPtr {}

thread_local! {
    /// The packed left side, reused across calls from the same thread.
    static A_PACK: std::cell::RefCell<Vec<u32>> = const { std::cell::RefCell::new(Vec::new()) };
    /// A column panel's packed right side, rounding stage and strip of sums.
    #[allow(clippy::type_complexity)]
    static PANEL_BUFS: std::cell::RefCell<(Vec<u32>, Vec<u32>, Vec<f32>)> =
        const { std::cell::RefCell::new((Vec::new(), Vec::new(), Vec::new())) };
}

/// Packs the left side `[m, k]` into `dst`: `[block][panel][pair][MR]`
/// words of two bf16 (l, l + 1).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bf16")]
unsafe fn pack_lhs(m: usize, k: usize, a: &[f32], lda: usize, parallel: bool, dst: &mut Vec<u32>) {
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
unsafe fn blocked(
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

#[cfg(test)]
mod tests {
    use super::*;

    fn data(len: usize, seed: u32) -> Vec<f32> {
        let mut s = seed.wrapping_mul(2654435761).wrapping_add(1);
        (0..len)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 17;
                s ^= s << 5;
                (s as f32 / u32::MAX as f32) * 2.0 - 1.0
            })
            .collect()
    }

    /// Sums in f64 of the bf16-rounded inputs: what both paths approximate.
    fn exact(m: usize, n: usize, k: usize, a: &[f32], b_rows: &[f32]) -> Vec<f32> {
        let r = |x: f32| bf16::from_f32(x).to_f64();
        let mut c = vec![0f32; m * n];
        for i in 0..m {
            for j in 0..n {
                let s: f64 = (0..k).map(|l| r(a[i * k + l]) * r(b_rows[j * k + l])).sum();
                c[i * n + j] = s as f32;
            }
        }
        c
    }

    fn max_err(x: &[f32], y: &[f32]) -> f32 {
        x.iter()
            .zip(y)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f32::max)
    }

    #[test]
    fn every_layout_and_edge_matches_the_exact_sums() {
        // Edges in every direction: m and n not multiples of the tile, k odd
        // and deeper than one block.
        for &(m, n, k) in &[
            (1, 1, 1),
            (7, 65, 3),
            (13, 130, 517),
            (6, 64, 256),
            (20, 5, 600),
        ] {
            let a = data(m * k, 1);
            let b = data(n * k, 2);
            let want = exact(m, n, k, &a, &b);
            let bt: Vec<f32> = (0..k * n).map(|i| b[(i % n) * k + i / n]).collect();
            let bb: Vec<bf16> = b.iter().map(|&x| bf16::from_f32(x)).collect();
            let btb: Vec<bf16> = bt.iter().map(|&x| bf16::from_f32(x)).collect();
            let rows = |j: usize, l0: usize, out: &mut [f32]| {
                out.copy_from_slice(&b[j * k + l0..j * k + l0 + out.len()])
            };
            let col_rows = |l: usize| &bt[l * n..(l + 1) * n];
            let layouts = [
                Rhs::F32Rows { data: &b, ld: k },
                Rhs::Bf16Rows { data: &bb, ld: k },
                Rhs::F32Cols { data: &bt, ld: n },
                Rhs::Bf16Cols { data: &btb, ld: n },
                Rhs::Rows(&rows),
                Rhs::ColRows(&col_rows),
            ];
            let tol = 1e-5 * (k as f32).sqrt();
            for rhs in &layouts {
                for parallel in [false, true] {
                    let mut c = vec![0f32; m * n];
                    gemm(m, n, k, &a, k, rhs, &mut c, n, false, parallel);
                    assert!(max_err(&c, &want) < tol, "{m}x{n}x{k}");
                    let mut r = vec![0f32; m * n];
                    reference(
                        m,
                        n,
                        k,
                        &a,
                        k,
                        rhs,
                        &mut r,
                        n,
                        false,
                        Runs { run: n, skip: 0 },
                    );
                    assert!(max_err(&r, &want) < tol, "reference {m}x{n}x{k}");
                    // Accumulating adds the same sums again.
                    gemm(m, n, k, &a, k, rhs, &mut c, n, true, parallel);
                    let twice: Vec<f32> = want.iter().map(|x| 2.0 * x).collect();
                    assert!(max_err(&c, &twice) < 2.0 * tol, "accumulate {m}x{n}x{k}");
                }
            }
        }
    }

    #[test]
    fn a_packed_left_side_gives_the_same_sums() {
        for &(m, n, k) in &[(1, 1, 1), (13, 130, 517), (40, 96, 48)] {
            let a = data(m * k, 5);
            let b = data(n * k, 6);
            let rhs = Rhs::F32Cols { data: &b, ld: n };
            let mut want = vec![0f32; m * n];
            gemm(m, n, k, &a, k, &rhs, &mut want, n, false, false);
            let lhs = PackedLhs::new(m, k, &a, k);
            for parallel in [false, true] {
                let mut c = vec![f32::NAN; m * n];
                gemm_packed(&lhs, n, &rhs, &mut c, n, false, parallel);
                assert_eq!(c, want, "{m}x{n}x{k} parallel={parallel}");
                gemm_packed(&lhs, n, &rhs, &mut c, n, true, parallel);
                let twice: Vec<f32> = want.iter().map(|v| v + v).collect();
                assert_eq!(c, twice, "{m}x{n}x{k} accumulated");
            }
        }
    }

    #[test]
    fn runs_store_only_their_columns() {
        // Rows of 5 stored columns, each followed by 2 dropped ones.
        let (m, n, k, runs) = (7, 68, 40, Runs { run: 5, skip: 2 });
        let stored = runs.stored(n);
        assert_eq!(stored, 9 * 5 + 5);
        let a = data(m * k, 5);
        let b = data(n * k, 6);
        let want = exact(m, n, k, &a, &b);
        let ldc = stored + 3;
        for parallel in [false, true] {
            let mut c = vec![7f32; m * ldc];
            let rhs = Rhs::F32Rows { data: &b, ld: k };
            gemm_runs(m, n, k, &a, k, &rhs, &mut c, ldc, false, parallel, runs);
            let mut r = vec![7f32; m * ldc];
            reference(m, n, k, &a, k, &rhs, &mut r, ldc, false, runs);
            for out in [&c, &r] {
                for i in 0..m {
                    let kept: Vec<f32> = (0..n)
                        .filter(|j| j % 7 < 5)
                        .map(|j| want[i * n + j])
                        .collect();
                    assert!(max_err(&out[i * ldc..i * ldc + stored], &kept) < 1e-4);
                    assert!(out[i * ldc + stored..(i + 1) * ldc]
                        .iter()
                        .all(|&x| x == 7.0));
                }
            }
        }
    }

    #[test]
    fn strided_operands_leave_the_rest_untouched() {
        let (m, n, k) = (9, 70, 40);
        let (lda, ld, ldc) = (k + 3, k + 5, n + 7);
        let a = data(m * lda, 3);
        let b = data(n * ld, 4);
        let mut c = vec![7f32; m * ldc];
        gemm(
            m,
            n,
            k,
            &a,
            lda,
            &Rhs::F32Rows { data: &b, ld },
            &mut c,
            ldc,
            false,
            true,
        );
        let ad: Vec<f32> = (0..m)
            .flat_map(|i| a[i * lda..i * lda + k].to_vec())
            .collect();
        let bd: Vec<f32> = (0..n)
            .flat_map(|j| b[j * ld..j * ld + k].to_vec())
            .collect();
        let want = exact(m, n, k, &ad, &bd);
        for i in 0..m {
            assert!(max_err(&c[i * ldc..i * ldc + n], &want[i * n..(i + 1) * n]) < 1e-4);
            assert!(c[i * ldc + n..(i + 1) * ldc].iter().all(|&x| x == 7.0));
        }
    }

    /// `cargo test -p janus-kernels --release -- --ignored --nocapture speed`
    #[test]
    #[ignore]
    fn speed() {
        for &(m, n, k) in &[
            (620, 2048, 2048),
            (620, 11264, 2048),
            (620, 2048, 5632),
            (576, 4096, 1024),
        ] {
            let a = data(m * k, 1);
            let b: Vec<bf16> = data(n * k, 2).iter().map(|&x| bf16::from_f32(x)).collect();
            let mut c = vec![0f32; m * n];
            let rhs = Rhs::Bf16Rows { data: &b, ld: k };
            gemm(m, n, k, &a, k, &rhs, &mut c, n, false, true);
            let t = std::time::Instant::now();
            let reps = 5;
            for _ in 0..reps {
                gemm(m, n, k, &a, k, &rhs, &mut c, n, false, true);
            }
            let s = t.elapsed().as_secs_f64() / reps as f64;
            println!(
                "{m}x{n}x{k}: {:.1} ms, {:.0} GFLOP/s",
                s * 1e3,
                2.0 * (m * n * k) as f64 / s / 1e9
            );
            let t = std::time::Instant::now();
            gemm(m, n, k, &a, k, &rhs, &mut c, n, false, false);
            let s = t.elapsed().as_secs_f64();
            println!(
                "  one thread: {:.0} GFLOP/s",
                2.0 * (m * n * k) as f64 / s / 1e9
            );
        }
    }
}
