//! Image preprocessing for Janus-Pro's understanding path.
//!
//! This reproduces, byte for byte, what the official `VLMImageProcessor`
//! (`janus/models/image_processing_vlm.py` in deepseek-ai/Janus) feeds the
//! SigLIP encoder:
//!
//! 1. convert to RGB the way Pillow's `Image.convert("RGB")` does (alpha is
//!    dropped, not composited; gray is replicated; 16-bit samples are reduced
//!    to 8 bits as Pillow reduces them);
//! 2. scale the longest side to `image_size`, keeping the aspect ratio, with
//!    the same float arithmetic and `int()` truncation as the reference and a
//!    floor of `min_size` pixels per side;
//! 3. resize with Pillow's antialiased bicubic convolution (what torchvision's
//!    `resize(..., BICUBIC, antialias=True)` does on a PIL image), including its
//!    22-bit fixed-point coefficients, rounding and pass order. The pass order
//!    is Pillow 13's: vertical first when the height shrinks by more than
//!    twice as many pixels as the width, horizontal first otherwise. Pillow
//!    12.1 and older always went horizontal first, and 12.2 and 12.3 went
//!    vertical first only for images over 100 times taller than wide, so for
//!    tall images those versions can differ from this by a level on some
//!    pixels;
//! 4. pad to a square of the background colour, centred (`expand2square`);
//! 5. convert to CHW `f32`, rescale by `rescale_factor` (computed in `f64`,
//!    then rounded to `f32`, like Hugging Face's `rescale`) and normalise with
//!    `(x - mean) / std` in `f32` (like Hugging Face's `normalize`).
//!
//! JPEG files are decoded by libjpeg-turbo's code, as Pillow decodes them
//! (same bytes; CMYK JPEGs excepted, see `janus/src/jpeg.rs`). Other formats are
//! the `image` crate's: PNG (every colour type and bit depth) and lossy
//! WebP were checked to decode to the same pixels as Pillow. 16-bit gray PNGs with a `tRNS` chunk (not checked) are
//! expected to differ: the crate yields gray+alpha, whose high byte is kept,
//! where Pillow clips the `I;16` values.
//!
//! The resampler is our own implementation of Pillow's algorithm (see
//! `pillow_resize.rs`).

use std::path::Path;

use candle_core::{Device, Tensor};
use image::{DynamicImage, ImageDecoder, ImageReader, RgbImage};
use serde::Deserialize;

use crate::error::{JanusError, Result};
use crate::pillow_resize::pillow_bicubic_resize;
use crate::pixel_limit::within_pixel_limit;
pub use crate::pixel_limit::MAX_IMAGE_PIXELS;

/// The CLIP/ImageNet mean the reference uses when a config gives none.
const DEFAULT_IMAGE_MEAN: [f64; 3] = [0.48145466, 0.4578275, 0.40821073];
/// The CLIP/ImageNet std the reference uses when a config gives none.
const DEFAULT_IMAGE_STD: [f64; 3] = [0.26862954, 0.26130258, 0.27577711];

/// The settings of Janus-Pro's image processor, as found in
/// `preprocessor_config.json`.
#[derive(Debug, Clone, PartialEq)]
pub struct ImageProcessorConfig {
    /// Side of the square image the vision encoder takes (384 for Janus-Pro).
    pub image_size: usize,
    /// No side of the resized (unpadded) image is smaller than this.
    pub min_size: usize,
    /// Per-channel mean subtracted after rescaling (RGB order).
    pub image_mean: [f32; 3],
    /// Per-channel standard deviation divided by after subtracting the mean.
    pub image_std: [f32; 3],
    /// Factor turning `0..=255` bytes into `0.0..=1.0` (normally `1/255`).
    pub rescale_factor: f64,
    /// Whether to apply `(x - mean) / std` after rescaling.
    pub do_normalize: bool,
    /// Colour of the padding added by `expand2square`.
    pub background_color: [u8; 3],
}

#[derive(Deserialize)]
struct RawSize {
    height: usize,
    width: usize,
}

/// The JSON shape of `preprocessor_config.json`; unknown fields are ignored.
#[derive(Deserialize)]
struct RawConfig {
    /// DeepSeek's processor names the square side `image_size`...
    image_size: Option<usize>,
    /// ...transformers' `JanusImageProcessor` a `size: {height, width}`.
    size: Option<RawSize>,
    #[serde(default = "default_min_size")]
    min_size: usize,
    #[serde(default = "default_mean")]
    image_mean: Option<Vec<f64>>,
    #[serde(default = "default_std")]
    image_std: Option<Vec<f64>>,
    #[serde(default = "default_rescale_factor")]
    rescale_factor: f64,
    #[serde(default = "default_do_normalize")]
    do_normalize: bool,
    #[serde(default)]
    background_color: Option<Vec<i64>>,
}

fn default_min_size() -> usize {
    14
}
fn default_mean() -> Option<Vec<f64>> {
    Some(DEFAULT_IMAGE_MEAN.to_vec())
}
fn default_std() -> Option<Vec<f64>> {
    Some(DEFAULT_IMAGE_STD.to_vec())
}
fn default_rescale_factor() -> f64 {
    1.0 / 255.0
}
fn default_do_normalize() -> bool {
    true
}

/// Three numbers from a config list, or a config error naming the field.
fn three<T: Copy>(field: &str, values: &[T]) -> Result<[T; 3]> {
    match values {
        [a, b, c] => Ok([*a, *b, *c]),
        _ => Err(JanusError::Config(format!(
            "{field} must hold 3 values (one per RGB channel), found {}",
            values.len()
        ))),
    }
}

impl ImageProcessorConfig {
    /// Reads `preprocessor_config.json`.
    ///
    /// Recognised fields: `image_size` (or transformers' square `size:
    /// {height, width}`; one is required), `min_size` (default 14),
    /// `image_mean` and `image_std` (default: the CLIP values the reference
    /// uses), `rescale_factor` (default 1/255), `do_normalize` (default true)
    /// and `background_color` (optional; when absent it is derived as
    /// `int(mean * 255)` per channel, as the reference does, or 127 gray when
    /// `image_mean` is `null`). Other fields are ignored.
    ///
    /// # Errors
    /// [`JanusError::MissingFile`] if the file is absent,
    /// [`JanusError::BadFile`] if it cannot be read or is not valid JSON of
    /// the expected shape, and [`JanusError::Config`] for values out of range
    /// (a zero `image_size`, `min_size` above `image_size`, lists that do not
    /// hold three values, a zero or non-finite std, ...).
    pub fn from_file(path: &Path) -> Result<Self> {
        if !path.exists() {
            return Err(JanusError::MissingFile {
                what: "preprocessor config".into(),
                path: path.to_path_buf(),
            });
        }
        let text = std::fs::read_to_string(path).map_err(|e| JanusError::BadFile {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
        let raw: RawConfig = serde_json::from_str(&text).map_err(|e| JanusError::BadFile {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
        Self::from_raw(raw)
    }

    fn from_raw(raw: RawConfig) -> Result<Self> {
        let image_size = match (raw.image_size, &raw.size) {
            (Some(s), _) => s,
            (None, Some(size)) if size.height == size.width => size.height,
            (None, Some(size)) => {
                return Err(JanusError::Config(format!(
                    "size {}x{} is not square; Janus-Pro pads images to a square",
                    size.width, size.height
                )))
            }
            (None, None) => {
                return Err(JanusError::Config("image_size (or size) is missing".into()))
            }
        };
        if image_size == 0 {
            return Err(JanusError::Config("image_size must be positive".into()));
        }
        if raw.min_size > image_size {
            return Err(JanusError::Config(format!(
                "min_size ({}) must not exceed image_size ({})",
                raw.min_size, image_size
            )));
        }
        if !(raw.rescale_factor.is_finite()) {
            return Err(JanusError::Config(format!(
                "rescale_factor must be finite, found {}",
                raw.rescale_factor
            )));
        }
        let mean64 = match &raw.image_mean {
            Some(v) => Some(three("image_mean", v)?),
            None => None,
        };
        let std64 = match &raw.image_std {
            Some(v) => Some(three("image_std", v)?),
            None => None,
        };
        if raw.do_normalize && (mean64.is_none() || std64.is_none()) {
            return Err(JanusError::Config(
                "do_normalize is true but image_mean or image_std is null".into(),
            ));
        }
        let mean64 = mean64.unwrap_or([0.0; 3]);
        let std64 = std64.unwrap_or([1.0; 3]);
        if mean64.iter().any(|m| !m.is_finite()) {
            return Err(JanusError::Config(format!(
                "image_mean must be finite, found {mean64:?}"
            )));
        }
        if std64.iter().any(|s| !s.is_finite() || *s == 0.0) {
            return Err(JanusError::Config(format!(
                "image_std must be finite and non-zero, found {std64:?}"
            )));
        }
        let background_color = match &raw.background_color {
            Some(v) => {
                let c = three("background_color", v)?;
                let mut out = [0u8; 3];
                for (o, x) in out.iter_mut().zip(c) {
                    *o = u8::try_from(x).map_err(|_| {
                        JanusError::Config(format!(
                            "background_color values must be in 0..=255, found {c:?}"
                        ))
                    })?;
                }
                out
            }
            // The reference: `tuple(int(x * 255) for x in image_mean)`, or
            // (127, 127, 127) when the mean is None.
            None => match raw.image_mean {
                Some(_) => {
                    let mut out = [0u8; 3];
                    for (o, m) in out.iter_mut().zip(mean64) {
                        let v = (m * 255.0).trunc();
                        if !(0.0..=255.0).contains(&v) {
                            return Err(JanusError::Config(format!(
                                "cannot derive background_color from image_mean {mean64:?}"
                            )));
                        }
                        *o = v as u8;
                    }
                    out
                }
                None => [127; 3],
            },
        };
        Ok(Self {
            image_size,
            min_size: raw.min_size,
            // numpy's `np.array(mean, dtype=float32)`: round each f64 once.
            image_mean: mean64.map(|m| m as f32),
            image_std: std64.map(|s| s as f32),
            rescale_factor: raw.rescale_factor,
            do_normalize: raw.do_normalize,
            background_color,
        })
    }
}

/// Janus-Pro's image preprocessor: decoded images in, SigLIP pixel values out.
#[derive(Debug, Clone)]
pub struct ImageProcessor {
    /// The settings this processor applies.
    pub config: ImageProcessorConfig,
}

impl ImageProcessor {
    /// A processor with the given settings.
    pub fn new(config: ImageProcessorConfig) -> Self {
        Self { config }
    }

    /// Opens and decodes an image file, whatever its extension says (the
    /// format is guessed from the content).
    ///
    /// Images over [`MAX_IMAGE_PIXELS`] are refused from their header,
    /// before any pixel is decoded.
    ///
    /// # Errors
    /// [`JanusError::MissingFile`] if the path does not exist,
    /// [`JanusError::BadFile`] if it cannot be read, and
    /// [`JanusError::Image`] (naming the path) if it is empty, not an image in
    /// a supported format, corrupt, or too large.
    pub fn open(path: &Path) -> Result<DynamicImage> {
        let name = path.display().to_string();
        let image_err = |reason: String| JanusError::Image {
            source_name: name.clone(),
            reason,
        };
        let meta = match std::fs::metadata(path) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(JanusError::MissingFile {
                    what: "image".into(),
                    path: path.to_path_buf(),
                })
            }
            Err(e) => {
                return Err(JanusError::BadFile {
                    path: path.to_path_buf(),
                    reason: e.to_string(),
                })
            }
        };
        if meta.is_dir() {
            return Err(image_err("is a directory, not an image file".into()));
        }
        if meta.len() == 0 {
            return Err(image_err("file is empty (0 bytes)".into()));
        }
        let data = std::fs::read(path).map_err(|e| JanusError::BadFile {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
        Self::decode(&data, &name)
    }

    /// Decodes an image file's bytes (PNG, JPEG, WebP, BMP, GIF) as
    /// [`ImageProcessor::open`] does; `name` names it in errors (a file
    /// name, or e.g. "message 2, image 1" for an upload).
    pub fn decode(data: &[u8], name: &str) -> Result<DynamicImage> {
        let image_err = |reason: String| JanusError::Image {
            source_name: name.to_owned(),
            reason,
        };
        if data.is_empty() {
            return Err(image_err("no data (0 bytes)".into()));
        }
        let reader = ImageReader::new(std::io::Cursor::new(data))
            .with_guessed_format()
            .map_err(|e| image_err(e.to_string()))?;
        if reader.format().is_none() {
            return Err(image_err(
                "not an image in a supported format (PNG, JPEG, WebP, BMP, GIF)".into(),
            ));
        }
        let cannot = |e: image::ImageError| image_err(format!("cannot decode: {e}"));
        if reader.format() == Some(image::ImageFormat::Jpeg) {
            return match crate::jpeg::decode(data).map_err(image_err)? {
                crate::jpeg::Decoded::Image(img) => Ok(img),
                // Within the pixel limit: the JPEG decoder checked it.
                crate::jpeg::Decoded::Unsupported => {
                    image::load_from_memory_with_format(data, image::ImageFormat::Jpeg)
                        .map_err(cannot)
                }
            };
        }
        let decoder = reader.into_decoder().map_err(cannot)?;
        let (w, h) = decoder.dimensions();
        within_pixel_limit(w as usize, h as usize).map_err(image_err)?;
        DynamicImage::from_decoder(decoder).map_err(cannot)
    }

    /// The height and width (in that order, like the reference's `size`) that
    /// an image of `width` x `height` is resized to before padding.
    fn target_size(&self, width: u32, height: u32) -> Result<(usize, usize)> {
        let bad = |reason: String| JanusError::Image {
            source_name: "input image".into(),
            reason,
        };
        if width == 0 || height == 0 {
            return Err(bad(format!("invalid size {width}x{height}")));
        }
        let s = self.config.image_size as f64;
        let max_size = f64::from(width.max(height));
        // Python: `max(int(h / max_size * image_size), min_size)`; the
        // quotient and product are IEEE doubles and `int` truncates.
        let new_h = ((f64::from(height) / max_size * s) as usize).max(self.config.min_size);
        let new_w = ((f64::from(width) / max_size * s) as usize).max(self.config.min_size);
        if new_h == 0 || new_w == 0 {
            return Err(bad(format!(
                "invalid size: {width}x{height} would be resized to {new_w}x{new_h}"
            )));
        }
        Ok((new_h, new_w))
    }

    /// Steps 1-4: RGB conversion, aspect-preserving Pillow bicubic resize and
    /// centred padding. Returns the `image_size` x `image_size` RGB image the
    /// reference would hand to `to_numpy_array`.
    ///
    /// # Errors
    /// [`JanusError::Image`] if the image has a zero side, or would resize to
    /// a zero side; [`JanusError::Config`] if the configuration cannot give a
    /// square of `image_size` (for instance `min_size > image_size`).
    pub fn resize_and_pad(&self, img: &DynamicImage) -> Result<RgbImage> {
        let rgb = to_rgb_like_pillow(img);
        let (new_h, new_w) = self.target_size(rgb.width(), rgb.height())?;
        let resized = pillow_bicubic_resize(&rgb, new_w as u32, new_h as u32);
        let out = expand_to_square(&resized, self.config.background_color);
        let s = self.config.image_size;
        if out.width() as usize != s || out.height() as usize != s {
            return Err(JanusError::Config(format!(
                "image_size {s} with min_size {} gives a {}x{} image, not {s}x{s}",
                self.config.min_size,
                out.width(),
                out.height()
            )));
        }
        Ok(out)
    }

    /// Steps 1-5 for a batch: an `f32` tensor of shape `[n, 3, S, S]` on
    /// `device`, where `S` is `image_size`, holding
    /// `(byte * rescale_factor - mean) / std` per channel (or just
    /// `byte * rescale_factor` when `do_normalize` is false).
    ///
    /// # Errors
    /// [`JanusError::Input`] for an empty batch, the errors of
    /// [`Self::resize_and_pad`], and tensor errors from `candle`.
    pub fn preprocess(&self, images: &[DynamicImage], device: &Device) -> Result<Tensor> {
        if images.is_empty() {
            return Err(JanusError::Input("no images to preprocess".into()));
        }
        let s = self.config.image_size;
        let plane = s * s;
        let mut data = vec![0f32; images.len() * 3 * plane];
        // The 256 possible values of each channel, computed once.
        let mut lut = [[0f32; 256]; 3];
        for (c, table) in lut.iter_mut().enumerate() {
            for (v, out) in table.iter_mut().enumerate() {
                *out = self.scale_value(c, v as u8);
            }
        }
        for (i, img) in images.iter().enumerate() {
            let square = self.resize_and_pad(img)?;
            let base = i * 3 * plane;
            for (p, px) in square.pixels().enumerate() {
                for c in 0..3 {
                    data[base + c * plane + p] = lut[c][px.0[c] as usize];
                }
            }
        }
        Ok(Tensor::from_vec(data, (images.len(), 3, s, s), device)?)
    }

    /// One byte of channel `c` through Hugging Face's `rescale` then
    /// `normalize`: the product is taken in `f64` and rounded to `f32`, then
    /// mean and std (as `f32`) are applied in `f32`.
    fn scale_value(&self, c: usize, v: u8) -> f32 {
        let x = (f64::from(v) * self.config.rescale_factor) as f32;
        if self.config.do_normalize {
            (x - self.config.image_mean[c]) / self.config.image_std[c]
        } else {
            x
        }
    }
}

/// Pillow's `Image.convert("RGB")` for every pixel layout the decoders
/// produce: alpha is dropped (not composited), gray is replicated, 16-bit
/// RGB(A) and gray+alpha keep the high byte (Pillow decodes them with its
/// `;16B` raw modes), and 16-bit gray, which Pillow opens as mode `I;16`, is
/// clipped to 255.
fn to_rgb_like_pillow(img: &DynamicImage) -> RgbImage {
    fn from_fn<F: Fn(u32, u32) -> [u8; 3]>(w: u32, h: u32, f: F) -> RgbImage {
        RgbImage::from_fn(w, h, |x, y| image::Rgb(f(x, y)))
    }
    let (w, h) = (img.width(), img.height());
    match img {
        DynamicImage::ImageRgb8(im) => im.clone(),
        DynamicImage::ImageRgba8(im) => from_fn(w, h, |x, y| {
            let p = im.get_pixel(x, y).0;
            [p[0], p[1], p[2]]
        }),
        DynamicImage::ImageLuma8(im) => from_fn(w, h, |x, y| [im.get_pixel(x, y).0[0]; 3]),
        DynamicImage::ImageLumaA8(im) => from_fn(w, h, |x, y| [im.get_pixel(x, y).0[0]; 3]),
        DynamicImage::ImageLuma16(im) => {
            from_fn(w, h, |x, y| [im.get_pixel(x, y).0[0].min(255) as u8; 3])
        }
        DynamicImage::ImageLumaA16(im) => {
            from_fn(w, h, |x, y| [(im.get_pixel(x, y).0[0] >> 8) as u8; 3])
        }
        DynamicImage::ImageRgb16(im) => from_fn(w, h, |x, y| {
            let p = im.get_pixel(x, y).0;
            [(p[0] >> 8) as u8, (p[1] >> 8) as u8, (p[2] >> 8) as u8]
        }),
        DynamicImage::ImageRgba16(im) => from_fn(w, h, |x, y| {
            let p = im.get_pixel(x, y).0;
            [(p[0] >> 8) as u8, (p[1] >> 8) as u8, (p[2] >> 8) as u8]
        }),
        // Float images (no decoder enabled here yields them) and any future
        // layout: the image crate's own conversion, alpha dropped.
        other => other.to_rgb8(),
    }
}

/// `expand2square`: centre the image on a square canvas of `background`, the
/// offset along the short side being `(long - short) // 2`.
fn expand_to_square(img: &RgbImage, background: [u8; 3]) -> RgbImage {
    let (w, h) = (img.width(), img.height());
    if w == h {
        return img.clone();
    }
    let side = w.max(h);
    let (dx, dy) = if w > h {
        (0, (w - h) / 2)
    } else {
        ((h - w) / 2, 0)
    };
    let mut out = RgbImage::from_pixel(side, side, image::Rgb(background));
    for (x, y, p) in img.enumerate_pixels() {
        out.put_pixel(x + dx, y + dy, *p);
    }
    out
}
