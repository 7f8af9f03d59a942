//! The VQ decoder's 3x3 convolution on the CPU, on f32 NCHW planes
//! (optionally after a nearest 2x upsample), as one matrix product over
//! zero-padded planes: the bf16 GEMM reads the shifted planes in place or,
//! on larger images, goes by Winograd's transform ([`crate::winograd`]);
//! the f32 path copies them into im2col tiles for gemm. Other devices or
//! dtypes go through candle's own ops, which compute the same values.

use candle_core::{DType, Result, Tensor};
use janus_kernels::f32_gemm::{gemm_f32, parallelism};
use rayon::prelude::*;

use crate::planes::{cpu_f32, with_f32, zero_ring, Planes, Scratch};
use crate::winograd;

/// Output pixels per im2col tile of the f32 path, at most: bounds its
/// scratch to ~`c_in * 9 * TILE` floats.
const TILE: usize = 4096;

/// The f32 path's im2col tile, in floats, at most (16 MB): with 512 input
/// channels `TILE` pixels alone would make it several times that.
const COL_MAX: usize = 1 << 22;

thread_local! {
    /// The f32 path's im2col and product tiles, kept between calls: fresh
    /// ones were fresh pages at every convolution for the kernel to zero.
    static TILE_BUFFERS: std::cell::RefCell<(Vec<f32>, Vec<f32>)> =
        const { std::cell::RefCell::new((Vec::new(), Vec::new())) };
}

/// One image `[c_in, h_in, w_in]`, upsampled 2x by nearest neighbour when
/// `up`, with a ring of zeros around each plane: `[c_in, h + 2, w + 2]`.
///
/// On it a 3x3 convolution is one matrix product over "padded-width"
/// pixels `j = y * (w + 2) + x`: tap `(ky, kx)` of channel `c` is the plane
/// read from offset `ky * (w + 2) + kx`, a plain slice, and the two columns
/// `x = w, w + 1` of each output row are junk to drop.
fn padded_planes(
    src: &[f32],
    (c_in, h_in, w_in): (usize, usize, usize),
    up: bool,
    scratch: &mut Scratch,
) -> Vec<f32> {
    let f = if up { 2 } else { 1 };
    let (h, w) = (h_in * f, w_in * f);
    let wp = w + 2;
    let mut xp = scratch.take(c_in * (h + 2) * wp);
    zero_ring(&mut xp, h, w);
    xp.par_chunks_mut((h + 2) * wp)
        .zip(src.par_chunks(h_in * w_in))
        .for_each(|(dst, plane)| {
            for y in 0..h {
                let srow = &plane[(y / f) * w_in..(y / f + 1) * w_in];
                let drow = &mut dst[(y + 1) * wp + 1..(y + 1) * wp + 1 + w];
                if up {
                    for (d, &v) in drow.chunks_exact_mut(2).zip(srow) {
                        d.fill(v);
                    }
                } else {
                    drow.copy_from_slice(srow);
                }
            }
        });
    xp
}

/// How the input of [`conv3x3`] is laid out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Input {
    /// `[b, c, h, w]`.
    Plain,
    /// `[b, c, h / 2, w / 2]`, upsampled 2x by nearest neighbour first.
    Upsampled,
    /// `[b, c, h + 2, w + 2]`: already with its ring of zeros (as written
    /// by [`crate::norm::group_norm`] with `padded`), read in place.
    Padded,
}

/// 3x3 convolution, stride 1, padding 1, of `x` `[b, c_in, h, w]` (as
/// `input` says: possibly upsampled or already padded) with `weight`
/// `[c_out, c_in, 3, 3]` and `bias` `[c_out]`, plus `residual` (same shape as
/// the output) when given, added with the bias in one pass. With `bf16`
/// (and a CPU that has the bf16 GEMM) the GEMM reads the shifted planes
/// directly and stores only the real columns, or from 64×64 pixels up
/// multiplies Winograd-transformed tiles ([`crate::winograd`]); otherwise
/// im2col tiles go through f32 `gemm`.
pub(crate) fn conv3x3(
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    input: Input,
    residual: Option<&Tensor>,
    bf16: bool,
) -> Result<Tensor> {
    // A bf16 weight (bf16 compute) is widened for this call: a few MB at most.
    let weight = &if weight.dtype() == DType::BF16 && x.dtype() == DType::F32 {
        weight.to_dtype(DType::F32)?
    } else {
        weight.clone()
    };
    if !(cpu_f32(x) && cpu_f32(weight) && residual.is_none_or(cpu_f32)) {
        let x = if input == Input::Upsampled {
            let (_, _, h, w) = x.dims4()?;
            x.upsample_nearest2d(2 * h, 2 * w)?
        } else {
            x.clone()
        };
        let cfg = candle_nn::Conv2dConfig {
            padding: if input == Input::Padded { 0 } else { 1 },
            ..Default::default()
        };
        let conv = candle_nn::Conv2d::new(weight.clone(), bias.cloned(), cfg);
        let y = candle_core::Module::forward(&conv, &x)?;
        return match residual {
            Some(r) => y + r,
            None => Ok(y),
        };
    }
    let (b, c, h, w) = x.dims4()?;
    let dims = [b, c, h, w];
    let scratch = &mut Scratch::default();
    let mut run = |rv: Option<&[f32]>| {
        with_f32(x, |xv| {
            conv3x3_planes(xv, dims, weight, bias, input, rv, bf16, scratch)
        })?
    };
    match residual {
        Some(r) => with_f32(r, |rv| run(Some(rv)))??,
        None => run(None)?,
    }
    .into_tensor()
}

/// [`conv3x3`] of CPU f32 planes `xv` `[b, c_in, h, w]` (as `input` says),
/// plus `residual` (the output's shape) when given, into a buffer from
/// `scratch`, which also holds the padded planes it makes on the way.
#[allow(clippy::too_many_arguments)]
pub(crate) fn conv3x3_planes(
    xv: &[f32],
    [b, c_in, h_in, w_in]: [usize; 4],
    weight: &Tensor,
    bias: Option<&Tensor>,
    input: Input,
    residual: Option<&[f32]>,
    bf16: bool,
    scratch: &mut Scratch,
) -> Result<Planes> {
    let weight = &if weight.dtype() == DType::BF16 {
        weight.to_dtype(DType::F32)?
    } else {
        weight.clone()
    };
    let (c_out, wc, kh, kw) = weight.dims4()?;
    if wc != c_in || kh != 3 || kw != 3 {
        candle_core::bail!(
            "conv3x3: weight {:?} does not fit input {:?}",
            weight.dims(),
            [b, c_in, h_in, w_in]
        )
    }
    let (h, w) = match input {
        Input::Plain => (h_in, w_in),
        Input::Upsampled => (2 * h_in, 2 * w_in),
        Input::Padded if h_in > 2 && w_in > 2 => (h_in - 2, w_in - 2),
        Input::Padded => {
            candle_core::bail!(
                "conv3x3: padded input {:?} too small",
                [b, c_in, h_in, w_in]
            )
        }
    };
    if residual.is_some_and(|r| r.len() != b * c_out * h * w) {
        candle_core::bail!(
            "conv3x3: the residual does not fit the output {:?}",
            [b, c_out, h, w]
        )
    }
    let (hw, wp) = (h * w, w + 2);
    let plane = (h + 2) * wp;
    // Padded-width pixels per image (the last row's junk is not computed).
    let n = h * wp - 2;
    let kdim = c_in * 9;
    let bf16_gemm = bf16 && janus_kernels::bf16_gemm::available();
    let bias_v: Option<Vec<f32>> = bias
        .map(|t| t.to_dtype(DType::F32)?.flatten_all()?.to_vec1())
        .transpose()?;
    let mut out = scratch.take(b * c_out * hw);
    // Winograd adds the bias and the residual itself. It serves the bf16
    // compute on every CPU (in f32 without the bf16 GEMM); the exact f32
    // path keeps the direct products.
    let by_winograd = bf16 && winograd::fits(h, w);
    with_f32(weight, |wv| {
        let wino = by_winograd.then(|| winograd::transform_weights(wv, c_out, c_in));
        for bi in 0..b {
            let img = &xv[bi * c_in * h_in * w_in..(bi + 1) * c_in * h_in * w_in];
            // Winograd reads an upsampled input's planes before upsampling.
            let up = input == Input::Upsampled;
            let made = (input != Input::Padded)
                .then(|| padded_planes(img, (c_in, h_in, w_in), up && wino.is_none(), scratch));
            let xp = made.as_deref().unwrap_or(img);
            let tap = |l: usize| {
                let (c, ky, kx) = (l / 9, l % 9 / 3, l % 3);
                &xp[c * plane + ky * wp + kx..][..n]
            };
            let dst = &mut out[bi * c_out * hw..(bi + 1) * c_out * hw];
            if let Some(u) = &wino {
                let res = residual.map(|r| &r[bi * c_out * hw..(bi + 1) * c_out * hw]);
                let bias = bias_v.as_deref();
                winograd::conv3x3(xp, (c_in, h, w), up, u, c_out, bias, res, dst);
            } else if bf16_gemm {
                use janus_kernels::bf16_gemm::{gemm_runs, Rhs, Runs};
                let runs = Runs { run: w, skip: 2 };
                let rhs = Rhs::ColRows(&tap);
                gemm_runs(c_out, n, kdim, wv, kdim, &rhs, dst, hw, false, true, runs);
            } else {
                conv_f32_tiles(&tap, (h, w), wv, c_out, kdim, dst);
            }
            if let Some(v) = made {
                scratch.give(v);
            }
        }
    })?;
    if !by_winograd {
        out.par_chunks_mut(hw).enumerate().for_each(|(i, o)| {
            let bv = bias_v.as_ref().map_or(0.0, |bv| bv[i % c_out]);
            match residual {
                Some(res) => {
                    for (o, &r) in o.iter_mut().zip(&res[i * hw..(i + 1) * hw]) {
                        *o += r + bv;
                    }
                }
                None if bv != 0.0 => o.iter_mut().for_each(|o| *o += bv),
                None => {}
            }
        });
    }
    Ok(Planes {
        data: out,
        dims: [b, c_out, h, w],
    })
}

/// The f32 path of [`conv3x3`] for one image of `(h, w)` output pixels:
/// im2col tiles of whole padded-width rows copied from `tap(l)`, each
/// multiplied by the weight `[c_out, kdim]` with the `gemm` crate, then
/// stored without their junk columns into `dst` `[c_out, h * w]`.
fn conv_f32_tiles<'a>(
    tap: &(dyn Fn(usize) -> &'a [f32] + Sync),
    (h, w): (usize, usize),
    wv: &[f32],
    c_out: usize,
    kdim: usize,
    dst: &mut [f32],
) {
    let (wp, hw) = (w + 2, h * w);
    let n = h * wp - 2;
    let par = parallelism();
    let rows_per_tile = (TILE.min(COL_MAX / kdim) / wp).max(1);
    // Taken, not borrowed: a re-entrant call finds empty buffers.
    let (mut col, mut prod) = TILE_BUFFERS.with(|b| std::mem::take(&mut *b.borrow_mut()));
    col.resize(kdim * rows_per_tile * wp, 0.0);
    prod.resize(c_out * rows_per_tile * wp, 0.0);
    for y0 in (0..h).step_by(rows_per_tile) {
        let rows = rows_per_tile.min(h - y0);
        let j0 = y0 * wp;
        let p = (rows * wp).min(n - j0);
        let col = &mut col[..kdim * p];
        col.par_chunks_mut(p)
            .enumerate()
            .for_each(|(l, row)| row.copy_from_slice(&tap(l)[j0..j0 + p]));
        gemm_f32((c_out, p, kdim), wv, col, &mut prod[..c_out * p], par);
        for co in 0..c_out {
            for r in 0..rows {
                let src = &prod[co * p + r * wp..co * p + r * wp + w];
                dst[co * hw + (y0 + r) * w..][..w].copy_from_slice(src);
            }
        }
    }
    TILE_BUFFERS.with(|b| *b.borrow_mut() = (col, prod));
}

#[cfg(test)]
mod tests {
    use super::{conv3x3, conv3x3_planes, Input};
    use crate::norm::{group_norm, group_norm_planes};
    use crate::planes::Scratch;
    use candle_core::{Module, Tensor};

    fn rel(a: &Tensor, b: &Tensor) -> f64 {
        janus_kernels::tensor::rel_l2(a, b).unwrap()
    }

    #[test]
    fn conv_and_norm_match_candle() {
        let x = janus_kernels::random::randn(0f32, 1.0, (2, 64, 9, 7), 1).unwrap();
        let w = janus_kernels::random::randn(0f32, 0.1, (48, 64, 3, 3), 2).unwrap();
        let b = janus_kernels::random::randn(0f32, 0.1, 48, 3).unwrap();
        let cfg = candle_nn::Conv2dConfig {
            padding: 1,
            ..Default::default()
        };
        let conv = candle_nn::Conv2d::new(w.clone(), Some(b.clone()), cfg);
        let bf16 = janus_kernels::bf16_gemm::available();
        for up in [false, true] {
            let input = if up { Input::Upsampled } else { Input::Plain };
            let xin = if up {
                x.upsample_nearest2d(18, 14).unwrap()
            } else {
                x.clone()
            };
            let want = conv.forward(&xin).unwrap();
            let res = janus_kernels::random::randn(0f32, 1.0, want.dims(), 4).unwrap();
            let got = conv3x3(&x, &w, Some(&b), input, None, false).unwrap();
            assert!(rel(&got, &want) < 1e-5, "conv upsample={up}");
            let got = conv3x3(&x, &w, Some(&b), input, Some(&res), false).unwrap();
            let want_res = (want.clone() + &res).unwrap();
            assert!(rel(&got, &want_res) < 1e-5, "conv + residual upsample={up}");
            // The same input handed over already padded: the very same sums.
            let padded = xin
                .pad_with_zeros(2, 1, 1)
                .unwrap()
                .pad_with_zeros(3, 1, 1)
                .unwrap();
            for b16 in [false, bf16] {
                let a = conv3x3(&x, &w, Some(&b), input, Some(&res), b16).unwrap();
                let p = conv3x3(&padded, &w, Some(&b), Input::Padded, Some(&res), b16).unwrap();
                assert_eq!(rel(&a, &p), 0.0, "padded input, bf16={b16}");
            }
            if bf16 {
                // bf16 inputs: about 2^-9 relative per product.
                let got = conv3x3(&x, &w, Some(&b), input, None, true).unwrap();
                let e = rel(&got, &want);
                assert!(e < 5e-3 && e > 0.0, "bf16 conv upsample={up}: {e}");
                let got = conv3x3(&x, &w, Some(&b), input, Some(&res), true).unwrap();
                let e = rel(&got, &want_res);
                assert!(e < 5e-3, "bf16 conv + residual upsample={up}: {e}");
            }
        }
        let gw = janus_kernels::random::randn(1f32, 0.1, 64, 5).unwrap();
        let gb = janus_kernels::random::randn(0f32, 0.1, 64, 6).unwrap();
        let gn = candle_nn::GroupNorm::new(gw.clone(), gb.clone(), 64, 32, 1e-6).unwrap();
        let want = gn.forward(&x).unwrap();
        let wb = (&gw, &gb);
        assert!(rel(&group_norm(&x, 32, 1e-6, wb, false, false).unwrap(), &want) < 1e-5);
        let got = group_norm(&x, 32, 1e-6, wb, true, false).unwrap();
        let want = want.silu().unwrap();
        assert!(rel(&got, &want) < 1e-5);
        // Padded: the same values inside a ring of zeros.
        let padded = group_norm(&x, 32, 1e-6, wb, true, true).unwrap();
        let ring = got
            .pad_with_zeros(2, 1, 1)
            .unwrap()
            .pad_with_zeros(3, 1, 1)
            .unwrap();
        assert_eq!(rel(&padded, &ring), 0.0);
    }

    /// The f32 path with 160 input channels, whose im2col tile is capped by
    /// `COL_MAX` (69 rows of 40 here, so two tiles), then a small
    /// convolution on the same thread, which reuses the larger buffers
    /// holding the first one's values: both as candle's convolution.
    #[test]
    fn f32_tiles_cover_many_channels_and_reuse_their_buffers() {
        let cfg = candle_nn::Conv2dConfig {
            padding: 1,
            ..Default::default()
        };
        for (c_in, h, w) in [(160, 80, 40), (16, 9, 7)] {
            let x = janus_kernels::random::randn(0f32, 1.0, (1, c_in, h, w), 7).unwrap();
            let wt = janus_kernels::random::randn(0f32, 0.1, (8, c_in, 3, 3), 8).unwrap();
            let b = janus_kernels::random::randn(0f32, 0.1, 8, 9).unwrap();
            let want = candle_nn::Conv2d::new(wt.clone(), Some(b.clone()), cfg)
                .forward(&x)
                .unwrap();
            let got = conv3x3(&x, &wt, Some(&b), Input::Plain, None, false).unwrap();
            assert!(rel(&got, &want) < 1e-5, "{c_in} channels, {h}x{w}");
        }
    }

    /// A batch gives each image what it gets alone, on every path (the
    /// bf16 one at a size that goes by Winograd, plain and upsampled).
    #[test]
    fn a_batch_gives_each_image_its_own_result() {
        let x = janus_kernels::random::randn(0f32, 1.0, (2, 16, 32, 34), 10).unwrap();
        let w = janus_kernels::random::randn(0f32, 0.1, (8, 16, 3, 3), 11).unwrap();
        let b = janus_kernels::random::randn(0f32, 0.1, 8, 12).unwrap();
        let up = x.upsample_nearest2d(64, 68).unwrap();
        for (x, input) in [(&x, Input::Upsampled), (&up, Input::Plain)] {
            let res = janus_kernels::random::randn(0f32, 1.0, (2, 8, 64, 68), 13).unwrap();
            for bf16 in [false, true] {
                let all = conv3x3(x, &w, Some(&b), input, Some(&res), bf16).unwrap();
                for i in 0..2 {
                    let (xi, ri) = (x.narrow(0, i, 1).unwrap(), res.narrow(0, i, 1).unwrap());
                    let one = conv3x3(&xi, &w, Some(&b), input, Some(&ri), bf16).unwrap();
                    let got = all.narrow(0, i, 1).unwrap();
                    assert_eq!(rel(&got, &one), 0.0, "{input:?} bf16={bf16} image {i}");
                }
            }
        }
    }

    /// Buffers taken back from a scratch hold whatever was there before
    /// (here NaN): the padded planes' rings must still come out zero.
    #[test]
    fn reused_buffers_give_the_same_values() {
        let x = janus_kernels::random::randn(0f32, 1.0, (1, 64, 9, 7), 14).unwrap();
        let xv: Vec<f32> = x.flatten_all().unwrap().to_vec1().unwrap();
        let w = janus_kernels::random::randn(0f32, 0.1, (48, 64, 3, 3), 15).unwrap();
        let b = janus_kernels::random::randn(0f32, 0.1, 48, 16).unwrap();
        let gw = janus_kernels::random::randn(1f32, 0.1, 64, 17).unwrap();
        let gb = janus_kernels::random::randn(0f32, 0.1, 64, 18).unwrap();
        let dirty = || {
            let mut s = Scratch::default();
            s.give(vec![f32::NAN; 64 * 20 * 18]);
            s
        };
        let dims = [1, 64, 9, 7];
        let want = group_norm(&x, 32, 1e-6, (&gw, &gb), true, true).unwrap();
        let got = group_norm_planes(&xv, dims, 32, 1e-6, (&gw, &gb), &mut dirty()).unwrap();
        let got = got.into_tensor().unwrap();
        assert_eq!(rel(&got, &want), 0.0, "padded group norm");
        for input in [Input::Plain, Input::Upsampled] {
            let want = conv3x3(&x, &w, Some(&b), input, None, false).unwrap();
            let got = conv3x3_planes(&xv, dims, &w, Some(&b), input, None, false, &mut dirty());
            let got = got.unwrap().into_tensor().unwrap();
            assert_eq!(rel(&got, &want), 0.0, "{input:?}");
        }
    }
}
