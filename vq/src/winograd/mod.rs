//! 3x3 convolutions by Winograd's F(2×2, 3×3) for the decoder's bf16
//! compute (`--dtype bf16`, `--quant`): each 2×2 block of output pixels
//! takes 16 products per channel pair instead of 36, so the GEMM work,
//! nearly all of a decode, drops 2.25x. With AVX-512-BF16 the products are
//! bf16 GEMMs and the transforms AVX-512 code; on other CPUs they are f32
//! GEMMs (`gemm`) and plain Rust transforms, 4e-7 off the direct f32
//! convolution (relative L2, see the tests).
//!
//! The input is cut into 4×4 tiles at stride 2 (from the zero-padded
//! planes) and transformed, `V = Bᵀ d B`; the kernels are transformed once
//! per call, `U = G g Gᵀ`. Each of the 16 positions of a tile is then one
//! matrix product over channels, `M = U · V` (the bf16 GEMM: both sides
//! rounded to bf16, f32 sums), and `Y = Aᵀ M A` gives the 2×2 outputs,
//! with the bias and the residual added on the way out. The transforms'
//! coefficients are 0, ±1 and ±½, so they add no rounding of note; the
//! bf16 rounding now applies to transformed values, which leaves the
//! error about where the direct bf16 convolution has it (see the tests).
//!
//! The tiles go in bands, each transformed, multiplied and transformed
//! back by one thread while its buffers stay in the cache.

use janus_kernels::bf16_gemm::{self, PackedLhs, Rhs};
use janus_kernels::f32_gemm::{gemm_f32, Parallelism};
use janus_kernels::SendPtr;
use rayon::prelude::*;

mod tiles;

use tiles::{
    input_tiles, input_tiles_plain, input_tiles_upsampled, output_tiles, output_tiles_plain,
    spaced, zero_upsampled, Geometry,
};

/// Whether an output of `h × w` pixels takes this path: whole 2×2 tiles,
/// and enough of them that the per-call kernel transform (and the bands'
/// fixed costs) are small against the products.
pub(crate) fn fits(h: usize, w: usize) -> bool {
    h.is_multiple_of(2) && w.is_multiple_of(2) && h * w >= 64 * 64
}

/// The transformed kernels, for the GEMM this CPU runs.
pub(crate) enum Kernels {
    /// Packed for the bf16 GEMM (AVX-512-BF16).
    Bf16(Vec<PackedLhs>),
    /// `[16][c_out][c_in]` f32, for `gemm` (other CPUs).
    F32(Vec<f32>),
}

/// The transformed kernels `U = G g Gᵀ` of `weight` `[c_out, c_in, 3, 3]`:
/// 16 matrices `[c_out, c_in]`, one per tile position, packed for the bf16
/// GEMM where the CPU has it.
pub(crate) fn transform_weights(weight: &[f32], c_out: usize, c_in: usize) -> Kernels {
    transform_weights_for(weight, c_out, c_in, bf16_gemm::available())
}

/// [`transform_weights`] for the bf16 GEMM (`bf16`) or for f32.
fn transform_weights_for(weight: &[f32], c_out: usize, c_in: usize, bf16: bool) -> Kernels {
    let n = c_out * c_in;
    assert_eq!(weight.len(), 9 * n, "winograd: weight size");
    let mut u = vec![0f32; 16 * n];
    // G applied to three values (a column or a row of a kernel).
    let g = |a: f32, b: f32, c: f32| [a, 0.5 * (a + b + c), 0.5 * (a - b + c), c];
    for (p, k) in weight.chunks_exact(9).enumerate() {
        let cols = [0, 1, 2].map(|x| g(k[x], k[3 + x], k[6 + x]));
        for r in 0..4 {
            for (s, v) in g(cols[0][r], cols[1][r], cols[2][r])
                .into_iter()
                .enumerate()
            {
                u[(r * 4 + s) * n + p] = v;
            }
        }
    }
    if !bf16 {
        return Kernels::F32(u);
    }
    Kernels::Bf16(
        (u.par_chunks_exact(n))
            .map(|ui| PackedLhs::new(c_out, c_in, ui, c_in))
            .collect(),
    )
}

/// Tiles per band: the band's transformed input and products (16 values
/// per tile and channel, in and out) within about a core's L2 cache, and a
/// multiple of the GEMM's 64-column panels.
fn band_tiles(c_in: usize, c_out: usize) -> usize {
    let per_tile = 16 * (c_in + c_out) * 4;
    ((1 << 20) / per_tile / 64).max(1) * 64
}

/// 3x3 convolution (stride 1, padding 1) of one image given as zero-padded
/// planes `xp` `[c_in, h + 2, w + 2]`, with the transformed kernels `u`
/// (from [`transform_weights`]), into `dst` `[c_out, h * w]`, plus `bias`
/// `[c_out]` and `residual` `[c_out, h * w]` when given.
///
/// With `upsampled` the input is the image before a nearest-neighbour 2x
/// upsampling, `[c_in, h / 2 + 2, w / 2 + 2]` with its ring: each 4×4 tile
/// of the upsampled image repeats its middle rows and columns, so its
/// transform has a zero third row and column. Those 7 of the 16 products
/// are skipped, and the upsampled planes are never written.
///
/// # Panics
/// If the slices do not fit the shapes, `h` or `w` is odd, or `u` is for
/// the bf16 GEMM and the CPU lacks it.
#[allow(clippy::too_many_arguments)]
pub(crate) fn conv3x3(
    xp: &[f32],
    (c_in, h, w): (usize, usize, usize),
    upsampled: bool,
    u: &Kernels,
    c_out: usize,
    bias: Option<&[f32]>,
    residual: Option<&[f32]>,
    dst: &mut [f32],
) {
    if let Kernels::Bf16(_) = u {
        // Its transforms are AVX-512 code.
        assert!(bf16_gemm::available(), "winograd: no AVX-512-BF16");
    }
    assert!(h % 2 == 0 && w % 2 == 0, "winograd: odd output {h}x{w}");
    let f = if upsampled { 2 } else { 1 };
    assert!(
        xp.len() >= c_in * (h / f + 2) * (w / f + 2),
        "winograd: input size"
    );
    match u {
        Kernels::Bf16(p) => assert!(p.len() == 16, "winograd: kernel matrices"),
        Kernels::F32(f) => assert!(f.len() == 16 * c_out * c_in, "winograd: kernel size"),
    }
    assert!(dst.len() >= c_out * h * w, "winograd: output size");
    assert!(bias.is_none_or(|b| b.len() >= c_out), "winograd: bias size");
    assert!(
        residual.is_none_or(|r| r.len() >= c_out * h * w),
        "winograd: residual size"
    );
    let geo = Geometry { h, w, tw: w / 2 };
    let tiles = (h / 2) * geo.tw;
    let band = band_tiles(c_in, c_out).min(tiles);
    let out = SendPtr(dst.as_mut_ptr());
    let out = &out;
    (0..tiles.div_ceil(band)).into_par_iter().for_each(|bi| {
        let (mut v, mut m) = BUFFERS.with(|b| std::mem::take(&mut *b.borrow_mut()));
        let t0 = bi * band;
        let nb = band.min(tiles - t0);
        let (vs, ms) = (spaced(c_in * nb), spaced(c_out * nb));
        v.resize(16 * vs, 0.0);
        m.resize(16 * ms, 0.0);
        let products = (0..16).filter(|&xi| !(upsampled && zero_upsampled(xi)));
        match u {
            Kernels::Bf16(packed) => {
                // SAFETY: the CPU has AVX-512F (with the bf16 GEMM) and the
                // sizes fit, as checked above.
                unsafe {
                    if upsampled {
                        input_tiles_upsampled(xp, c_in, geo, t0, nb, &mut v)
                    } else {
                        input_tiles(xp, c_in, geo, t0, nb, &mut v)
                    }
                };
                for xi in products {
                    let vi = &v[xi * vs..][..c_in * nb];
                    let rhs = Rhs::F32Cols { data: vi, ld: nb };
                    let mi = &mut m[xi * ms..][..c_out * nb];
                    bf16_gemm::gemm_packed(&packed[xi], nb, &rhs, mi, nb, false, false);
                }
                // SAFETY: as above; this band's tiles are its own pixels of dst.
                unsafe {
                    let out = out.get();
                    if upsampled {
                        output_tiles::<true>(&m, c_out, geo, t0, nb, bias, residual, out)
                    } else {
                        output_tiles::<false>(&m, c_out, geo, t0, nb, bias, residual, out)
                    }
                };
            }
            Kernels::F32(uf) => {
                input_tiles_plain(xp, c_in, geo, upsampled, t0, nb, &mut v);
                for xi in products {
                    let ui = &uf[xi * c_out * c_in..][..c_out * c_in];
                    let vi = &v[xi * vs..][..c_in * nb];
                    let mi = &mut m[xi * ms..][..c_out * nb];
                    let shape = (c_out, nb, c_in);
                    gemm_f32(shape, ui, vi, mi, Parallelism::None);
                }
                // SAFETY: this band's tiles are its own pixels of dst.
                unsafe {
                    output_tiles_plain(&m, c_out, geo, t0, nb, upsampled, bias, residual, out.get())
                };
            }
        }
        BUFFERS.with(|b| *b.borrow_mut() = (v, m));
    });
}

thread_local! {
    /// A band's transformed input and products, kept by each thread across
    /// bands and calls: fresh ones would be fresh pages every time.
    static BUFFERS: std::cell::RefCell<(Vec<f32>, Vec<f32>)> =
        const { std::cell::RefCell::new((Vec::new(), Vec::new())) };
}

#[cfg(test)]
mod tests {
    use super::{conv3x3, fits, transform_weights_for};
    use candle_core::{DType, Device, Module, Tensor};

    fn rel(a: &Tensor, b: &Tensor) -> f64 {
        janus_kernels::tensor::rel_l2(a, b).unwrap()
    }

    fn vec(t: &Tensor) -> Vec<f32> {
        t.flatten_all().unwrap().to_vec1().unwrap()
    }

    /// Against candle's f32 convolution, on a size whose bands end inside
    /// tile rows and whose rows end in a short run of tiles: every pixel
    /// written (the output starts as NaN), with an error of the order of
    /// the direct bf16 product's (inputs rounded to bf16, f32 sums): 1.7x
    /// here, 4x with one kernel coefficient 1 % off. The same for the
    /// convolution of an upsampled image, given before upsampling. The f32
    /// form (CPUs without the bf16 GEMM) within 1e-6 of it (measured
    /// 4e-7).
    #[test]
    fn winograd_matches_the_convolution() {
        let (c_in, c_out, h, w) = (48, 40, 64, 70);
        assert!(fits(h, w));
        let mut forms = vec![false];
        if janus_kernels::bf16_gemm::available() {
            forms.push(true);
        } else {
            // Straight to stderr: libtest hides a passing test's eprintln!.
            use std::io::Write;
            let _ = writeln!(
                std::io::stderr(),
                "SKIPPED the bf16 Winograd form: no bf16 GEMM"
            );
        }
        let dev = Device::Cpu;
        let k = janus_kernels::random::randn(0f32, 0.1, (c_out, c_in, 3, 3), 1).unwrap();
        let bias = janus_kernels::random::randn(0f32, 0.1, c_out, 2).unwrap();
        let res = janus_kernels::random::randn(0f32, 1.0, (1, c_out, h, w), 3).unwrap();
        let cfg = candle_nn::Conv2dConfig {
            padding: 1,
            ..Default::default()
        };
        let conv = |x: &Tensor, k: &Tensor| {
            let conv = candle_nn::Conv2d::new(k.clone(), Some(bias.clone()), cfg);
            conv.forward(x).unwrap()
        };
        let round = |t: &Tensor| {
            t.to_dtype(DType::BF16)
                .unwrap()
                .to_dtype(DType::F32)
                .unwrap()
        };
        for (bf16, upsampled) in forms.into_iter().flat_map(|b| [(b, false), (b, true)]) {
            let u = transform_weights_for(&vec(&k), c_out, c_in, bf16);
            let x = if upsampled {
                janus_kernels::random::randn(0f32, 1.0, (1, c_in, h / 2, w / 2), 4).unwrap()
            } else {
                janus_kernels::random::randn(0f32, 1.0, (1, c_in, h, w), 5).unwrap()
            };
            let full = if upsampled {
                x.upsample_nearest2d(h, w).unwrap()
            } else {
                x.clone()
            };
            let want = conv(&full, &k);
            let direct = rel(&conv(&round(&full), &round(&k)), &want);
            let xp = x
                .pad_with_zeros(2, 1, 1)
                .unwrap()
                .pad_with_zeros(3, 1, 1)
                .unwrap();
            let run = |residual: Option<&[f32]>| {
                let mut dst = vec![f32::NAN; c_out * h * w];
                let (b, xp) = (vec(&bias), vec(&xp));
                conv3x3(
                    &xp,
                    (c_in, h, w),
                    upsampled,
                    &u,
                    c_out,
                    Some(&b),
                    residual,
                    &mut dst,
                );
                Tensor::from_vec(dst, (1, c_out, h, w), &dev).unwrap()
            };
            let what = format!("bf16={bf16} upsampled={upsampled}: direct bf16 {direct}");
            let ok = |e: f64| {
                if bf16 {
                    e > 0.0 && e < 2.5 * direct
                } else {
                    e < 1e-6
                }
            };
            let e = rel(&run(None), &want);
            assert!(ok(e), "{what}, winograd {e}");
            let want = (want + &res).unwrap();
            let e = rel(&run(Some(&vec(&res))), &want);
            assert!(ok(e), "{what}, with residual {e}");
            eprintln!("{what}: {e:e}");
        }
    }
}
