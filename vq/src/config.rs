/// Hyper-parameters of the VQ image tokenizer (`ModelArgs` plus the
/// `Encoder`/`Decoder` constructor arguments of the reference).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VqConfig {
    /// Number of codebook entries, i.e. of distinct image tokens.
    pub codebook_size: usize,
    /// Dimension of one codebook entry (channels of the quantised latent).
    pub codebook_embed_dim: usize,
    /// Base channel count; level `i` works with `ch * ch_mult[i]` channels.
    pub ch: usize,
    /// Channel multiplier of each encoder level.
    pub encoder_ch_mult: Vec<usize>,
    /// Channel multiplier of each decoder level.
    pub decoder_ch_mult: Vec<usize>,
    /// Channels of the latent produced by the encoder / consumed by the decoder.
    pub z_channels: usize,
    /// Residual blocks per encoder level; the decoder uses one more per level.
    pub num_res_blocks: usize,
}

impl VqConfig {
    /// The official `VQ-16` architecture with the given codebook.
    /// Janus-Pro uses `vq16(16384, 8)`.
    pub fn vq16(codebook_size: usize, codebook_embed_dim: usize) -> Self {
        Self {
            codebook_size,
            codebook_embed_dim,
            ch: 128,
            encoder_ch_mult: vec![1, 1, 2, 2, 4],
            decoder_ch_mult: vec![1, 1, 2, 2, 4],
            z_channels: 256,
            num_res_blocks: 2,
        }
    }

    /// Side of the image patch covered by one token: every encoder level but
    /// the last halves the resolution.
    pub fn downsample_factor(&self) -> usize {
        1 << self.encoder_ch_mult.len().saturating_sub(1)
    }
}
