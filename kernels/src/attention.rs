//! Multi-head attention on the CPU with the bf16 GEMM: for each head and
//! block of queries, `q kᵀ` into a score block, scaled, masked and
//! soft-maxed in f32, then multiplied by `v` straight into the output rows.
//! Inputs are read where they lie (strided views of a fused q/k/v
//! projection or of a key/value cache); no transposed copies are made.

use crate::bf16_gemm::{self, Rhs};
use crate::math::softmax_scaled;
use rayon::prelude::*;

/// One of q, k, v: value `d` of head `h` at position `i` is
/// `data[i * row + h * head + d]`. Queries are f32; keys and values may
/// also be bf16 (a bf16 cache: the GEMM rounds them to bf16 anyway).
#[derive(Clone, Copy)]
pub struct Heads<'a, T = f32> {
    /// The values, from the first row's first head on.
    pub data: &'a [T],
    /// Distance between rows (positions).
    pub row: usize,
    /// Distance between heads.
    pub head: usize,
}

/// Element types of keys and values (of a key/value cache).
pub trait KvElement: Copy + Sync {
    /// Keys as the right side of `q kᵀ`.
    fn rows(data: &[Self], ld: usize) -> Rhs<'_>;
    /// Values as the right side of `p v`.
    fn cols(data: &[Self], ld: usize) -> Rhs<'_>;
    /// One value as f32 (exact), for code that reads the cache directly.
    fn to_f32(self) -> f32;
}

impl KvElement for f32 {
    fn rows(data: &[f32], ld: usize) -> Rhs<'_> {
        Rhs::F32Rows { data, ld }
    }
    fn cols(data: &[f32], ld: usize) -> Rhs<'_> {
        Rhs::F32Cols { data, ld }
    }
    #[inline(always)]
    fn to_f32(self) -> f32 {
        self
    }
}

impl KvElement for half::bf16 {
    fn rows(data: &[half::bf16], ld: usize) -> Rhs<'_> {
        Rhs::Bf16Rows { data, ld }
    }
    fn cols(data: &[half::bf16], ld: usize) -> Rhs<'_> {
        Rhs::Bf16Cols { data, ld }
    }
    #[inline(always)]
    fn to_f32(self) -> f32 {
        f32::from_bits((self.to_bits() as u32) << 16)
    }
}

/// Shapes of one attention call.
#[derive(Clone, Copy)]
pub struct AttentionShape {
    /// Query heads; key/value head `h / (heads / kv_heads)` serves query head `h`.
    pub heads: usize,
    /// Key/value heads.
    pub kv_heads: usize,
    /// Values per head.
    pub head_dim: usize,
    /// Query positions.
    pub queries: usize,
    /// Key positions.
    pub keys: usize,
    /// Factor on the scores before the softmax.
    pub scale: f32,
    /// `Some(offset)`: query `i` sees keys `0..=offset + i` (causal, after
    /// `offset` cached positions); `None`: every key.
    pub causal: Option<usize>,
}

use crate::SendPtr;

/// Queries per task: bounds the score block to `BLOCK × keys` floats.
const BLOCK: usize = 64;

/// `out[i * out_row + h * head_dim + d]` = attention of query `i`, head `h`.
/// Runs in parallel over heads and query blocks.
///
/// # Panics
/// If a view is too short for the shape.
pub fn attention<T: KvElement>(
    s: &AttentionShape,
    q: Heads,
    k: Heads<T>,
    v: Heads<T>,
    out: &mut [f32],
    out_row: usize,
) {
    let hd = s.head_dim;
    let group = s.heads / s.kv_heads.max(1);
    assert!(
        group * s.kv_heads == s.heads,
        "attention: heads not a multiple of kv heads"
    );
    if s.queries == 0 {
        return;
    }
    assert!(
        out.len() >= (s.queries - 1) * out_row + s.heads * hd,
        "attention: output too short"
    );
    let out_ptr = SendPtr(out.as_mut_ptr());
    let out_ptr = &out_ptr;
    let blocks = s.queries.div_ceil(BLOCK);
    (0..s.heads * blocks)
        .into_par_iter()
        .for_each_init(Vec::new, |scores: &mut Vec<f32>, task| {
            let (h, i0) = (task / blocks, task % blocks * BLOCK);
            let rows = BLOCK.min(s.queries - i0);
            let keys = s.causal.map_or(s.keys, |off| (off + i0 + rows).min(s.keys));
            let g = h / group;
            scores.resize(rows * keys, 0.0);
            let sc = &mut scores[..rows * keys];
            let kr = T::rows(&k.data[g * k.head..], k.row);
            bf16_gemm::gemm(
                rows,
                keys,
                hd,
                &q.data[i0 * q.row + h * q.head..],
                q.row,
                &kr,
                sc,
                keys,
                false,
                false,
            );
            for (r, row) in sc.chunks_mut(keys).enumerate() {
                let seen = s.causal.map_or(keys, |off| (off + i0 + r + 1).min(keys));
                softmax_scaled(&mut row[..seen], s.scale);
                row[seen..].fill(0.0);
            }
            let vc = T::cols(&v.data[g * v.head..], v.row);
            // SAFETY: rows i0..i0+rows, columns h*hd..(h+1)*hd of `out` belong
            // to this task alone; the length was checked above.
            let dst = unsafe {
                std::slice::from_raw_parts_mut(
                    out_ptr.0.add(i0 * out_row + h * hd),
                    (rows - 1) * out_row + hd,
                )
            };
            bf16_gemm::gemm(rows, hd, keys, sc, keys, &vc, dst, out_row, false, false);
        });
}

/// Where decoding attention ([`DecodeCache::attend`]) finds a head's keys
/// and values: `[b, kv_heads, len, d]` views of `[b, kv_heads, capacity, d]`
/// cache buffers.
pub struct DecodeCache<'a> {
    /// Cached positions.
    pub len: usize,
    /// Per sequence, the first position it attends to (empty: all from 0).
    pub starts: &'a [usize],
    /// Values per head.
    pub d: usize,
    /// Query heads.
    pub h: usize,
    /// Query heads per key/value head.
    pub n_rep: usize,
    /// Distance between sequences in the buffers.
    pub batch_stride: usize,
    /// Distance between key/value heads in the buffers.
    pub head_stride: usize,
}

impl DecodeCache<'_> {
    /// One query position per sequence: scores, softmax and the weighted
    /// sum of values for every (sequence, head) in one parallel pass over
    /// the cache buffers (f32 or bf16), instead of two batched matmuls of
    /// `b * heads` tiny products. `qv` `[b, h, d]`; returns `[b, h * d]`.
    pub fn attend<T: KvElement>(&self, qv: &[f32], kv: &[T], vv: &[T], b: usize) -> Vec<f32> {
        use rayon::prelude::*;
        let (d, h) = (self.d, self.h);
        let scale = 1.0 / (d as f32).sqrt();
        let mut out = vec![0f32; b * h * d];
        out.par_chunks_mut(d).enumerate().for_each_init(
            || vec![0f32; self.len],
            |scores, (i, o)| {
                let (bi, hi) = (i / h, i % h);
                let start = self.starts.get(bi).copied().unwrap_or(0);
                let scores = &mut scores[..self.len - start];
                let base =
                    bi * self.batch_stride + (hi / self.n_rep) * self.head_stride + start * d;
                let qrow = &qv[i * d..(i + 1) * d];
                for (j, s) in scores.iter_mut().enumerate() {
                    *s = dot(qrow, &kv[base + j * d..base + (j + 1) * d]);
                }
                softmax_scaled(scores, scale);
                for (j, &p) in scores.iter().enumerate() {
                    let vrow = &vv[base + j * d..base + (j + 1) * d];
                    for (o, &x) in o.iter_mut().zip(vrow) {
                        *o += p * x.to_f32();
                    }
                }
            },
        );
        out
    }
}

/// Dot product in 8 independent lanes, so it vectorises.
#[inline]
fn dot<T: KvElement>(a: &[f32], b: &[T]) -> f32 {
    let mut lanes = [0f32; 8];
    let mut ca = a.chunks_exact(8);
    let mut cb = b.chunks_exact(8);
    for (x, y) in (&mut ca).zip(&mut cb) {
        for l in 0..8 {
            lanes[l] += x[l] * y[l].to_f32();
        }
    }
    let mut s: f32 = lanes.iter().sum();
    for (x, y) in ca.remainder().iter().zip(cb.remainder()) {
        s += x * y.to_f32();
    }
    s
}

/// Rotates one head (`src` -> `dst`, `head_dim` values) by the angles of
/// one position, as candle's `rope` (halves, not interleaved pairs).
#[inline]
pub fn rope_head(src: &[f32], cos: &[f32], sin: &[f32], dst: &mut [f32]) {
    let half = cos.len();
    let (x1, x2) = src.split_at(half);
    let (y1, y2) = dst.split_at_mut(half);
    for d in 0..half {
        y1[d] = x1[d] * cos[d] - x2[d] * sin[d];
        y2[d] = x1[d] * sin[d] + x2[d] * cos[d];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_a_direct_computation() {
        // 4 query heads over 2 kv heads, causal after 3 cached positions,
        // more queries than one block; q/k/v interleaved as a fused projection.
        let (heads, kvh, hd, t, off) = (4, 2, 16, 70, 3);
        let keys = off + t;
        let val = |i: usize| ((i * 7919 % 1000) as f32 / 500.0) - 1.0;
        let q_row = heads * hd;
        let q: Vec<f32> = (0..t * q_row).map(val).collect();
        let k: Vec<f32> = (0..keys * kvh * hd).map(|i| val(i + 17)).collect();
        let v: Vec<f32> = (0..keys * kvh * hd).map(|i| val(i + 31)).collect();
        let shape = AttentionShape {
            heads,
            kv_heads: kvh,
            head_dim: hd,
            queries: t,
            keys,
            scale: 0.25,
            causal: Some(off),
        };
        // k, v laid out [kv head][position][d].
        fn kv(data: &[f32], hd: usize, keys: usize) -> Heads<'_> {
            Heads {
                data,
                row: hd,
                head: keys * hd,
            }
        }
        let mut out = vec![0f32; t * q_row];
        let qh = Heads {
            data: &q,
            row: q_row,
            head: hd,
        };
        attention(
            &shape,
            qh,
            kv(&k, hd, keys),
            kv(&v, hd, keys),
            &mut out,
            q_row,
        );
        // A bf16 key/value cache gives the very same result: the GEMM
        // rounds keys and values to bf16 either way.
        let kb: Vec<half::bf16> = k.iter().map(|&x| half::bf16::from_f32(x)).collect();
        let vb: Vec<half::bf16> = v.iter().map(|&x| half::bf16::from_f32(x)).collect();
        let mut out_b = vec![0f32; t * q_row];
        let kvb = |data| Heads {
            data,
            row: hd,
            head: keys * hd,
        };
        attention(&shape, qh, kvb(&kb), kvb(&vb), &mut out_b, q_row);
        assert_eq!(out, out_b);
        let r = |x: f32| half::bf16::from_f32(x).to_f32();
        for h in 0..heads {
            let g = h / 2;
            for i in 0..t {
                let seen = off + i + 1;
                let sc: Vec<f32> = (0..seen)
                    .map(|j| {
                        (0..hd)
                            .map(|d| {
                                r(q[i * q_row + h * hd + d]) * r(k[g * keys * hd + j * hd + d])
                            })
                            .sum::<f32>()
                            * 0.25
                    })
                    .collect();
                let mx = sc.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
                let e: Vec<f32> = sc.iter().map(|x| (x - mx).exp()).collect();
                let z: f32 = e.iter().sum();
                for d in 0..hd {
                    let want: f32 = (0..seen)
                        .map(|j| e[j] / z * v[g * keys * hd + j * hd + d])
                        .sum();
                    let got = out[i * q_row + h * hd + d];
                    assert!((got - want).abs() < 1e-2, "h{h} i{i} d{d}: {got} vs {want}");
                }
            }
        }
    }
}
