//! Weights in GGUF block formats (q8_0, q4_K) as candle stores them:
//! quantisation of whole weights, and dequantisation of single rows for the
//! kernels that consume quantised weights row by row.

use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{CpuStorage, DType, Result, Tensor};

/// `QTensor::quantize` of a [n, k] weight, straight from its stored dtype
/// into the final blocks: bands of rows are widened to f32 in a small
/// scratch and quantised in parallel (candle's quantiser runs on one thread,
/// and the 4-bit k-quant search would dominate the load), so the only
/// transient memory is one band per thread.
pub fn quantize_rows(w: &Tensor, dtype: GgmlDType) -> Result<QTensor> {
    use candle_core::quantized::k_quants::{BlockQ4K, BlockQ8_0};
    let w = if w.is_contiguous() {
        w.clone()
    } else {
        w.contiguous()?
    };
    if !w.device().is_cpu() || !matches!(w.dtype(), DType::F32 | DType::BF16) {
        return QTensor::quantize(&w, dtype);
    }
    match dtype {
        GgmlDType::Q8_0 => quantize_blocks::<BlockQ8_0>(&w),
        GgmlDType::Q4K => quantize_blocks::<BlockQ4K>(&w),
        _ => QTensor::quantize(&w, dtype),
    }
}

fn quantize_blocks<T: candle_core::quantized::k_quants::GgmlType + 'static>(
    w: &Tensor,
) -> Result<QTensor> {
    use rayon::prelude::*;
    let (n, k) = w.dims2()?;
    if k % T::BLCK_SIZE != 0 {
        candle_core::bail!(
            "rows of {k} values do not split into blocks of {}",
            T::BLCK_SIZE
        )
    }
    let per_row = k / T::BLCK_SIZE;
    const BAND: usize = 32;
    let mut blocks = vec![T::zeros(); n * per_row];
    {
        let (st, l) = w.storage_and_layout();
        let (a, b) = l.contiguous_offsets().expect("made contiguous");
        enum Src<'a> {
            F32(&'a [f32]),
            Bf16(&'a [half::bf16]),
        }
        let src = match &*st {
            candle_core::Storage::Cpu(CpuStorage::F32(v)) => Src::F32(&v[a..b]),
            candle_core::Storage::Cpu(CpuStorage::BF16(v)) => Src::Bf16(&v[a..b]),
            _ => candle_core::bail!("quantize: f32 or bf16 CPU weight expected"),
        };
        blocks
            .par_chunks_mut(BAND * per_row)
            .enumerate()
            .for_each(|(i, dst)| {
                let rows = dst.len() / per_row;
                let r0 = i * BAND;
                match &src {
                    Src::F32(v) => T::from_float(&v[r0 * k..(r0 + rows) * k], dst),
                    Src::Bf16(v) => {
                        let f: Vec<f32> = v[r0 * k..(r0 + rows) * k]
                            .iter()
                            .map(|x| x.to_f32())
                            .collect();
                        T::from_float(&f, dst)
                    }
                }
            });
    }
    QTensor::new(
        candle_core::quantized::QStorage::Cpu(Box::new(blocks)),
        (n, k),
    )
}

/// Dequantises `len` values of row `j` from `l0` (block aligned).
pub fn dequant_row<T: candle_core::quantized::k_quants::GgmlType>(
    data: &[u8],
    k: usize,
    j: usize,
    l0: usize,
    out: &mut [f32],
) {
    // SAFETY: `data` holds n * k / BLCK_SIZE blocks of T (candle's CPU storage).
    let blocks = unsafe {
        std::slice::from_raw_parts(
            data.as_ptr() as *const T,
            data.len() / std::mem::size_of::<T>(),
        )
    };
    let b0 = (j * k + l0) / T::BLCK_SIZE;
    if T::DTYPE == GgmlDType::Q8_0 {
        // 34-byte blocks: f16 scale, 32 i8 (the prefill and the vision
        // tower read every weight this way; candle's loop is scalar).
        let bytes = &data[b0 * 34..(b0 + out.len() / 32) * 34];
        #[cfg(target_arch = "x86_64")]
        if crate::cpu::avx512() {
            // SAFETY: the CPU features were just checked.
            return unsafe { q8_0_to_f32_avx512(bytes, out) };
        }
        return q8_0_to_f32(bytes, out);
    }
    if T::DTYPE == GgmlDType::Q4K {
        // The many-row passes read every q4_K weight this way too.
        let bytes = &data[b0 * 144..(b0 + out.len() / 256) * 144];
        #[cfg(target_arch = "x86_64")]
        if crate::cpu::avx512() {
            // SAFETY: the CPU features were just checked.
            return unsafe { q4k_to_f32_avx512(bytes, out) };
        }
        return q4k_to_f32(bytes, out);
    }
    T::to_float(&blocks[b0..b0 + out.len() / T::BLCK_SIZE], out);
}

/// The 6-bit scale and minimum of sub-block `j` (0..8) of a Q4_K
/// super-block, from its 12 packed bytes.
#[inline(always)]
pub fn q4k_scale_min(j: usize, q: &[u8]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        (
            (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4),
            (q[j + 4] >> 4) | ((q[j] >> 6) << 4),
        )
    }
}

/// [`q4k_to_f32`] compiled for AVX-512.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn q4k_to_f32_avx512(bytes: &[u8], out: &mut [f32]) {
    q4k_to_f32(bytes, out)
}

/// Q4_K super-blocks to f32, as candle's `BlockQ4K::to_float` (the same
/// products, so the same values), written so that the loops vectorise:
/// per 32-value sub-block `y = d·scale·q − dmin·min`, the low nibbles of 32
/// bytes making one sub-block and their high nibbles the next.
#[inline(always)]
fn q4k_to_f32(bytes: &[u8], out: &mut [f32]) {
    for (blk, o) in bytes.chunks_exact(144).zip(out.chunks_exact_mut(256)) {
        let d = half::f16::from_le_bytes([blk[0], blk[1]]).to_f32();
        let dmin = half::f16::from_le_bytes([blk[2], blk[3]]).to_f32();
        let scales = &blk[4..16];
        for (j, (qs, o)) in blk[16..]
            .chunks_exact(32)
            .zip(o.chunks_exact_mut(64))
            .enumerate()
        {
            let (s0, m0) = q4k_scale_min(2 * j, scales);
            let (s1, m1) = q4k_scale_min(2 * j + 1, scales);
            let (d0, m0) = (d * s0 as f32, dmin * m0 as f32);
            let (d1, m1) = (d * s1 as f32, dmin * m1 as f32);
            let (lo, hi) = o.split_at_mut(32);
            for ((l, h), &b) in lo.iter_mut().zip(hi.iter_mut()).zip(qs) {
                *l = d0 * (b & 0xF) as f32 - m0;
                *h = d1 * (b >> 4) as f32 - m1;
            }
        }
    }
}

/// [`q8_0_to_f32`] compiled for AVX-512.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn q8_0_to_f32_avx512(bytes: &[u8], out: &mut [f32]) {
    q8_0_to_f32(bytes, out)
}

/// Q8_0 blocks to f32, written so that the per-block loop vectorises.
#[inline(always)]
fn q8_0_to_f32(bytes: &[u8], out: &mut [f32]) {
    for (blk, o) in bytes.chunks_exact(34).zip(out.chunks_exact_mut(32)) {
        let d = half::f16::from_le_bytes([blk[0], blk[1]]).to_f32();
        for (o, &q) in o.iter_mut().zip(&blk[2..34]) {
            *o = d * (q as i8) as f32;
        }
    }
}

#[cfg(test)]
mod tests {
    use candle_core::quantized::k_quants::{BlockQ4K, BlockQ8_0, GgmlType};
    use candle_core::Device;

    /// Row 2 from value `l0` (and row 0 from 0) of a [3, k] weight in `T`
    /// blocks, dequantised by `dequant_row`, equal candle's dequantisation.
    fn rows_match_candle<T: GgmlType>(k: usize, l0: usize) {
        let w = crate::random::randn(0f32, 1.0, (3, k), 1).unwrap();
        let q = super::quantize_rows(&w, T::DTYPE).unwrap();
        let want: Vec<f32> = q
            .dequantize(&Device::Cpu)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let data = q.data().unwrap();
        let mut got = vec![0f32; k - l0];
        super::dequant_row::<T>(&data, k, 2, l0, &mut got);
        assert_eq!(got, want[2 * k + l0..3 * k]);
        super::dequant_row::<T>(&data, k, 0, 0, &mut got);
        assert_eq!(got, want[..k - l0]);
    }

    #[test]
    fn q8_0_rows_match_candle() {
        rows_match_candle::<BlockQ8_0>(96, 32);
    }

    /// The vectorised q4_K loop gives candle's values exactly.
    #[test]
    fn q4k_rows_match_candle() {
        rows_match_candle::<BlockQ4K>(768, 256);
    }
}
