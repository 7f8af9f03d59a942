//! Access to the data of candle CPU tensors, for the kernels above.

use candle_core::{DType, Device, Result, Storage, Tensor, WithDType};

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

/// Relative L2 error `‖a − b‖ / ‖b‖` over all elements, in f64: how every
/// test and the benchmark compare a result with its reference.
pub fn rel_l2(a: &Tensor, b: &Tensor) -> Result<f64> {
    if a.dims() != b.dims() {
        candle_core::bail!("rel_l2: shapes {:?} and {:?} differ", a.dims(), b.dims())
    }
    let a = a.to_dtype(DType::F64)?.flatten_all()?;
    let b = b.to_dtype(DType::F64)?.flatten_all()?;
    let num = (&a - &b)?.sqr()?.sum_all()?.to_scalar::<f64>()?;
    let den = b.sqr()?.sum_all()?.to_scalar::<f64>()?;
    Ok((num / den).sqrt())
}

/// bf16 → f32 (exact: a bf16 is the upper half of an f32), split across
/// threads: bf16 weights widened for f32 compute.
pub fn widen_bf16(src: &[half::bf16], dst: &mut [f32]) {
    use rayon::prelude::*;
    assert_eq!(src.len(), dst.len(), "widen_bf16: lengths differ");
    dst.par_chunks_mut(1 << 15)
        .zip(src.par_chunks(1 << 15))
        .for_each(|(d, s)| {
            for (d, s) in d.iter_mut().zip(s) {
                *d = f32::from_bits((s.to_bits() as u32) << 16);
            }
        });
}

/// `len` zeros, for a large output buffer about to be written once.
///
/// Buffers of tens of megabytes (activations, image planes) are fresh
/// memory from the kernel at every allocation, and filling them costs one
/// page fault per 4 KiB: a quarter of the VQ decoder's time. On Linux the
/// buffer is marked for transparent huge pages (where the system allows them
/// on request), so it faults in 2 MiB at a time.
pub fn zeroed(len: usize) -> Vec<f32> {
    let v = vec![0f32; len];
    #[cfg(target_os = "linux")]
    {
        const HUGE: usize = 2 << 20;
        let (start, bytes) = (v.as_ptr() as usize, len * 4);
        if bytes >= 2 * HUGE {
            // The whole 2 MiB pages inside the buffer.
            let first = start.next_multiple_of(HUGE);
            let end = (start + bytes) / HUGE * HUGE;
            // SAFETY: a hint on memory this Vec owns; it changes no contents
            // (fresh zero pages stay zero). Failure only loses the hint.
            unsafe { libc::madvise(first as *mut libc::c_void, end - first, libc::MADV_HUGEPAGE) };
        }
    }
    v
}

/// `x [.., k]` as contiguous f32 rows (converted to f32 first if needed):
/// `f(rows, m, out)` fills `out`, `m` rows of `n` values, which is returned
/// as a CPU tensor `[.., n]`. The shape plumbing of every row-wise kernel
/// (linears, fused activations, attention over a projection).
pub fn map_rows(
    x: &Tensor,
    k: usize,
    n: usize,
    f: impl FnOnce(&[f32], usize, &mut [f32]) -> Result<()>,
) -> Result<Tensor> {
    let dims = x.dims().to_vec();
    if dims.last() != Some(&k) {
        candle_core::bail!("input {dims:?} does not end in {k} values")
    }
    let x = if x.dtype() == DType::F32 {
        x.clone()
    } else {
        x.to_dtype(DType::F32)?
    };
    let m = x.elem_count() / k.max(1);
    let mut out = zeroed(m * n);
    with_cpu_slice(&x, |xv| f(xv, m, &mut out))??;
    let mut out_dims = dims;
    *out_dims.last_mut().expect("rank >= 1") = n;
    Tensor::from_vec(out, out_dims, &Device::Cpu)
}
