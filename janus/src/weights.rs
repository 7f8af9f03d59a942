//! Finding and reading checkpoint files: one or sharded safetensors (memory
//! mapped), one or sharded PyTorch pickles (read as data by candle's
//! restricted unpickler, which executes nothing), or a quantised
//! `model.gguf` written by [`crate::gguf`] (memory mapped).
//!
//! Every request is checked against the stored shape before any data is
//! read, so a mismatch names the key and both shapes.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::VarBuilder;

use crate::config::CheckpointLayout;
use crate::error::{without_backtrace, JanusError, Result};

enum Store {
    Safetensors(candle_core::safetensors::MmapedSafetensors),
    Pickle {
        shards: Vec<candle_core::pickle::PthTensors>,
        route: HashMap<String, usize>,
    },
    Gguf(crate::gguf::GgufFile),
}

/// The weights of one model folder.
pub struct Checkpoint {
    store: Store,
    files: Vec<PathBuf>,
}

fn bad(path: &Path, reason: impl std::fmt::Display) -> JanusError {
    JanusError::BadFile {
        path: path.into(),
        reason: reason.to_string(),
    }
}

/// Shard file names of a `*.index.json`, in first-seen order.
pub(crate) fn index_shard_names(index: &Path) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(index).map_err(|e| bad(index, e))?;
    let value: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| bad(index, format!("invalid JSON: {e}")))?;
    let map = value
        .get("weight_map")
        .and_then(|m| m.as_object())
        .ok_or_else(|| bad(index, "no weight_map object"))?;
    let mut seen = BTreeSet::new();
    let mut files = vec![];
    for file in map.values() {
        let file = file
            .as_str()
            .ok_or_else(|| bad(index, "weight_map values must be file names"))?;
        if seen.insert(file.to_owned()) {
            files.push(file.to_owned());
        }
    }
    Ok(files)
}

/// Shard paths of a `*.index.json`, each checked to exist.
fn index_shards(index: &Path) -> Result<Vec<PathBuf>> {
    let dir = index.parent().unwrap_or(Path::new("."));
    let files: Vec<PathBuf> = index_shard_names(index)?
        .iter()
        .map(|f| dir.join(f))
        .collect();
    for f in &files {
        if !f.exists() {
            return Err(JanusError::MissingFile {
                what: "weight shard".into(),
                path: f.clone(),
            });
        }
    }
    Ok(files)
}

impl Checkpoint {
    /// Opens the weights of a model folder, in order of preference:
    /// `model.gguf` (quantised, see [`crate::gguf`]), `model.safetensors`,
    /// `model.safetensors.index.json`, `pytorch_model.bin`,
    /// `pytorch_model.bin.index.json`.
    pub fn open(dir: &Path) -> Result<Self> {
        let gguf = dir.join(crate::gguf::GGUF_FILE);
        if gguf.exists() {
            return Ok(Self {
                store: Store::Gguf(crate::gguf::GgufFile::open(&gguf)?),
                files: vec![gguf],
            });
        }
        let st = dir.join("model.safetensors");
        let st_index = dir.join("model.safetensors.index.json");
        let bin = dir.join("pytorch_model.bin");
        let bin_index = dir.join("pytorch_model.bin.index.json");
        if st.exists() {
            Self::open_safetensors(vec![st])
        } else if st_index.exists() {
            Self::open_safetensors(index_shards(&st_index)?)
        } else if bin.exists() {
            Self::open_pickles(vec![bin])
        } else if bin_index.exists() {
            Self::open_pickles(index_shards(&bin_index)?)
        } else {
            Err(JanusError::MissingFile {
                what: "model weights (model.gguf, model.safetensors, model.safetensors.index.json, pytorch_model.bin or pytorch_model.bin.index.json)".into(),
                path: dir.into(),
            })
        }
    }

    fn open_safetensors(files: Vec<PathBuf>) -> Result<Self> {
        // Validate each file on its own first, so an error names the bad file.
        for f in &files {
            // SAFETY: the file is only read; modifying it while mapped is the caller's problem, as with any mmap.
            unsafe { candle_core::safetensors::MmapedSafetensors::new(f) }
                .map_err(|e| bad(f, without_backtrace(e)))?;
        }
        // SAFETY: as above.
        let st = unsafe { candle_core::safetensors::MmapedSafetensors::multi(&files) }
            .map_err(|e| bad(&files[0], without_backtrace(e)))?;
        Ok(Self {
            store: Store::Safetensors(st),
            files,
        })
    }

    fn open_pickles(files: Vec<PathBuf>) -> Result<Self> {
        let mut shards = Vec::with_capacity(files.len());
        let mut route = HashMap::new();
        for (i, f) in files.iter().enumerate() {
            let shard = candle_core::pickle::PthTensors::new(f, None)
                .map_err(|e| bad(f, without_backtrace(e)))?;
            if shard.tensor_infos().is_empty() {
                return Err(bad(f, "no tensors found: not a PyTorch state dict"));
            }
            for name in shard.tensor_infos().keys() {
                route.insert(name.clone(), i);
            }
            shards.push(shard);
        }
        Ok(Self {
            store: Store::Pickle { shards, route },
            files,
        })
    }

    /// The weight files in use.
    pub fn files(&self) -> &[PathBuf] {
        &self.files
    }

    /// All stored tensor names.
    pub fn names(&self) -> Vec<String> {
        match &self.store {
            Store::Safetensors(st) => st.tensors().into_iter().map(|(n, _)| n).collect(),
            Store::Pickle { route, .. } => route.keys().cloned().collect(),
            Store::Gguf(g) => g.names(),
        }
    }

    /// The quantisation of a `model.gguf` checkpoint; `None` for the others.
    pub fn stored_quant(&self) -> Option<crate::quant::Quant> {
        match &self.store {
            Store::Gguf(g) => Some(g.quant()),
            _ => None,
        }
    }

    /// Where this checkpoint's tensors come from under the released names
    /// (a `model.gguf` always holds those names, whatever the config's layout).
    pub(crate) fn into_source(self, layout: CheckpointLayout) -> Box<dyn TensorSource> {
        match (&self.store, layout) {
            (Store::Gguf(_), _) | (_, CheckpointLayout::Released) => Box::new(self),
            (_, CheckpointLayout::Transformers) => {
                Box::new(crate::transformers_layout::TransformersCheckpoint(self))
            }
        }
    }

    /// A `VarBuilder` reading from this checkpoint under the released
    /// names, converting to `dtype`.
    pub fn into_var_builder(
        self,
        layout: CheckpointLayout,
        dtype: DType,
        device: &Device,
    ) -> VarBuilder<'static> {
        let backend: Box<dyn SimpleBackend> = Box::new(Checked(self.into_source(layout)));
        VarBuilder::from_backend(backend, dtype, device.clone())
    }
}

/// Where named tensors come from, under the released names (and, where a
/// source stores them, quantised blocks as raw bytes under their
/// `janus_kernels::blocks::blocks_name`).
pub(crate) trait TensorSource: Send + Sync {
    /// The stored shape, without reading data.
    fn shape_of(&self, name: &str) -> Option<Vec<usize>>;
    /// The tensor in its stored dtype.
    fn load_raw(&self, name: &str, dev: &Device) -> candle_core::Result<Tensor>;

    /// As [`TensorSource::load_raw`], after checking the stored shape
    /// against `dims`, so a mismatch names the key and both shapes.
    fn load_checked(
        &self,
        name: &str,
        dims: &[usize],
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        match self.shape_of(name) {
            None => candle_core::bail!("tensor {name} is missing from the checkpoint"),
            Some(stored) if stored.as_slice() != dims => {
                candle_core::bail!(
                    "tensor {name} has shape {stored:?} in the checkpoint, the model expects {dims:?}"
                )
            }
            Some(_) => self.load_raw(name, dev),
        }
    }
}

impl TensorSource for Checkpoint {
    fn shape_of(&self, name: &str) -> Option<Vec<usize>> {
        match &self.store {
            Store::Safetensors(st) => st.get(name).ok().map(|v| v.shape().to_vec()),
            Store::Pickle { shards, route } => route
                .get(name)
                .and_then(|&i| shards[i].tensor_infos().get(name))
                .map(|info| info.layout.dims().to_vec()),
            Store::Gguf(g) => g.shape_of(name),
        }
    }

    fn load_raw(&self, name: &str, dev: &Device) -> candle_core::Result<Tensor> {
        match &self.store {
            Store::Safetensors(st) => {
                let view = st.get(name)?;
                // Copied out of the mapping in chunks, each chunk's pages then
                // dropped from this process's resident set (they stay in the
                // page cache): a load never holds a tensor's file pages and
                // its copy at once, nor the file and the model.
                if let (true, Some(t)) = (dev.is_cpu(), chunked_copy(&view)?) {
                    return Ok(t);
                }
                let t = st.load(name, dev)?;
                release_pages(view.data());
                Ok(t)
            }
            Store::Pickle { shards, route } => {
                let shard = route.get(name).map(|&i| &shards[i]);
                match shard.map(|s| s.get(name)).transpose()?.flatten() {
                    Some(t) => t.to_device(dev),
                    None => candle_core::bail!("tensor {name} is missing from the checkpoint"),
                }
            }
            Store::Gguf(g) => g.load_raw(name, dev),
        }
    }
}

impl<T: TensorSource + ?Sized> TensorSource for Box<T> {
    fn shape_of(&self, name: &str) -> Option<Vec<usize>> {
        (**self).shape_of(name)
    }

    fn load_raw(&self, name: &str, dev: &Device) -> candle_core::Result<Tensor> {
        (**self).load_raw(name, dev)
    }
}

/// A [`TensorSource`] as a `VarBuilder` backend: every request is checked
/// against the stored shape before any data is read.
pub(crate) struct Checked<T>(pub T);

impl<T: TensorSource> SimpleBackend for Checked<T> {
    fn get(
        &self,
        s: Shape,
        name: &str,
        _: candle_nn::Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        self.0.load_checked(name, s.dims(), dev)?.to_dtype(dtype)
    }

    fn get_unchecked(&self, name: &str, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        self.0.load_raw(name, dev)?.to_dtype(dtype)
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.0.shape_of(name).is_some()
    }
}

/// A backend that records which tensors a model asks for and hands out
/// zero-stride views instead of data, so a full-size model can be "built"
/// to list its parameters without allocating them.
/// Clones share one record.
/// It has no pre-quantised blocks: asked for some (see
/// [`janus_kernels::blocks::stored_blocks`]), it records which and says no.
#[derive(Default, Clone)]
pub struct ShapeRecorder {
    requested: std::sync::Arc<std::sync::Mutex<Vec<(String, Vec<usize>)>>>,
    blocks: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl ShapeRecorder {
    /// Every `(name, shape)` requested so far, in request order.
    pub fn requested(&self) -> Vec<(String, Vec<usize>)> {
        self.requested.lock().map(|r| r.clone()).unwrap_or_default()
    }

    /// The tensors the model asked for as quantised blocks, with their
    /// format, in request order.
    pub fn requested_blocks(&self) -> Vec<(String, candle_core::quantized::GgmlDType)> {
        let names = self.blocks.lock().map(|r| r.clone()).unwrap_or_default();
        names
            .iter()
            .filter_map(|n| janus_kernels::blocks::parse_blocks_name(n))
            .map(|(n, d)| (n.to_owned(), d))
            .collect()
    }
}

impl SimpleBackend for ShapeRecorder {
    fn get(
        &self,
        s: Shape,
        name: &str,
        _: candle_nn::Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        if let Ok(mut r) = self.requested.lock() {
            r.push((name.to_owned(), s.dims().to_vec()));
        }
        Tensor::zeros((), dtype, dev)?.broadcast_as(s)
    }

    fn get_unchecked(&self, name: &str, _: DType, _: &Device) -> candle_core::Result<Tensor> {
        candle_core::bail!("shape recorder cannot serve {name} without a shape")
    }

    fn contains_tensor(&self, name: &str) -> bool {
        if janus_kernels::blocks::parse_blocks_name(name).is_none() {
            return true;
        }
        if let Ok(mut b) = self.blocks.lock() {
            b.push(name.to_owned());
        }
        false
    }
}

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
fn chunked_copy(view: &safetensors::tensor::TensorView<'_>) -> candle_core::Result<Option<Tensor>> {
    use safetensors::Dtype;
    let (bytes, shape) = (view.data(), view.shape());
    Ok(Some(match view.dtype() {
        Dtype::BF16 => copy_released::<half::bf16>(bytes, shape)?,
        Dtype::F16 => copy_released::<half::f16>(bytes, shape)?,
        Dtype::F32 => copy_released::<f32>(bytes, shape)?,
        _ => return Ok(None),
    }))
}
