//! The weight formats a model can be loaded in.

use std::fmt;

use candle_core::quantized::GgmlDType;

/// Quantisation of the language model's and image head's linear weights and
/// the token embeddings (with any of them, the vision tower's linears take q8_0).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Quant {
    /// Weights in the load dtype (`f32` or `bf16`).
    #[default]
    None,
    /// 8-bit blocks of 32 with one f16 scale (8.5 bits per weight).
    Q8_0,
    /// 4-bit k-quant: super-blocks of 256 with 6-bit sub-block scales (4.5 bits per weight).
    Q4K,
}

impl Quant {
    /// `none`, `q8_0` (`q8`) or `q4k` (`q4_k`, `q4`).
    pub fn parse(name: &str) -> std::result::Result<Self, String> {
        match name.trim().to_ascii_lowercase().as_str() {
            "none" | "" => Ok(Self::None),
            "q8_0" | "q8" => Ok(Self::Q8_0),
            "q4k" | "q4_k" | "q4" => Ok(Self::Q4K),
            other => Err(format!(
                "unknown quantisation {other:?} (expected none, q8_0 or q4k)"
            )),
        }
    }

    /// The name [`Quant::parse`] takes back.
    pub fn name(&self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Q8_0 => "q8_0",
            Self::Q4K => "q4k",
        }
    }

    /// The GGUF block format of this quantisation (`None` for none).
    pub fn ggml(&self) -> Option<GgmlDType> {
        match self {
            Self::None => None,
            Self::Q8_0 => Some(GgmlDType::Q8_0),
            Self::Q4K => Some(GgmlDType::Q4K),
        }
    }

    /// The format actually used for a weight whose rows have `in_dim`
    /// values: a row must hold whole blocks, so a 4-bit weight whose rows do
    /// not split into 256-value super-blocks falls back to q8_0, and one that
    /// does not split into 32-value blocks stays unquantised (only tiny test
    /// models have such sizes).
    pub fn for_in_dim(&self, in_dim: usize) -> Quant {
        match self {
            Self::Q4K if in_dim % 256 == 0 => Self::Q4K,
            Self::Q4K | Self::Q8_0 if in_dim % 32 == 0 => Self::Q8_0,
            _ => Self::None,
        }
    }
}

impl fmt::Display for Quant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Quant {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        Self::parse(s)
    }
}
