//! The operands of the bf16 GEMM: the right side's layouts, which columns
//! are stored, the register-tile sizes, and the rounding to bf16.

use half::bf16;

/// Rows of the register tile.
pub(crate) const MR: usize = 6;
/// Columns of the register tile (four 16-lane vectors).
pub(crate) const NR: usize = 64;
/// Depth of one packed block. A multiple of 256 so that callers producing
/// dequantised rows (`Rhs::Rows`) are never asked for part of a 4-bit
/// k-quant block; `KC × NR` bf16 (32 KiB) fits the L1 cache.
pub(crate) const KC: usize = 256;

/// The right-hand matrix `B`, `n` rows of `k` values, in the layouts callers hold.
pub enum Rhs<'a> {
    /// Row `j` is `data[j * ld..][..k]` (a bf16 weight `[n, k]`).
    Bf16Rows {
        /// The values.
        data: &'a [bf16],
        /// Distance between rows of `data`.
        ld: usize,
    },
    /// Row `j` is `data[j * ld..][..k]` (an f32 weight or activations).
    F32Rows {
        /// The values.
        data: &'a [f32],
        /// Distance between rows of `data`.
        ld: usize,
    },
    /// Column-major `B`: value `(j, l)` is `data[l * ld + j]` (`Bᵀ` stored
    /// row-major, e.g. attention values `[keys, head_dim]`).
    F32Cols {
        /// The values.
        data: &'a [f32],
        /// Distance between rows of `data`.
        ld: usize,
    },
    /// The same in bf16 (values of a bf16 key/value cache).
    Bf16Cols {
        /// The values.
        data: &'a [bf16],
        /// Distance between rows of `data`.
        ld: usize,
    },
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
    pub(crate) fn row_f32(&self, j: usize, l0: usize, out: &mut [f32]) {
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

/// `f32` rounded to bf16 (to nearest, ties to even), as its bits.
#[inline]
pub(crate) fn bits(x: f32) -> u32 {
    bf16::from_f32(x).to_bits() as u32
}

/// Which of the `n` columns of a product are stored, and where: runs of
/// `run` columns, each followed by `skip` columns that are computed but
/// dropped. Column `j` lands at `(j / (run + skip)) * run + j % (run + skip)`
/// of its row of `c`. A 3x3 convolution over zero-padded rows has two junk
/// columns at the end of each output row: `Runs { run: w, skip: 2 }`.
#[derive(Clone, Copy, Debug)]
pub struct Runs {
    /// Columns stored one after another.
    pub run: usize,
    /// Columns computed but dropped after each run.
    pub skip: usize,
}

impl Runs {
    /// Columns stored out of `n`.
    pub(crate) fn stored(&self, n: usize) -> usize {
        let period = self.run + self.skip;
        n / period * self.run + (n % period).min(self.run)
    }
}

/// Stores columns `j0..j0 + src.len()` of one row of the product into
/// `dst_row` (a row of `c`) as `runs` says, adding when `accumulate`.
///
/// # Safety
/// `dst_row` is valid for the stored columns of this range.
#[inline(always)]
pub(crate) unsafe fn store_row(
    dst_row: *mut f32,
    src: &[f32],
    j0: usize,
    runs: Runs,
    accumulate: bool,
) {
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
