//! Finding and reading checkpoint files: one or sharded safetensors (memory
//! mapped), one or sharded PyTorch pickles (read as data, with bounded depth
//! and memory, by candle's restricted unpickler, which executes nothing:
//! `pickle.rs`), or a quantised
//! `model.gguf` written by [`crate::save_quantized`] (memory mapped).
//!
//! Every request is checked against the stored shape before any data is
//! read, so a mismatch names the key and both shapes.

pub(crate) mod files;
pub(crate) mod gguf;
pub(crate) mod pages;
mod pickle;
pub(crate) mod reader;
pub(crate) mod shape_recorder;
mod transformers_names;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::VarBuilder;

use crate::config::CheckpointLayout;
use crate::error::{without_backtrace, JanusError, Result};
use files::{index_shards, GGUF_FILE};
use gguf::GgufFile;
use janus_nn::Quant;
use pages::{chunked_copy, release_pages};
use pickle::PickleShard;
use reader::{Checked, TensorReader};
pub use shape_recorder::ShapeRecorder;
use transformers_names::TransformersNames;

enum Store {
    Safetensors(candle_core::safetensors::MmapedSafetensors),
    Pickle {
        shards: Vec<PickleShard>,
        route: HashMap<String, usize>,
    },
    Gguf(GgufFile),
}

/// The weights of one model folder.
pub struct Checkpoint {
    store: Store,
    files: Vec<PathBuf>,
}

impl Checkpoint {
    /// Opens the weights of a model folder, in order of preference:
    /// `model.gguf` (quantised, see [`crate::save_quantized`]), `model.safetensors`,
    /// `model.safetensors.index.json`, `pytorch_model.bin`,
    /// `pytorch_model.bin.index.json`.
    pub fn open(dir: &Path) -> Result<Self> {
        let gguf = dir.join(GGUF_FILE);
        if gguf.exists() {
            return Ok(Self {
                store: Store::Gguf(GgufFile::open(&gguf)?),
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
                .map_err(|e| JanusError::bad_file(f, without_backtrace(e)))?;
        }
        // SAFETY: as above.
        let st = unsafe { candle_core::safetensors::MmapedSafetensors::multi(&files) }
            .map_err(|e| JanusError::bad_file(&files[0], without_backtrace(e)))?;
        Ok(Self {
            store: Store::Safetensors(st),
            files,
        })
    }

    fn open_pickles(files: Vec<PathBuf>) -> Result<Self> {
        let mut shards = Vec::with_capacity(files.len());
        let mut route = HashMap::new();
        for (i, f) in files.iter().enumerate() {
            let shard = PickleShard::open(f).map_err(|e| JanusError::bad_file(f, e))?;
            if shard.tensors().is_empty() {
                return Err(JanusError::bad_file(
                    f,
                    "no tensors found: not a PyTorch state dict",
                ));
            }
            for name in shard.tensors().keys() {
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
    pub fn stored_quant(&self) -> Option<Quant> {
        match &self.store {
            Store::Gguf(g) => Some(g.quant()),
            _ => None,
        }
    }

    /// Where this checkpoint's tensors come from under the released names
    /// (a `model.gguf` always holds those names, whatever the config's layout).
    pub(crate) fn into_reader(self, layout: CheckpointLayout) -> Box<dyn TensorReader> {
        match (&self.store, layout) {
            (Store::Gguf(_), _) | (_, CheckpointLayout::Released) => Box::new(self),
            (_, CheckpointLayout::Transformers) => Box::new(TransformersNames(self)),
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
        let backend: Box<dyn SimpleBackend> = Box::new(Checked(self.into_reader(layout)));
        VarBuilder::from_backend(backend, dtype, device.clone())
    }
}

impl TensorReader for Checkpoint {
    fn shape_of(&self, name: &str) -> Option<Vec<usize>> {
        match &self.store {
            Store::Safetensors(st) => st.get(name).ok().map(|v| v.shape().to_vec()),
            Store::Pickle { shards, route } => route
                .get(name)
                .and_then(|&i| shards[i].tensors().get(name))
                .map(|t| t.shape.clone()),
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
                match shard.map(|s| s.get(name, dev)).transpose()?.flatten() {
                    Some(t) => Ok(t),
                    None => candle_core::bail!("tensor {name} is missing from the checkpoint"),
                }
            }
            Store::Gguf(g) => g.load_raw(name, dev),
        }
    }
}
