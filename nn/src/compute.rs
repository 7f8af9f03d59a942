//! Which precision a model computes in, from how its weights were loaded.

use candle_core::{DType, Device};

use crate::quant::Quant;

/// Whether a model loaded with `dtype` weights and `quant` computes its
/// many-row passes with bf16 GEMMs: on CPUs that have them, whenever the
/// weights are not f32 (the f32 path stays exact against the reference).
pub fn bf16_compute(dev: &Device, dtype: DType, quant: Quant) -> bool {
    reduced_precision_cpu(dev, dtype, quant) && janus_kernels::bf16_gemm::available()
}

/// A CPU model whose weights are not f32 (`dtype` bf16 or quantised): it
/// may trade exactness for speed, where the f32 one stays exact.
pub fn reduced_precision_cpu(dev: &Device, dtype: DType, quant: Quant) -> bool {
    dev.is_cpu() && (dtype == DType::BF16 || quant != Quant::None)
}
