//! The exceptions of `janus_rs` and the mapping from `janus::JanusError`.
//!
//! ```text
//! Exception
//! └── JanusError                      every error of the library
//!     ├── Cancelled                   cancel(), cancel_event, a stopped stream
//!     ├── InputError(ValueError)      bad arguments, config values, unreadable model files, undecodable images
//!     └── MissingFileError(FileNotFoundError)   a model folder, weight or image file is absent
//! ```
//!
//! `InputError` and `MissingFileError` derive from both `JanusError` and the
//! builtin, so `except ValueError` / `except FileNotFoundError` work as well
//! as `except janus_rs.JanusError`.

use pyo3::exceptions::{PyException, PyFileNotFoundError, PyValueError};
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyDict, PyType};

/// errno of a missing file (the same on Linux, macOS and Windows).
const ENOENT: i32 = 2;

pyo3::create_exception!(
    janus_rs,
    JanusError,
    PyException,
    "Base class of every error raised by janus_rs; the message is the Rust library's."
);
pyo3::create_exception!(
    janus_rs,
    Cancelled,
    JanusError,
    "A call stopped early: JanusPro.cancel() was called, its cancel_event was set, or its stream was closed."
);

/// `InputError` and `MissingFileError` derive from a builtin as well as
/// `JanusError`, which `create_exception!` cannot express: they are defined
/// in Python, once.
const TWO_BASE_CLASSES: &std::ffi::CStr = c"
class InputError(JanusError, ValueError):
    \"\"\"An argument, image or config value is unusable (also a ValueError).\"\"\"


class MissingFileError(JanusError, FileNotFoundError):
    \"\"\"A model folder, model file or image file does not exist (also a
    FileNotFoundError, errno ENOENT); `filename` holds the path.\"\"\"

    def __str__(self):
        return self.strerror if self.strerror is not None else super().__str__()
";

struct TwoBase {
    input: Py<PyType>,
    missing_file: Py<PyType>,
}

static TWO_BASE: PyOnceLock<TwoBase> = PyOnceLock::new();

fn two_base(py: Python<'_>) -> PyResult<&'static TwoBase> {
    TWO_BASE.get_or_try_init(py, || -> PyResult<TwoBase> {
        let globals = PyDict::new(py);
        globals.set_item("__name__", "janus_rs")?;
        globals.set_item("JanusError", py.get_type::<JanusError>())?;
        py.run(TWO_BASE_CLASSES, Some(&globals), None)?;
        let get = |name: &str| -> PyResult<Py<PyType>> {
            let ty = globals
                .get_item(name)?
                .ok_or_else(|| PyException::new_err(format!("{name} was not defined")))?;
            Ok(ty.cast_into::<PyType>()?.unbind())
        };
        Ok(TwoBase {
            input: get("InputError")?,
            missing_file: get("MissingFileError")?,
        })
    })
}

/// `janus_rs.InputError`: a `JanusError` that is also a `ValueError`.
pub fn input_error_type(py: Python<'_>) -> PyResult<Bound<'_, PyType>> {
    Ok(two_base(py)?.input.bind(py).clone())
}

/// `janus_rs.MissingFileError`: a `JanusError` that is also a `FileNotFoundError`.
pub fn missing_file_error_type(py: Python<'_>) -> PyResult<Bound<'_, PyType>> {
    Ok(two_base(py)?.missing_file.bind(py).clone())
}

/// An `InputError` with `msg` (a `ValueError` if the type cannot be made).
pub fn input_error(py: Python<'_>, msg: impl Into<String>) -> PyErr {
    let msg = msg.into();
    match input_error_type(py) {
        Ok(ty) => PyErr::from_type(ty, msg),
        Err(_) => PyValueError::new_err(msg),
    }
}

/// The Python exception for a library error, with the library's message.
pub fn to_py(py: Python<'_>, e: janus::JanusError) -> PyErr {
    use janus::JanusError as E;
    let msg = e.to_string();
    match e {
        E::Cancelled => Cancelled::new_err(msg),
        // Anything wrong with an input file (a config or tokenizer that
        // does not parse, a damaged checkpoint) is the caller's input too.
        E::Input(_) | E::Config(_) | E::Image { .. } | E::BadFile { .. } | E::Weights(_) => {
            input_error(py, msg)
        }
        E::MissingFile { path, .. } => match missing_file_error_type(py) {
            // OSError(errno, strerror, filename), as Python's own; str() is the message.
            Ok(ty) => PyErr::from_type(ty, (ENOENT, msg, path.to_string_lossy().into_owned())),
            Err(_) => PyFileNotFoundError::new_err(msg),
        },
        _ => JanusError::new_err(msg),
    }
}
