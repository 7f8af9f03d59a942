//! The Winograd F(2x2,3x3) input and output transforms, 16 tiles at a
//! time: plain Rust in lane arrays (for the f32 GEMM) and AVX-512 (for the
//! bf16 GEMM).

/// The distance between the 16 matrices of a band, `len` values each: a
/// few cache lines more than `len`, since `len` is often a multiple of
/// 64 KiB, which would map all 16 tile positions' streams to the same cache
/// sets.
pub(super) fn spaced(len: usize) -> usize {
    len + 64
}

/// Whether tile position `xi` (row `xi / 4`, column `xi % 4`) is zero in
/// the transform of an upsampled tile: its third row or column.
pub(super) fn zero_upsampled(xi: usize) -> bool {
    xi / 4 == 2 || xi % 4 == 2
}

/// The output's size and its width in tiles.
#[derive(Clone, Copy)]
pub(super) struct Geometry {
    pub(super) h: usize,
    pub(super) w: usize,
    pub(super) tw: usize,
}

impl Geometry {
    /// The runs of tiles `t0..t0 + n` (row-major over the tile grid) within
    /// one tile row: `(ty, tx0, tx1, offset in the band)`.
    fn runs(self, t0: usize, n: usize) -> impl Iterator<Item = (usize, usize, usize, usize)> {
        let mut t = t0;
        std::iter::from_fn(move || {
            (t < t0 + n).then(|| {
                let (ty, tx0) = (t / self.tw, t % self.tw);
                let tx1 = self.tw.min(tx0 + t0 + n - t);
                let run = (ty, tx0, tx1, t - t0);
                t += tx1 - tx0;
                run
            })
        })
    }

    /// What the transforms work on, one vector of tiles at a time: for
    /// every channel `c < channels`, the runs of tiles `t0..t0 + n` cut
    /// into groups of up to 16, `f(c, ty, tx, at, len)` with `tx` the
    /// group's first tile column and `at` its offset in the band. (Plain
    /// loops: an iterator of groups was slower.)
    #[inline(always)]
    fn groups(
        self,
        channels: usize,
        t0: usize,
        n: usize,
        mut f: impl FnMut(usize, usize, usize, usize, usize),
    ) {
        for c in 0..channels {
            for (ty, tx0, tx1, off) in self.runs(t0, n) {
                for tx in (tx0..tx1).step_by(16) {
                    f(c, ty, tx, off + tx - tx0, 16.min(tx1 - tx));
                }
            }
        }
    }
}

/// Tiles per group of the plain transforms: their lanes.
pub(super) const G: usize = 16;

/// [`input_tiles`] (or with `upsampled`, [`input_tiles_upsampled`]) in
/// plain Rust for the f32 GEMM, 16 tiles at a time in lane arrays, each
/// transformed value stored in runs of up to 16.
pub(super) fn input_tiles_plain(
    xp: &[f32],
    c_in: usize,
    geo: Geometry,
    upsampled: bool,
    t0: usize,
    nb: usize,
    v: &mut [f32],
) {
    let f = if upsampled { 2 } else { 1 };
    let wp = geo.w / f + 2;
    let plane = (geo.h / f + 2) * wp;
    let vs = spaced(c_in * nb);
    geo.groups(c_in, t0, nb, |c, ty, tx, at, len| {
        let xc = &xp[c * plane..][..plane];
        // e[k][b]: row k of the tiles' 4×4 windows transformed along x (Bᵀ).
        let e: [[[f32; G]; 4]; 4] = std::array::from_fn(|k| {
            let mut d = [[0f32; G]; 4];
            if upsampled {
                // Upsampled rows 2ty + k repeat padded source rows ty, ty + 1,
                // ty + 1, ty + 2; the columns likewise: p, q, q, n.
                let row = &xc[(ty + (k + 1) / 2) * wp + tx..];
                for i in 0..len {
                    let (p, q, n) = (row[i], row[i + 1], row[i + 2]);
                    (d[0][i], d[1][i], d[2][i], d[3][i]) = (p, q, q, n);
                }
            } else {
                let row = &xc[(2 * ty + k) * wp + 2 * tx..];
                for i in 0..len {
                    for (j, dj) in d.iter_mut().enumerate() {
                        dj[i] = row[2 * i + j];
                    }
                }
            }
            let lanes = |a: &[f32; G], b: &[f32; G], sign: f32| -> [f32; G] {
                std::array::from_fn(|i| a[i] + sign * b[i])
            };
            [
                lanes(&d[0], &d[2], -1.0),
                lanes(&d[1], &d[2], 1.0),
                lanes(&d[2], &d[1], -1.0),
                lanes(&d[1], &d[3], -1.0),
            ]
        });
        for b in 0..4 {
            for (a, (x, y, sign)) in [(0, 2, -1.0), (1, 2, 1.0), (2, 1, -1.0), (1, 3, -1.0)]
                .into_iter()
                .enumerate()
            {
                let to = &mut v[(a * 4 + b) * vs + c * nb + at..][..len];
                for (i, o) in to.iter_mut().enumerate() {
                    *o = e[x][b][i] + sign * e[y][b][i];
                }
            }
        }
    });
}

/// [`output_tiles`] in plain Rust, 16 tiles at a time, in the same order
/// of additions.
///
/// # Safety
/// `dst` holds `c_out * h * w` values of which no other thread writes
/// these tiles' pixels.
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn output_tiles_plain(
    m: &[f32],
    c_out: usize,
    geo: Geometry,
    t0: usize,
    nb: usize,
    upsampled: bool,
    bias: Option<&[f32]>,
    residual: Option<&[f32]>,
    dst: *mut f32,
) {
    let (h, w) = (geo.h, geo.w);
    let ms = spaced(c_out * nb);
    geo.groups(c_out, t0, nb, |co, ty, tx, at, len| {
        let bv = bias.map_or(0.0, |b| b[co]);
        let mv = |xi: usize| -> [f32; G] {
            let mut r = [0f32; G];
            if !(upsampled && zero_upsampled(xi)) {
                r[..len].copy_from_slice(&m[xi * ms + co * nb + at..][..len]);
            }
            r
        };
        // Rows of M combined (Aᵀ), then columns (A).
        let (mut s, mut t) = ([[0f32; G]; 4], [[0f32; G]; 4]);
        for b in 0..4 {
            let (m0, m1, m2, m3) = (mv(b), mv(4 + b), mv(8 + b), mv(12 + b));
            for i in 0..G {
                s[b][i] = m0[i] + m1[i] + m2[i];
                t[b][i] = m1[i] - m2[i] - m3[i];
            }
        }
        for (dy, r) in [s, t].iter().enumerate() {
            let p = co * h * w + (2 * ty + dy) * w + 2 * tx;
            let mut y = [0f32; 2 * G];
            for i in 0..G {
                y[2 * i] = r[0][i] + r[1][i] + r[2][i] + bv;
                y[2 * i + 1] = r[1][i] - r[2][i] - r[3][i] + bv;
            }
            if let Some(res) = residual {
                for (y, r) in y.iter_mut().zip(&res[p..p + 2 * len]) {
                    *y += r;
                }
            }
            // SAFETY: this band's pixels, as the caller guarantees.
            std::ptr::copy_nonoverlapping(y.as_ptr(), dst.add(p), 2 * len);
        }
    });
}

/// `V = Bᵀ d B` of tiles `t0..t0 + nb` of every channel into `v`
/// `[16][c_in][nb]` (matrices [`spaced`]), 16 tiles at a time: their 4 input rows are read as 34
/// values each and split into even and odd columns.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[allow(clippy::needless_range_loop)] // a tile position indexes several arrays
pub(super) unsafe fn input_tiles(
    xp: &[f32],
    c_in: usize,
    geo: Geometry,
    t0: usize,
    nb: usize,
    v: &mut [f32],
) {
    use std::arch::x86_64::*;
    let wp = geo.w + 2;
    let plane = (geo.h + 2) * wp;
    let even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
    let odd = _mm512_add_epi32(even, _mm512_set1_epi32(1));
    let mut tmp = [0f32; 4 * 34];
    geo.groups(c_in, t0, nb, |c, ty, tx, at, m| {
        let rows = &xp[c * plane + 2 * ty * wp..][..4 * wp];
        let col0 = 2 * tx;
        // A short run at the end of a row: its values through a
        // zero-filled copy, not past the row.
        let (src, stride) = if m == 16 {
            (rows.as_ptr().add(col0), wp)
        } else {
            tmp.fill(0.0);
            for k in 0..4 {
                let r = &rows[k * wp + col0..(k + 1) * wp];
                let r = &r[..r.len().min(34)];
                tmp[k * 34..k * 34 + r.len()].copy_from_slice(r);
            }
            (tmp.as_ptr(), 34)
        };
        // e[k][b]: row k transformed along x (Bᵀ on columns 0..4).
        let mut e = [[_mm512_setzero_ps(); 4]; 4];
        for (k, ek) in e.iter_mut().enumerate() {
            let s = src.add(k * stride);
            let (lo, hi) = (_mm512_loadu_ps(s), _mm512_loadu_ps(s.add(16)));
            let (lo2, hi2) = (_mm512_loadu_ps(s.add(2)), _mm512_loadu_ps(s.add(18)));
            let d0 = _mm512_permutex2var_ps(lo, even, hi);
            let d1 = _mm512_permutex2var_ps(lo, odd, hi);
            let d2 = _mm512_permutex2var_ps(lo2, even, hi2);
            let d3 = _mm512_permutex2var_ps(lo2, odd, hi2);
            *ek = [
                _mm512_sub_ps(d0, d2),
                _mm512_add_ps(d1, d2),
                _mm512_sub_ps(d2, d1),
                _mm512_sub_ps(d1, d3),
            ];
        }
        let mask: __mmask16 = if m == 16 { 0xffff } else { (1 << m) - 1 };
        for b in 0..4 {
            let col = [
                _mm512_sub_ps(e[0][b], e[2][b]),
                _mm512_add_ps(e[1][b], e[2][b]),
                _mm512_sub_ps(e[2][b], e[1][b]),
                _mm512_sub_ps(e[1][b], e[3][b]),
            ];
            for (a, x) in col.into_iter().enumerate() {
                let to = (a * 4 + b) * spaced(c_in * nb) + c * nb + at;
                _mm512_mask_storeu_ps(v.as_mut_ptr().add(to), mask, x);
            }
        }
    });
}

/// [`input_tiles`] of the nearest-neighbour 2x upsampling of `xs`
/// (padded planes `[c_in, h / 2 + 2, w / 2 + 2]`). Tile `(ty, tx)` of the
/// upsampled image is made of source rows `r = ty, ty + 1, ty + 1, ty + 2`
/// and columns `tx, tx + 1, tx + 1, tx + 2` (with the ring), so along each
/// side the transform is `(p - q, 2q, 0, q - n)` of three source values,
/// which are three plain shifted loads; the zero rows and columns are not
/// written ([`zero_upsampled`]).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn input_tiles_upsampled(
    xs: &[f32],
    c_in: usize,
    geo: Geometry,
    t0: usize,
    nb: usize,
    v: &mut [f32],
) {
    use std::arch::x86_64::*;
    let ws = geo.tw + 2;
    let plane = (geo.h / 2 + 2) * ws;
    let vs = spaced(c_in * nb);
    geo.groups(c_in, t0, nb, |c, ty, tx, at, m| {
        let rows = &xs[c * plane + ty * ws..][..3 * ws];
        let mask: __mmask16 = if m == 16 { 0xffff } else { (1 << m) - 1 };
        // e[r]: source row r transformed along x, components 0, 1, 3.
        let e = [0, 1, 2].map(|r| {
            let s = rows.as_ptr().add(r * ws + tx);
            let p = _mm512_maskz_loadu_ps(mask, s);
            let q = _mm512_maskz_loadu_ps(mask, s.add(1));
            let n = _mm512_maskz_loadu_ps(mask, s.add(2));
            [
                _mm512_sub_ps(p, q),
                _mm512_add_ps(q, q),
                _mm512_sub_ps(q, n),
            ]
        });
        for (j, b) in [0, 1, 3].into_iter().enumerate() {
            let col = [
                (0, _mm512_sub_ps(e[0][j], e[1][j])),
                (1, _mm512_add_ps(e[1][j], e[1][j])),
                (3, _mm512_sub_ps(e[1][j], e[2][j])),
            ];
            for (a, x) in col {
                let to = (a * 4 + b) * vs + c * nb + at;
                _mm512_mask_storeu_ps(v.as_mut_ptr().add(to), mask, x);
            }
        }
    });
}

/// `Y = Aᵀ M A` (+ bias, + residual) of tiles `t0..t0 + nb` from `m`
/// `[16][c_out][nb]` (matrices [`spaced`]) into their 2×2 pixels of `dst` `[c_out, h, w]`.
///
/// # Safety
/// The CPU has AVX-512F; `dst` holds `c_out * h * w` values of which no
/// other thread writes these tiles' pixels.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn output_tiles<const UPSAMPLED: bool>(
    m: &[f32],
    c_out: usize,
    geo: Geometry,
    t0: usize,
    nb: usize,
    bias: Option<&[f32]>,
    residual: Option<&[f32]>,
    dst: *mut f32,
) {
    use std::arch::x86_64::*;
    let (h, w) = (geo.h, geo.w);
    let lo_idx = _mm512_setr_epi32(0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23);
    let hi_idx = _mm512_add_epi32(lo_idx, _mm512_set1_epi32(8));
    geo.groups(c_out, t0, nb, |co, ty, tx, at, n| {
        let bv = _mm512_set1_ps(bias.map_or(0.0, |b| b[co]));
        let load = |xi: usize| {
            if UPSAMPLED && zero_upsampled(xi) {
                _mm512_setzero_ps()
            } else {
                _mm512_loadu_ps(m.as_ptr().add(xi * spaced(c_out * nb) + co * nb + at))
            }
        };
        // Rows of M combined (Aᵀ), then columns (A).
        let mut s = [_mm512_setzero_ps(); 4];
        let mut t = [_mm512_setzero_ps(); 4];
        for b in 0..4 {
            let (m0, m1, m2, m3) = (load(b), load(4 + b), load(8 + b), load(12 + b));
            s[b] = _mm512_add_ps(_mm512_add_ps(m0, m1), m2);
            t[b] = _mm512_sub_ps(_mm512_sub_ps(m1, m2), m3);
        }
        for (dy, r) in [s, t].into_iter().enumerate() {
            let y0 = _mm512_add_ps(_mm512_add_ps(r[0], r[1]), r[2]);
            let y1 = _mm512_sub_ps(_mm512_sub_ps(r[1], r[2]), r[3]);
            let px = co * h * w + (2 * ty + dy) * w + 2 * tx;
            let lanes = 2 * n;
            let masks: [__mmask16; 2] = [
                if lanes >= 16 {
                    0xffff
                } else {
                    (1 << lanes) - 1
                },
                if lanes >= 32 {
                    0xffff
                } else if lanes > 16 {
                    (1 << (lanes - 16)) - 1
                } else {
                    0
                },
            ];
            for (half, idx) in [lo_idx, hi_idx].into_iter().enumerate() {
                let mut y = _mm512_add_ps(_mm512_permutex2var_ps(y0, idx, y1), bv);
                let p = px + 16 * half;
                if let Some(r) = residual {
                    let rv = _mm512_maskz_loadu_ps(masks[half], r.as_ptr().add(p));
                    y = _mm512_add_ps(y, rv);
                }
                _mm512_mask_storeu_ps(dst.add(p), masks[half], y);
            }
        }
    });
}

#[cfg(not(target_arch = "x86_64"))]
pub(super) unsafe fn input_tiles(
    _: &[f32],
    _: usize,
    _: Geometry,
    _: usize,
    _: usize,
    _: &mut [f32],
) {
    unreachable!("bf16 kernels need the bf16 GEMM: AVX-512-BF16")
}

#[cfg(not(target_arch = "x86_64"))]
pub(super) unsafe fn input_tiles_upsampled(
    _: &[f32],
    _: usize,
    _: Geometry,
    _: usize,
    _: usize,
    _: &mut [f32],
) {
    unreachable!("bf16 kernels need the bf16 GEMM: AVX-512-BF16")
}

#[cfg(not(target_arch = "x86_64"))]
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn output_tiles<const UPSAMPLED: bool>(
    _: &[f32],
    _: usize,
    _: Geometry,
    _: usize,
    _: usize,
    _: Option<&[f32]>,
    _: Option<&[f32]>,
    _: *mut f32,
) {
    unreachable!("bf16 kernels need the bf16 GEMM: AVX-512-BF16")
}
