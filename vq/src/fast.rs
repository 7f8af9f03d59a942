//! CPU fast paths of the VQ decoder's heavy ops, on f32 NCHW tensors:
//! 3x3 convolution (optionally after a nearest 2x upsample) as tiled
//! im2col + one gemm per tile, and group norm fused with the swish that
//! always follows it. Anything else (other devices or dtypes) goes through
//! candle's own ops, which compute the same values.

use candle_core::{DType, Device, Result, Tensor};
use janus_kernels::math::fast_exp;
use rayon::prelude::*;

/// Whether `t` can take the fast paths.
fn fast_ok(t: &Tensor) -> bool {
    t.device().is_cpu() && t.dtype() == DType::F32
}

/// Runs `f` on the contiguous f32 data of `t`.
fn with_f32<R>(t: &Tensor, f: impl FnOnce(&[f32]) -> R) -> Result<R> {
    janus_kernels::tensor::with_cpu_slice(t, f)
}

struct SendPtr(*mut f32);
unsafe impl Send for SendPtr {}
unsafe impl Sync for SendPtr {}

/// Output pixels per im2col tile: bounds the scratch to ~`c_in * 9 * TILE` floats.
const TILE: usize = 4096;

/// 3x3 convolution, stride 1, padding 1, of `x` [b, c_in, h, w] (first
/// upsampled 2x by nearest neighbour when `upsample`) with `weight`
/// [c_out, c_in, 3, 3] and `bias` [c_out], plus `residual` (same shape as
/// the output) when given: accumulated in place, so a residual block never
/// holds a separate sum.
pub(crate) fn conv3x3(
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    upsample: bool,
    residual: Option<&Tensor>,
    bf16: bool,
) -> Result<Tensor> {
    if !(fast_ok(x) && fast_ok(weight) && residual.is_none_or(fast_ok)) {
        let x = if upsample {
            let (_, _, h, w) = x.dims4()?;
            x.upsample_nearest2d(2 * h, 2 * w)?
        } else {
            x.clone()
        };
        let cfg = candle_nn::Conv2dConfig {
            padding: 1,
            ..Default::default()
        };
        let conv = candle_nn::Conv2d::new(weight.clone(), bias.cloned(), cfg);
        let y = candle_core::Module::forward(&conv, &x)?;
        return match residual {
            Some(r) => y + r,
            None => Ok(y),
        };
    }
    let (b, c_in, h_in, w_in) = x.dims4()?;
    let (c_out, wc, kh, kw) = weight.dims4()?;
    if wc != c_in || kh != 3 || kw != 3 {
        candle_core::bail!(
            "conv3x3: weight {:?} does not fit input {:?}",
            weight.dims(),
            x.dims()
        )
    }
    let f = if upsample { 2 } else { 1 };
    let (h, w) = (h_in * f, w_in * f);
    let hw = h * w;
    let kdim = c_in * 9;
    let mut out = match residual {
        Some(r) => {
            if r.dims() != [b, c_out, h, w] {
                candle_core::bail!("conv3x3: residual {:?} does not fit the output", r.dims())
            }
            r.flatten_all()?.to_vec1::<f32>()?
        }
        None => vec![0f32; b * c_out * hw],
    };
    let accumulate = residual.is_some();
    let bias_v: Option<Vec<f32>> = bias
        .map(|t| t.to_dtype(DType::F32)?.flatten_all()?.to_vec1())
        .transpose()?;
    let threads = rayon::current_num_threads();
    let par = if threads > 1 {
        gemm::Parallelism::Rayon(threads)
    } else {
        gemm::Parallelism::None
    };
    with_f32(weight, |wv| {
        with_f32(x, |xv| {
            // Whole output rows per tile.
            let rows_per_tile = (TILE / w).max(1);
            let mut col = vec![0f32; kdim * rows_per_tile * w];
            for bi in 0..b {
                let src = &xv[bi * c_in * h_in * w_in..(bi + 1) * c_in * h_in * w_in];
                let dst = &mut out[bi * c_out * hw..(bi + 1) * c_out * hw];
                let mut y0 = 0;
                while y0 < h {
                    let rows = rows_per_tile.min(h - y0);
                    let p = rows * w;
                    let col = &mut col[..kdim * p];
                    // col[(c*9 + ky*3 + kx), (y - y0) * w + x] = in[c, y + ky - 1, x + kx - 1]
                    col.par_chunks_mut(9 * p).enumerate().for_each(|(c, cc)| {
                        let plane = &src[c * h_in * w_in..(c + 1) * h_in * w_in];
                        // One source row, upsampled if needed, with a zero on each side:
                        // the three horizontal taps are then plain copies.
                        let mut padded = vec![0f32; w + 2];
                        for ky in 0..3 {
                            for r in 0..rows {
                                let yy = (y0 + r + ky) as isize - 1;
                                let a = ky * 3 * p + r * w;
                                if yy < 0 || yy >= h as isize {
                                    for kx in 0..3 {
                                        cc[a + kx * p..a + kx * p + w].fill(0.0);
                                    }
                                    continue;
                                }
                                let sy = if f == 2 {
                                    yy as usize >> 1
                                } else {
                                    yy as usize
                                };
                                let srow = &plane[sy * w_in..(sy + 1) * w_in];
                                if f == 2 {
                                    for (i, &v) in srow.iter().enumerate() {
                                        padded[1 + 2 * i] = v;
                                        padded[2 + 2 * i] = v;
                                    }
                                } else {
                                    padded[1..=w].copy_from_slice(srow);
                                }
                                for kx in 0..3 {
                                    cc[a + kx * p..a + kx * p + w]
                                        .copy_from_slice(&padded[kx..kx + w]);
                                }
                            }
                        }
                    });
                    // out[co, y0*w ..][p] = W[co, kdim] x col[kdim, p]
                    let dst_tile = dst[y0 * w..].as_mut_ptr();
                    if bf16 {
                        use janus_kernels::bf16_gemm::{gemm, Rhs};
                        // SAFETY: rows co * hw + [y0*w, y0*w + p) lie inside
                        // this image's output (dst has c_out * hw values).
                        let out = unsafe {
                            std::slice::from_raw_parts_mut(dst_tile, (c_out - 1) * hw + p)
                        };
                        let rhs = Rhs::F32Cols { data: &*col, ld: p };
                        gemm(c_out, p, kdim, wv, kdim, &rhs, out, hw, accumulate, true);
                    } else {
                        // SAFETY: dst rows co * hw + [y0*w, y0*w + p) lie inside this image's output;
                        // lhs [c_out, kdim] and rhs [kdim, p] are dense row-major.
                        unsafe {
                            gemm::gemm(
                                c_out,
                                p,
                                kdim,
                                dst_tile,
                                1,
                                hw as isize,
                                accumulate,
                                wv.as_ptr(),
                                1,
                                kdim as isize,
                                col.as_ptr(),
                                1,
                                p as isize,
                                if accumulate { 1f32 } else { 0f32 },
                                1f32,
                                false,
                                false,
                                false,
                                par,
                            )
                        };
                    }
                    y0 += rows;
                }
                if let Some(bv) = &bias_v {
                    let ptr = SendPtr(dst.as_mut_ptr());
                    let ptr = &ptr;
                    (0..c_out).into_par_iter().for_each(|co| {
                        // SAFETY: each channel plane is touched by one task only.
                        let plane =
                            unsafe { std::slice::from_raw_parts_mut(ptr.0.add(co * hw), hw) };
                        for v in plane {
                            *v += bv[co];
                        }
                    });
                }
            }
        })
    })??;
    Tensor::from_vec(out, (b, c_out, h, w), &Device::Cpu)
}

/// `GroupNorm(groups, eps)` with affine `weight`/`bias` [c], followed by
/// swish when `swish`, over `x` [b, c, h, w].
pub(crate) fn group_norm(
    x: &Tensor,
    groups: usize,
    eps: f64,
    weight: &Tensor,
    bias: &Tensor,
    swish: bool,
) -> Result<Tensor> {
    if !(fast_ok(x) && fast_ok(weight) && fast_ok(bias)) || x.rank() < 3 {
        let gn = candle_nn::GroupNorm::new(weight.clone(), bias.clone(), x.dim(1)?, groups, eps)?;
        let y = candle_core::Module::forward(&gn, x)?;
        return if swish { y.silu() } else { Ok(y) };
    }
    let dims = x.dims().to_vec();
    let (b, c) = (dims[0], dims[1]);
    let hw: usize = dims[2..].iter().product();
    if c % groups != 0 {
        candle_core::bail!("group norm: {c} channels do not split into {groups} groups")
    }
    let cg = c / groups;
    let wv: Vec<f32> = weight.flatten_all()?.to_vec1()?;
    let bv: Vec<f32> = bias.flatten_all()?.to_vec1()?;
    let mut out = vec![0f32; b * c * hw];
    with_f32(x, |xv| {
        out.par_chunks_mut(cg * hw).enumerate().for_each(|(i, o)| {
            let (bi, g) = (i / groups, i % groups);
            let src = &xv[(bi * c + g * cg) * hw..(bi * c + (g + 1) * cg) * hw];
            let (wg, bg) = (&wv[g * cg..(g + 1) * cg], &bv[g * cg..(g + 1) * cg]);
            #[cfg(target_arch = "x86_64")]
            if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
                // SAFETY: features checked just above.
                unsafe { norm_group_avx2(src, o, hw, wg, bg, eps, swish) };
                return;
            }
            norm_group(src, o, hw, wg, bg, eps, swish);
        });
    })?;
    Tensor::from_vec(out, dims, &Device::Cpu)
}

/// One group of a group norm: `src`/`o` hold `w.len()` channels of `hw` values.
#[inline(always)]
fn norm_group(src: &[f32], o: &mut [f32], hw: usize, w: &[f32], b: &[f32], eps: f64, swish: bool) {
    // Two passes (mean, then the centred variance, as torch), in 16
    // independent f32 lanes combined in f64, so they vectorise.
    let n = src.len() as f64;
    let mean = lane_sum(src, |v| v) / n;
    let m32 = mean as f32;
    let var = lane_sum(src, |v| (v - m32) * (v - m32)) / n;
    let inv = 1.0 / (var + eps).sqrt();
    for ch in 0..w.len() {
        let scale = (w[ch] as f64 * inv) as f32;
        let shift = (b[ch] as f64 - mean * w[ch] as f64 * inv) as f32;
        let s = &src[ch * hw..(ch + 1) * hw];
        let d = &mut o[ch * hw..(ch + 1) * hw];
        if swish {
            for (d, &v) in d.iter_mut().zip(s) {
                let y = v * scale + shift;
                *d = y / (1.0 + fast_exp(-y));
            }
        } else {
            for (d, &v) in d.iter_mut().zip(s) {
                *d = v * scale + shift;
            }
        }
    }
}

/// [`norm_group`] compiled for AVX2 + FMA (8-wide loops).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn norm_group_avx2(
    src: &[f32],
    o: &mut [f32],
    hw: usize,
    w: &[f32],
    b: &[f32],
    eps: f64,
    swish: bool,
) {
    norm_group(src, o, hw, w, b, eps, swish)
}

/// Sum of `f(v)` over `xs` in 16 f32 lanes (vectorisable), combined in f64.
#[inline(always)]
fn lane_sum(xs: &[f32], f: impl Fn(f32) -> f32) -> f64 {
    let mut lanes = [0f32; 16];
    let mut total = 0f64;
    // Flush the lanes into f64 every 4096 values to bound the f32 rounding.
    for block in xs.chunks(4096) {
        let mut it = block.chunks_exact(16);
        for c in &mut it {
            for (l, &v) in lanes.iter_mut().zip(c) {
                *l += f(v);
            }
        }
        for &v in it.remainder() {
            lanes[0] += f(v);
        }
        total += lanes.iter().map(|&l| l as f64).sum::<f64>();
        lanes = [0f32; 16];
    }
    total
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Module, Tensor};

    fn rel(a: &Tensor, b: &Tensor) -> f32 {
        let d = (a - b)
            .unwrap()
            .sqr()
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        let n = b
            .sqr()
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        (d / n).sqrt()
    }

    #[test]
    fn conv_and_norm_match_candle() {
        let dev = Device::Cpu;
        let x = Tensor::randn(0f32, 1.0, (2, 64, 9, 7), &dev).unwrap();
        let w = Tensor::randn(0f32, 0.1, (48, 64, 3, 3), &dev).unwrap();
        let b = Tensor::randn(0f32, 0.1, 48, &dev).unwrap();
        let cfg = candle_nn::Conv2dConfig {
            padding: 1,
            ..Default::default()
        };
        let conv = candle_nn::Conv2d::new(w.clone(), Some(b.clone()), cfg);
        for up in [false, true] {
            let xin = if up {
                x.upsample_nearest2d(18, 14).unwrap()
            } else {
                x.clone()
            };
            let want = conv.forward(&xin).unwrap();
            let res = Tensor::randn(0f32, 1.0, want.dims(), &dev).unwrap();
            let got = super::conv3x3(&x, &w, Some(&b), up, None, false).unwrap();
            assert!(rel(&got, &want) < 1e-5, "conv upsample={up}");
            let got = super::conv3x3(&x, &w, Some(&b), up, Some(&res), false).unwrap();
            assert!(
                rel(&got, &(want.clone() + &res).unwrap()) < 1e-5,
                "conv + residual upsample={up}"
            );
            if janus_kernels::bf16_gemm::available() {
                // bf16 inputs: about 2^-9 relative per product.
                let got = super::conv3x3(&x, &w, Some(&b), up, None, true).unwrap();
                let e = rel(&got, &want);
                assert!(e < 5e-3 && e > 0.0, "bf16 conv upsample={up}: {e}");
                let got = super::conv3x3(&x, &w, Some(&b), up, Some(&res), true).unwrap();
                let e = rel(&got, &(want + &res).unwrap());
                assert!(e < 5e-3, "bf16 conv + residual upsample={up}: {e}");
            }
        }
        let gw = Tensor::randn(1f32, 0.1, 64, &dev).unwrap();
        let gb = Tensor::randn(0f32, 0.1, 64, &dev).unwrap();
        let gn = candle_nn::GroupNorm::new(gw.clone(), gb.clone(), 64, 32, 1e-6).unwrap();
        let want = gn.forward(&x).unwrap();
        assert!(
            rel(
                &super::group_norm(&x, 32, 1e-6, &gw, &gb, false).unwrap(),
                &want
            ) < 1e-5
        );
        let got = super::group_norm(&x, 32, 1e-6, &gw, &gb, true).unwrap();
        assert!(rel(&got, &want.silu().unwrap()) < 1e-5);
    }
}
