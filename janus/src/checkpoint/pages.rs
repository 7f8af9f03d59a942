//! Copies out of read-only file mappings that leave no resident pages
//! behind, so a load never holds a tensor's file pages and its copy at once.

use candle_core::{Device, Tensor};

/// `madvise(MADV_DONTNEED)` over the whole pages inside `bytes`, a slice of a
/// read-only file mapping: they leave the resident set and are read back from
/// the page cache if touched again. A no-op elsewhere than Linux.
pub(crate) fn release_pages(bytes: &[u8]) {
    #[cfg(target_os = "linux")]
    {
        const PAGE: usize = 4096;
        let start = (bytes.as_ptr() as usize).div_ceil(PAGE) * PAGE;
        let end = (bytes.as_ptr() as usize + bytes.len()) / PAGE * PAGE;
        if end > start {
            // SAFETY: [start, end) lies inside the mapping that backs `bytes`;
            // DONTNEED on a private read-only file mapping only drops pages.
            unsafe { libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_DONTNEED) };
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = bytes;
}

/// A CPU tensor of `bytes` (plain `T` values, any alignment) from a file
/// mapping, copied 16 MiB at a time with each copied chunk's pages released.
pub(crate) fn copy_released<T: candle_core::WithDType + Default + Clone>(
    bytes: &[u8],
    shape: &[usize],
) -> candle_core::Result<Tensor> {
    let size = std::mem::size_of::<T>();
    let n = bytes.len() / size;
    let mut out: Vec<T> = vec![T::default(); n];
    const CHUNK: usize = 16 << 20;
    // SAFETY: `out` is n plain values, i.e. exactly bytes.len() writable bytes.
    let dst = unsafe { std::slice::from_raw_parts_mut(out.as_mut_ptr() as *mut u8, n * size) };
    for (d, s) in dst.chunks_mut(CHUNK).zip(bytes.chunks(CHUNK)) {
        d.copy_from_slice(s);
        release_pages(s);
    }
    Tensor::from_vec(out, shape, &Device::Cpu)
}

/// A CPU tensor with the data of a bf16/f16/f32 safetensors view (see
/// [`copy_released`]); None for other dtypes (the caller falls back to
/// candle's loader).
pub(crate) fn chunked_copy(
    view: &safetensors::tensor::TensorView<'_>,
) -> candle_core::Result<Option<Tensor>> {
    use safetensors::Dtype;
    let (bytes, shape) = (view.data(), view.shape());
    Ok(Some(match view.dtype() {
        Dtype::BF16 => copy_released::<half::bf16>(bytes, shape)?,
        Dtype::F16 => copy_released::<half::f16>(bytes, shape)?,
        Dtype::F32 => copy_released::<f32>(bytes, shape)?,
        _ => return Ok(None),
    }))
}
