use candle_core::{DType, Result, Tensor};

/// Converts decoder output `[b, 3, H, W]` to `[b, H, W, 3]` u8 pixels the way
/// the Janus generation script does: `(x + 1) / 2 * 255` in f32, clipped to
/// [0, 255], then truncated by the cast to uint8.
pub fn to_u8_pixels(decoded: &Tensor) -> Result<Tensor> {
    let scaled = (((decoded.to_dtype(DType::F32)? + 1.0)? / 2.0)? * 255.0)?;
    // The cast itself truncates; floor first so this does not depend on how
    // a backend converts floats to integers.
    scaled
        .clamp(0f32, 255f32)?
        .floor()?
        .permute((0, 2, 3, 1))?
        .to_dtype(DType::U8)
}
