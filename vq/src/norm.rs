//! Group norm fused with the swish that always follows it in the VQ
//! decoder, on the CPU, optionally writing the zero-padded planes the next
//! convolution reads ([`crate::conv::Input::Padded`]).

use candle_core::{Device, Result, Tensor};
use janus_kernels::math::fast_exp;
use rayon::prelude::*;

use crate::planes::{cpu_f32, with_f32, zero_ring, Planes, Scratch};
use janus_kernels::tensor::zeroed;

/// `GroupNorm(groups, eps)` with affine `weight`/`bias` `[c]`, followed by
/// swish when `swish`, over `x` `[b, c, h, w]`. With `padded` the result is
/// written with a ring of zeros, `[b, c, h + 2, w + 2]`, ready for
/// [`crate::conv::conv3x3`] with [`crate::conv::Input::Padded`]: the convolution then reads it in
/// place instead of copying it into padded planes.
pub(crate) fn group_norm(
    x: &Tensor,
    groups: usize,
    eps: f64,
    (weight, bias): (&Tensor, &Tensor),
    swish: bool,
    padded: bool,
) -> Result<Tensor> {
    if !(cpu_f32(x) && cpu_f32(weight) && cpu_f32(bias))
        || x.rank() < 3
        || (padded && x.rank() != 4)
    {
        let gn = candle_nn::GroupNorm::new(weight.clone(), bias.clone(), x.dim(1)?, groups, eps)?;
        let y = candle_core::Module::forward(&gn, x)?;
        let y = if swish { y.silu()? } else { y };
        return if padded {
            y.pad_with_zeros(2, 1, 1)?.pad_with_zeros(3, 1, 1)
        } else {
            Ok(y)
        };
    }
    let mut dims = x.dims().to_vec();
    let mut out = zeroed(dims[0] * dims[1] * out_plane(&dims, padded));
    with_f32(x, |xv| {
        group_norm_into(
            xv,
            &dims,
            groups,
            eps,
            (weight, bias),
            swish,
            padded,
            &mut out,
        )
    })??;
    if padded {
        dims[2] += 2;
        dims[3] += 2;
    }
    Tensor::from_vec(out, dims, &Device::Cpu)
}

/// Values per output plane of a group norm over `dims` `[b, c, ..]`
/// (padded: `[b, c, h, w]` with its ring).
fn out_plane(dims: &[usize], padded: bool) -> usize {
    if padded {
        (dims[2] + 2) * (dims[3] + 2)
    } else {
        dims[2..].iter().product()
    }
}

/// [`group_norm`] (with swish, padded) of CPU f32 planes `xv` `[b, c, h,
/// w]` into a buffer from `scratch`.
pub(crate) fn group_norm_planes(
    xv: &[f32],
    dims: [usize; 4],
    groups: usize,
    eps: f64,
    wb: (&Tensor, &Tensor),
    scratch: &mut Scratch,
) -> Result<Planes> {
    let [b, c, h, w] = dims;
    let mut out = scratch.take(b * c * out_plane(&dims, true));
    group_norm_into(xv, &dims, groups, eps, wb, true, true, &mut out)?;
    Ok(Planes {
        data: out,
        dims: [b, c, h + 2, w + 2],
    })
}

/// The CPU path of [`group_norm`], writing every value of `out` (the
/// ring of padded planes included).
#[allow(clippy::too_many_arguments)]
fn group_norm_into(
    xv: &[f32],
    dims: &[usize],
    groups: usize,
    eps: f64,
    (weight, bias): (&Tensor, &Tensor),
    swish: bool,
    padded: bool,
    out: &mut [f32],
) -> Result<()> {
    let (b, c) = (dims[0], dims[1]);
    let hw: usize = dims[2..].iter().product();
    let w_row = *dims.last().expect("rank >= 3");
    if c % groups != 0 {
        candle_core::bail!("group norm: {c} channels do not split into {groups} groups")
    }
    let layout = if padded {
        let (h, w) = (dims[2], dims[3]);
        zero_ring(out, h, w);
        OutLayout {
            plane: (h + 2) * (w + 2),
            row: w + 2,
            first: w + 3,
        }
    } else {
        OutLayout {
            plane: hw,
            row: w_row,
            first: 0,
        }
    };
    let cg = c / groups;
    let wv: Vec<f32> = weight.flatten_all()?.to_vec1()?;
    let bv: Vec<f32> = bias.flatten_all()?.to_vec1()?;
    out[..b * c * layout.plane]
        .par_chunks_mut(cg * layout.plane)
        .enumerate()
        .for_each(|(i, o)| {
            let (bi, g) = (i / groups, i % groups);
            let src = &xv[(bi * c + g * cg) * hw..(bi * c + (g + 1) * cg) * hw];
            let (wg, bg) = (&wv[g * cg..(g + 1) * cg], &bv[g * cg..(g + 1) * cg]);
            let group = Group {
                src,
                hw,
                w: w_row,
                layout,
                eps,
                swish,
            };
            #[cfg(target_arch = "x86_64")]
            if janus_kernels::cpu::avx512() {
                // SAFETY: feature checked just above.
                unsafe { norm_group_avx512(&group, o, wg, bg) };
                return;
            }
            #[cfg(target_arch = "x86_64")]
            if janus_kernels::cpu::avx2() {
                // SAFETY: features checked just above.
                unsafe { norm_group_avx2(&group, o, wg, bg) };
                return;
            }
            norm_group(&group, o, wg, bg);
        });
    Ok(())
}

/// Where a group norm writes each channel: planes `plane` apart, rows of
/// the input's width `row` apart, the first value at `first`.
#[derive(Clone, Copy)]
struct OutLayout {
    plane: usize,
    row: usize,
    first: usize,
}

/// One group of a group norm: `src` holds its channels, `hw` values each
/// in rows of `w`.
struct Group<'a> {
    src: &'a [f32],
    hw: usize,
    w: usize,
    layout: OutLayout,
    eps: f64,
    swish: bool,
}

/// Normalises one group into `o` (its channels' planes of the output).
#[inline(always)]
fn norm_group(g: &Group, o: &mut [f32], w: &[f32], b: &[f32]) {
    let (src, hw, eps, swish) = (g.src, g.hw, g.eps, g.swish);
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
        let plane = &mut o[ch * g.layout.plane..(ch + 1) * g.layout.plane];
        for (r, s) in src[ch * hw..(ch + 1) * hw].chunks(g.w).enumerate() {
            let at = g.layout.first + r * g.layout.row;
            let d = &mut plane[at..at + s.len()];
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
}

/// [`norm_group`] compiled for AVX2 + FMA (8-wide loops).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn norm_group_avx2(g: &Group, o: &mut [f32], w: &[f32], b: &[f32]) {
    norm_group(g, o, w, b)
}

/// [`norm_group`] compiled for AVX-512 (16-wide loops).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn norm_group_avx512(g: &Group, o: &mut [f32], w: &[f32], b: &[f32]) {
    norm_group(g, o, w, b)
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
