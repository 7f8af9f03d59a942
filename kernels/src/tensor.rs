//! Access to the data of candle CPU tensors, for the kernels above.

use candle_core::{Result, Storage, Tensor, WithDType};

/// Runs `f` on the contiguous data of a CPU tensor of element type `T`
/// (copied to a contiguous layout first when it is a strided view).
pub fn with_cpu_slice<T: WithDType, R>(t: &Tensor, f: impl FnOnce(&[T]) -> R) -> Result<R> {
    let t = if t.is_contiguous() {
        t.clone()
    } else {
        t.contiguous()?
    };
    let (s, l) = t.storage_and_layout();
    match (&*s, l.contiguous_offsets()) {
        (Storage::Cpu(c), Some((a, b))) => Ok(f(&c.as_slice::<T>()?[a..b])),
        _ => candle_core::bail!("a contiguous CPU tensor is expected"),
    }
}
