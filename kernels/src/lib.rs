//! CPU matrix kernels shared by the LLM (`janus`), the SigLIP encoder
//! (`janus-vision`) and the VQ decoder (`janus-vq`).
//!
//! [`bf16_gemm`] is the compute-bound path of the bf16 and quantised
//! configurations (prefill, ViT, VQ convolutions): inputs are rounded to
//! bf16, products are summed in f32, as PyTorch's bf16 matmuls do.

pub mod attention;
pub mod bf16_gemm;
pub mod blocks;
pub mod math;
pub mod tensor;
