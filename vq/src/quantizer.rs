//! Codebook lookup between the continuous latent and image tokens
//! (`VectorQuantizer` of the reference, inference path only).

use candle_core::{DType, Error, Result, Tensor, D};
use candle_nn::VarBuilder;

use crate::config::VqConfig;

/// `F.normalize(x, p=2, dim=-1)`: rows scaled to unit L2 norm, with the
/// norm clamped at 1e-12 so zero rows stay zero instead of becoming NaN.
fn l2_normalize(x: &Tensor) -> Result<Tensor> {
    let norm = x.sqr()?.sum_keepdim(D::Minus1)?.sqrt()?.maximum(1e-12)?;
    x.broadcast_div(&norm)
}

/// Result of quantising a latent (or encoding an image).
#[derive(Debug, Clone)]
pub struct VqEncoding {
    /// Selected (normalised) codebook entries, `[b, embed_dim, h, w]`.
    pub quant: Tensor,
    /// Token id of every latent pixel in row-major order, `[b, h*w]` u32.
    pub indices: Tensor,
}

/// Nearest-neighbour quantiser over an L2-normalised codebook
/// (`quantize.*`; the training-only `codebook_used` buffer is not loaded).
#[derive(Debug, Clone)]
pub struct VectorQuantizer {
    /// Normalised once here; the reference re-normalises the same constant
    /// weight on every call.
    codebook: Tensor,
    /// Squared norms of the normalised rows. They are 1 only up to rounding,
    /// and keeping them exact makes near-ties resolve as in the reference.
    codebook_sq: Tensor,
}

impl VectorQuantizer {
    /// Loads the codebook (`quantize.embedding`) under `vb`.
    pub fn load(vb: VarBuilder, cfg: &VqConfig) -> Result<Self> {
        let weight = vb.get(
            (cfg.codebook_size, cfg.codebook_embed_dim),
            "embedding.weight",
        )?;
        let codebook = l2_normalize(&weight)?;
        let codebook_sq = codebook.sqr()?.sum(1)?;
        Ok(Self {
            codebook,
            codebook_sq,
        })
    }

    /// Entries of the codebook.
    pub fn codebook_size(&self) -> usize {
        self.codebook.dims()[0]
    }

    /// Replaces every pixel of `z` (`[b, embed_dim, h, w]`) by its nearest
    /// codebook entry after normalising it.
    pub fn forward(&self, z: &Tensor) -> Result<VqEncoding> {
        let (b, c, h, w) = z.dims4()?;
        let z = l2_normalize(&z.permute((0, 2, 3, 1))?.reshape((b * h * w, c))?)?;
        // |z|^2 + |e|^2 - 2 z.e, evaluated as the reference does so that
        // argmin (first minimum on ties) picks the same code.
        let dist = z
            .sqr()?
            .sum_keepdim(1)?
            .broadcast_add(&self.codebook_sq)?
            .broadcast_sub(&(z.matmul(&self.codebook.t()?)? * 2.0)?)?;
        let indices = dist.argmin(1)?;
        let quant = self
            .codebook
            .index_select(&indices, 0)?
            .reshape((b, h, w, c))?
            .permute((0, 3, 1, 2))?;
        Ok(VqEncoding {
            quant,
            indices: indices.reshape((b, h * w))?,
        })
    }

    /// `get_codebook_entry(indices, shape=[b, c, h, w])`: the normalised
    /// entries of `indices` (`[b, h*w]`, any integer dtype) laid out as a
    /// `[b, embed_dim, h, w]` latent for the `(h, w)` token grid.
    pub fn codebook_entry(&self, indices: &Tensor, grid: (usize, usize)) -> Result<Tensor> {
        let &[b, n] = indices.dims() else {
            return Err(Error::Msg(format!(
                "image tokens must be shaped [batch, tokens], got {:?}",
                indices.dims()
            )));
        };
        let (h, w) = grid;
        if n != h * w {
            return Err(Error::Msg(format!(
                "expected {} image tokens per image for a {h}x{w} grid, got {n}",
                h * w
            )));
        }
        if !indices.dtype().is_int() {
            return Err(Error::Msg(format!(
                "image tokens must have an integer dtype, got {:?}",
                indices.dtype()
            )));
        }
        let indices = indices.flatten_all()?;
        // Checked up front because an out-of-range row is not reliably an
        // error in index_select on every backend.
        let (size, c) = self.codebook.dims2()?;
        let ids = indices.to_dtype(DType::I64)?.to_vec1::<i64>()?;
        if let Some(bad) = ids.iter().find(|&&id| id < 0 || id as usize >= size) {
            return Err(Error::Msg(format!(
                "image token {bad} is outside the codebook of size {size}"
            )));
        }
        self.codebook
            .index_select(&indices, 0)?
            .reshape((b, h, w, c))?
            .permute((0, 3, 1, 2))
    }
}
