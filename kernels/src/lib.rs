//! CPU matrix kernels shared by the LLM (`janus`), the SigLIP encoder
//! (`janus-vision`) and the VQ decoder (`janus-vq`).
//!
//! [`bf16_gemm`] is the compute-bound path of the bf16 and quantised
//! configurations (prefill, ViT, VQ convolutions): inputs are rounded to
//! bf16, products are summed in f32, as PyTorch's bf16 matmuls do.

pub mod attention;
pub mod bf16_gemm;
pub mod blocks;
pub mod cpu;
pub mod math;
pub mod tensor;

/// Runs `f` on a thread of rayon's global pool, or directly when already on
/// one. A decoding step starts dozens of short parallel loops; started from
/// a thread outside the pool, each of them hands its work to the pool and
/// puts the caller to sleep until it is done, and the wake-ups cost ~7 % of
/// a 4-bit image step on 2 cores. From a pool thread the caller works along.
/// What `f` allocates comes from that thread's malloc arena: keep large,
/// short-lived buffers out of it.
pub fn on_pool<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    rayon::scope(|_| f())
}
