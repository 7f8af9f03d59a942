//! How the few-row kernels find a weight's rows.

/// Weight formats of the few-row kernels; rows are stored one after another.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RowFormat {
    /// f32 values.
    F32,
    /// bf16 values.
    Bf16,
    /// GGUF Q8_0 blocks: f16 scale + 32 i8 (34 bytes per 32 weights).
    Q8_0,
    /// GGUF Q4_K super-blocks: f16 d, f16 dmin, 12 bytes of 6-bit scales/mins, 128 bytes of nibbles.
    Q4K,
}

impl RowFormat {
    /// Bytes of one stored row of `k` values.
    pub fn row_bytes(&self, k: usize) -> usize {
        match self {
            RowFormat::F32 => 4 * k,
            RowFormat::Bf16 => 2 * k,
            RowFormat::Q8_0 => k / 32 * 34,
            RowFormat::Q4K => k / 256 * 144,
        }
    }
}
