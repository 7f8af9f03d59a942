//! Every CPU kernel of janus-rs, on slices: the LLM (`janus`), the SigLIP
//! encoder (`janus-vision`) and the VQ decoder (`janus-vq`) call them
//! through the layers of `janus-nn` or directly.
//!
//! - [`bf16_gemm`]: the compute-bound path of the bf16 and quantised
//!   configurations (prefill, ViT, VQ convolutions): inputs rounded to bf16,
//!   products summed in f32, as PyTorch's bf16 matmuls do;
//! - [`f32_gemm`]: f32 products through the `gemm` crate;
//! - [`quant`]: few-row matmuls over f32 / bf16 / q8_0 / q4_K weight rows,
//!   and the GGUF block formats;
//! - [`attention`]: fused attention for prefill and decoding;
//! - [`cpu`]: which kernels this CPU may run, and every switch that changes it;
//! - [`random`]: seeded random values for the benchmark's weights and the tests.

#![warn(missing_docs)]

pub mod attention;
pub mod bf16_gemm;
pub mod cpu;
pub mod f32_gemm;
pub mod math;
pub mod quant;
pub mod random;
pub mod tensor;

/// Says on the terminal that a test did not run a kernel this CPU lacks.
/// Written to the process's stderr directly: libtest captures `eprintln!`
/// of passing tests, which would hide the skip.
#[cfg(test)]
pub(crate) fn untested(what: &str) {
    use std::io::Write;
    let test = std::thread::current().name().unwrap_or("?").to_owned();
    let _ = writeln!(std::io::stderr(), "SKIPPED in {test}: {what}");
}

/// A raw pointer into one output buffer, shared by parallel tasks that each
/// write a disjoint part of it (which the borrow checker cannot see).
#[derive(Clone, Copy)]
pub struct SendPtr(pub *mut f32);
// SAFETY: the tasks sharing it write disjoint elements (each user says why).
unsafe impl Send for SendPtr {}
// SAFETY: as above.
unsafe impl Sync for SendPtr {}

impl SendPtr {
    /// The pointer (a method, so that closures capture the whole wrapper).
    pub fn get(&self) -> *mut f32 {
        self.0
    }
}

/// Runs `f` on a thread of rayon's global pool, or directly when already on
/// one. A decoding step starts dozens of short parallel loops; started from
/// a thread outside the pool, each of them hands its work to the pool and
/// puts the caller to sleep until it is done, and the wake-ups are a
/// noticeable share of a step (BENCHMARKS.md). From a pool thread the
/// caller works along.
/// What `f` allocates comes from that thread's malloc arena: keep large,
/// short-lived buffers out of it.
pub fn on_pool<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    rayon::scope(|_| f())
}
