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
//! use janus::{save_quantized, JanusPro, Quant};
//! use candle_core::{DType, Device};
//! # fn main() -> janus::Result<()> {
//! // A released model folder (here the tiny test model).
//! let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/tiny");
//! let out = std::env::temp_dir().join(format!("janus-doc-q8_0-{}", std::process::id()));
//! let path = save_quantized(dir.as_ref(), Quant::Q8_0, &out, &mut |_| Ok(()))?;
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

use candle_core::quantized::GgmlDType;
use candle_core::{DType, Device};
use candle_nn::VarBuilder;

use crate::checkpoint::files::{GGUF_FILE, SIDE_FILES, WEIGHT_ENTRIES};
use crate::checkpoint::gguf::{
    ggml_type_id, tensor_checksum, GgufFile, ALIGN, CHECKSUM_KEY, FORMAT_VERSION, QUANT_KEY,
    VERSION_KEY,
};
use crate::checkpoint::reader::TensorReader;
use crate::checkpoint::shape_recorder::ShapeRecorder;
use crate::checkpoint::Checkpoint;
use crate::config::JanusConfig;
use crate::error::{JanusError, Result};
use crate::models::JanusModel;
use crate::progress::Progress;
use janus_kernels::quant::quantize_rows;
use janus_kernels::tensor::with_cpu_slice;
use janus_nn::Quant;

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
    std::fs::copy(from, &tmp).map_err(|e| JanusError::bad_file(to, e))?;
    std::fs::rename(&tmp, to).map_err(|e| JanusError::bad_file(to, e))?;
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
        if let Some(f) = WEIGHT_ENTRIES
            .iter()
            .find(|&&f| f != GGUF_FILE && out_dir.join(f).exists())
        {
            return Err(JanusError::Input(format!(
                "the output folder {} already holds model weights ({f}); choose another",
                out_dir.display()
            )));
        }
    }
    std::fs::create_dir_all(out_dir).map_err(|e| JanusError::bad_file(out_dir, e))?;

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
    for f in std::iter::once("config.json").chain(SIDE_FILES) {
        let from = model_dir.join(f);
        if from.exists() {
            copy_atomic(&from, &out_dir.join(f))?;
        }
    }
    std::fs::rename(&tmp, &path).map_err(|e| JanusError::bad_file(&path, e))?;
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
    let source = checkpoint.into_reader(config.layout);
    let meta = [
        ("general.architecture", Meta::Str("janus")),
        ("general.name", Meta::Str(name)),
        (QUANT_KEY, Meta::Str(quant.name())),
        (VERSION_KEY, Meta::U32(FORMAT_VERSION)),
        (CHECKSUM_KEY, Meta::Checksums),
    ];
    let total = tensors.len();
    let mut writer = GgufWriter::create(path, &meta, &tensors)?;
    for (i, (name, shape)) in tensors.iter().enumerate() {
        let t = source
            .load_checked(name, shape, &Device::Cpu)
            .map_err(JanusError::weights)?;
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
                let q = quantize_rows(&t, fmt).map_err(JanusError::weights)?;
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
    if written.len() != total {
        return Err(JanusError::bad_file(
            path,
            "tensor count differs from what was written",
        ));
    }
    Ok(())
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
    JanusModel::load_quantized(vb, config, quant).map_err(JanusError::weights)?;
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
    /// One u32 per tensor, filled in by [`GgufWriter::finish`].
    Checksums,
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
    /// The tensors (name, shape), in header order, and their checksums.
    tensors: Vec<(String, Vec<usize>)>,
    checksums: Vec<u32>,
    /// File position of the checksum array's values, if the header has one.
    checksum_slot: Option<u64>,
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
        let mut checksum_slot = None;
        for (key, value) in meta {
            string(&mut head, key);
            match value {
                Meta::Checksums => {
                    head.extend(9u32.to_le_bytes()); // an array
                    head.extend(4u32.to_le_bytes()); // of u32
                    head.extend((tensors.len() as u64).to_le_bytes());
                    checksum_slot = Some(head.len() as u64);
                    head.resize(head.len() + 4 * tensors.len(), 0);
                }
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
        let io = |e: std::io::Error| JanusError::bad_file(path, e);
        let mut out = BufWriter::with_capacity(8 << 20, File::create(path).map_err(io)?);
        out.write_all(&head).map_err(io)?;
        Ok(Self {
            out,
            path: path.into(),
            slots,
            end: 0,
            written: vec![],
            tensors: tensors.to_vec(),
            checksums: Vec::with_capacity(tensors.len()),
            checksum_slot,
        })
    }

    /// The data of the next tensor, in header order, at the next aligned
    /// offset.
    fn tensor(&mut self, dtype: GgmlDType, data: &[u8]) -> Result<()> {
        let io = |e: std::io::Error| JanusError::bad_file(&self.path, e);
        let offset = self.end.div_ceil(ALIGN) * ALIGN;
        self.out
            .write_all(&vec![0u8; (offset - self.end) as usize])
            .map_err(io)?;
        self.out.write_all(data).map_err(io)?;
        self.end = offset + data.len() as u64;
        let id = ggml_type_id(dtype)
            .unwrap_or_else(|| unreachable!("the writer never stores {dtype:?}"));
        self.written.push((id, offset));
        let Some((name, shape)) = self.tensors.get(self.checksums.len()) else {
            return Err(JanusError::bad_file(
                &self.path,
                "more tensors written than the header holds",
            ));
        };
        self.checksums
            .push(tensor_checksum(name, dtype, shape, data));
        Ok(())
    }

    fn finish(mut self) -> Result<()> {
        let io = |e: std::io::Error| JanusError::bad_file(&self.path, e);
        if self.written.len() != self.slots.len() {
            return Err(JanusError::bad_file(
                &self.path,
                "not every tensor was written",
            ));
        }
        self.out.flush().map_err(io)?;
        let mut file = self
            .out
            .into_inner()
            .map_err(|e| JanusError::bad_file(&self.path, e.error()))?;
        for (&slot, &(id, offset)) in self.slots.iter().zip(&self.written) {
            file.seek(SeekFrom::Start(slot)).map_err(io)?;
            file.write_all(&id.to_le_bytes()).map_err(io)?;
            file.write_all(&offset.to_le_bytes()).map_err(io)?;
        }
        if let Some(slot) = self.checksum_slot {
            let sums: Vec<u8> = self
                .checksums
                .iter()
                .flat_map(|c| c.to_le_bytes())
                .collect();
            file.seek(SeekFrom::Start(slot)).map_err(io)?;
            file.write_all(&sums).map_err(io)?;
        }
        file.sync_all().map_err(io)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkpoint::reader::Checked;
    use candle_core::{Module, Tensor};
    use janus_nn::QLinear;

    /// A q4k `model.gguf` holding one linear layer: `lin.weight` as the
    /// blocks `w`, `lin.bias` as f32.
    fn write_q4k_linear(path: &Path, w: &candle_core::quantized::QTensor, bias: &[f32]) {
        let (n, k) = w.shape().dims2().unwrap();
        let meta = [
            (QUANT_KEY, Meta::Str("q4k")),
            (VERSION_KEY, Meta::U32(FORMAT_VERSION)),
        ];
        let tensors = [
            ("lin.weight".to_string(), vec![n, k]),
            ("lin.bias".to_string(), vec![n]),
        ];
        let mut writer = GgufWriter::create(path, &meta, &tensors).unwrap();
        writer.tensor(GgmlDType::Q4K, &w.data().unwrap()).unwrap();
        writer.tensor(GgmlDType::F32, as_bytes(bias)).unwrap();
        writer.finish().unwrap();
    }

    /// q4_K blocks (the fixture is too narrow for them) go through the
    /// writer and the reader unchanged, and a read in another form is refused.
    #[test]
    fn q4k_blocks_round_trip_through_a_file() {
        let (n, k) = (8, 512);
        let v: Vec<f32> = (0..n * k)
            .map(|i| ((i * 7919 % 1999) as f32 / 999.5 - 1.0) * 0.02)
            .collect();
        let w = Tensor::from_vec(v, (n, k), &Device::Cpu).unwrap();
        let blocks = quantize_rows(&w, GgmlDType::Q4K).unwrap();
        let bias = Tensor::arange(0f32, n as f32, &Device::Cpu).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(GGUF_FILE);
        write_q4k_linear(&path, &blocks, &bias.to_vec1::<f32>().unwrap());

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

    /// A file whose tensor offset or type was altered is refused at open,
    /// naming the tensor, instead of serving another tensor's bytes.
    #[test]
    fn altered_offsets_and_types_are_refused() {
        let (n, k) = (8, 512);
        let w = Tensor::from_vec(vec![0.01f32; n * k], (n, k), &Device::Cpu).unwrap();
        let blocks = quantize_rows(&w, GgmlDType::Q4K).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(GGUF_FILE);
        write_q4k_linear(&path, &blocks, &[0f32; 8]);
        let good = std::fs::read(&path).unwrap();
        assert!(GgufFile::open(&path).is_ok());
        // The (type, offset) fields follow each name, its dimension count
        // and its dimensions.
        let slot = |name: &str, dims: usize| {
            let at = good
                .windows(name.len())
                .position(|w| w == name.as_bytes())
                .unwrap();
            at + name.len() + 4 + 8 * dims
        };
        let cases: [(&str, usize, usize, &[u8], &str); 4] = [
            // The bias moved onto the weight's bytes.
            ("lin.bias", 1, 4, &0u64.to_le_bytes(), "overlap"),
            // Moved to an unaligned place.
            ("lin.bias", 1, 4, &2312u64.to_le_bytes(), "not a multiple"),
            // The weight's type made q8_0's: its blocks would run on past the file.
            ("lin.weight", 2, 0, &8u32.to_le_bytes(), "runs past the end"),
            // A type no janus file holds (q4_0).
            ("lin.weight", 2, 0, &2u32.to_le_bytes(), "does not hold"),
        ];
        for (name, dims, field, bytes, needle) in cases {
            let mut bad = good.clone();
            let at = slot(name, dims) + field;
            bad[at..at + bytes.len()].copy_from_slice(bytes);
            std::fs::write(&path, &bad).unwrap();
            let err = GgufFile::open(&path).err().expect(needle).to_string();
            assert!(
                err.contains(needle) && err.contains(name),
                "{needle}: {err}"
            );
        }
    }

    /// Damaged data, and a type changed to another of the same size (bf16
    /// read as f16), pass the checks at open but fail the tensor's checksum
    /// when it is read.
    #[test]
    fn damaged_data_and_retyped_tensors_fail_their_checksums() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(GGUF_FILE);
        let meta = [
            (QUANT_KEY, Meta::Str("q8_0")),
            (VERSION_KEY, Meta::U32(FORMAT_VERSION)),
            (CHECKSUM_KEY, Meta::Checksums),
        ];
        let tensors = [
            ("a.weight".to_string(), vec![4, 8]),
            ("b.bias".to_string(), vec![8]),
        ];
        let a: Vec<half::bf16> = (0..32)
            .map(|i| half::bf16::from_f32(i as f32 / 8.0))
            .collect();
        let b: Vec<f32> = (0..8).map(|i| i as f32).collect();
        let mut writer = GgufWriter::create(&path, &meta, &tensors).unwrap();
        writer.tensor(GgmlDType::BF16, as_bytes(&a)).unwrap();
        writer.tensor(GgmlDType::F32, as_bytes(&b)).unwrap();
        writer.finish().unwrap();
        let good = std::fs::read(&path).unwrap();
        let file = GgufFile::open(&path).unwrap();
        let read = file.load_raw("a.weight", &Device::Cpu).unwrap();
        assert_eq!(
            read.flatten_all().unwrap().to_vec1::<half::bf16>().unwrap(),
            a
        );
        assert_eq!(
            file.load_raw("b.bias", &Device::Cpu)
                .unwrap()
                .to_vec1::<f32>()
                .unwrap(),
            b
        );

        let type_field = good.windows(8).position(|w| w == b"a.weight").unwrap() + 8 + 4 + 16;
        let mut retyped = good.clone();
        retyped[type_field..type_field + 4].copy_from_slice(&1u32.to_le_bytes()); // f16
        let mut damaged = good.clone();
        let last = damaged.len() - 1; // b.bias's last byte
        damaged[last] ^= 0x40;
        for (bytes, name) in [(retyped, "a.weight"), (damaged, "b.bias")] {
            std::fs::write(&path, bytes).unwrap();
            let file = GgufFile::open(&path).unwrap();
            let err = file.load_raw(name, &Device::Cpu).unwrap_err().to_string();
            assert!(
                err.contains(&format!("tensor {name} does not match its checksum")),
                "{err}"
            );
        }
    }
}
