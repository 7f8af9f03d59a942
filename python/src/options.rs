//! Python arguments into the library's options, and images out as PIL.

use janus::{GenerateOptions, SamplingParams, UnderstandOptions};
use pyo3::exceptions::PyImportError;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyList};

use crate::errors::{input_error, to_py};

pub(crate) fn seed_arg(py: Python<'_>, seed: Option<i128>) -> PyResult<Option<u64>> {
    seed.map(|s| {
        u64::try_from(s).map_err(|_| input_error(py, format!("seed must be in 0..2**64, got {s}")))
    })
    .transpose()
}

// `..defaults` keeps options the library may add at their default.
#[allow(clippy::needless_update)]
pub(crate) fn understand_options(
    py: Python<'_>,
    max_new_tokens: i64,
    temperature: f64,
    top_p: f64,
    seed: Option<i128>,
) -> PyResult<UnderstandOptions> {
    let max_new_tokens = usize::try_from(max_new_tokens).map_err(|_| {
        input_error(
            py,
            format!("max_new_tokens must be >= 0, got {max_new_tokens}"),
        )
    })?;
    let defaults = UnderstandOptions::default();
    let opts = UnderstandOptions {
        max_new_tokens,
        sampling: SamplingParams {
            temperature,
            top_p,
            ..defaults.sampling
        },
        seed: seed_arg(py, seed)?,
        ..defaults
    };
    opts.sampling.validate().map_err(|e| to_py(py, e))?;
    Ok(opts)
}

#[allow(clippy::needless_update)]
/// PIL.Image, or an ImportError saying that `method` needs Pillow.
pub(crate) fn pil_module<'py>(py: Python<'py>, method: &str) -> PyResult<Bound<'py, PyModule>> {
    py.import("PIL.Image").map_err(|_| {
        PyImportError::new_err(format!(
            "JanusPro.{method}() returns PIL images and needs Pillow (pip install pillow); generate_array() returns numpy arrays"
        ))
    })
}

/// RGB images as a list of PIL images.
pub(crate) fn pil_images<'py>(
    pil: &Bound<'py, PyModule>,
    images: &[image::RgbImage],
) -> PyResult<Bound<'py, PyList>> {
    let py = pil.py();
    let images = images
        .iter()
        .map(|img| {
            let (w, h) = img.dimensions();
            pil.call_method1("frombytes", ("RGB", (w, h), PyBytes::new(py, img.as_raw())))
        })
        .collect::<PyResult<Vec<_>>>()?;
    PyList::new(py, images)
}

pub(crate) fn generate_options(
    py: Python<'_>,
    parallel_size: i64,
    cfg_weight: f64,
    temperature: f64,
    seed: Option<i128>,
) -> PyResult<GenerateOptions> {
    // Negative sizes map to 0, which validate() refuses.
    let parallel_size = usize::try_from(parallel_size).unwrap_or(0);
    let defaults = GenerateOptions::default();
    let opts = GenerateOptions {
        parallel_size,
        cfg_weight,
        sampling: SamplingParams {
            temperature,
            ..defaults.sampling
        },
        seed: seed_arg(py, seed)?,
        ..defaults
    };
    opts.validate().map_err(|e| to_py(py, e))?;
    Ok(opts)
}
