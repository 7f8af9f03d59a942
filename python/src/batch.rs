//! The dataset methods of `JanusPro` (`understand_batch`, `generate_batch`):
//! rows in, one result per row out, a bad row an error in its place.

use image::DynamicImage;
use janus::{question_conversation, AnswerRequest, JanusPro, PromptImages};
use janus::{GenerateOptions, UnderstandOptions, DEFAULT_SYSTEM_PROMPT};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyList};

use crate::convert::image_from_py;

/// A row's images: one image, or a list (or tuple) of images.
pub(crate) fn row_images(row: &Bound<'_, PyAny>) -> Result<Vec<DynamicImage>, String> {
    // The exception's message, without its type name.
    let message = |e: PyErr| e.value(row.py()).to_string();
    let one = |obj: &Bound<'_, PyAny>| image_from_py(obj).map_err(message);
    if row.is_instance_of::<PyList>() || row.is_instance_of::<pyo3::types::PyTuple>() {
        return row
            .try_iter()
            .map_err(message)?
            .map(|item| one(&item.map_err(message)?))
            .collect();
    }
    one(row).map(|i| vec![i])
}

/// Answers of `rows` (each its images or why they could not be read) to
/// `question`, `batch_size` together; `step(done, total)` after every
/// decoding step and row.
pub(crate) fn answer_rows(
    model: &JanusPro,
    rows: Vec<Result<Vec<DynamicImage>, String>>,
    question: &str,
    opts: &UnderstandOptions,
    batch_size: usize,
    step: &mut dyn FnMut(usize, usize) -> janus::Result<()>,
) -> janus::Result<Vec<Result<janus::Answer, String>>> {
    let total = rows.len();
    let requests = rows.into_iter().map(|images| {
        let images = images.map_err(janus::JanusError::Input)?;
        Ok(AnswerRequest {
            conversation: question_conversation(question, images.len()),
            images,
            system_prompt: DEFAULT_SYSTEM_PROMPT.to_owned(),
            options: opts.clone(),
        })
    });
    let mut out: Vec<Option<Result<janus::Answer, String>>> = (0..total).map(|_| None).collect();
    // Both callbacks report progress (rows done of all).
    let done = std::cell::Cell::new(0);
    let step = std::cell::RefCell::new(step);
    model.answer_all(
        requests,
        batch_size,
        &mut || (step.borrow_mut())(done.get(), total),
        &mut |i, result| {
            out[i] = Some(result.map_err(|e| e.to_string().replace('\n', " ")));
            done.set(done.get() + 1);
            (step.borrow_mut())(done.get(), total)
        },
    )?;
    Ok(out
        .into_iter()
        .map(|r| r.unwrap_or_else(|| Err("not answered".into())))
        .collect())
}

/// One result dict per answer: {"answer", "token_ids", "error"}.
pub(crate) fn answer_dicts<'py>(
    py: Python<'py>,
    results: Vec<Result<janus::Answer, String>>,
) -> PyResult<Bound<'py, PyList>> {
    let dicts = results
        .into_iter()
        .map(|r| {
            let d = PyDict::new(py);
            match r {
                Ok(a) => {
                    d.set_item("answer", a.text)?;
                    d.set_item("token_ids", a.token_ids)?;
                    d.set_item("error", py.None())?;
                }
                Err(e) => {
                    d.set_item("answer", py.None())?;
                    d.set_item("token_ids", Vec::<u32>::new())?;
                    d.set_item("error", e)?;
                }
            }
            Ok(d)
        })
        .collect::<PyResult<Vec<_>>>()?;
    PyList::new(py, dicts)
}

/// A rendered row: its codes and PNG files, or why it failed.
pub(crate) type Rendered = Result<(Vec<Vec<u32>>, Vec<Vec<u8>>), String>;

/// Codes and PNG bytes of every (prompt, seed, images) row, images of
/// several rows generated together.
pub(crate) fn render_rows(
    model: &JanusPro,
    rows: &[(String, u64, usize)],
    opts: &GenerateOptions,
    batch_size: usize,
    step: &mut dyn FnMut(usize, usize) -> janus::Result<()>,
) -> janus::Result<Vec<Rendered>> {
    let prompts: Vec<PromptImages> = rows
        .iter()
        .map(|(prompt, seed, images)| PromptImages {
            prompt,
            seed: *seed,
            images: *images,
        })
        .collect();
    let codes =
        model.generate_tokens_each(&prompts, opts, batch_size, &mut |p| step(p.step, p.total))?;
    Ok(codes
        .into_iter()
        .map(|codes| -> Rendered {
            let fail = |e: janus::JanusError| e.to_string().replace('\n', " ");
            let codes = codes.map_err(fail)?;
            let pngs = model
                .decode_images(&codes)
                .map_err(fail)?
                .iter()
                .map(|img| {
                    let mut png = vec![];
                    img.write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
                        .map(|()| png)
                        .map_err(|e| format!("cannot encode the image: {e}"))
                })
                .collect::<Result<Vec<_>, _>>()?;
            Ok((codes, pngs))
        })
        .collect())
}

/// One result dict per row: {"codes", "png", "error"}.
pub(crate) fn render_dicts<'py>(
    py: Python<'py>,
    results: Vec<Rendered>,
) -> PyResult<Bound<'py, PyList>> {
    let dicts = results
        .into_iter()
        .map(|r| {
            let d = PyDict::new(py);
            match r {
                Ok((codes, pngs)) => {
                    d.set_item("codes", codes)?;
                    let pngs: Vec<_> = pngs.iter().map(|p| PyBytes::new(py, p)).collect();
                    d.set_item("png", pngs)?;
                    d.set_item("error", py.None())?;
                }
                Err(e) => {
                    d.set_item("codes", PyList::empty(py))?;
                    d.set_item("png", PyList::empty(py))?;
                    d.set_item("error", e)?;
                }
            }
            Ok(d)
        })
        .collect::<PyResult<Vec<_>>>()?;
    PyList::new(py, dicts)
}
