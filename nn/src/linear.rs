//! Linear layers whose weight is stored as f32 (exact), bf16 or quantised
//! (`q8_0`, `q4k`), chosen at load.
//!
//! Quantisation is done at load, tensor by tensor, from whatever the
//! checkpoint stores: no separate file is needed, and no full-precision copy
//! of a quantised weight stays in memory. A checkpoint that stores the
//! blocks already (see [`crate::stored`]) has them taken as stored. On the
//! CPU activations are always f32: a bf16 weight is read as bf16 (half the
//! bytes of f32) and widened inside the kernel.

use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
use candle_core::{DType, Device, Module, Result, Tensor};
use candle_nn::VarBuilder;
use janus_kernels::bf16_gemm::{self, Rhs};
use janus_kernels::cpu::{dispatch, QuantPrefill};
use janus_kernels::f32_gemm::{gemm_f32_transposed, parallelism};
use janus_kernels::math::gelu_erf;
use janus_kernels::quant::{
    dequant_row, few_row_matmul, packed_q4k, packed_q8_0, quantize_rows, RowFormat, FEW_ROWS_MAX,
};
use janus_kernels::tensor::{map_rows, widen_bf16, with_cpu_slice};

use crate::quant::Quant;
use crate::stored::{is_broadcast_view, stored_blocks};

/// The dtype activations flow in: f32 on the CPU whatever the weights
/// (candle's CPU bf16 ops convert per call), the weight dtype elsewhere.
pub fn activation_dtype(dev: &Device, weight_dtype: DType) -> DType {
    if dev.is_cpu() {
        DType::F32
    } else {
        weight_dtype
    }
}

enum Weight {
    /// candle's own linear: the f32 path, and any dtype off the CPU.
    Plain(candle_nn::Linear),
    /// bf16 weight [out, in] on the CPU.
    Bf16(Tensor),
    /// candle's quantised tensor (GGUF block layout): many rows go through
    /// candle's quantized matmul, few rows through [`janus_kernels::quant::few_row_matmul`], which
    /// reads the same blocks and keeps the activations in f32.
    Quantized(std::sync::Arc<QTensor>, QMatMul),
    /// q4_K or q8_0 blocks repacked 16 rows at a time ([`packed_q4k`],
    /// [`packed_q8_0`]) on CPUs with AVX-512 VNNI: every row count goes
    /// through the packed integer kernel (inputs rounded to 8 bits for
    /// q4_K, as llama.cpp does, and to 16 bits for q8_0), so a row's result
    /// does not depend on the rows beside it.
    Packed(RowFormat, Vec<u8>),
}

/// A linear layer `y = x W^T + b` whose weight is stored as f32, bf16 or
/// quantised; inputs and outputs are in the activation dtype.
pub struct QLinear {
    weight: Weight,
    /// Kept apart from candle's linear on the CPU, in the activation dtype.
    bias: Option<Tensor>,
    in_dim: usize,
    out_dim: usize,
    quant: Quant,
}

impl QLinear {
    /// Loads `weight` [out, in] (and `bias` \[out\] when `with_bias`) from `vb`,
    /// quantising with `quant` (see [`Quant::for_in_dim`]); a weight the
    /// checkpoint stores in those blocks already (a GGUF model) is taken as is.
    pub fn load(
        in_dim: usize,
        out_dim: usize,
        with_bias: bool,
        vb: VarBuilder,
        quant: Quant,
    ) -> Result<Self> {
        let act = activation_dtype(vb.device(), vb.dtype());
        let bias = if with_bias {
            Some(vb.get(out_dim, "bias")?.to_dtype(act)?)
        } else {
            None
        };
        if let Some(g) = quant.for_in_dim(in_dim).ggml() {
            if let Some(q) = stored_blocks(&vb, "weight", (out_dim, in_dim), g)? {
                return Self::from_blocks(q, bias, quant);
            }
        }
        let w = vb.get((out_dim, in_dim), "weight")?;
        Self::from_weight(w, bias, quant)
    }

    /// Wraps a weight [out, in] already in memory (e.g. a tied embedding).
    pub fn from_weight(w: Tensor, bias: Option<Tensor>, quant: Quant) -> Result<Self> {
        let (out_dim, in_dim) = w.dims2()?;
        let quant = quant.for_in_dim(in_dim);
        let dev = w.device().clone();
        if let (Some(g), false) = (quant.ggml(), is_broadcast_view(&w)) {
            let q = quantize_rows(&w, g)?;
            drop(w);
            return Self::from_blocks(q, bias, quant);
        }
        let weight = if is_broadcast_view(&w) {
            // Shape-only loads (parameter listings) never run: keep the view.
            Weight::Plain(candle_nn::Linear::new(
                w,
                if dev.is_cpu() { None } else { bias.clone() },
            ))
        } else if dev.is_cpu() && w.dtype() == DType::BF16 {
            Weight::Bf16(w.contiguous()?)
        } else if dev.is_cpu() && w.dtype() != DType::F32 {
            // f16 (or other) weights on the CPU: activations are f32 there.
            Weight::Plain(candle_nn::Linear::new(w.to_dtype(DType::F32)?, None))
        } else {
            let b = if dev.is_cpu() { None } else { bias.clone() };
            Weight::Plain(candle_nn::Linear::new(w, b))
        };
        // Off the CPU the bias lives inside candle's linear.
        let bias = match &weight {
            Weight::Plain(_) if !dev.is_cpu() => None,
            _ => bias,
        };
        Ok(Self {
            weight,
            bias,
            in_dim,
            out_dim,
            quant,
        })
    }

    /// Wraps quantised blocks [out, in] of `quant` (after
    /// [`Quant::for_in_dim`]).
    pub fn from_blocks(q: QTensor, bias: Option<Tensor>, quant: Quant) -> Result<Self> {
        let (out_dim, in_dim) = q.shape().dims2()?;
        let packed = match q.dtype() {
            _ if !q.device().is_cpu() || !packed_q4k::available() => None,
            GgmlDType::Q4K if packed_q4k::packable(out_dim, in_dim) => Some(RowFormat::Q4K),
            GgmlDType::Q8_0 if packed_q8_0::packable(out_dim, in_dim) => Some(RowFormat::Q8_0),
            _ => None,
        };
        let weight = if let Some(fmt) = packed {
            let data = q.data()?;
            Weight::Packed(
                fmt,
                match fmt {
                    RowFormat::Q4K => packed_q4k::pack(&data, out_dim, in_dim),
                    _ => packed_q8_0::pack(&data, out_dim, in_dim),
                },
            )
        } else {
            let q = std::sync::Arc::new(q);
            Weight::Quantized(q.clone(), QMatMul::from_arc(q)?)
        };
        Ok(Self {
            weight,
            bias,
            in_dim,
            out_dim,
            quant: quant.for_in_dim(in_dim),
        })
    }

    /// Stacks the weights `<name>.weight` [out_i, in] of `parts` (name,
    /// out_i) under `vb` into one [sum out_i, in] linear without bias.
    /// Quantised parts are quantised as they are read (or taken as stored,
    /// see [`QLinear::load`]), so at most one full-precision part is resident.
    pub fn stacked(
        vb: &VarBuilder,
        parts: &[(&str, usize)],
        in_dim: usize,
        quant: Quant,
    ) -> Result<Self> {
        let read = |(name, rows): (&str, usize)| vb.pp(name).get((rows, in_dim), "weight");
        let rows = parts.iter().map(|p| p.1).sum::<usize>();
        if let (Some(g), true) = (quant.for_in_dim(in_dim).ggml(), vb.device().is_cpu()) {
            let mut bytes = Vec::new();
            let mut views = false;
            for &(name, n) in parts {
                let q = match stored_blocks(&vb.pp(name), "weight", (n, in_dim), g)? {
                    Some(q) => q,
                    None => {
                        let w = read((name, n))?;
                        views |= is_broadcast_view(&w);
                        if views {
                            continue;
                        }
                        quantize_rows(&w, g)?
                    }
                };
                bytes.extend_from_slice(&q.data()?);
            }
            if views {
                // A shape-only backend (see `janus::checkpoint::ShapeRecorder`) hands
                // out zero-stride views and never runs: stay a view.
                let view =
                    Tensor::zeros((), vb.dtype(), vb.device())?.broadcast_as((rows, in_dim))?;
                return Self::from_weight(view, None, quant);
            }
            let q = candle_core::quantized::ggml_file::qtensor_from_ggml(
                g,
                &bytes,
                vec![rows, in_dim],
                &Device::Cpu,
            )?;
            drop(bytes);
            return Self::from_blocks(q, None, quant);
        }
        let parts = parts.iter().map(|&p| read(p)).collect::<Result<Vec<_>>>()?;
        // A shape-only backend (see `janus::checkpoint::ShapeRecorder`) hands out
        // zero-stride views; stacking them would allocate, so stay a view.
        let w = if parts.iter().any(is_broadcast_view) {
            Tensor::zeros((), parts[0].dtype(), parts[0].device())?.broadcast_as((rows, in_dim))?
        } else {
            Tensor::cat(&parts, 0)?
        };
        drop(parts);
        Self::from_weight(w, None, quant)
    }

    /// Input width.
    pub fn in_dim(&self) -> usize {
        self.in_dim
    }

    /// Output width.
    pub fn out_dim(&self) -> usize {
        self.out_dim
    }

    /// The format this weight ended up in.
    pub fn quant(&self) -> Quant {
        self.quant
    }

    /// Bytes held by the weight (not the bias).
    pub fn weight_bytes(&self) -> usize {
        match &self.weight {
            Weight::Plain(l) => l.weight().elem_count() * l.weight().dtype().size_in_bytes(),
            Weight::Bf16(w) => w.elem_count() * 2,
            Weight::Quantized(q, _) => q.storage_size_in_bytes(),
            Weight::Packed(_, p) => p.len(),
        }
    }

    /// The few-row kernel for this weight (any row count for packed ones),
    /// when there is one.
    fn small_format(&self, x: &Tensor) -> Option<RowFormat> {
        if !x.device().is_cpu() || x.dtype() != DType::F32 {
            return None;
        }
        if let Weight::Packed(fmt, _) = self.weight {
            return Some(fmt);
        }
        let m = x.elem_count() / self.in_dim.max(1);
        if m == 0 || m > FEW_ROWS_MAX {
            return None;
        }
        match &self.weight {
            // One row: gemm's own gemv is already at full bandwidth, and it
            // keeps single-token decoding bit-identical to candle's linear.
            Weight::Plain(l)
                if m >= 2 && l.weight().dtype() == DType::F32 && l.weight().is_contiguous() =>
            {
                Some(RowFormat::F32)
            }
            Weight::Bf16(_) => Some(RowFormat::Bf16),
            Weight::Quantized(q, _) => match q.dtype() {
                GgmlDType::Q8_0 => Some(RowFormat::Q8_0),
                GgmlDType::Q4K => Some(RowFormat::Q4K),
                _ => None,
            },
            _ => None,
        }
    }

    fn forward_small(&self, x: &Tensor, fmt: RowFormat) -> Result<Tensor> {
        let (k, n) = (self.in_dim, self.out_dim);
        map_rows(x, k, n, |xv, m, out| {
            let mut with_bytes = |bytes: &[u8]| few_row_matmul(fmt, bytes, xv, m, k, n, out);
            match &self.weight {
                Weight::Plain(l) => {
                    with_cpu_slice::<f32, _>(l.weight(), |v| with_bytes(as_bytes(v)))
                }
                Weight::Bf16(w) => with_cpu_slice::<half::bf16, _>(w, |v| with_bytes(as_bytes(v))),
                Weight::Quantized(q, _) => Ok(with_bytes(&q.data()?)),
                Weight::Packed(RowFormat::Q4K, p) => Ok(packed_q4k::matmul(p, xv, m, k, n, out)),
                Weight::Packed(_, p) => Ok(packed_q8_0::matmul(p, xv, m, k, n, out)),
            }
        })
    }
}

impl QLinear {
    /// Whether many-row calls on `x` go through the bf16 GEMM: a bf16 or
    /// q8_0 / q4_K weight and f32 activations, on a CPU that has the GEMM.
    pub fn uses_bf16_gemm(&self, x: &Tensor) -> bool {
        let weight = match &self.weight {
            Weight::Bf16(_) => true,
            Weight::Quantized(q, _) => matches!(q.dtype(), GgmlDType::Q8_0 | GgmlDType::Q4K),
            Weight::Packed(..) | Weight::Plain(_) => false,
        };
        weight && x.device().is_cpu() && x.dtype() == DType::F32 && bf16_gemm::available()
    }

    /// Whether many-row calls on `x` round the inputs on the CPU: through
    /// the bf16 GEMM, or a packed integer kernel. Layers whose other
    /// products may then be rounded alike (the ViT's fused attention) ask.
    pub fn rounds_inputs(&self, x: &Tensor) -> bool {
        let packed = matches!(self.weight, Weight::Packed(..));
        self.uses_bf16_gemm(x) || (packed && x.device().is_cpu() && x.dtype() == DType::F32)
    }

    /// `x Wᵀ` through the bf16 GEMM (inputs rounded to bf16, f32 sums, as
    /// PyTorch's bf16 matmuls; quantised weights dequantised panel by
    /// panel), then `epilogue` over each output row. Only where
    /// [`QLinear::uses_bf16_gemm`].
    fn bf16_gemm_product(
        &self,
        x: &Tensor,
        epilogue: Option<&(dyn Fn(&mut [f32]) + Sync)>,
    ) -> Result<Tensor> {
        use candle_core::quantized::k_quants::{BlockQ4K, BlockQ8_0};
        use rayon::prelude::*;
        let (n, k) = (self.out_dim, self.in_dim);
        let run = |rhs: &Rhs| {
            map_rows(x, k, n, |xv, m, out| {
                bf16_gemm::gemm(m, n, k, xv, k, rhs, out, n, false, true);
                if let Some(f) = epilogue {
                    out.par_chunks_mut(n).for_each(f);
                }
                Ok(())
            })
        };
        match &self.weight {
            Weight::Bf16(w) => {
                with_cpu_slice::<half::bf16, _>(w, |wv| run(&Rhs::Bf16Rows { data: wv, ld: k }))?
            }
            Weight::Quantized(q, _) => {
                let data = q.data()?;
                let row: &(dyn Fn(usize, usize, &mut [f32]) + Sync) = match q.dtype() {
                    GgmlDType::Q8_0 => &|j, l0, out| dequant_row::<BlockQ8_0>(&data, k, j, l0, out),
                    _ => &|j, l0, out| dequant_row::<BlockQ4K>(&data, k, j, l0, out),
                };
                run(&Rhs::Rows(row))
            }
            Weight::Packed(..) | Weight::Plain(_) => {
                candle_core::bail!("the bf16 GEMM takes bf16 or GGUF-layout quantised weights")
            }
        }
    }

    /// `gelu(x Wᵀ + b)` with the exact (erf) GELU, as `nn.GELU()`. Through
    /// the bf16 GEMM the bias and the activation are applied in one pass
    /// over the product.
    pub fn forward_gelu(&self, x: &Tensor) -> Result<Tensor> {
        if !self.uses_bf16_gemm(x) {
            return self.forward(x)?.gelu_erf();
        }
        let bias = match &self.bias {
            Some(b) => b.to_dtype(DType::F32)?.to_vec1::<f32>()?,
            None => vec![0.0; self.out_dim],
        };
        // Two loops, not a branch per element, so each vectorises.
        self.bf16_gemm_product(
            x,
            Some(&|row: &mut [f32]| {
                for (y, &b) in row.iter_mut().zip(&bias) {
                    *y = gelu_erf(*y + b);
                }
            }),
        )
    }
}

fn as_bytes<T: Copy>(v: &[T]) -> &[u8] {
    // SAFETY: plain-old-data slices (f32, bf16) viewed as their bytes.
    unsafe { std::slice::from_raw_parts(v.as_ptr() as *const u8, std::mem::size_of_val(v)) }
}

impl Module for QLinear {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let y = if let Some(fmt) = self.small_format(x) {
            self.forward_small(x, fmt)?
        } else {
            match &self.weight {
                // Exactly candle_nn::Linear (the bias is added below, as
                // Linear does: broadcast_add after the matmul).
                Weight::Plain(l) => l.forward(x)?,
                Weight::Bf16(_) | Weight::Quantized(..) if self.uses_bf16_gemm(x) => {
                    self.bf16_gemm_product(x, None)?
                }
                Weight::Bf16(w) => bf16_large_matmul(w, x)?,
                // Packed only on the CPU, where activations are f32; any
                // other dtype passes through f32.
                Weight::Packed(fmt, _) => self
                    .forward_small(&x.to_dtype(DType::F32)?, *fmt)?
                    .to_dtype(x.dtype())?,
                Weight::Quantized(q, qm) => {
                    let x = if x.is_contiguous() {
                        x.clone()
                    } else {
                        x.contiguous()?
                    };
                    if x.device().is_cpu() && large_matmul_weight_only(q.dtype()) {
                        quant_large_matmul(q, &x)?
                    } else if x.device().is_cpu() {
                        // candle's CPU kernels repack the weight into a cache
                        // kept as long as the tensor: as large as the weight
                        // itself. Repack a short-lived copy instead, so many-row
                        // calls (prefill) stay fast without doubling the memory.
                        let copy = candle_core::quantized::ggml_file::qtensor_from_ggml(
                            q.dtype(),
                            &q.data()?,
                            q.shape().dims().to_vec(),
                            &Device::Cpu,
                        )?;
                        QMatMul::from_qtensor(copy)?.forward(&x)?
                    } else {
                        qm.forward(&x)?
                    }
                }
            }
        };
        match &self.bias {
            Some(b) => y.broadcast_add(b),
            None => Ok(y),
        }
    }
}

/// Many-row quantised matmuls on CPUs without the bf16 GEMM: weight-only
/// dequantisation + f32 gemm (more accurate: the activations are not
/// rounded) or candle's integer kernels, which round the activations to 8
/// bits (see [`janus_kernels::cpu::QuantPrefill`]). By default q8_0 is
/// dequantised unless candle has VNNI dot products for it (candle has no
/// AVX2 q8_0 kernel of its own); q4_K keeps candle's AVX2 kernel.
fn large_matmul_weight_only(dtype: GgmlDType) -> bool {
    let d = dispatch();
    match d.quant_prefill {
        Some(QuantPrefill::Dequantise) => true,
        Some(QuantPrefill::Int8) => false,
        None => dtype == GgmlDType::Q8_0 && !d.candle_int8_dot,
    }
}

/// Many rows through a bf16 weight without the bf16 GEMM: bands of weight
/// rows are widened into one reused f32 buffer (no full-size f32 copy, no
/// fresh pages per call), each followed by one f32 gemm.
fn bf16_large_matmul(w: &Tensor, x: &Tensor) -> Result<Tensor> {
    let (n, k) = w.dims2()?;
    with_cpu_slice::<half::bf16, _>(w, |wv| {
        banded_matmul(x, n, k, |j0, band| {
            widen_bf16(&wv[j0 * k..j0 * k + band.len()], band)
        })
    })?
}

/// Many rows through a quantised weight, weight-only: bands are dequantised
/// to f32 and multiplied by gemm (activations are not quantised, unlike
/// candle's integer kernels).
fn quant_large_matmul(q: &QTensor, x: &Tensor) -> Result<Tensor> {
    use candle_core::quantized::k_quants::{BlockQ4K, BlockQ8_0};
    let (n, k) = q.shape().dims2()?;
    let data = q.data()?;
    fn fill<T: candle_core::quantized::k_quants::GgmlType>(
        data: &[u8],
        k: usize,
        j0: usize,
        band: &mut [f32],
    ) {
        use rayon::prelude::*;
        band.par_chunks_mut(k)
            .enumerate()
            .for_each(|(r, d)| dequant_row::<T>(data, k, j0 + r, 0, d));
    }
    match q.dtype() {
        GgmlDType::Q8_0 => banded_matmul(x, n, k, |j0, band| fill::<BlockQ8_0>(&data, k, j0, band)),
        GgmlDType::Q4K => banded_matmul(x, n, k, |j0, band| fill::<BlockQ4K>(&data, k, j0, band)),
        _ => x.broadcast_matmul(&q.dequantize(&Device::Cpu)?.t()?),
    }
}

/// `x [.., k] W^T` for a weight [n, k] delivered band by band (`fill(j0, band)`
/// writes rows j0.. as f32) into one reused buffer, one f32 gemm per band.
fn banded_matmul(
    x: &Tensor,
    n: usize,
    k: usize,
    fill: impl Fn(usize, &mut [f32]),
) -> Result<Tensor> {
    map_rows(x, k, n, |xv, m, out| {
        const BAND: usize = 256;
        let mut buf = vec![0f32; BAND.min(n) * k];
        let par = parallelism();
        let mut j0 = 0;
        while j0 < n {
            let nb = BAND.min(n - j0);
            let band = &mut buf[..nb * k];
            fill(j0, band);
            // out[:, j0..j0+nb] = x [m, k] * band^T [k, nb]
            gemm_f32_transposed((m, nb, k), xv, band, &mut out[j0..], n, par);
            j0 += nb;
        }
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rel(a: &Tensor, b: &Tensor) -> f64 {
        janus_kernels::tensor::rel_l2(a, b).unwrap()
    }

    #[test]
    fn parse_names() {
        assert_eq!(Quant::parse("q8_0").unwrap(), Quant::Q8_0);
        assert_eq!(Quant::parse("Q4K").unwrap(), Quant::Q4K);
        assert_eq!(Quant::parse("none").unwrap(), Quant::None);
        assert!(Quant::parse("q3").is_err());
        assert_eq!(Quant::Q4K.for_in_dim(2048), Quant::Q4K);
        assert_eq!(Quant::Q4K.for_in_dim(64), Quant::Q8_0);
        assert_eq!(Quant::Q8_0.for_in_dim(176), Quant::None);
    }

    #[test]
    fn bf16_and_quantized_linears_track_f32() {
        let w = janus_kernels::random::randn(0f32, 0.05, (96, 512), 1).unwrap();
        let b = janus_kernels::random::randn(0f32, 0.05, 96, 2).unwrap();
        let exact = QLinear::from_weight(w.clone(), Some(b.clone()), Quant::None).unwrap();
        let wb = w.to_dtype(DType::BF16).unwrap();
        let lin_bf16 = QLinear::from_weight(wb, Some(b.clone()), Quant::None).unwrap();
        let q8 = QLinear::from_weight(w.clone(), Some(b.clone()), Quant::Q8_0).unwrap();
        let q4 = QLinear::from_weight(w.clone(), Some(b.clone()), Quant::Q4K).unwrap();
        assert_eq!(q4.quant(), Quant::Q4K);
        // Few rows take the direct kernels, many rows the widened gemm.
        for rows in [1usize, 3, 9, 40] {
            let x = janus_kernels::random::randn(0f32, 1.0, (1, rows, 512), 3).unwrap();
            let want = exact.forward(&x).unwrap();
            let want_ref = x
                .matmul(&w.t().unwrap().unsqueeze(0).unwrap())
                .unwrap()
                .broadcast_add(&b)
                .unwrap();
            assert!(rel(&want, &want_ref) < 1e-6);
            assert!(
                rel(&lin_bf16.forward(&x).unwrap(), &want) < 1e-2,
                "bf16 rows {rows}"
            );
            assert!(
                rel(&q8.forward(&x).unwrap(), &want) < 2e-2,
                "q8_0 rows {rows}"
            );
            assert!(
                rel(&q4.forward(&x).unwrap(), &want) < 0.12,
                "q4k rows {rows}"
            );
        }
    }
}
