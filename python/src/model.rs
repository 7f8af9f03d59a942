//! `janus_rs.JanusPro`: a loaded model shared by any number of Python threads.

use std::sync::Arc;

use image::DynamicImage;
use janus::question_conversation;
use janus::{GenerateOptions, JanusPro, Message, UnderstandOptions};
use pyo3::prelude::*;
use pyo3::types::{PyList, PyString};

use crate::batch;
use crate::convert::{
    code_row_to_array, codes_from_py, codes_to_array, conversation_from_py, image_from_py,
    images_from_py, images_to_array,
};
use crate::errors::{input_error, to_py};
use crate::hooks::{Hooks, Runs};
use crate::options::{generate_options, pil_images, pil_module, seed_arg, understand_options};
use crate::stream::TextStream;

/// A Janus-Pro model loaded by the Rust runtime (janus-rs).
///
/// Create one with ``JanusPro.load(...)``. Every method releases the GIL
/// while it computes, and one model can serve calls from several threads at
/// once. Long calls take ``progress(step, total)``, a callable called after
/// every generated token, and ``cancel_event``, a ``threading.Event`` (or any
/// object with ``is_set()``) that stops the call with ``janus_rs.Cancelled``
/// within one step; ``cancel()`` stops every call running on the model.
///
/// Images may be given as a ``PIL.Image.Image``, a numpy ``uint8`` array
/// (HxW, HxWx3 or HxWx4) or a path (``str`` / ``os.PathLike``); the same
/// picture gives the same result in every form.
#[pyclass(module = "janus_rs", name = "JanusPro", frozen)]
pub struct PyJanusPro {
    model: Arc<JanusPro>,
    runs: Runs,
    source: String,
    device: String,
}

impl PyJanusPro {
    /// Side in pixels of generated images.
    fn side(&self, py: Python<'_>) -> PyResult<u32> {
        let side = self
            .model
            .generated_image_size()
            .map_err(|e| to_py(py, e))?;
        u32::try_from(side).map_err(|_| input_error(py, "generated image size out of range"))
    }

    /// Runs `f` with the GIL released, giving it a per-step hook that
    /// reports progress and stops the run when cancelled.
    fn run<T, F>(
        &self,
        py: Python<'_>,
        progress: Option<Py<PyAny>>,
        cancel_event: Option<Py<PyAny>>,
        f: F,
    ) -> PyResult<T>
    where
        T: Send,
        F: Send
            + FnOnce(&JanusPro, &mut dyn FnMut(usize, usize) -> janus::Result<()>) -> janus::Result<T>,
    {
        let guard = self.runs.start();
        let mut hooks = Hooks::new(guard.token.clone(), progress, cancel_event);
        hooks.before(py)?;
        let model: &JanusPro = &self.model;
        let result = py.detach(|| {
            hooks.token.check()?;
            f(model, &mut |step, total| hooks.step(step, total))
        });
        drop(guard);
        result.map_err(|e| hooks.into_error(py, e))
    }

    fn answer(
        &self,
        py: Python<'_>,
        conversation: Vec<Message>,
        images: Vec<DynamicImage>,
        opts: UnderstandOptions,
        progress: Option<Py<PyAny>>,
        cancel_event: Option<Py<PyAny>>,
    ) -> PyResult<String> {
        let answer = self.run(py, progress, cancel_event, move |m, step| {
            m.understand_with(&conversation, &images, &opts, &mut |_, p| {
                step(p.step, p.total)
            })
        })?;
        Ok(answer.text)
    }

    /// Starts an understanding run on a Rust thread and returns its stream.
    fn stream(
        &self,
        py: Python<'_>,
        conversation: Vec<Message>,
        images: Vec<DynamicImage>,
        opts: UnderstandOptions,
        progress: Option<Py<PyAny>>,
        cancel_event: Option<Py<PyAny>>,
    ) -> PyResult<TextStream> {
        // Prompt problems (placeholder count, ...) raise here, not at the first next().
        self.model
            .text_processor()
            .understanding_ids(&conversation, images.len())
            .map_err(|e| to_py(py, e))?;
        TextStream::start(
            py,
            Arc::clone(&self.model),
            self.runs.start(),
            (conversation, images, opts),
            progress,
            cancel_event,
        )
    }

    fn generated(
        &self,
        py: Python<'_>,
        prompt: String,
        opts: GenerateOptions,
        progress: Option<Py<PyAny>>,
        cancel_event: Option<Py<PyAny>>,
    ) -> PyResult<janus::GeneratedImages> {
        self.run(py, progress, cancel_event, move |m, step| {
            m.generate_with(&prompt, &opts, &mut |p| step(p.step, p.total))
        })
    }
}

#[pymethods]
impl PyJanusPro {
    /// Loads a model: a local folder in the released layout (config.json,
    /// tokenizer.json, processor configs, safetensors or pickle weights) or
    /// a Hugging Face hub id such as "deepseek-ai/Janus-Pro-1B".
    ///
    /// device: "cpu", "cuda", "cuda:N" or "metal" (GPU backends need a build
    /// with that backend). dtype: "f32" (exact; the default), "bf16" or "f16".
    /// quant: "none" (the default), "q8_0" or "q4k": the language model,
    /// image head and token embeddings are quantised while loading (the
    /// vision tower to q8_0), for about 2.8 GB (q8_0) or 1.9 GB (q4k) in
    /// all for the 1B model and faster decoding, at the cost of exactness.
    ///
    /// Raises FileNotFoundError (janus_rs.MissingFileError) for a missing
    /// folder or file, ValueError (janus_rs.InputError) for a bad device,
    /// dtype, quant or config, and janus_rs.JanusError for unreadable weights.
    #[staticmethod]
    #[pyo3(signature = (model = PathOrStr(janus::DEFAULT_MODEL.to_string()), device = "cpu".to_string(), dtype = "f32".to_string(), quant = "none".to_string()))]
    #[pyo3(
        text_signature = "(model='deepseek-ai/Janus-Pro-1B', device='cpu', dtype='f32', quant='none')"
    )]
    fn load(
        py: Python<'_>,
        model: PathOrStr,
        device: String,
        dtype: String,
        quant: String,
    ) -> PyResult<Self> {
        let model = model.0;
        let device_obj = janus::parse_device(&device).map_err(|e| to_py(py, e))?;
        let dtype_obj = janus::parse_dtype(&dtype).map_err(|e| to_py(py, e))?;
        let quant = janus::Quant::parse(&quant).map_err(|e| input_error(py, e))?;
        let opts = janus::LoadOptions {
            device: device_obj,
            dtype: dtype_obj,
            quant,
            ..Default::default()
        };
        let loaded = py
            .detach(|| JanusPro::from_pretrained(&model, &opts))
            .map_err(|e| to_py(py, e))?;
        Ok(Self {
            model: Arc::new(loaded),
            runs: Runs::default(),
            source: model,
            device: device.trim().to_ascii_lowercase(),
        })
    }

    /// The folder or hub id the model was loaded from.
    #[getter]
    fn source(&self) -> &str {
        &self.source
    }

    /// The device the model computes on, as given to load() ("cpu", "cuda:1", ...).
    #[getter]
    fn device(&self) -> &str {
        &self.device
    }

    /// The compute dtype: "f32", "bf16" or "f16".
    #[getter]
    fn dtype(&self) -> &'static str {
        self.model.dtype().as_str()
    }

    /// The quantisation chosen at load: "none", "q8_0" or "q4k".
    #[getter]
    fn quant(&self) -> &'static str {
        self.model.quant().name()
    }

    /// VQ codes per generated image (576 for Janus-Pro: a 24x24 grid).
    #[getter]
    fn image_token_count(&self, py: Python<'_>) -> PyResult<usize> {
        Ok(self.model.image_grid().map_err(|e| to_py(py, e))?.0)
    }

    /// Side in pixels of generated images (384 for Janus-Pro).
    #[getter]
    fn generated_image_size(&self, py: Python<'_>) -> PyResult<usize> {
        self.model.generated_image_size().map_err(|e| to_py(py, e))
    }

    /// Number of entries of the VQ codebook (valid codes are 0..codebook_size).
    #[getter]
    fn codebook_size(&self) -> usize {
        self.model.config().gen_vision.codebook_size
    }

    fn __repr__(&self, py: Python<'_>) -> PyResult<String> {
        let repr = |s: &str| -> PyResult<String> { Ok(PyString::new(py, s).repr()?.to_string()) };
        Ok(format!(
            "JanusPro(source={}, device={}, dtype={}, quant={})",
            repr(&self.source)?,
            repr(&self.device)?,
            repr(self.model.dtype().as_str())?,
            repr(self.model.quant().name())?
        ))
    }

    /// Answers a question about zero or more images.
    ///
    /// images: one image, a list of images, or None for a text-only question.
    /// One "<image_placeholder>" line per image is put before the question,
    /// unless the question already holds the placeholders.
    /// temperature 0 is greedy decoding (the official default); otherwise
    /// tokens are sampled with top_p, reproducibly when seed is given.
    /// progress(step, total) is called after every token (total is
    /// max_new_tokens); cancel_event (threading.Event) stops the call.
    ///
    /// Returns the answer text. Raises ValueError (janus_rs.InputError) for
    /// bad arguments, FileNotFoundError for a missing image file,
    /// janus_rs.Cancelled when cancelled.
    #[pyo3(signature = (images, question, *, max_new_tokens = 512, temperature = 0.0, top_p = 0.95, seed = None, progress = None, cancel_event = None))]
    #[allow(clippy::too_many_arguments)]
    fn understand(
        &self,
        py: Python<'_>,
        images: Option<&Bound<'_, PyAny>>,
        question: &str,
        max_new_tokens: i64,
        temperature: f64,
        top_p: f64,
        seed: Option<i128>,
        progress: Option<Py<PyAny>>,
        cancel_event: Option<Py<PyAny>>,
    ) -> PyResult<String> {
        let opts = understand_options(py, max_new_tokens, temperature, top_p, seed)?;
        let images = images_from_py(images)?;
        let conversation = question_conversation(question, images.len());
        self.answer(py, conversation, images, opts, progress, cancel_event)
    }

    /// Answers a conversation in the official format:
    /// [{"role": "<|User|>", "content": "<image_placeholder>\nWhat is this?",
    ///   "images": [image, ...]}, {"role": "<|Assistant|>", "content": ""}].
    ///
    /// Each "images" entry may be a path, a PIL image or a uint8 array, one per
    /// "<image_placeholder>" of its turn. "user" / "assistant" are accepted as
    /// roles, and a conversation ending with a user turn gets the empty
    /// assistant turn appended. Options as understand().
    #[pyo3(signature = (conversation, *, max_new_tokens = 512, temperature = 0.0, top_p = 0.95, seed = None, progress = None, cancel_event = None))]
    #[allow(clippy::too_many_arguments)]
    fn chat(
        &self,
        py: Python<'_>,
        conversation: &Bound<'_, PyAny>,
        max_new_tokens: i64,
        temperature: f64,
        top_p: f64,
        seed: Option<i128>,
        progress: Option<Py<PyAny>>,
        cancel_event: Option<Py<PyAny>>,
    ) -> PyResult<String> {
        let opts = understand_options(py, max_new_tokens, temperature, top_p, seed)?;
        let (conversation, images) = conversation_from_py(conversation)?;
        self.answer(py, conversation, images, opts, progress, cancel_event)
    }

    /// As understand(), but returns at once a janus_rs.TextStream: an
    /// iterator over the pieces of the answer as they are generated (on a
    /// background thread). "".join(pieces) equals understand()'s answer.
    ///
    ///     for piece in model.stream_understand("cat.png", "Describe it."):
    ///         print(piece, end="", flush=True)
    #[pyo3(signature = (images, question, *, max_new_tokens = 512, temperature = 0.0, top_p = 0.95, seed = None, progress = None, cancel_event = None))]
    #[allow(clippy::too_many_arguments)]
    fn stream_understand(
        &self,
        py: Python<'_>,
        images: Option<&Bound<'_, PyAny>>,
        question: &str,
        max_new_tokens: i64,
        temperature: f64,
        top_p: f64,
        seed: Option<i128>,
        progress: Option<Py<PyAny>>,
        cancel_event: Option<Py<PyAny>>,
    ) -> PyResult<TextStream> {
        let opts = understand_options(py, max_new_tokens, temperature, top_p, seed)?;
        let images = images_from_py(images)?;
        let conversation = question_conversation(question, images.len());
        self.stream(py, conversation, images, opts, progress, cancel_event)
    }

    /// As chat(), streaming: returns a janus_rs.TextStream of answer pieces.
    #[pyo3(signature = (conversation, *, max_new_tokens = 512, temperature = 0.0, top_p = 0.95, seed = None, progress = None, cancel_event = None))]
    #[allow(clippy::too_many_arguments)]
    fn stream_chat(
        &self,
        py: Python<'_>,
        conversation: &Bound<'_, PyAny>,
        max_new_tokens: i64,
        temperature: f64,
        top_p: f64,
        seed: Option<i128>,
        progress: Option<Py<PyAny>>,
        cancel_event: Option<Py<PyAny>>,
    ) -> PyResult<TextStream> {
        let opts = understand_options(py, max_new_tokens, temperature, top_p, seed)?;
        let (conversation, images) = conversation_from_py(conversation)?;
        self.stream(py, conversation, images, opts, progress, cancel_event)
    }

    /// Generates parallel_size images for a text prompt; returns a list of
    /// RGB PIL images (needs Pillow; generate_array() returns numpy arrays).
    ///
    /// cfg_weight: classifier-free guidance weight. temperature 0 takes the
    /// argmax code at every step (deterministic); otherwise codes are
    /// sampled, reproducibly when seed is given. progress(step, total) is
    /// called after each of the image_token_count steps; cancel_event
    /// (threading.Event) or cancel() stops the call with janus_rs.Cancelled.
    #[pyo3(signature = (prompt, *, parallel_size = 1, cfg_weight = 5.0, temperature = 1.0, seed = None, progress = None, cancel_event = None))]
    #[allow(clippy::too_many_arguments)]
    fn generate<'py>(
        &self,
        py: Python<'py>,
        prompt: String,
        parallel_size: i64,
        cfg_weight: f64,
        temperature: f64,
        seed: Option<i128>,
        progress: Option<Py<PyAny>>,
        cancel_event: Option<Py<PyAny>>,
    ) -> PyResult<Bound<'py, PyList>> {
        let pil = pil_module(py, "generate")?;
        let opts = generate_options(py, parallel_size, cfg_weight, temperature, seed)?;
        let generated = self.generated(py, prompt, opts, progress, cancel_event)?;
        pil_images(&pil, &generated.images)
    }

    /// Generates parallel_size images for each of several prompts; returns
    /// one list of RGB PIL images per prompt. Images run batch_size at a
    /// time (default: parallel_size), and on the CPU a batch may hold
    /// images of several prompts, so many prompts with one image each run
    /// several at once. Image k of the call is seeded from seed and k, so
    /// the batching does not change the images (exactly with f32 weights).
    /// progress(step, total) counts the steps of all batches.
    #[pyo3(signature = (prompts, *, parallel_size = 1, batch_size = None, cfg_weight = 5.0, temperature = 1.0, seed = None, progress = None, cancel_event = None))]
    #[allow(clippy::too_many_arguments)]
    fn generate_many<'py>(
        &self,
        py: Python<'py>,
        prompts: Vec<String>,
        parallel_size: i64,
        batch_size: Option<i64>,
        cfg_weight: f64,
        temperature: f64,
        seed: Option<i128>,
        progress: Option<Py<PyAny>>,
        cancel_event: Option<Py<PyAny>>,
    ) -> PyResult<Bound<'py, PyList>> {
        let pil = pil_module(py, "generate_many")?;
        let opts = generate_options(py, parallel_size, cfg_weight, temperature, seed)?;
        let batch = match batch_size {
            None => opts.parallel_size,
            Some(b) => usize::try_from(b)
                .ok()
                .filter(|&b| b >= 1)
                .ok_or_else(|| input_error(py, format!("batch_size must be >= 1, got {b}")))?,
        };
        if prompts.is_empty() {
            return Err(input_error(py, "prompts is empty"));
        }
        let generated = self.run(py, progress, cancel_event, move |m, step| {
            let refs: Vec<&str> = prompts.iter().map(String::as_str).collect();
            m.generate_many(&refs, &opts, batch, &mut |p| step(p.step, p.total))
        })?;
        let lists = generated
            .iter()
            .map(|g| pil_images(&pil, &g.images))
            .collect::<PyResult<Vec<_>>>()?;
        PyList::new(py, lists)
    }

    /// As generate(), returning a numpy uint8 array [parallel_size, S, S, 3]
    /// (S = generated_image_size). Does not need Pillow.
    #[pyo3(signature = (prompt, *, parallel_size = 1, cfg_weight = 5.0, temperature = 1.0, seed = None, progress = None, cancel_event = None))]
    #[allow(clippy::too_many_arguments)]
    fn generate_array<'py>(
        &self,
        py: Python<'py>,
        prompt: String,
        parallel_size: i64,
        cfg_weight: f64,
        temperature: f64,
        seed: Option<i128>,
        progress: Option<Py<PyAny>>,
        cancel_event: Option<Py<PyAny>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let opts = generate_options(py, parallel_size, cfg_weight, temperature, seed)?;
        let generated = self.generated(py, prompt, opts, progress, cancel_event)?;
        images_to_array(py, generated.images, self.side(py)?)
    }

    /// The sampling loop of generate() alone: the VQ codes of the images, an
    /// int64 array [parallel_size, image_token_count]. vq_decode() of them
    /// gives generate_array()'s pixels (for the same seed and options).
    #[pyo3(signature = (prompt, *, parallel_size = 1, cfg_weight = 5.0, temperature = 1.0, seed = None, progress = None, cancel_event = None))]
    #[allow(clippy::too_many_arguments)]
    fn generate_tokens<'py>(
        &self,
        py: Python<'py>,
        prompt: String,
        parallel_size: i64,
        cfg_weight: f64,
        temperature: f64,
        seed: Option<i128>,
        progress: Option<Py<PyAny>>,
        cancel_event: Option<Py<PyAny>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let opts = generate_options(py, parallel_size, cfg_weight, temperature, seed)?;
        let tokens = self.run(py, progress, cancel_event, move |m, step| {
            m.generate_tokens(&prompt, &opts, &mut |p| step(p.step, p.total))
        })?;
        codes_to_array(py, &tokens)
    }

    /// Answers question about every row of images (a row: one image, or a
    /// list of images), batch_size rows decoded together, rows joining as
    /// others finish. Returns one dict per row, in order: {"answer": str,
    /// "token_ids": [int], "error": None}, or for a row that cannot run (an
    /// unreadable image, too long a prompt) {"answer": None, "token_ids": [],
    /// "error": str}; the other rows go on. Images may also be encoded file
    /// bytes. Each answer equals understand() of its row (exactly in f32).
    /// progress(done, total) counts rows; options as understand().
    #[pyo3(signature = (images, question, *, batch_size = 8, max_new_tokens = 512, temperature = 0.0, top_p = 0.95, seed = None, progress = None, cancel_event = None))]
    #[allow(clippy::too_many_arguments)]
    fn understand_batch<'py>(
        &self,
        py: Python<'py>,
        images: Vec<Bound<'py, PyAny>>,
        question: String,
        batch_size: i64,
        max_new_tokens: i64,
        temperature: f64,
        top_p: f64,
        seed: Option<i128>,
        progress: Option<Py<PyAny>>,
        cancel_event: Option<Py<PyAny>>,
    ) -> PyResult<Bound<'py, PyList>> {
        let opts = understand_options(py, max_new_tokens, temperature, top_p, seed)?;
        let batch_size = positive(py, "batch_size", batch_size)?;
        let rows: Vec<_> = images.iter().map(batch::row_images).collect();
        let results = self.run(py, progress, cancel_event, move |m, step| {
            batch::answer_rows(m, rows, &question, &opts, batch_size, step)
        })?;
        batch::answer_dicts(py, results)
    }

    /// Generates n images (an int, or one per prompt) for every prompt,
    /// image i of a prompt seeded as generate(prompt, seed=seeds[row]) seeds
    /// it (seeds: one per prompt; default 0, 1, 2, ... by row), images of
    /// several prompts generated batch_size at a time. Returns one dict per
    /// prompt: {"codes": [[int]], "png": [bytes], "error": None}, or
    /// {"codes": [], "png": [], "error": str} for a prompt that cannot run
    /// (empty, too long); the others go on. progress(step, total) counts
    /// the steps of all batches.
    #[pyo3(signature = (prompts, *, seeds = None, n = None, batch_size = 8, cfg_weight = 5.0, temperature = 1.0, progress = None, cancel_event = None))]
    #[allow(clippy::too_many_arguments)]
    fn generate_batch<'py>(
        &self,
        py: Python<'py>,
        prompts: Vec<String>,
        seeds: Option<Vec<i128>>,
        n: Option<&Bound<'py, PyAny>>,
        batch_size: i64,
        cfg_weight: f64,
        temperature: f64,
        progress: Option<Py<PyAny>>,
        cancel_event: Option<Py<PyAny>>,
    ) -> PyResult<Bound<'py, PyList>> {
        let opts = generate_options(py, 1, cfg_weight, temperature, None)?;
        let batch_size = positive(py, "batch_size", batch_size)?;
        let per_row = |what: &str, len: usize| {
            if len == prompts.len() {
                Ok(())
            } else {
                Err(input_error(
                    py,
                    format!("{len} {what} for {} prompts", prompts.len()),
                ))
            }
        };
        let seeds: Vec<u64> = match seeds {
            Some(s) => {
                per_row("seeds", s.len())?;
                s.into_iter()
                    .map(|s| seed_arg(py, Some(s)).map(|s| s.unwrap_or(0)))
                    .collect::<PyResult<_>>()?
            }
            None => (0..prompts.len() as u64).collect(),
        };
        let counts: Vec<i64> = match n {
            None => vec![1; prompts.len()],
            Some(n) => match n.extract::<i64>() {
                Ok(one) => vec![one; prompts.len()],
                Err(_) => n.extract()?,
            },
        };
        per_row("image counts", counts.len())?;
        let counts = counts
            .into_iter()
            .map(|c| positive(py, "n", c))
            .collect::<PyResult<Vec<_>>>()?;
        let rows: Vec<(String, u64, usize)> = prompts
            .into_iter()
            .zip(seeds)
            .zip(counts)
            .map(|((p, s), c)| (p, s, c))
            .collect();
        let results = self.run(py, progress, cancel_event, move |m, step| {
            batch::render_rows(m, &rows, &opts, batch_size, step)
        })?;
        batch::render_dicts(py, results)
    }

    /// VQ-encodes an image: its centred square crop, resized to
    /// generated_image_size, as image_token_count codes (int64 array [T]).
    fn vq_encode<'py>(
        &self,
        py: Python<'py>,
        image: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let image = image_from_py(image)?;
        let codes = self.run(py, None, None, move |m, _| m.vq_encode_image(&image))?;
        Ok(code_row_to_array(py, &codes))
    }

    /// VQ-decodes codes into pixels: [T] codes give a uint8 array [S, S, 3],
    /// [n, T] codes give [n, S, S, 3] (S = generated_image_size). Codes may be
    /// any integer array-like with values in 0..codebook_size.
    fn vq_decode<'py>(
        &self,
        py: Python<'py>,
        codes: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let (rows, one) = codes_from_py(codes, self.codebook_size())?;
        let images = self.run(py, None, None, move |m, _| m.decode_images(&rows))?;
        let arr = images_to_array(py, images, self.side(py)?)?;
        if one {
            arr.get_item(0)
        } else {
            Ok(arr)
        }
    }

    /// Cancels every call running on this model (from any thread): each
    /// raises janus_rs.Cancelled within one step. Calls started afterwards
    /// are not affected. Returns the number of calls cancelled.
    fn cancel(&self) -> usize {
        self.runs.cancel_all()
    }
}

/// `value` as a size of at least 1, or an InputError naming `what`.
fn positive(py: Python<'_>, what: &str, value: i64) -> PyResult<usize> {
    usize::try_from(value)
        .ok()
        .filter(|&v| v >= 1)
        .ok_or_else(|| input_error(py, format!("{what} must be >= 1, got {value}")))
}

/// A `str` or `os.PathLike` model argument.
pub struct PathOrStr(pub String);

impl<'a, 'py> FromPyObject<'a, 'py> for PathOrStr {
    type Error = PyErr;

    fn extract(obj: pyo3::Borrowed<'a, 'py, PyAny>) -> PyResult<Self> {
        if let Ok(s) = obj.extract::<String>() {
            return Ok(Self(s));
        }
        let path: std::path::PathBuf = obj.extract()?;
        path.into_os_string()
            .into_string()
            .map(Self)
            .map_err(|p| input_error(obj.py(), format!("the model path {p:?} is not valid UTF-8")))
    }
}
