//! `janus_rs`: Python bindings of janus-rs, the Rust runtime for DeepSeek's
//! Janus-Pro (image understanding and text-to-image generation).
//!
//! The native module is `janus_rs._janus_rs`; the `janus_rs` package
//! (python/python/janus_rs) re-exports it with type stubs.

use pyo3::prelude::*;

mod batch;
mod convert;
mod errors;
mod hooks;
mod model;
mod options;
mod quantize;
mod stream;

/// Janus-Pro image understanding and text-to-image generation, in Rust.
///
/// >>> import janus_rs
/// >>> model = janus_rs.JanusPro.load("deepseek-ai/Janus-Pro-1B")
/// >>> model.understand("cat.png", "What is in this image?")
/// >>> model.generate("A red apple on a wooden table", parallel_size=4, seed=7)
/// >>> janus_rs.quantize("deepseek-ai/Janus-Pro-1B", "janus-pro-1b-q4k", "q4k")
#[pymodule]
fn _janus_rs(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add("DEFAULT_MODEL", janus::DEFAULT_MODEL)?;
    m.add_class::<model::PyJanusPro>()?;
    m.add_class::<stream::TextStream>()?;
    m.add_function(wrap_pyfunction!(quantize::quantize, m)?)?;
    m.add("JanusError", py.get_type::<errors::JanusError>())?;
    m.add("Cancelled", py.get_type::<errors::Cancelled>())?;
    m.add("InputError", errors::input_error_type(py)?)?;
    m.add("MissingFileError", errors::missing_file_error_type(py)?)?;
    Ok(())
}
