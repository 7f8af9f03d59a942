//! f32 matrix products through the `gemm` crate (the exact configuration's
//! convolutions and Winograd products, and many-row matmuls over weights
//! dequantised band by band).

pub use gemm::Parallelism;

/// The parallelism of a product that has the machine to itself: every
/// rayon thread, or none on one thread.
pub fn parallelism() -> Parallelism {
    match rayon::current_num_threads() {
        t if t > 1 => Parallelism::Rayon(t),
        _ => Parallelism::None,
    }
}

/// `c [m, n] = a [m, k] · b [k, n]`, all dense row-major.
///
/// # Panics
/// If a slice is shorter than its shape.
pub fn gemm_f32(
    (m, n, k): (usize, usize, usize),
    a: &[f32],
    b: &[f32],
    c: &mut [f32],
    par: Parallelism,
) {
    assert!(a.len() >= m * k && b.len() >= k * n && c.len() >= m * n);
    // SAFETY: the slices cover the dense shapes, as just checked.
    unsafe {
        product(
            (m, n, k),
            c.as_mut_ptr(),
            n,
            a.as_ptr(),
            b.as_ptr(),
            (n, 1),
            par,
        )
    }
}

/// `c[:, ..n] = a [m, k] · bᵀ` for `b` [n, k] row-major (weight rows), into
/// the first `n` columns of `c`, whose rows are `ldc` apart.
///
/// # Panics
/// If a slice is shorter than its shape, or `ldc < n`.
pub fn gemm_f32_transposed(
    (m, n, k): (usize, usize, usize),
    a: &[f32],
    b: &[f32],
    c: &mut [f32],
    ldc: usize,
    par: Parallelism,
) {
    assert!(ldc >= n && a.len() >= m * k && b.len() >= n * k);
    assert!(m == 0 || c.len() >= (m - 1) * ldc + n);
    // SAFETY: the slices cover the shapes and strides, as just checked.
    unsafe {
        product(
            (m, n, k),
            c.as_mut_ptr(),
            ldc,
            a.as_ptr(),
            b.as_ptr(),
            (1, k),
            par,
        )
    }
}

/// `c = a · b` with `a` dense row-major [m, k], `c` row-major with row
/// stride `ldc`, and `b`'s element (l, j) at `b[l * rs + j * cs]`.
///
/// # Safety
/// Every element the shapes and strides reach lies inside its buffer.
unsafe fn product(
    (m, n, k): (usize, usize, usize),
    c: *mut f32,
    ldc: usize,
    a: *const f32,
    b: *const f32,
    (rs, cs): (usize, usize),
    par: Parallelism,
) {
    gemm::gemm(
        m,
        n,
        k,
        c,
        1,
        ldc as isize,
        false,
        a,
        1,
        k as isize,
        b,
        cs as isize,
        rs as isize,
        0f32,
        1f32,
        false,
        false,
        false,
        par,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive(m: usize, n: usize, k: usize, a: &[f32], b: impl Fn(usize, usize) -> f32) -> Vec<f32> {
        (0..m * n)
            .map(|e| (0..k).map(|l| a[e / n * k + l] * b(l, e % n)).sum())
            .collect()
    }

    /// Both forms against a naive product, the transposed one into the
    /// middle columns of a wider output (the band of a banded matmul).
    #[test]
    fn products_match_a_naive_one() {
        let (m, n, k) = (5, 7, 9);
        let a: Vec<f32> = (0..m * k).map(|i| (i % 11) as f32 - 5.0).collect();
        let b: Vec<f32> = (0..k * n).map(|i| (i % 7) as f32 * 0.5 - 1.0).collect();
        let mut c = vec![0f32; m * n];
        gemm_f32((m, n, k), &a, &b, &mut c, gemm::Parallelism::None);
        assert_eq!(c, naive(m, n, k, &a, |l, j| b[l * n + j]));

        // b as [n, k] rows, written into columns 2..2+n of a [m, 12] output.
        let ldc = 12;
        let mut wide = vec![-1f32; m * ldc];
        gemm_f32_transposed((m, n, k), &a, &b, &mut wide[2..], ldc, parallelism());
        let want = naive(m, n, k, &a, |l, j| b[j * k + l]);
        for i in 0..m {
            assert_eq!(
                &wide[i * ldc + 2..i * ldc + 2 + n],
                &want[i * n..(i + 1) * n]
            );
            assert_eq!(wide[i * ldc], -1.0, "column 0 untouched");
        }
    }
}
