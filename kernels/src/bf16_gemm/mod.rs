//! `C = A · Bᵀ` with both inputs rounded to bf16 and f32 accumulation.
//!
//! On CPUs with AVX-512-BF16 (`vdpbf16ps`: 32 multiply-adds of bf16 pairs
//! per instruction, twice what an f32 FMA does) this is a blocked GEMM in
//! the usual shape: the left side is packed one `KC`-deep block at a time
//! into `MR`-row panels (rounded from f32 while packing), the right side into
//! `NR`-column panels that stay in L1, and a 6×64 register tile accumulates
//! in f32. Elsewhere [`gemm()`] computes the same sums with scalar code, so
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

mod avx512;
mod operands;
mod reference;

#[cfg(target_arch = "x86_64")]
use avx512::{blocked, pack_lhs, A_PACK};
pub use operands::{Rhs, Runs};
use reference::reference;

/// Whether the fast kernel runs on this CPU (AVX-512F + AVX-512-BF16, not
/// turned off: see [`crate::cpu::Dispatch::bf16_gemm`]).
pub fn available() -> bool {
    crate::cpu::dispatch().bf16_gemm
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

/// [`gemm()`] storing only some columns of the product (see [`Runs`]).
///
/// # Panics
/// As [`gemm()`], and if `runs.run` is zero.
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
/// bands of an image): [`gemm_packed`] then skips [`gemm()`]'s packing.
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

/// [`gemm()`] with a left side packed beforehand: `c[i * ldc + j] (+)= Σ_l
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

#[cfg(test)]
mod tests {
    use super::*;
    use half::bf16;

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
