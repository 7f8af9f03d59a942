//! Quantised model folders: the released folder's config and tokenizer
//! files beside one `model.gguf` holding every tensor the model reads, the
//! quantised ones as GGUF blocks (q8_0 / q4_K, exactly what a load with
//! `--quant` would make) and the rest as stored (bf16, f16 or f32). Loading
//! one skips the quantisation (most of a quantised load) and reads a
//! quarter to a half of the bytes.
//!
//! The file is standard GGUF (version 3, 32-byte alignment) under the
//! released tensor names, with `janus.quant` naming the quantisation and
//! `janus.format_version` the layout; [`save_quantized`] writes it.
//!
//! ```
//! use janus::{gguf, JanusPro, Quant};
//! use candle_core::{DType, Device};
//! # fn main() -> janus::Result<()> {
//! // A released model folder (here the tiny test model).
//! let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/tiny");
//! let out = std::env::temp_dir().join(format!("janus-doc-q8_0-{}", std::process::id()));
//! let path = gguf::save_quantized(dir.as_ref(), Quant::Q8_0, &out, &mut |_| Ok(()))?;
//! assert!(path.ends_with("model.gguf"));
//! let model = JanusPro::load(&out, &Device::Cpu, DType::F32)?;
//! assert_eq!(model.quant(), Quant::Q8_0);
//! # std::fs::remove_dir_all(&out).ok();
//! # Ok(()) }
//! ```

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::{BufWriter, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use candle_core::quantized::gguf_file::{Content, TensorInfo, Value};
use candle_core::quantized::GgmlDType;
use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;

use crate::config::JanusConfig;
use crate::error::{without_backtrace, JanusError, Result};
use crate::models::JanusModel;
use crate::pipeline::Progress;
use crate::quant::Quant;
use crate::weights::{copy_released, Checkpoint, ShapeRecorder, TensorSource};
use janus_kernels::tensor::with_cpu_slice;

/// The weight file of a quantised model folder.
pub const GGUF_FILE: &str = "model.gguf";

/// Metadata key naming the quantisation (`q8_0`, `q4k`).
const QUANT_KEY: &str = "janus.quant";
/// Metadata key of the layout version; readers refuse newer ones.
const VERSION_KEY: &str = "janus.format_version";
const FORMAT_VERSION: u32 = 1;
/// GGUF's default data alignment, which this writer uses.
const ALIGN: u64 = 32;

fn bad(path: &Path, reason: impl std::fmt::Display) -> JanusError {
    JanusError::BadFile {
        path: path.into(),
        reason: reason.to_string(),
    }
}

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
        let mut file = File::open(path).map_err(|e| bad(path, e))?;
        let content = Content::read(&mut file).map_err(|e| bad(path, without_backtrace(e)))?;
        let quant = match content.metadata.get(QUANT_KEY) {
            Some(Value::String(q)) => Quant::parse(q).map_err(|e| bad(path, e))?,
            _ => {
                return Err(bad(
                    path,
                    "not a Janus-Pro model written by `janus quantize` (no janus.quant entry)",
                ))
            }
        };
        match content.metadata.get(VERSION_KEY) {
            Some(Value::U32(v)) if *v <= FORMAT_VERSION => {}
            Some(Value::U32(v)) => {
                return Err(bad(
                    path,
                    format!("format version {v} is newer than this janus-rs reads ({FORMAT_VERSION}); update janus-rs"),
                ))
            }
            _ => return Err(bad(path, "no janus.format_version entry")),
        }
        // SAFETY: the file is only read; modifying it while mapped is the caller's problem, as with any mmap.
        let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| bad(path, e))?;
        let mut entries = HashMap::with_capacity(content.tensor_infos.len());
        for (name, info) in content.tensor_infos {
            let (start, len) =
                span(&info, content.tensor_data_offset, map.len()).ok_or_else(|| {
                    bad(
                        path,
                        format!("tensor {name} runs past the end of the file (truncated?)"),
                    )
                })?;
            let entry = Entry {
                dtype: info.ggml_dtype,
                dims: info.shape.dims().to_vec(),
                start,
                len,
            };
            entries.insert(name, entry);
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

    pub(crate) fn names(&self) -> Vec<String> {
        self.entries.keys().cloned().collect()
    }

    fn bytes(&self, e: &Entry) -> &[u8] {
        &self.map[e.start..e.start + e.len]
    }
}

impl TensorSource for GgufFile {
    /// The shape of `name`, or the byte count of its blocks when `name` is
    /// a block name of the format it is stored in.
    fn shape_of(&self, name: &str) -> Option<Vec<usize>> {
        match janus_kernels::blocks::parse_blocks_name(name) {
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
        if let Some((base, fmt)) = janus_kernels::blocks::parse_blocks_name(name) {
            let e = self
                .entries
                .get(base)
                .filter(|e| e.dtype == fmt)
                .ok_or_else(missing)?;
            let bytes = self.bytes(e);
            return copy_released::<u8>(bytes, &[bytes.len()])?.to_device(dev);
        }
        let e = self.entries.get(name).ok_or_else(missing)?;
        let (bytes, dims) = (self.bytes(e), e.dims.as_slice());
        let t = match e.dtype {
            GgmlDType::F32 => copy_released::<f32>(bytes, dims)?,
            GgmlDType::F16 => copy_released::<half::f16>(bytes, dims)?,
            GgmlDType::BF16 => copy_released::<half::bf16>(bytes, dims)?,
            // On the CPU the loaders take quantised weights as blocks (see
            // `janus_kernels::blocks::stored_blocks`); a plain read there
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

/// GGML's type ids of the formats this writer stores.
fn ggml_type_id(dtype: GgmlDType) -> u32 {
    match dtype {
        GgmlDType::F32 => 0,
        GgmlDType::F16 => 1,
        GgmlDType::Q8_0 => 8,
        GgmlDType::Q4K => 12,
        GgmlDType::BF16 => 30,
        other => unreachable!("the writer never stores {other:?}"),
    }
}

/// Removes a file when dropped, unless disarmed (a partial output).
struct RemoveOnDrop(Option<PathBuf>);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// Copies `from` to `to` through a temporary file in `to`'s folder, so
/// `to` is either absent, as before, or complete.
fn copy_atomic(from: &Path, to: &Path) -> Result<()> {
    let tmp = to.with_extension("partial");
    let mut guard = RemoveOnDrop(Some(tmp.clone()));
    std::fs::copy(from, &tmp).map_err(|e| bad(to, e))?;
    std::fs::rename(&tmp, to).map_err(|e| bad(to, e))?;
    guard.0 = None;
    Ok(())
}

/// Writes a quantised model folder `out_dir` (created if needed) from the
/// model folder `model_dir`: its config and tokenizer files, and a
/// `model.gguf` with every tensor the model reads, those that a load with
/// `quant` quantises already quantised. Tensors are read, quantised and
/// written one at a time, so memory stays at about one tensor; `on_tensor`
/// is told after each one (an error from it, such as
/// [`JanusError::Cancelled`], stops the work). Returns the file's path.
/// Nothing is left behind on failure: the file appears only once complete
/// (an earlier `model.gguf` there is replaced).
pub fn save_quantized(
    model_dir: &Path,
    quant: Quant,
    out_dir: &Path,
    on_tensor: &mut dyn FnMut(Progress) -> Result<()>,
) -> Result<PathBuf> {
    if quant == Quant::None {
        return Err(JanusError::Input(
            "choose a quantisation to save (q8_0 or q4k)".into(),
        ));
    }
    let config = JanusConfig::from_model_dir(model_dir)?;
    let tokenizer = model_dir.join("tokenizer.json");
    if !tokenizer.exists() {
        return Err(JanusError::MissingFile {
            what: "tokenizer".into(),
            path: tokenizer,
        });
    }
    let checkpoint = Checkpoint::open(model_dir)?;
    if let Some(q) = checkpoint.stored_quant() {
        return Err(JanusError::Input(format!(
            "{} is already quantised ({q}); quantise the original model folder",
            model_dir.display()
        )));
    }
    if out_dir.exists() {
        if same_dir(out_dir, model_dir) {
            return Err(JanusError::Input(format!(
                "the output folder {} is the model folder; choose another",
                out_dir.display()
            )));
        }
        if let Some(f) = crate::hub::WEIGHT_ENTRIES
            .iter()
            .find(|&&f| f != GGUF_FILE && out_dir.join(f).exists())
        {
            return Err(JanusError::Input(format!(
                "the output folder {} already holds model weights ({f}); choose another",
                out_dir.display()
            )));
        }
    }
    std::fs::create_dir_all(out_dir).map_err(|e| bad(out_dir, e))?;

    let path = out_dir.join(GGUF_FILE);
    let tmp = out_dir.join(format!(".{GGUF_FILE}.partial"));
    let mut guard = RemoveOnDrop(Some(tmp.clone()));
    write_gguf(
        &config,
        checkpoint,
        quant,
        &dir_name(model_dir),
        &tmp,
        on_tensor,
    )?;
    for f in std::iter::once("config.json").chain(crate::hub::SIDE_FILES) {
        let from = model_dir.join(f);
        if from.exists() {
            copy_atomic(&from, &out_dir.join(f))?;
        }
    }
    std::fs::rename(&tmp, &path).map_err(|e| bad(&path, e))?;
    guard.0 = None;
    Ok(path)
}

/// Writes the `model.gguf` of `checkpoint` (a model with `config`) quantised
/// to `quant` at `path`, then reads it back to check it. `name` goes into
/// `general.name`.
pub(crate) fn write_gguf(
    config: &JanusConfig,
    checkpoint: Checkpoint,
    quant: Quant,
    name: &str,
    path: &Path,
    on_tensor: &mut dyn FnMut(Progress) -> Result<()>,
) -> Result<()> {
    let (tensors, blocks) = plan(config, quant)?;
    let source = checkpoint.into_source(config.layout);
    let meta = [
        ("general.architecture", Meta::Str("janus")),
        ("general.name", Meta::Str(name)),
        (QUANT_KEY, Meta::Str(quant.name())),
        (VERSION_KEY, Meta::U32(FORMAT_VERSION)),
    ];
    let total = tensors.len();
    let mut writer = GgufWriter::create(path, &meta, &tensors)?;
    for (i, (name, shape)) in tensors.iter().enumerate() {
        let t = source
            .load_checked(name, shape, &Device::Cpu)
            .map_err(weights_err)?;
        let t = match t.dtype() {
            DType::F32 | DType::F16 | DType::BF16 => t,
            _ => t.to_dtype(DType::F32)?,
        };
        match (blocks.get(name.as_str()), t.dtype()) {
            (Some(&fmt), dtype) => {
                let t = if dtype == DType::F16 {
                    t.to_dtype(DType::F32)?
                } else {
                    t
                };
                let q = janus_kernels::blocks::quantize_rows(&t, fmt).map_err(weights_err)?;
                drop(t);
                writer.tensor(fmt, &q.data()?)?;
            }
            (None, DType::F16) => {
                with_cpu_slice::<half::f16, _>(&t, |v| writer.tensor(GgmlDType::F16, as_bytes(v)))??
            }
            (None, DType::BF16) => with_cpu_slice::<half::bf16, _>(&t, |v| {
                writer.tensor(GgmlDType::BF16, as_bytes(v))
            })??,
            (None, _) => {
                with_cpu_slice::<f32, _>(&t, |v| writer.tensor(GgmlDType::F32, as_bytes(v)))??
            }
        }
        on_tensor(Progress { step: i + 1, total })?;
    }
    writer.finish()?;
    // Read back what was written before it is used.
    let written = GgufFile::open(path)?;
    if written.entries.len() != total {
        return Err(bad(path, "tensor count differs from what was written"));
    }
    Ok(())
}

fn weights_err(e: candle_core::Error) -> JanusError {
    JanusError::Weights(without_backtrace(e).to_string())
}

fn same_dir(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}

fn dir_name(dir: &Path) -> String {
    dir.canonicalize()
        .ok()
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_else(|| "janus-pro".into())
}

fn as_bytes<T: Copy>(v: &[T]) -> &[u8] {
    // SAFETY: plain-old-data values (f32, f16, bf16) viewed as their bytes.
    unsafe { std::slice::from_raw_parts(v.as_ptr() as *const u8, std::mem::size_of_val(v)) }
}

/// What a load with `quant` reads: every tensor (released name, shape), in
/// request order, and the block format of those it asks for quantised.
/// Learnt by building the model over a [`ShapeRecorder`], so it is exactly
/// what the loaders do.
#[allow(clippy::type_complexity)]
pub(crate) fn plan(
    config: &JanusConfig,
    quant: Quant,
) -> Result<(Vec<(String, Vec<usize>)>, HashMap<String, GgmlDType>)> {
    let recorder = ShapeRecorder::default();
    let vb = VarBuilder::from_backend(Box::new(recorder.clone()), DType::F32, Device::Cpu);
    JanusModel::load_quantized(vb, config, quant).map_err(weights_err)?;
    let mut seen = HashSet::new();
    let tensors = recorder
        .requested()
        .into_iter()
        .filter(|(n, _)| seen.insert(n.clone()))
        .collect();
    Ok((tensors, recorder.requested_blocks().into_iter().collect()))
}

enum Meta<'a> {
    Str(&'a str),
    U32(u32),
}

/// A streaming GGUF writer: the header is written first with every tensor's
/// name and shape, each tensor's type and offset are filled in once its
/// data is written, so no more than one tensor is ever held.
struct GgufWriter {
    out: BufWriter<File>,
    path: PathBuf,
    /// File positions of each tensor's (type, offset) fields.
    slots: Vec<u64>,
    /// End of the data written so far, relative to the data section.
    end: u64,
    written: Vec<(u32, u64)>,
}

impl GgufWriter {
    fn create(
        path: &Path,
        meta: &[(&str, Meta)],
        tensors: &[(String, Vec<usize>)],
    ) -> Result<Self> {
        let mut head = Vec::new();
        let string = |head: &mut Vec<u8>, s: &str| {
            head.extend((s.len() as u64).to_le_bytes());
            head.extend(s.as_bytes());
        };
        head.extend(b"GGUF");
        head.extend(3u32.to_le_bytes());
        head.extend((tensors.len() as u64).to_le_bytes());
        head.extend((meta.len() as u64).to_le_bytes());
        for (key, value) in meta {
            string(&mut head, key);
            match value {
                Meta::Str(s) => {
                    head.extend(8u32.to_le_bytes());
                    string(&mut head, s);
                }
                Meta::U32(v) => {
                    head.extend(4u32.to_le_bytes());
                    head.extend(v.to_le_bytes());
                }
            }
        }
        let mut slots = Vec::with_capacity(tensors.len());
        for (name, shape) in tensors {
            string(&mut head, name);
            head.extend((shape.len() as u32).to_le_bytes());
            for &d in shape.iter().rev() {
                head.extend((d as u64).to_le_bytes());
            }
            slots.push(head.len() as u64);
            head.extend([0u8; 12]);
        }
        let data_start = (head.len() as u64).div_ceil(ALIGN) * ALIGN;
        head.resize(data_start as usize, 0);
        // (The data section starts here, so offsets below are relative to it.)
        let io = |e: std::io::Error| bad(path, e);
        let mut out = BufWriter::with_capacity(8 << 20, File::create(path).map_err(io)?);
        out.write_all(&head).map_err(io)?;
        Ok(Self {
            out,
            path: path.into(),
            slots,
            end: 0,
            written: vec![],
        })
    }

    /// The data of the next tensor, in header order, at the next aligned
    /// offset.
    fn tensor(&mut self, dtype: GgmlDType, data: &[u8]) -> Result<()> {
        let io = |e: std::io::Error| bad(&self.path, e);
        let offset = self.end.div_ceil(ALIGN) * ALIGN;
        self.out
            .write_all(&vec![0u8; (offset - self.end) as usize])
            .map_err(io)?;
        self.out.write_all(data).map_err(io)?;
        self.end = offset + data.len() as u64;
        self.written.push((ggml_type_id(dtype), offset));
        Ok(())
    }

    fn finish(mut self) -> Result<()> {
        let io = |e: std::io::Error| bad(&self.path, e);
        if self.written.len() != self.slots.len() {
            return Err(bad(&self.path, "not every tensor was written"));
        }
        self.out.flush().map_err(io)?;
        let mut file = self
            .out
            .into_inner()
            .map_err(|e| bad(&self.path, e.error()))?;
        for (&slot, &(id, offset)) in self.slots.iter().zip(&self.written) {
            file.seek(SeekFrom::Start(slot)).map_err(io)?;
            file.write_all(&id.to_le_bytes()).map_err(io)?;
            file.write_all(&offset.to_le_bytes()).map_err(io)?;
        }
        file.sync_all().map_err(io)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::QLinear;
    use crate::weights::Checked;
    use candle_core::Module;

    /// q4_K blocks (the fixture is too narrow for them) go through the
    /// writer and the reader unchanged, and a read in another form is refused.
    #[test]
    fn q4k_blocks_round_trip_through_a_file() {
        let (n, k) = (8, 512);
        let v: Vec<f32> = (0..n * k)
            .map(|i| ((i * 7919 % 1999) as f32 / 999.5 - 1.0) * 0.02)
            .collect();
        let w = Tensor::from_vec(v, (n, k), &Device::Cpu).unwrap();
        let blocks = janus_kernels::blocks::quantize_rows(&w, GgmlDType::Q4K).unwrap();
        let bias = Tensor::arange(0f32, n as f32, &Device::Cpu).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(GGUF_FILE);
        let meta = [
            (QUANT_KEY, Meta::Str("q4k")),
            (VERSION_KEY, Meta::U32(FORMAT_VERSION)),
        ];
        let tensors = [
            ("lin.weight".to_string(), vec![n, k]),
            ("lin.bias".to_string(), vec![n]),
        ];
        let mut writer = GgufWriter::create(&path, &meta, &tensors).unwrap();
        writer
            .tensor(GgmlDType::Q4K, &blocks.data().unwrap())
            .unwrap();
        writer
            .tensor(GgmlDType::F32, as_bytes(&bias.to_vec1::<f32>().unwrap()))
            .unwrap();
        writer.finish().unwrap();

        let file = GgufFile::open(&path).unwrap();
        assert_eq!(file.quant(), Quant::Q4K);
        let vb = VarBuilder::from_backend(Box::new(Checked(file)), DType::F32, Device::Cpu);
        let loaded = QLinear::load(k, n, true, vb.pp("lin"), Quant::Q4K).unwrap();
        assert_eq!(loaded.quant(), Quant::Q4K);
        let direct = QLinear::from_weight(w, Some(bias), Quant::Q4K).unwrap();
        for rows in [1, 3, 40] {
            let x: Vec<f32> = (0..rows * k).map(|i| (i % 13) as f32 / 6.0 - 1.0).collect();
            let x = Tensor::from_vec(x, (rows, k), &Device::Cpu).unwrap();
            let (a, b) = (loaded.forward(&x).unwrap(), direct.forward(&x).unwrap());
            assert_eq!(
                janus_kernels::tensor::rel_l2(&a, &b).unwrap(),
                0.0,
                "{rows} rows"
            );
        }
        let err = QLinear::load(k, n, true, vb.pp("lin"), Quant::Q8_0)
            .err()
            .unwrap();
        assert!(err.to_string().contains("stored as Q4K blocks"), "{err}");
    }
}
