//! Python values in and out: images (PIL, numpy, paths), conversations,
//! VQ code arrays, and numpy results.

use std::path::PathBuf;

use image::{DynamicImage, GrayAlphaImage, GrayImage, RgbImage, RgbaImage};
use janus::{ImageProcessor, Message};
use janus::{ASSISTANT_ROLE, USER_ROLE};
use numpy::ndarray::{Array1, Array2, Array4};
use numpy::{
    IntoPyArray, PyArrayDescrMethods, PyArrayDyn, PyArrayMethods, PyUntypedArray,
    PyUntypedArrayMethods,
};
use pyo3::exceptions::PyTypeError;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyList, PyString, PyTuple};

use crate::errors::{input_error, to_py};

fn type_name(obj: &Bound<'_, PyAny>) -> String {
    obj.get_type()
        .qualname()
        .map(|n| n.to_string())
        .unwrap_or_else(|_| "object".into())
}

fn is_path_like(obj: &Bound<'_, PyAny>) -> bool {
    obj.is_instance_of::<PyString>() || obj.hasattr("__fspath__").unwrap_or(false)
}

fn is_pil_image(obj: &Bound<'_, PyAny>) -> bool {
    ["mode", "size", "tobytes", "convert"]
        .iter()
        .all(|a| obj.hasattr(*a).unwrap_or(false))
}

/// An image argument: a `PIL.Image.Image`, a numpy `uint8` array (HxW,
/// HxWx1, HxWx2, HxWx3 or HxWx4), a path (`str` / `os.PathLike`) or the
/// bytes of an encoded image file.
///
/// The same picture gives the same decoded image whichever form it comes in:
/// a PNG file, the PIL image Pillow opens from it, and `numpy.asarray` of that.
pub fn image_from_py(obj: &Bound<'_, PyAny>) -> PyResult<DynamicImage> {
    let py = obj.py();
    if is_path_like(obj) {
        let path: PathBuf = obj.extract()?;
        // Decoding a large file is worth releasing the GIL for.
        return py
            .detach(|| ImageProcessor::open(&path))
            .map_err(|e| to_py(py, e));
    }
    if let Ok(arr) = obj.cast::<PyUntypedArray>() {
        return image_from_array(arr);
    }
    if let Ok(bytes) = obj.cast::<PyBytes>() {
        let data = bytes.as_bytes().to_vec();
        return py
            .detach(|| ImageProcessor::decode(&data, "image bytes"))
            .map_err(|e| to_py(py, e));
    }
    if is_pil_image(obj) {
        return image_from_pil(obj);
    }
    Err(PyTypeError::new_err(format!(
        "expected an image: a PIL.Image.Image, a numpy uint8 array (HxW, HxWx3 or HxWx4), a path or encoded image bytes, got {}",
        type_name(obj)
    )))
}

fn from_raw(
    py: Python<'_>,
    w: u32,
    h: u32,
    channels: usize,
    data: Vec<u8>,
) -> PyResult<DynamicImage> {
    let img = match channels {
        1 => GrayImage::from_raw(w, h, data).map(DynamicImage::ImageLuma8),
        2 => GrayAlphaImage::from_raw(w, h, data).map(DynamicImage::ImageLumaA8),
        3 => RgbImage::from_raw(w, h, data).map(DynamicImage::ImageRgb8),
        4 => RgbaImage::from_raw(w, h, data).map(DynamicImage::ImageRgba8),
        _ => None,
    };
    img.ok_or_else(|| {
        input_error(
            py,
            format!("image data does not fit {w}x{h} with {channels} channel(s)"),
        )
    })
}

fn image_from_array(arr: &Bound<'_, PyUntypedArray>) -> PyResult<DynamicImage> {
    let py = arr.py();
    let Ok(arr) = arr.cast::<PyArrayDyn<u8>>() else {
        return Err(input_error(
            py,
            format!(
                "image arrays must have dtype uint8 (0..255), got {}; e.g. (x * 255).round().astype(numpy.uint8) for floats in [0, 1]",
                arr.dtype()
            ),
        ));
    };
    let shape = arr.shape().to_vec();
    let (h, w, c) = match shape.as_slice() {
        [h, w] => (*h, *w, 1),
        [h, w, c] if (1..=4).contains(c) => (*h, *w, *c),
        _ => {
            return Err(input_error(
                py,
                format!(
                "image arrays must be HxW, HxWx3 or HxWx4 (also HxWx1, HxWx2), got shape {shape:?}"
            ),
            ))
        }
    };
    let (Ok(w32), Ok(h32)) = (u32::try_from(w), u32::try_from(h)) else {
        return Err(input_error(
            py,
            format!("image of {w}x{h} pixels is too large"),
        ));
    };
    let ro = arr
        .try_readonly()
        .map_err(|e| input_error(py, format!("cannot read the image array: {e}")))?;
    // A C-contiguous array is read as one slice; others (Fortran order,
    // strided views) element by element in row-major order.
    let slice = if arr.is_c_contiguous() {
        ro.as_slice().ok()
    } else {
        None
    };
    let data: Vec<u8> = match slice {
        Some(s) => s.to_vec(),
        None => ro.as_array().iter().copied().collect(),
    };
    from_raw(py, w32, h32, c, data)
}

fn image_from_pil(obj: &Bound<'_, PyAny>) -> PyResult<DynamicImage> {
    let py = obj.py();
    let mode: String = obj.getattr("mode")?.extract()?;
    let (obj, channels) = match mode.as_str() {
        "L" => (obj.clone(), 1),
        "LA" => (obj.clone(), 2),
        "RGB" => (obj.clone(), 3),
        "RGBA" => (obj.clone(), 4),
        // Palette, 1-bit, 16-bit, CMYK, YCbCr, ...: Pillow's own RGB conversion.
        _ => (obj.call_method1("convert", ("RGB",))?, 3),
    };
    let (w, h): (u32, u32) = obj.getattr("size")?.extract()?;
    let raw = obj.call_method0("tobytes")?;
    let bytes = raw.cast::<PyBytes>()?;
    from_raw(py, w, h, channels, bytes.as_bytes().to_vec())
}

/// `None`, one image, or a list / tuple of images.
pub fn images_from_py(obj: Option<&Bound<'_, PyAny>>) -> PyResult<Vec<DynamicImage>> {
    let Some(obj) = obj else { return Ok(vec![]) };
    if obj.is_none() {
        return Ok(vec![]);
    }
    if obj.is_instance_of::<PyList>() || obj.is_instance_of::<PyTuple>() {
        return obj.try_iter()?.map(|item| image_from_py(&item?)).collect();
    }
    Ok(vec![image_from_py(obj)?])
}

/// The roles of the official format; "user" and "assistant" are accepted too.
fn normalize_role(role: &str) -> String {
    match role.trim().to_ascii_lowercase().as_str() {
        "user" | "<|user|>" => USER_ROLE.into(),
        "assistant" | "<|assistant|>" => ASSISTANT_ROLE.into(),
        _ => role.to_owned(),
    }
}

/// The official conversation list `[{"role", "content", "images"?}, ...]`:
/// messages, and the images of all turns in order. A conversation ending
/// with a user turn gets the empty assistant turn the model answers in.
pub fn conversation_from_py(obj: &Bound<'_, PyAny>) -> PyResult<(Vec<Message>, Vec<DynamicImage>)> {
    let py = obj.py();
    if !(obj.is_instance_of::<PyList>() || obj.is_instance_of::<PyTuple>()) {
        return Err(PyTypeError::new_err(format!(
            "conversation must be a list of {{\"role\", \"content\", \"images\"?}} dicts, got {}",
            type_name(obj)
        )));
    }
    let mut messages = Vec::new();
    let mut images = Vec::new();
    for (i, item) in obj.try_iter()?.enumerate() {
        let item = item?;
        if !item.hasattr("get").unwrap_or(false) {
            return Err(PyTypeError::new_err(format!(
                "conversation[{i}] must be a dict with \"role\" and \"content\", got {}",
                type_name(&item)
            )));
        }
        let role = item.call_method1("get", ("role",))?;
        if role.is_none() {
            return Err(input_error(
                py,
                format!("conversation[{i}] has no \"role\""),
            ));
        }
        let role: String = role.extract().map_err(|_| {
            PyTypeError::new_err(format!("conversation[{i}][\"role\"] must be a str"))
        })?;
        let content = item.call_method1("get", ("content", ""))?;
        let content: String = if content.is_none() {
            String::new()
        } else {
            content.extract().map_err(|_| {
                PyTypeError::new_err(format!("conversation[{i}][\"content\"] must be a str"))
            })?
        };
        let turn_images = item.call_method1("get", ("images",))?;
        if !turn_images.is_none() {
            if !(turn_images.is_instance_of::<PyList>() || turn_images.is_instance_of::<PyTuple>())
            {
                return Err(PyTypeError::new_err(format!(
                    "conversation[{i}][\"images\"] must be a list of images (PIL images, uint8 arrays or paths)"
                )));
            }
            images.extend(images_from_py(Some(&turn_images))?);
        }
        messages.push(Message {
            role: normalize_role(&role),
            content,
            images: vec![],
        });
    }
    match messages.last() {
        None => return Err(input_error(py, "the conversation is empty")),
        Some(last) if last.role == USER_ROLE => messages.push(Message::assistant("")),
        Some(_) => {}
    }
    Ok((messages, images))
}

/// VQ codes: a 1-D `[T]` or 2-D `[n, T]` array-like of integers in
/// `0..codebook_size`. Returns the rows and whether the input was 1-D.
pub fn codes_from_py(
    obj: &Bound<'_, PyAny>,
    codebook_size: usize,
) -> PyResult<(Vec<Vec<u32>>, bool)> {
    let py = obj.py();
    let np = py.import("numpy")?;
    let arr = np.call_method1("asarray", (obj,))?;
    let arr = arr.cast_into::<PyUntypedArray>()?;
    let kind = arr.dtype().kind();
    if kind != b'i' && kind != b'u' {
        return Err(input_error(
            py,
            format!("VQ codes must be integers, got dtype {}", arr.dtype()),
        ));
    }
    let arr = arr.call_method1("astype", ("int64",))?;
    let arr = arr.cast_into::<PyArrayDyn<i64>>()?;
    let ro = arr
        .try_readonly()
        .map_err(|e| input_error(py, format!("cannot read the code array: {e}")))?;
    let view = ro.as_array();
    let shape = view.shape().to_vec();
    let (rows, cols, one) = match shape.as_slice() {
        [t] => (1, *t, true),
        [n, t] => (*n, *t, false),
        _ => {
            return Err(input_error(
                py,
                format!("VQ codes must be [T] or [n, T], got shape {shape:?}"),
            ))
        }
    };
    let flat: Vec<i64> = view.iter().copied().collect();
    if let Some(bad) = flat
        .iter()
        .find(|&&c| c < 0 || c as u64 >= codebook_size as u64)
    {
        return Err(input_error(
            py,
            format!("VQ code {bad} is out of range: the codebook has {codebook_size} entries"),
        ));
    }
    let codes = (0..rows)
        .map(|r| {
            flat[r * cols..(r + 1) * cols]
                .iter()
                .map(|&c| c as u32)
                .collect()
        })
        .collect();
    Ok((codes, one))
}

/// RGB images of one size as a `uint8` array `[n, H, W, 3]` (no copy on the
/// way out); `[0, side, side, 3]` when there are none.
pub fn images_to_array<'py>(
    py: Python<'py>,
    images: Vec<RgbImage>,
    side: u32,
) -> PyResult<Bound<'py, PyAny>> {
    let (w, h) = images.first().map_or((side, side), |i| i.dimensions());
    let n = images.len();
    let mut data = Vec::with_capacity(n * (w * h * 3) as usize);
    for img in images {
        if img.dimensions() != (w, h) {
            return Err(crate::errors::JanusError::new_err(
                "decoded images differ in size",
            ));
        }
        data.extend_from_slice(img.as_raw());
    }
    let arr = Array4::from_shape_vec((n, h as usize, w as usize, 3), data)
        .map_err(|e| crate::errors::JanusError::new_err(e.to_string()))?;
    Ok(arr.into_pyarray(py).into_any())
}

/// Code rows as an `int64` array `[n, T]`.
pub fn codes_to_array<'py>(py: Python<'py>, codes: &[Vec<u32>]) -> PyResult<Bound<'py, PyAny>> {
    let cols = codes.first().map_or(0, Vec::len);
    let flat: Vec<i64> = codes.iter().flatten().map(|&c| i64::from(c)).collect();
    let arr = Array2::from_shape_vec((codes.len(), cols), flat)
        .map_err(|e| crate::errors::JanusError::new_err(e.to_string()))?;
    Ok(arr.into_pyarray(py).into_any())
}

/// One code row as an `int64` array `[T]`.
pub fn code_row_to_array<'py>(py: Python<'py>, codes: &[u32]) -> Bound<'py, PyAny> {
    Array1::from_iter(codes.iter().map(|&c| i64::from(c)))
        .into_pyarray(py)
        .into_any()
}
