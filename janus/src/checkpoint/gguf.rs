//! Reading a quantised model folder's `model.gguf` (standard GGUF, version
//! 3, under the released tensor names; `janus.quant` names the
//! quantisation, `janus.format_version` the layout; written by
//! [`crate::save_quantized`]). Every tensor's byte span is checked against the
//! file at open, and its bytes against its checksum when it is read
//! (`janus.tensor_crc32`: CRC-32 of each tensor's name, type, shape and data,
//! in data order; files written before it have none).

use std::collections::HashMap;
use std::fs::File;
use std::path::Path;

use candle_core::quantized::gguf_file::{Content, TensorInfo, Value};
use candle_core::quantized::GgmlDType;
use candle_core::{Device, Tensor};

use super::pages::copy_released;
use super::reader::TensorReader;
use crate::error::{without_backtrace, JanusError, Result};
use janus_nn::{parse_blocks_name, Quant};

/// Metadata key naming the quantisation (`q8_0`, `q4k`).
pub(crate) const QUANT_KEY: &str = "janus.quant";
/// Metadata key of the layout version; readers refuse newer ones.
pub(crate) const VERSION_KEY: &str = "janus.format_version";
pub(crate) const FORMAT_VERSION: u32 = 1;
/// Metadata key of the tensors' checksums (u32 array, in data order).
pub(crate) const CHECKSUM_KEY: &str = "janus.tensor_crc32";
/// GGUF's default data alignment, which this writer uses.
pub(crate) const ALIGN: u64 = 32;

/// A memory-mapped `model.gguf`.
pub(crate) struct GgufFile {
    map: memmap2::Mmap,
    entries: HashMap<String, Entry>,
    quant: Quant,
}

/// Where one tensor lies in the file, checked against its size at open.
struct Entry {
    dtype: GgmlDType,
    dims: Vec<usize>,
    start: usize,
    len: usize,
    /// What [`tensor_checksum`] gives for it, where the file says.
    checksum: Option<u32>,
}

/// GGML's type ids of the formats janus files store.
pub(crate) fn ggml_type_id(dtype: GgmlDType) -> Option<u32> {
    match dtype {
        GgmlDType::F32 => Some(0),
        GgmlDType::F16 => Some(1),
        GgmlDType::Q8_0 => Some(8),
        GgmlDType::Q4K => Some(12),
        GgmlDType::BF16 => Some(30),
        _ => None,
    }
}

/// CRC-32 of a tensor's name, type, shape and bytes: a changed type
/// (bf16 read as f16 keeps every size) or a moved offset shows as well as
/// damaged data.
pub(crate) fn tensor_checksum(name: &str, dtype: GgmlDType, dims: &[usize], data: &[u8]) -> u32 {
    let mut crc = crc32fast::Hasher::new();
    crc.update(name.as_bytes());
    crc.update(&ggml_type_id(dtype).unwrap_or(u32::MAX).to_le_bytes());
    for &d in dims {
        crc.update(&(d as u64).to_le_bytes());
    }
    crc.update(data);
    crc.finalize()
}

/// The byte range of `info` in a file whose data starts at `data_offset`
/// and which is `file_len` long; None when it does not fit (a damaged or
/// hand-made file: sizes are checked, never trusted).
fn span(info: &TensorInfo, data_offset: u64, file_len: usize) -> Option<(usize, usize)> {
    let elems = info
        .shape
        .dims()
        .iter()
        .try_fold(1usize, |n, &d| n.checked_mul(d))?;
    let (block, size) = (info.ggml_dtype.block_size(), info.ggml_dtype.type_size());
    if elems % block != 0 {
        return None;
    }
    let len = (elems / block).checked_mul(size)?;
    let start = usize::try_from(data_offset.checked_add(info.offset)?).ok()?;
    (start.checked_add(len)? <= file_len).then_some((start, len))
}

impl GgufFile {
    pub(crate) fn open(path: &Path) -> Result<Self> {
        let mut file = File::open(path).map_err(|e| JanusError::bad_file(path, e))?;
        let content = Content::read(&mut file)
            .map_err(|e| JanusError::bad_file(path, without_backtrace(e)))?;
        let quant = match content.metadata.get(QUANT_KEY) {
            Some(Value::String(q)) => Quant::parse(q).map_err(|e| JanusError::bad_file(path, e))?,
            _ => {
                return Err(JanusError::bad_file(
                    path,
                    "not a Janus-Pro model written by `janus quantize` (no janus.quant entry)",
                ))
            }
        };
        match content.metadata.get(VERSION_KEY) {
            Some(Value::U32(v)) if *v <= FORMAT_VERSION => {}
            Some(Value::U32(v)) => {
                return Err(JanusError::bad_file(
                    path,
                    format!("format version {v} is newer than this janus-rs reads ({FORMAT_VERSION}); update janus-rs"),
                ))
            }
            _ => return Err(JanusError::bad_file(path, "no janus.format_version entry")),
        }
        // SAFETY: the file is only read; modifying it while mapped is the caller's problem, as with any mmap.
        let map =
            unsafe { memmap2::Mmap::map(&file) }.map_err(|e| JanusError::bad_file(path, e))?;
        let mut entries = HashMap::with_capacity(content.tensor_infos.len());
        for (name, info) in content.tensor_infos {
            let bad =
                |reason: String| JanusError::bad_file(path, format!("tensor {name}: {reason}"));
            // The formats the writer stores: plain values, or the blocks of
            // this file's quantisation (q4k files hold q8_0 blocks too,
            // where rows do not split into 256 values).
            let allowed = match info.ggml_dtype {
                GgmlDType::F32 | GgmlDType::F16 | GgmlDType::BF16 => true,
                GgmlDType::Q8_0 => quant != Quant::None,
                GgmlDType::Q4K => quant == Quant::Q4K,
                _ => false,
            };
            if !allowed {
                return Err(bad(format!(
                    "stored as {:?}, which a {quant} model.gguf does not hold",
                    info.ggml_dtype
                )));
            }
            if info.offset % ALIGN != 0 {
                return Err(bad(format!(
                    "data offset {} is not a multiple of {ALIGN}",
                    info.offset
                )));
            }
            let (start, len) = span(&info, content.tensor_data_offset, map.len())
                .ok_or_else(|| bad("runs past the end of the file (truncated?)".into()))?;
            let entry = Entry {
                dtype: info.ggml_dtype,
                dims: info.shape.dims().to_vec(),
                start,
                len,
                checksum: None,
            };
            entries.insert(name, entry);
        }
        // No two tensors share bytes (a moved offset would make one read
        // another's data).
        let mut spans: Vec<(usize, usize, String)> = entries
            .iter()
            .map(|(n, e)| (e.start, e.start + e.len, n.clone()))
            .collect();
        spans.sort();
        for w in spans.windows(2) {
            if w[1].0 < w[0].1 {
                return Err(JanusError::bad_file(
                    path,
                    format!("tensors {} and {} overlap in the file", w[0].2, w[1].2),
                ));
            }
        }
        match content.metadata.get(CHECKSUM_KEY) {
            None => {}
            Some(Value::Array(sums)) if sums.len() == spans.len() => {
                for ((_, _, name), sum) in spans.iter().zip(sums) {
                    let Value::U32(sum) = sum else {
                        return Err(JanusError::bad_file(
                            path,
                            format!("{CHECKSUM_KEY} holds a non-u32 value"),
                        ));
                    };
                    if let Some(e) = entries.get_mut(name) {
                        e.checksum = Some(*sum);
                    }
                }
            }
            Some(_) => {
                return Err(JanusError::bad_file(
                    path,
                    format!("{CHECKSUM_KEY} does not hold one checksum per tensor"),
                ))
            }
        }
        Ok(Self {
            map,
            entries,
            quant,
        })
    }

    pub(crate) fn quant(&self) -> Quant {
        self.quant
    }

    /// How many tensors the file holds.
    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    pub(crate) fn names(&self) -> Vec<String> {
        self.entries.keys().cloned().collect()
    }

    /// The bytes of `name`'s tensor, checked against its checksum.
    fn bytes(&self, name: &str, e: &Entry) -> candle_core::Result<&[u8]> {
        let bytes = &self.map[e.start..e.start + e.len];
        match e.checksum {
            Some(sum) if tensor_checksum(name, e.dtype, &e.dims, bytes) != sum => {
                candle_core::bail!(
                    "tensor {name} does not match its checksum: model.gguf was altered or damaged \
                 (save the quantised folder again)"
                )
            }
            _ => Ok(bytes),
        }
    }
}

impl TensorReader for GgufFile {
    /// The shape of `name`, or the byte count of its blocks when `name` is
    /// a block name of the format it is stored in.
    fn shape_of(&self, name: &str) -> Option<Vec<usize>> {
        match parse_blocks_name(name) {
            Some((base, fmt)) => {
                let e = self.entries.get(base)?;
                (e.dtype == fmt).then(|| vec![e.len])
            }
            None => self.entries.get(name).map(|e| e.dims.clone()),
        }
    }

    /// `name` in its stored dtype (off the CPU, a quantised tensor asked
    /// for by its own name is dequantised to f32); a block name gives the
    /// raw blocks as u8.
    fn load_raw(&self, name: &str, dev: &Device) -> candle_core::Result<Tensor> {
        let missing =
            || candle_core::Error::Msg(format!("tensor {name} is missing from the checkpoint"));
        if let Some((base, fmt)) = parse_blocks_name(name) {
            let e = self
                .entries
                .get(base)
                .filter(|e| e.dtype == fmt)
                .ok_or_else(missing)?;
            let bytes = self.bytes(base, e)?;
            return copy_released::<u8>(bytes, &[bytes.len()])?.to_device(dev);
        }
        let e = self.entries.get(name).ok_or_else(missing)?;
        let (bytes, dims) = (self.bytes(name, e)?, e.dims.as_slice());
        let t = match e.dtype {
            GgmlDType::F32 => copy_released::<f32>(bytes, dims)?,
            GgmlDType::F16 => copy_released::<half::f16>(bytes, dims)?,
            GgmlDType::BF16 => copy_released::<half::bf16>(bytes, dims)?,
            // On the CPU the loaders take quantised weights as blocks (see
            // `janus_nn::stored_blocks`); a plain read there
            // means they no longer agree with the file, which a silent
            // dequantise-and-requantise would hide.
            dtype if dev.is_cpu() => candle_core::bail!(
                "tensor {name} is stored as {dtype:?} blocks, but the model reads it unquantised; \
                 save the quantised folder again with this version"
            ),
            dtype => candle_core::quantized::ggml_file::qtensor_from_ggml(
                dtype,
                bytes,
                dims.to_vec(),
                &Device::Cpu,
            )?
            .dequantize(&Device::Cpu)?,
        };
        t.to_device(dev)
    }
}
