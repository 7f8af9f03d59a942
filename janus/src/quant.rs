//! Weight formats of the language model and image head, chosen at load:
//! full precision (`f32`, exact), `bf16` weights computed in f32, or
//! quantised weights (`q8_0`, `q4k`) through candle's quantized matmul.
//!
//! Quantisation is done at load, tensor by tensor, from whatever the
//! checkpoint stores: no separate file is needed, and no full-precision copy
//! of a quantised weight stays in memory. A folder saved by
//! [`crate::gguf::save_quantized`] holds the blocks already; they are taken
//! as stored. On the CPU activations are always
//! f32: candle has no fast bf16 kernels there, so a bf16 weight is read as
//! bf16 (half the bytes of f32) and widened inside the kernel.

use std::fmt;

use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
use candle_core::{DType, Device, Module, Result, Tensor};
use candle_nn::VarBuilder;
use janus_kernels::bf16_gemm::{self, Rhs};
pub use janus_kernels::blocks::is_broadcast_view;
use janus_kernels::blocks::{dequant_row, quantize_rows, stored_blocks};
use janus_kernels::tensor::{map_rows, with_cpu_slice};

/// Quantisation of the language model's and image head's linear weights and
/// the token embeddings (with any of them, the vision tower's linears take q8_0).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Quant {
    /// Weights in the load dtype (`f32` or `bf16`).
    #[default]
    None,
    /// 8-bit blocks of 32 with one f16 scale (8.5 bits per weight).
    Q8_0,
    /// 4-bit k-quant: super-blocks of 256 with 6-bit sub-block scales (4.5 bits per weight).
    Q4K,
}

impl Quant {
    /// `none`, `q8_0` (`q8`) or `q4k` (`q4_k`, `q4`).
    pub fn parse(name: &str) -> std::result::Result<Self, String> {
        match name.trim().to_ascii_lowercase().as_str() {
            "none" | "" => Ok(Self::None),
            "q8_0" | "q8" => Ok(Self::Q8_0),
            "q4k" | "q4_k" | "q4" => Ok(Self::Q4K),
            other => Err(format!(
                "unknown quantisation {other:?} (expected none, q8_0 or q4k)"
            )),
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Q8_0 => "q8_0",
            Self::Q4K => "q4k",
        }
    }

    pub(crate) fn ggml(&self) -> Option<GgmlDType> {
        match self {
            Self::None => None,
            Self::Q8_0 => Some(GgmlDType::Q8_0),
            Self::Q4K => Some(GgmlDType::Q4K),
        }
    }

    /// The format actually used for a weight whose rows have `in_dim`
    /// values: a row must hold whole blocks, so a 4-bit weight whose rows do
    /// not split into 256-value super-blocks falls back to q8_0, and one that
    /// does not split into 32-value blocks stays unquantised (only tiny test
    /// models have such sizes).
    pub fn for_in_dim(&self, in_dim: usize) -> Quant {
        match self {
            Self::Q4K if in_dim % 256 == 0 => Self::Q4K,
            Self::Q4K | Self::Q8_0 if in_dim % 32 == 0 => Self::Q8_0,
            _ => Self::None,
        }
    }
}

impl fmt::Display for Quant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Quant {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        Self::parse(s)
    }
}

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
    /// candle's quantized matmul, few rows through [`small_matmul`], which
    /// reads the same blocks and keeps the activations in f32.
    Quantized(std::sync::Arc<QTensor>, QMatMul),
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
    pub(crate) fn from_blocks(q: QTensor, bias: Option<Tensor>, quant: Quant) -> Result<Self> {
        let (out_dim, in_dim) = q.shape().dims2()?;
        let q = std::sync::Arc::new(q);
        Ok(Self {
            weight: Weight::Quantized(q.clone(), QMatMul::from_arc(q)?),
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
                // A shape-only backend (see `weights::ShapeRecorder`) hands
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
        // A shape-only backend (see `weights::ShapeRecorder`) hands out
        // zero-stride views; stacking them would allocate, so stay a view.
        let w = if parts.iter().any(is_broadcast_view) {
            Tensor::zeros((), parts[0].dtype(), parts[0].device())?.broadcast_as((rows, in_dim))?
        } else {
            Tensor::cat(&parts, 0)?
        };
        drop(parts);
        Self::from_weight(w, None, quant)
    }

    pub fn in_dim(&self) -> usize {
        self.in_dim
    }

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
        }
    }

    /// The few-row kernel for this weight, when there is one.
    fn small_format(&self, x: &Tensor) -> Option<Fmt> {
        if !x.device().is_cpu() || x.dtype() != DType::F32 {
            return None;
        }
        let m = x.elem_count() / self.in_dim.max(1);
        if m == 0 || m > SMALL_MAX_ROWS {
            return None;
        }
        match &self.weight {
            // One row: gemm's own gemv is already at full bandwidth, and it
            // keeps single-token decoding bit-identical to candle's linear.
            Weight::Plain(l)
                if m >= 2 && l.weight().dtype() == DType::F32 && l.weight().is_contiguous() =>
            {
                Some(Fmt::F32)
            }
            Weight::Bf16(_) => Some(Fmt::Bf16),
            Weight::Quantized(q, _) => match q.dtype() {
                GgmlDType::Q8_0 => Some(Fmt::Q8_0),
                GgmlDType::Q4K => Some(Fmt::Q4K),
                _ => None,
            },
            _ => None,
        }
    }

    fn forward_small(&self, x: &Tensor, fmt: Fmt) -> Result<Tensor> {
        let (k, n) = (self.in_dim, self.out_dim);
        map_rows(x, k, n, |xv, m, out| {
            let mut with_bytes = |bytes: &[u8]| small_matmul(fmt, bytes, xv, m, k, n, out);
            match &self.weight {
                Weight::Plain(l) => {
                    with_cpu_slice::<f32, _>(l.weight(), |v| with_bytes(as_bytes(v)))
                }
                Weight::Bf16(w) => with_cpu_slice::<half::bf16, _>(w, |v| with_bytes(as_bytes(v))),
                Weight::Quantized(q, _) => Ok(with_bytes(&q.data()?)),
            }
        })
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
                Weight::Bf16(w) if bf16_gemm::available() => {
                    let (n, k) = (self.out_dim, self.in_dim);
                    with_cpu_slice::<half::bf16, _>(w, |wv| {
                        map_rows(x, k, n, |xv, m, out| {
                            let rhs = Rhs::Bf16Rows { data: wv, ld: k };
                            bf16_gemm::gemm(m, n, k, xv, k, &rhs, out, n, false, true);
                            Ok(())
                        })
                    })??
                }
                Weight::Bf16(w) => bf16_large_matmul(w, x)?,
                Weight::Quantized(q, _) if x.device().is_cpu() && bf16_gemm::available() => {
                    quant_bf16_matmul(q, x)?
                }
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
/// rounded) or candle's integer kernels, which quantise the activations to
/// 8 bits. `JANUS_QUANT_PREFILL=dequant` / `=int8` picks one; by default
/// q8_0 is dequantised unless candle has VNNI dot products for it. Measured
/// on a 620-token prefill (1B, 2 threads): with VNNI candle took 4.0 s
/// against 6.9 s dequantised; capped to AVX2 it took 37.7 s (no q8_0
/// kernel of its own there), dequantised 7.0 s. q4_K has candle's AVX2
/// kernel (6.2 s against 6.7 s).
fn large_matmul_weight_only(dtype: GgmlDType) -> bool {
    // (forced choice, candle's q8_0 dot product), read once.
    static F: std::sync::OnceLock<(Option<bool>, bool)> = std::sync::OnceLock::new();
    let (forced, int8_dot) = *F.get_or_init(|| {
        let forced = match std::env::var("JANUS_QUANT_PREFILL").as_deref() {
            Ok("dequant") => Some(true),
            Ok("int8") => Some(false),
            _ => None,
        };
        (forced, candle_has_int8_dot())
    });
    forced.unwrap_or(dtype == GgmlDType::Q8_0 && !int8_dot)
}

/// Whether candle's CPU kernels multiply q8_0 blocks with VNNI (AVX-512 or
/// AVX-VNNI), following its own choice (which `MISTRALRS_FORCE_AVX2=1`
/// caps) and `JANUS_CPU`. Elsewhere than x86-64 its packed kernels are
/// taken as they come.
fn candle_has_int8_dot() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::is_x86_feature_detected as has;
        std::env::var("MISTRALRS_FORCE_AVX2").as_deref() != Ok("1")
            && janus_kernels::cpu::avx2()
            && ((janus_kernels::cpu::avx512() && has!("avx512vnni")) || has!("avxvnni"))
    }
    #[cfg(not(target_arch = "x86_64"))]
    true
}

/// Whether the q4_K few-row kernel multiplies with AVX-512-VNNI.
pub(crate) fn vnni_available() -> bool {
    avx512::vnni_available()
}

/// Rows up to which the direct kernels are used (decoding: 1 row per
/// sequence, CFG pairs); above, the matmul is compute bound and goes to gemm
/// or candle's quantized matmul.
const SMALL_MAX_ROWS: usize = 16;

/// Many rows through a bf16 weight without the bf16 GEMM: bands of weight
/// rows are widened into one reused f32 buffer (no full-size f32 copy, no
/// fresh pages per call), each followed by one f32 gemm.
fn bf16_large_matmul(w: &Tensor, x: &Tensor) -> Result<Tensor> {
    let (n, k) = w.dims2()?;
    with_cpu_slice::<half::bf16, _>(w, |wv| {
        banded_matmul(x, n, k, |j0, band| {
            janus_kernels::tensor::widen_bf16(&wv[j0 * k..j0 * k + band.len()], band)
        })
    })?
}

/// Many rows through a quantised weight with the bf16 GEMM: each packed
/// panel is dequantised on the fly (weight error of the 8/4-bit blocks plus
/// bf16 rounding; the activations stay far more precise than candle's 8-bit
/// activation quantisation).
fn quant_bf16_matmul(q: &QTensor, x: &Tensor) -> Result<Tensor> {
    use candle_core::quantized::k_quants::{BlockQ4K, BlockQ8_0};
    let (n, k) = q.shape().dims2()?;
    let data = q.data()?;
    let row: &(dyn Fn(usize, usize, &mut [f32]) + Sync) = match q.dtype() {
        GgmlDType::Q8_0 => &|j, l0, out| dequant_row::<BlockQ8_0>(&data, k, j, l0, out),
        GgmlDType::Q4K => &|j, l0, out| dequant_row::<BlockQ4K>(&data, k, j, l0, out),
        _ => return x.broadcast_matmul(&q.dequantize(&Device::Cpu)?.t()?),
    };
    map_rows(x, k, n, |xv, m, out| {
        bf16_gemm::gemm(m, n, k, xv, k, &Rhs::Rows(row), out, n, false, true);
        Ok(())
    })
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
        let threads = rayon::current_num_threads();
        let par = if threads > 1 {
            gemm::Parallelism::Rayon(threads)
        } else {
            gemm::Parallelism::None
        };
        let mut j0 = 0;
        while j0 < n {
            let nb = BAND.min(n - j0);
            let band = &mut buf[..nb * k];
            fill(j0, band);
            // out[:, j0..j0+nb] = x [m, k] * band^T [k, nb]
            // SAFETY: all pointers cover the stated shapes and strides.
            unsafe {
                gemm::gemm(
                    m,
                    nb,
                    k,
                    out.as_mut_ptr().add(j0),
                    1,
                    n as isize,
                    false,
                    xv.as_ptr(),
                    1,
                    k as isize,
                    band.as_ptr(),
                    k as isize,
                    1,
                    0f32,
                    1f32,
                    false,
                    false,
                    false,
                    par,
                )
            };
            j0 += nb;
        }
        Ok(())
    })
}

/// Weight formats of the few-row kernels; rows are stored one after another.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fmt {
    F32,
    Bf16,
    /// GGUF Q8_0 blocks: f16 scale + 32 i8 (34 bytes per 32 weights).
    Q8_0,
    /// GGUF Q4_K super-blocks: f16 d, f16 dmin, 12 bytes of 6-bit scales/mins, 128 bytes of nibbles.
    Q4K,
}

impl Fmt {
    fn row_bytes(&self, k: usize) -> usize {
        match self {
            Fmt::F32 => 4 * k,
            Fmt::Bf16 => 2 * k,
            Fmt::Q8_0 => k / 32 * 34,
            Fmt::Q4K => k / 256 * 144,
        }
    }
}

struct SendPtr(*mut f32);
unsafe impl Send for SendPtr {}
unsafe impl Sync for SendPtr {}

/// `out[i, j] = sum_l x[i, l] * W[j, l]` for few rows `m`: every weight
/// row is decoded once per 8 input rows, output columns split across threads.
fn small_matmul(fmt: Fmt, w: &[u8], x: &[f32], m: usize, k: usize, n: usize, out: &mut [f32]) {
    use rayon::prelude::*;
    let rb = fmt.row_bytes(k);
    assert!(w.len() >= rb * n && x.len() >= m * k && out.len() >= m * n);
    if !avx512::available() {
        if fmt == Fmt::Q4K && k % 256 == 0 && janus_kernels::cpu::avx2() {
            return small_matmul_q4k_int8(w, x, m, k, n, out);
        }
        // Three or more rows: the integer kernel (8 rows 0.165 -> 0.12 s per
        // image step). With one or two the portable one reads the weights
        // as fast (0.044 s) and keeps the inputs unrounded.
        if fmt == Fmt::Q8_0 && m >= 3 && janus_kernels::cpu::avx2() {
            return small_matmul_q8_0_i16(w, x, m, k, n, out);
        }
        return column_runs::<8>(w, rb, m, n, out, |run, i0, rows, acc| {
            portable::dot_rows(fmt, run, rb, &x[i0 * k..], k, rows, acc)
        });
    }
    if m >= 3 && fmt == Fmt::Bf16 && k % 32 == 0 && bf16_gemm::available() {
        return small_matmul_bf16_dot(w, x, m, k, n, out);
    }
    if fmt == Fmt::Q4K && k % 256 == 0 && avx512::vnni_available() {
        return small_matmul_q4k_int8(w, x, m, k, n, out);
    }
    if fmt == Fmt::Q8_0 {
        return small_matmul_q8_0_i16(w, x, m, k, n, out);
    }
    const COLS: usize = 32;
    let ptr = SendPtr(out.as_mut_ptr());
    let ptr = &ptr;
    (0..n.div_ceil(COLS)).into_par_iter().for_each(|b| {
        let (j0, j1) = (b * COLS, ((b + 1) * COLS).min(n));
        let mut j = j0;
        // Three or more input rows: tiles of 4 weight rows x 4 input rows,
        // so each input vector load feeds four weight rows.
        if m >= 3 {
            let mut acc4 = [[0f32; 4]; 4];
            while j + 4 <= j1 {
                for i0 in (0..m).step_by(4) {
                    let rows = (m - i0).min(4);
                    avx512::dot4(
                        fmt,
                        &w[j * rb..(j + 4) * rb],
                        rb,
                        &x[i0 * k..(i0 + rows) * k],
                        k,
                        rows,
                        &mut acc4,
                    );
                    for (wr, a) in acc4.iter().enumerate() {
                        for r in 0..rows {
                            // SAFETY: (i0 + r, j + wr) is written by this block only, and in bounds.
                            unsafe { *ptr.0.add((i0 + r) * n + j + wr) = a[r] };
                        }
                    }
                }
                j += 4;
            }
        }
        let mut acc = [0f32; 8];
        for j in j..j1 {
            let row = &w[j * rb..(j + 1) * rb];
            for i0 in (0..m).step_by(8) {
                let rows = (m - i0).min(8);
                avx512::dot(fmt, row, &x[i0 * k..(i0 + rows) * k], k, rows, &mut acc);
                for r in 0..rows {
                    // SAFETY: (i0 + r, j) is written by this block only, and in bounds.
                    unsafe { *ptr.0.add((i0 + r) * n + j) = acc[r] };
                }
            }
        }
    });
}

/// [`small_matmul`] for three or more rows of bf16 weights on CPUs with
/// AVX-512-BF16. With several images generated at once the f32 kernels are
/// bound by FMA throughput, not memory: here the bf16 weights are
/// multiplied with `vdpbf16ps` (twice the multiply-adds per instruction)
/// against the input rows rounded to bf16, as the many-row GEMM does; four
/// weight rows meet all (up to 16) input rows in one pass over the weights
/// ([`avx512::dot4_bf16_rows`]). (Variants decoding q8_0 / q4_K blocks into
/// bf16 pairs were slower than the integer and f32 kernels.)
fn small_matmul_bf16_dot(w: &[u8], x: &[f32], m: usize, k: usize, n: usize, out: &mut [f32]) {
    let rb = Fmt::Bf16.row_bytes(k);
    let xb = avx512::bf16_pairs(&x[..m * k]);
    let words = k / 2;
    column_runs::<16>(w, rb, m, n, out, |run, i0, rows, acc| {
        let cols = acc.len();
        for j in (0..cols).step_by(4) {
            // Past the last row, the last row again; those sums are dropped.
            let rows4 = [0, 1, 2, 3].map(|c| {
                let jc = (j + c).min(cols - 1);
                &run[jc * rb..(jc + 1) * rb]
            });
            let mut sums = [[0f32; 16]; 4];
            avx512::dot4_bf16_rows(rows4, &xb[i0 * words..], k, rows, &mut sums);
            acc[j..].iter_mut().zip(sums).for_each(|(a, s)| *a = s);
        }
    });
}

/// Input rows quantised for the integer q4_K kernel, as llama.cpp's q8_K:
/// per 256 values an f32 scale and 256 i8 (stored in the order the kernel
/// unpacks q4_K nibbles: see [`avx512::dot_q4k_int8`]), and per 32 values the
/// sum of the rounded values (for the blocks' minimum terms), eight per block
/// after eight zeros (the lanes the kernel multiplies with the minimums).
pub(crate) struct Int8Rows {
    q: Vec<i8>,
    scale: Vec<f32>,
    sums: Vec<f32>,
}

impl InputRows for Int8Rows {
    const FMT: Fmt = Fmt::Q4K;

    fn new(x: &[f32], m: usize, k: usize) -> Self {
        let blocks = m * k / 256;
        let mut this = Self {
            q: vec![0; m * k],
            scale: vec![0.0; blocks],
            sums: vec![0.0; blocks * 16],
        };
        for (b, xb) in x[..m * k].chunks_exact(256).enumerate() {
            let amax = abs_max(xb);
            let d = amax / 127.0;
            let id = if d > 0.0 { 1.0 / d } else { 0.0 };
            this.scale[b] = d;
            // Values 128h + 64p + 32n.. (half h, pair p, nibble n: low or
            // high) go to bytes 128h + 64n + 32p.., 32 at a time (so the
            // loop vectorises).
            let q = &mut this.q[b * 256..b * 256 + 256];
            let mut sums = [0i32; 8];
            for (sub, sum) in sums.iter_mut().enumerate() {
                let (h, p, n) = (sub / 4, sub / 2 % 2, sub % 2);
                let dst = &mut q[128 * h + 64 * n + 32 * p..][..32];
                for (d, &xv) in dst.iter_mut().zip(&xb[32 * sub..32 * sub + 32]) {
                    *d = nearest(xv * id) as i8;
                }
                *sum = dst.iter().map(|&r| r as i32).sum();
            }
            // Sums of the rounded values, not of x: the minimum terms then
            // cancel against the rounded products exactly, and the result is
            // the dequantised weights times the rounded inputs.
            for (s, q) in this.sums[b * 16 + 8..b * 16 + 16].iter_mut().zip(sums) {
                *s = d * q as f32;
            }
        }
        this
    }
}

/// The nearest integer to `v` (ties to even) for |v| < 2^22, by the
/// float-add trick (llama.cpp's `nearest_int`): `f32::round` is a libm call
/// per value on baseline x86-64, and this vectorises.
#[inline(always)]
fn nearest(v: f32) -> i32 {
    (v + 12582912.0).to_bits() as i32 - 0x4B40_0000
}

/// The largest |value| of `xs`, NaN if one is NaN or infinite: its chunk's
/// scale then makes the row's sums NaN, as f32 arithmetic would, instead
/// of rounding the value to some integer.
fn abs_max(xs: &[f32]) -> f32 {
    // `f32::max` skips NaN; v * 0 is NaN exactly for NaN and infinities.
    // Sixteen independent lanes, so both loops vectorise.
    let mut bad = [0f32; 16];
    let mut it = xs.chunks_exact(16);
    for c in &mut it {
        for (b, &v) in bad.iter_mut().zip(c) {
            *b += v * 0.0;
        }
    }
    let rest: f32 = it.remainder().iter().map(|&v| v * 0.0).sum();
    xs.iter().fold(0f32, |a, v| a.max(v.abs())) + bad.iter().sum::<f32>() + rest
}

/// [`small_matmul`] for q4_K weights on CPUs with AVX-512-VNNI or AVX2: the
/// input rows are quantised to 8 bits per 256 values (as llama.cpp does;
/// about 0.7 % error against 4-bit weights' ~8 %) and each block is integer
/// dot products per nibble half (`vpdpbusd`; `vpmaddubsw` + `vpmaddwd` on
/// AVX2), instead of widening every weight to f32. The f32 kernels are
/// bound by that widening, well above the time it takes to read the
/// weights.
fn small_matmul_q4k_int8(w: &[u8], x: &[f32], m: usize, k: usize, n: usize, out: &mut [f32]) {
    let kernel = if avx512::vnni_available() {
        avx512::dot_q4k_int8
    } else {
        avx2::dot_q4k_int8
    };
    integer_runs(kernel, w, x, m, k, n, out)
}

/// Input rows rounded for an integer kernel of one weight format.
trait InputRows: Sync + Sized {
    /// The weight format whose kernels take these rows.
    const FMT: Fmt;
    /// `x`'s `m` rows of `k` values, rounded.
    fn new(x: &[f32], m: usize, k: usize) -> Self;
}

/// A few-row integer kernel (one of the builds): `acc[c][r]` for the run's
/// weight rows `c` and the prepared input rows `i0 + r`.
type IntegerKernel<X> = fn(&[u8], &X, usize, usize, usize, &mut [[f32; 8]]);

/// [`small_matmul`] through an integer `kernel`: the input rows are
/// prepared once, then threads take runs of weight rows.
fn integer_runs<X: InputRows>(
    kernel: IntegerKernel<X>,
    w: &[u8],
    x: &[f32],
    m: usize,
    k: usize,
    n: usize,
    out: &mut [f32],
) {
    let xq = X::new(x, m, k);
    column_runs::<8>(w, X::FMT.row_bytes(k), m, n, out, |wc, i0, rows, acc| {
        kernel(wc, &xq, i0, rows, k, acc)
    });
}

/// `out [m, n]` of a few-row kernel: threads take runs of 32 weight rows
/// (`rb` bytes each) and `kernel(run, i0, rows, acc)` fills `acc[c][r]`
/// with the dot product of the run's row c and input row `i0 + r`, for up
/// to `G` input rows at a time.
fn column_runs<const G: usize>(
    w: &[u8],
    rb: usize,
    m: usize,
    n: usize,
    out: &mut [f32],
    kernel: impl Fn(&[u8], usize, usize, &mut [[f32; G]]) + Sync,
) {
    use rayon::prelude::*;
    const COLS: usize = 32;
    assert!(w.len() >= rb * n && out.len() >= m * n);
    let ptr = SendPtr(out.as_mut_ptr());
    let ptr = &ptr;
    (0..n.div_ceil(COLS)).into_par_iter().for_each(|b| {
        let (j0, j1) = (b * COLS, ((b + 1) * COLS).min(n));
        let mut acc = [[0f32; G]; COLS];
        let acc = &mut acc[..j1 - j0];
        for i0 in (0..m).step_by(G) {
            let rows = (m - i0).min(G);
            kernel(&w[j0 * rb..j1 * rb], i0, rows, acc);
            for (c, a) in acc.iter().enumerate() {
                for (r, v) in a[..rows].iter().enumerate() {
                    // SAFETY: (i0 + r, j0 + c) is written by this block only, and in bounds.
                    unsafe { *ptr.0.add((i0 + r) * n + j0 + c) = *v };
                }
            }
        }
    });
}

/// Input rows rounded to 16-bit integers for the q8_0 few-row kernel: one
/// f32 scale (amax / 32767) per chunk of 256 values (32 where the row length
/// is not a multiple of 256), so the rounding (at most 2^-16 of the largest
/// value nearby) stays far below the 8-bit weights' own.
pub(crate) struct Int16Rows {
    q: Vec<i16>,
    scale: Vec<f32>,
    // Read by the x86-64 kernel only.
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    chunk: usize,
}

impl InputRows for Int16Rows {
    const FMT: Fmt = Fmt::Q8_0;

    fn new(x: &[f32], m: usize, k: usize) -> Self {
        let chunk = if k % 256 == 0 { 256 } else { 32 };
        let mut this = Self {
            q: vec![0; m * k],
            scale: vec![0.0; m * k / chunk],
            chunk,
        };
        for ((xb, q), d) in x[..m * k]
            .chunks_exact(chunk)
            .zip(this.q.chunks_exact_mut(chunk))
            .zip(this.scale.iter_mut())
        {
            let amax = abs_max(xb);
            *d = amax / 32767.0;
            let id = if amax > 0.0 { 32767.0 / amax } else { 0.0 };
            for (q, &v) in q.iter_mut().zip(xb) {
                *q = nearest(v * id) as i16;
            }
        }
        this
    }
}

/// [`small_matmul`] for q8_0 weights: the input rows rounded to 16 bits
/// ([`Int16Rows`]) meet each block widened to 16 bits in one `vpmaddwd`
/// per row. Widening every weight to f32 instead (two conversions per 16
/// weights) bound the f32 kernel well above the time it takes to read the
/// weights: per LLM step with 2 / 8 rows 0.036 / 0.088 s, here 0.026 /
/// 0.067 s (2 threads). On AVX2 (two `vpmaddwd` per block and row) it
/// serves three rows and more.
fn small_matmul_q8_0_i16(w: &[u8], x: &[f32], m: usize, k: usize, n: usize, out: &mut [f32]) {
    let kernel = if avx512::available() {
        avx512::dot_q8_0_i16
    } else {
        avx2::dot_q8_0_i16
    };
    integer_runs(kernel, w, x, m, k, n, out)
}

/// `$f::<rows>(args)` for `rows` in 1..=8 (8 for anything above).
macro_rules! by_rows {
    ($rows:expr, $f:ident($($a:expr),*)) => {
        match $rows {
            1 => $f::<1>($($a),*),
            2 => $f::<2>($($a),*),
            3 => $f::<3>($($a),*),
            4 => $f::<4>($($a),*),
            5 => $f::<5>($($a),*),
            6 => $f::<6>($($a),*),
            7 => $f::<7>($($a),*),
            _ => $f::<8>($($a),*),
        }
    };
}

#[cfg(target_arch = "x86_64")]
mod avx2;
#[cfg(target_arch = "x86_64")]
mod avx512;
mod portable;

#[cfg(not(target_arch = "x86_64"))]
mod avx2 {
    pub fn dot_q8_0_i16(
        _: &[u8],
        _: &super::Int16Rows,
        _: usize,
        _: usize,
        _: usize,
        _: &mut [[f32; 8]],
    ) {
        unreachable!("gated by janus_kernels::cpu::avx2()")
    }
    pub fn dot_q4k_int8(
        _: &[u8],
        _: &super::Int8Rows,
        _: usize,
        _: usize,
        _: usize,
        _: &mut [[f32; 8]],
    ) {
        unreachable!("gated by janus_kernels::cpu::avx2()")
    }
}

#[cfg(not(target_arch = "x86_64"))]
mod avx512 {
    use super::Fmt;
    pub fn available() -> bool {
        false
    }
    pub fn dot(_: Fmt, _: &[u8], _: &[f32], _: usize, _: usize, _: &mut [f32; 8]) {
        unreachable!("gated by available()")
    }
    pub fn dot4(_: Fmt, _: &[u8], _: usize, _: &[f32], _: usize, _: usize, _: &mut [[f32; 4]; 4]) {
        unreachable!("gated by available()")
    }
    pub fn bf16_pairs(_: &[f32]) -> Vec<u32> {
        unreachable!("gated by bf16_gemm::available()")
    }

    pub fn dot4_bf16_rows(_: [&[u8]; 4], _: &[u32], _: usize, _: usize, _: &mut [[f32; 16]; 4]) {
        unreachable!("gated by bf16_gemm::available()")
    }
    pub fn vnni_available() -> bool {
        false
    }
    pub fn dot_q8_0_i16(
        _: &[u8],
        _: &super::Int16Rows,
        _: usize,
        _: usize,
        _: usize,
        _: &mut [[f32; 8]],
    ) {
        unreachable!("gated by available()")
    }
    pub fn dot_q4k_int8(
        _: &[u8],
        _: &super::Int8Rows,
        _: usize,
        _: usize,
        _: usize,
        _: &mut [[f32; 8]],
    ) {
        unreachable!("gated by vnni_available()")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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

    fn rel(a: &Tensor, b: &Tensor) -> f64 {
        janus_kernels::tensor::rel_l2(a, b).unwrap()
    }

    #[test]
    fn bf16_and_quantized_linears_track_f32() {
        let dev = Device::Cpu;
        let w = Tensor::randn(0f32, 0.05, (96, 512), &dev).unwrap();
        let b = Tensor::randn(0f32, 0.05, 96, &dev).unwrap();
        let exact = QLinear::from_weight(w.clone(), Some(b.clone()), Quant::None).unwrap();
        let wb = w.to_dtype(DType::BF16).unwrap();
        let lin_bf16 = QLinear::from_weight(wb, Some(b.clone()), Quant::None).unwrap();
        let q8 = QLinear::from_weight(w.clone(), Some(b.clone()), Quant::Q8_0).unwrap();
        let q4 = QLinear::from_weight(w.clone(), Some(b.clone()), Quant::Q4K).unwrap();
        assert_eq!(q4.quant(), Quant::Q4K);
        // Few rows take the direct kernels, many rows the widened gemm.
        for rows in [1usize, 3, 9, 40] {
            let x = Tensor::randn(0f32, 1.0, (1, rows, 512), &dev).unwrap();
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

    /// A few-row integer kernel (one build, through [`integer_runs`]) against
    /// f64 sums over the dequantised blocks: only the inputs' rounding
    /// separates them (`tol` per row), for every row count up to 9 (a second
    /// group of 8), an odd number of columns, an all-zero row and a row with
    /// one outlier (`outlier_tol`).
    fn check_integer_kernel<X: InputRows>(
        dtype: GgmlDType,
        k: usize,
        kernel: IntegerKernel<X>,
        tol: f64,
        outlier_tol: f64,
    ) {
        let n = 37;
        let dev = Device::Cpu;
        let w = Tensor::randn(0f32, 0.05, (n, k), &dev).unwrap();
        let q = quantize_rows(&w, dtype).unwrap();
        let wd: Vec<f32> = q
            .dequantize(&dev)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let blocks = q.data().unwrap();
        for m in 1..=9 {
            let mut x: Vec<f32> = Tensor::randn(0f32, 1.0, (m, k), &dev)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap();
            if m >= 3 {
                x[k..2 * k].fill(0.0);
                x[2 * k + 5] = 40.0;
            }
            let mut out = vec![f32::NAN; m * n];
            integer_runs(kernel, &blocks, &x, m, k, n, &mut out);
            let want: Vec<f32> = (0..m * n)
                .map(|e| {
                    let (i, j) = (e / n, e % n);
                    (0..k)
                        .map(|l| x[i * k + l] as f64 * wd[j * k + l] as f64)
                        .sum::<f64>() as f32
                })
                .collect();
            let got = Tensor::from_vec(out, (m, n), &dev).unwrap();
            let want = Tensor::from_vec(want, (m, n), &dev).unwrap();
            for i in 0..m {
                let (g, w) = (got.get(i).unwrap(), want.get(i).unwrap());
                if m >= 3 && i == 1 {
                    let zero = g.abs().unwrap().max(0).unwrap();
                    assert_eq!(zero.to_scalar::<f32>().unwrap(), 0.0, "the zero row");
                    continue;
                }
                let tol = if m >= 3 && i == 2 { outlier_tol } else { tol };
                let err = rel(&g, &w);
                assert!(
                    err < tol,
                    "{dtype:?} k {k}, {m} rows, row {i}: relative L2 {err:e}"
                );
            }
        }
    }

    /// The q4_K kernel rounds its inputs to 8 bits per 256 values (~0.7 %
    /// per row). A 40-sigma outlier sets its block's step to 40 / 127: the
    /// other 255 values there are rounded ~30x more coarsely.
    #[test]
    fn q4k_int8_kernel_matches_the_dequantised_weights() {
        if avx512::vnni_available() {
            check_integer_kernel(GgmlDType::Q4K, 768, avx512::dot_q4k_int8, 2e-2, 6e-2);
        }
        if janus_kernels::cpu::detected_avx2() {
            check_integer_kernel(GgmlDType::Q4K, 768, avx2::dot_q4k_int8, 2e-2, 6e-2);
        }
    }

    /// A NaN or infinite input value makes its row's outputs NaN (as in
    /// f32), and leaves the other rows alone.
    #[test]
    fn integer_kernels_keep_non_finite_inputs() {
        if !avx512::available() {
            eprintln!("no AVX-512: the integer kernels are not used here");
            return;
        }
        let (n, k) = (5, 512);
        let dev = Device::Cpu;
        let w = Tensor::randn(0f32, 0.05, (n, k), &dev).unwrap();
        let mut kernels: Vec<(
            GgmlDType,
            fn(&[u8], &[f32], usize, usize, usize, &mut [f32]),
        )> = vec![(GgmlDType::Q8_0, small_matmul_q8_0_i16)];
        if avx512::vnni_available() {
            kernels.push((GgmlDType::Q4K, small_matmul_q4k_int8));
        }
        for (dtype, run) in kernels {
            let blocks = quantize_rows(&w, dtype).unwrap().data().unwrap().to_vec();
            for bad in [f32::NAN, f32::INFINITY] {
                let mut x = vec![0.5f32; 2 * k];
                x[300] = bad;
                let mut out = vec![0f32; 2 * n];
                run(&blocks, &x, 2, k, n, &mut out);
                assert!(
                    out[..n].iter().all(|v| v.is_nan()),
                    "{dtype:?} {bad}: {out:?}"
                );
                assert!(
                    out[n..].iter().all(|v| v.is_finite()),
                    "{dtype:?} {bad}: {out:?}"
                );
            }
        }
    }

    /// The q8_0 kernel rounds its inputs to 16 bits per 256 values, or per
    /// 32 where the rows are not a multiple of 256 long.
    /// The bf16 few-row kernel (3 to 16 rows, one pass over the weights)
    /// against f64 sums of the bf16-rounded inputs and weights: only the
    /// f32 summation separates them. Depths that end inside a chunk, an odd
    /// number of weight rows (the last group of four is filled with a copy).
    #[test]
    fn bf16_few_row_kernel_matches_the_rounded_sums() {
        if !(avx512::available() && bf16_gemm::available()) {
            eprintln!("skipped: no AVX-512-BF16");
            return;
        }
        let dev = Device::Cpu;
        let n = 37;
        for k in [64, 544, 1056] {
            let w = Tensor::randn(0f32, 0.05, (n, k), &dev).unwrap();
            let w = w.to_dtype(DType::BF16).unwrap();
            let wv: Vec<half::bf16> = w.flatten_all().unwrap().to_vec1().unwrap();
            let wb = as_bytes(&wv);
            for m in 3..=SMALL_MAX_ROWS {
                let x = Tensor::randn(0f32, 1.0, (m, k), &dev).unwrap();
                let xv: Vec<f32> = x.flatten_all().unwrap().to_vec1().unwrap();
                let mut out = vec![f32::NAN; m * n];
                small_matmul(Fmt::Bf16, wb, &xv, m, k, n, &mut out);
                let r = |v: f32| half::bf16::from_f32(v).to_f64();
                for (e, &got) in out.iter().enumerate() {
                    let (i, j) = (e / n, e % n);
                    let want: f64 = (0..k)
                        .map(|l| r(xv[i * k + l]) * wv[j * k + l].to_f64())
                        .sum();
                    let scale: f64 = (0..k)
                        .map(|l| (r(xv[i * k + l]) * wv[j * k + l].to_f64()).abs())
                        .sum();
                    assert!(
                        (got as f64 - want).abs() <= 1e-5 * scale,
                        "k {k} m {m} ({i}, {j}): {got} vs {want}"
                    );
                }
            }
        }
        // The rounding to bf16 pairs is half's, ties to even, tails included.
        let x: Vec<f32> = (0..70)
            .map(|i| 1.0 + i as f32 * 0.001953125 * 0.5)
            .collect();
        let pairs = avx512::bf16_pairs(&x);
        for (i, p) in pairs.iter().enumerate() {
            let bits = |v: f32| half::bf16::from_f32(v).to_bits() as u32;
            assert_eq!(*p, bits(x[2 * i]) | bits(x[2 * i + 1]) << 16, "pair {i}");
        }
    }

    #[test]
    fn q8_0_int16_kernel_matches_the_dequantised_weights() {
        for k in [768, 96] {
            if avx512::available() {
                check_integer_kernel(GgmlDType::Q8_0, k, avx512::dot_q8_0_i16, 1e-4, 1e-3);
            }
            if janus_kernels::cpu::detected_avx2() {
                check_integer_kernel(GgmlDType::Q8_0, k, avx2::dot_q8_0_i16, 1e-4, 1e-3);
            }
        }
    }
}
