//! JPEG decoding as Pillow does it: libjpeg-turbo's decoder (mozjpeg's copy
//! of it, built from C without its assembly) with the defaults Pillow keeps,
//! the accurate integer IDCT and fancy (triangle-filter) chroma upsampling,
//! straight to RGB or gray. That gives Pillow's bytes exactly
//! (`tests/fixtures/jpeg`), where the `image` crate's decoder differs by up
//! to 4 levels on a quarter of the values of a 4:2:0 photo.
//!
//! libjpeg reports a fatal error by unwinding out of its C code; here that
//! is caught and becomes an error message. A file that ends before its
//! image data does is an error too (libjpeg would only warn and fill the
//! rest with gray), as Pillow refuses truncated files.

use std::os::raw::c_int;
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};

use crate::pixel_limit::within_pixel_limit;
use image::{DynamicImage, GrayImage, RgbImage};
use mozjpeg_sys::{jpeg_common_struct, jpeg_error_mgr, JWRN_JPEG_EOF, J_COLOR_SPACE};

/// What decoding a JPEG file gave.
pub(crate) enum Decoded {
    Image(DynamicImage),
    /// CMYK / YCCK and other colour spaces Pillow converts its own way:
    /// left to the `image` crate.
    Unsupported,
}

/// Decodes `data`, a JPEG file, refusing images over the pixel limit
/// before decoding them. Errors are messages for the user.
pub(crate) fn decode(data: &[u8]) -> Result<Decoded, String> {
    match catch_unwind(AssertUnwindSafe(|| decode_unwinding(data))) {
        Ok(result) => result,
        Err(payload) => Err(match payload.downcast::<String>() {
            Ok(msg) => format!("cannot decode: {msg}"),
            Err(_) => "cannot decode: corrupt JPEG data".into(),
        }),
    }
}

fn decode_unwinding(data: &[u8]) -> Result<Decoded, String> {
    let err = |e: std::io::Error| format!("cannot decode: {e}");
    let jpeg = mozjpeg::Decompress::builder()
        .with_err(error_manager())
        .from_mem(data)
        .map_err(err)?;
    let (w, h) = jpeg.size();
    within_pixel_limit(w, h)?;
    let (w32, h32) = (w as u32, h as u32);
    let image = match jpeg.color_space() {
        J_COLOR_SPACE::JCS_GRAYSCALE => {
            let mut started = jpeg.grayscale().map_err(err)?;
            let bytes = started.read_scanlines::<u8>().map_err(err)?;
            started.finish().map_err(err)?;
            GrayImage::from_raw(w32, h32, bytes).map(DynamicImage::ImageLuma8)
        }
        J_COLOR_SPACE::JCS_YCbCr | J_COLOR_SPACE::JCS_RGB => {
            let mut started = jpeg.rgb().map_err(err)?;
            let bytes = started.read_scanlines::<u8>().map_err(err)?;
            started.finish().map_err(err)?;
            RgbImage::from_raw(w32, h32, bytes).map(DynamicImage::ImageRgb8)
        }
        _ => return Ok(Decoded::Unsupported),
    };
    image
        .map(Decoded::Image)
        .ok_or_else(|| format!("cannot decode: fewer pixels than {w}x{h}"))
}

/// libjpeg's standard error manager with its fatal errors and the
/// truncation warning turned into unwinding (other warnings are ignored,
/// as Pillow ignores them).
fn error_manager() -> jpeg_error_mgr {
    // SAFETY: jpeg_std_error fills in every field of the zeroed struct.
    let mut err: jpeg_error_mgr = unsafe { std::mem::zeroed() };
    unsafe { mozjpeg_sys::jpeg_std_error(&mut err) };
    err.error_exit = Some(fail);
    err.emit_message = Some(warn);
    err
}

/// libjpeg's text for its current message.
fn message(cinfo: &mut jpeg_common_struct) -> String {
    // SAFETY: `err` is the manager set up by `error_manager`, whose
    // format_message writes at most 80 bytes (JMSG_LENGTH_MAX) into the buffer.
    unsafe {
        let Some(format) = (*cinfo.err).format_message else {
            return format!("libjpeg error {}", (*cinfo.err).msg_code);
        };
        let mut buffer = [0u8; 80];
        // The binding declares the buffer shared; libjpeg writes into it.
        let format: unsafe extern "C-unwind" fn(&mut jpeg_common_struct, *mut u8) =
            std::mem::transmute(format);
        format(cinfo, buffer.as_mut_ptr());
        let text = buffer.split(|&c| c == 0).next().unwrap_or_default();
        String::from_utf8_lossy(text).into_owned()
    }
}

extern "C-unwind" fn fail(cinfo: &mut jpeg_common_struct) {
    let msg = message(cinfo);
    // resume_unwind, not panic!: no panic message is printed.
    resume_unwind(Box::new(msg));
}

extern "C-unwind" fn warn(cinfo: &mut jpeg_common_struct, level: c_int) {
    // SAFETY: `err` is the manager set up by `error_manager`.
    let code = unsafe { (*cinfo.err).msg_code };
    if level < 0 && code == JWRN_JPEG_EOF as c_int {
        resume_unwind(Box::new("the file is truncated".to_string()));
    }
}
