//! `janus_rs.quantize`: saving a quantised model folder.

use janus::{CancelToken, LoadOptions, Quant};
use pyo3::prelude::*;

use crate::errors::input_error;
use crate::hooks::Hooks;
use crate::model::PathOrStr;

/// Saves a quantised copy of a model (a local folder or a hub id) into the
/// folder `out`: its config and tokenizer files and a `model.gguf` holding
/// the weights as `quant` ("q8_0" or "q4k") blocks. `JanusPro.load(out)`
/// then loads it in that quantisation without quantising again. Returns the
/// path of `model.gguf`. `progress(step, total)` is called after each
/// tensor; setting `cancel_event` (or Ctrl-C) stops the work, leaving no
/// partial file.
///
/// >>> janus_rs.quantize("deepseek-ai/Janus-Pro-7B", "janus-pro-7b-q4k", "q4k")
/// >>> model = janus_rs.JanusPro.load("janus-pro-7b-q4k")
#[pyfunction]
#[pyo3(signature = (model, out, quant = "q4k".to_string(), *, offline = false, progress = None, cancel_event = None))]
#[pyo3(
    text_signature = "(model, out, quant='q4k', *, offline=False, progress=None, cancel_event=None)"
)]
pub fn quantize(
    py: Python<'_>,
    model: PathOrStr,
    out: PathOrStr,
    quant: String,
    offline: bool,
    progress: Option<Py<PyAny>>,
    cancel_event: Option<Py<PyAny>>,
) -> PyResult<String> {
    let quant = Quant::parse(&quant).map_err(|e| input_error(py, e))?;
    if quant == Quant::None {
        return Err(input_error(py, "quant must be q8_0 or q4k"));
    }
    let opts = LoadOptions {
        offline,
        ..Default::default()
    };
    let mut hooks = Hooks::new(CancelToken::new(), progress, cancel_event);
    hooks.before(py)?;
    let result = py.detach(|| {
        hooks.token.check()?;
        let dir = janus::resolve_model(&model.0, &opts)?;
        janus::save_quantized(&dir, quant, out.0.as_ref(), &mut |p| {
            hooks.step(p.step, p.total)
        })
    });
    match result {
        Ok(path) => Ok(path.display().to_string()),
        Err(e) => Err(hooks.into_error(py, e)),
    }
}
