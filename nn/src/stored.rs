//! Weights a checkpoint may store already quantised (a saved `model.gguf`):
//! the naming rule under which their blocks are served, and the loaders
//! that take them as stored or quantise what is read.

use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{CpuStorage, DType, Result, Tensor};
use candle_nn::VarBuilder;
use janus_kernels::quant::quantize_rows;

/// The block formats a model quantises to, with their names in block
/// tensor names (see [`blocks_name`]).
const FORMATS: [(GgmlDType, &str); 2] = [(GgmlDType::Q8_0, "q8_0"), (GgmlDType::Q4K, "q4k")];

/// The name under which a checkpoint that stores tensor `name` already
/// quantised (a GGUF model) serves its blocks of `dtype`, as raw bytes:
/// `name@q8_0`, `name@q4k`. A checkpoint holding `name` in any other form
/// has no such tensor, so loaders ask for it first and quantise otherwise.
pub fn blocks_name(name: &str, dtype: GgmlDType) -> String {
    let tag = FORMATS.iter().find(|(d, _)| *d == dtype).map_or_else(
        || format!("{dtype:?}").to_ascii_lowercase(),
        |(_, t)| (*t).to_owned(),
    );
    format!("{name}@{tag}")
}

/// The tensor name and block format of a [`blocks_name`].
pub fn parse_blocks_name(name: &str) -> Option<(&str, GgmlDType)> {
    let (base, tag) = name.rsplit_once('@')?;
    FORMATS
        .iter()
        .find(|(_, t)| *t == tag)
        .map(|(d, _)| (base, *d))
}

/// Tensor `name` of `vb`, shape `[rows, cols]`, as blocks of `dtype` when
/// the checkpoint stores it quantised so (on the CPU); `None` when it must
/// be read and quantised.
pub fn stored_blocks(
    vb: &VarBuilder,
    name: &str,
    (rows, cols): (usize, usize),
    dtype: GgmlDType,
) -> Result<Option<QTensor>> {
    let tagged = blocks_name(name, dtype);
    if !vb.device().is_cpu() || !vb.contains_tensor(&tagged) {
        return Ok(None);
    }
    let raw = vb.get_unchecked_dtype(&tagged, DType::U8)?;
    let block = dtype.block_size();
    let expected = rows * cols / block * dtype.type_size();
    if cols % block != 0 || raw.elem_count() != expected {
        candle_core::bail!(
            "tensor {}.{name}: the checkpoint stores {} bytes of {dtype:?} blocks, the model expects [{rows}, {cols}] ({expected} bytes)",
            vb.prefix(),
            raw.elem_count()
        )
    }
    let (st, layout) = raw.storage_and_layout();
    let bytes = match (&*st, layout.contiguous_offsets()) {
        (candle_core::Storage::Cpu(CpuStorage::U8(v)), Some((a, b))) => &v[a..b],
        _ => candle_core::bail!(
            "tensor {}.{name}: blocks are not raw CPU bytes",
            vb.prefix()
        ),
    };
    candle_core::quantized::ggml_file::qtensor_from_ggml(
        dtype,
        bytes,
        vec![rows, cols],
        &candle_core::Device::Cpu,
    )
    .map(Some)
}

/// Whether `t` is a broadcast view (a zero stride over a dimension longer
/// than one), as handed out by shape-only backends.
pub fn is_broadcast_view(t: &Tensor) -> bool {
    t.dims()
        .iter()
        .zip(t.stride())
        .any(|(&d, &s)| d > 1 && s == 0)
}

/// A weight as [`load_weight`] gives it.
pub enum Loaded {
    /// GGUF blocks, as stored or quantised while read.
    Blocks(QTensor),
    /// As read: no block format asked for, off the CPU, or a shape-only view.
    Dense(Tensor),
}

/// Tensor `name` of `vb`, shape `[rows, cols]`, in `dtype` blocks when one
/// is given: taken as stored (see [`stored_blocks`]) or read and quantised
/// on the CPU; otherwise as read.
pub fn load_weight(
    vb: &VarBuilder,
    name: &str,
    dims: (usize, usize),
    dtype: Option<GgmlDType>,
) -> Result<Loaded> {
    if let Some(g) = dtype {
        if let Some(q) = stored_blocks(vb, name, dims, g)? {
            return Ok(Loaded::Blocks(q));
        }
    }
    let w = vb.get(dims, name)?;
    match dtype {
        Some(g) if w.device().is_cpu() && !is_broadcast_view(&w) => {
            Ok(Loaded::Blocks(quantize_rows(&w, g)?))
        }
        _ => Ok(Loaded::Dense(w)),
    }
}
