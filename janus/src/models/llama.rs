//! The DeepSeek-LLM language model: a LLaMA decoder (RMSNorm, RoPE, SiLU
//! MLP, grouped-query attention) that returns hidden states, so both the
//! text head (`lm_head`) and the image head can read them.
//!
//! Linear weights are [`QLinear`]s: f32 (exact), bf16 or quantised at load
//! (see [`crate::quant`]). The q/k/v projections and the gate/up projections
//! are each concatenated into one weight at load, so a decoding step runs
//! four matmuls per layer instead of seven. Activations, norms and the
//! key/value cache stay in f32 on the CPU.

use candle_core::{CpuStorage, DType, Device, Module, Result, Tensor};
use candle_nn::{Embedding, RmsNorm, VarBuilder};

use crate::config::LlamaConfig;
use crate::quant::{activation_dtype, QLinear, Quant};
use janus_kernels::attention::KvElement;
use janus_kernels::tensor::zeroed;

/// Cos/sin tables of the rotary embedding for every position.
struct Rotary {
    cos: Tensor,
    sin: Tensor,
}

impl Rotary {
    fn new(cfg: &LlamaConfig, dtype: DType, dev: &Device) -> Result<Self> {
        let dim = cfg.head_dim();
        // As transformers: inv_freq = 1 / theta^(2i/d) in f32, angles = pos * inv_freq.
        let inv_freq: Vec<f32> = (0..dim)
            .step_by(2)
            .map(|i| 1f32 / (cfg.rope_theta as f32).powf(i as f32 / dim as f32))
            .collect();
        let n = inv_freq.len();
        let inv_freq = Tensor::from_vec(inv_freq, (1, n), dev)?;
        let pos = Tensor::arange(0u32, cfg.max_position_embeddings as u32, dev)?
            .to_dtype(DType::F32)?
            .reshape((cfg.max_position_embeddings, 1))?;
        let angles = pos.matmul(&inv_freq)?;
        Ok(Self {
            cos: angles.cos()?.to_dtype(dtype)?,
            sin: angles.sin()?.to_dtype(dtype)?,
        })
    }

    /// Rotates `q`/`k` of shape [b, heads, t, head_dim] starting at `offset`.
    fn apply(&self, x: &Tensor, offset: usize) -> Result<Tensor> {
        let t = x.dim(2)?;
        let cos = self.cos.narrow(0, offset, t)?;
        let sin = self.sin.narrow(0, offset, t)?;
        let x = if x.is_contiguous() {
            x.clone()
        } else {
            x.contiguous()?
        };
        candle_nn::rotary_emb::rope(&x, &cos, &sin)
    }

    /// Rotates one position per sequence, `x` [b, heads, 1, head_dim], row
    /// `i` at position `positions[i]`.
    fn apply_rows(&self, x: &Tensor, positions: &[u32]) -> Result<Tensor> {
        let idx = Tensor::new(positions, x.device())?;
        let b = positions.len();
        let half = self.cos.dim(1)?;
        let cos = self.cos.index_select(&idx, 0)?.reshape((b, 1, half))?;
        let sin = self.sin.index_select(&idx, 0)?.reshape((b, 1, half))?;
        candle_nn::rotary_emb::rope(&x.contiguous()?, &cos, &sin)
    }
}

struct Attention {
    qkv_proj: QLinear,
    o_proj: QLinear,
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
    /// bf16 compute (see [`bf16_compute`]): many-position passes use the
    /// fused rope and attention kernels.
    fast: bool,
}

/// Whether a model loaded with `dtype` weights and `quant` computes its
/// many-row passes with bf16 GEMMs: on CPUs that have them, whenever the
/// weights are not f32 (the f32 path stays exact against the reference).
pub(crate) fn bf16_compute(dev: &Device, dtype: DType, quant: Quant) -> bool {
    reduced_precision_cpu(dev, dtype, quant) && janus_kernels::bf16_gemm::available()
}

/// A CPU model whose weights are not f32 (`dtype` bf16 or quantised): it
/// may trade exactness for speed, where the f32 one stays exact.
pub(crate) fn reduced_precision_cpu(dev: &Device, dtype: DType, quant: Quant) -> bool {
    dev.is_cpu() && (dtype == DType::BF16 || quant != Quant::None)
}

/// Runs `f` on the contiguous f32 CPU data of `t`.
fn with_f32<R>(t: &Tensor, f: impl FnOnce(&[f32]) -> R) -> Result<R> {
    janus_kernels::tensor::with_cpu_slice(t, f)
}

/// Rotates one head (`src` -> `dst`, `head_dim` values) by the angles of
/// one position, as candle's `rope` (halves, not interleaved pairs).
#[inline]
fn rope_head(src: &[f32], cos: &[f32], sin: &[f32], dst: &mut [f32]) {
    let half = cos.len();
    let (x1, x2) = src.split_at(half);
    let (y1, y2) = dst.split_at_mut(half);
    for d in 0..half {
        y1[d] = x1[d] * cos[d] - x2[d] * sin[d];
        y2[d] = x1[d] * sin[d] + x2[d] * cos[d];
    }
}

impl Attention {
    fn load(vb: VarBuilder, cfg: &LlamaConfig, quant: Quant) -> Result<Self> {
        let hd = cfg.head_dim();
        let (h, kvh) = (cfg.num_attention_heads, cfg.num_key_value_heads);
        let qkv_proj = QLinear::stacked(
            &vb,
            &[
                ("q_proj", h * hd),
                ("k_proj", kvh * hd),
                ("v_proj", kvh * hd),
            ],
            cfg.hidden_size,
            quant,
        )?;
        Ok(Self {
            qkv_proj,
            o_proj: QLinear::load(h * hd, cfg.hidden_size, false, vb.pp("o_proj"), quant)?,
            heads: h,
            kv_heads: kvh,
            head_dim: hd,
            fast: bf16_compute(vb.device(), vb.dtype(), quant),
        })
    }

    fn forward(
        &self,
        x: &Tensor,
        rotary: &Rotary,
        cache: &mut LayerCache,
        mask: Option<&Tensor>,
    ) -> Result<Tensor> {
        let (b, t, _) = x.dims3()?;
        let offset = cache.len;
        if !cache.starts.is_empty() && (t != 1 || mask.is_some()) {
            candle_core::bail!("a cache of stacked sequences takes one position per step")
        }
        let qkv = self.qkv_proj.forward(x)?;
        if self.fast && t > 1 && mask.is_some() && qkv.dtype() == DType::F32 {
            return self
                .o_proj
                .forward(&self.prefill_attention(&qkv, rotary, cache)?);
        }
        let hd = self.head_dim;
        let split = |start: usize, heads: usize| -> Result<Tensor> {
            qkv.narrow(2, start * hd, heads * hd)?
                .reshape((b, t, heads, hd))?
                .transpose(1, 2)
        };
        let (q, k) = (split(0, self.heads)?, split(self.heads, self.kv_heads)?);
        let (q, k) = if cache.starts.is_empty() {
            (rotary.apply(&q, offset)?, rotary.apply(&k, offset)?)
        } else {
            // Stacked sequences: each at its own position (see `KvCache::stack`).
            let pos: Vec<u32> = cache.starts.iter().map(|&s| (offset - s) as u32).collect();
            (rotary.apply_rows(&q, &pos)?, rotary.apply_rows(&k, &pos)?)
        };
        let v = split(self.heads + self.kv_heads, self.kv_heads)?.contiguous()?;
        let (k, v) = cache.append(&k, &v)?;
        if t == 1 && mask.is_none() {
            let n_rep = self.heads / self.kv_heads;
            if let Some(out) = decode_attention(&q, &k, &v, n_rep, &cache.starts)? {
                return self.o_proj.forward(&out);
            }
        }
        if !cache.starts.is_empty() {
            candle_core::bail!("stacked sequences are only supported on the CPU")
        }
        // A bf16 cache read by candle's ops (not on the paths above).
        let (k, v) = if k.dtype() == q.dtype() {
            (k, v)
        } else {
            (k.to_dtype(q.dtype())?, v.to_dtype(q.dtype())?)
        };
        let k = repeat_kv(&k, self.heads / self.kv_heads)?;
        let v = repeat_kv(&v, self.heads / self.kv_heads)?;
        let scale = 1.0 / (hd as f64).sqrt();
        let mut scores = (q.matmul(&k.t()?)? * scale)?;
        if let Some(mask) = mask {
            scores = scores.broadcast_add(mask)?;
        }
        let probs = candle_nn::ops::softmax_last_dim(&scores)?;
        let out = probs
            .matmul(&v)?
            .transpose(1, 2)?
            .reshape((b, t, self.heads * hd))?;
        self.o_proj.forward(&out)
    }
}

impl Attention {
    /// Causal attention of `qkv` [b, t, (heads + 2 kv_heads) head_dim] after
    /// the cached positions: rope into fresh q/k buffers, keys and values
    /// appended to the cache, then the fused attention kernel over the
    /// cache's buffers. Returns [b, t, heads head_dim].
    fn prefill_attention(
        &self,
        qkv: &Tensor,
        rotary: &Rotary,
        cache: &mut LayerCache,
    ) -> Result<Tensor> {
        use janus_kernels::attention::{attention, AttentionShape, Heads};
        use rayon::prelude::*;
        let (b, t, width) = qkv.dims3()?;
        let (h, kvh, hd) = (self.heads, self.kv_heads, self.head_dim);
        if width != (h + 2 * kvh) * hd {
            candle_core::bail!("attention: projection width {width} does not fit the heads")
        }
        let offset = cache.len;
        let half = hd / 2;
        let mut q = zeroed(b * t * h * hd);
        let mut k = zeroed(b * kvh * t * hd);
        let mut v = zeroed(b * kvh * t * hd);
        with_f32(&rotary.cos, |cos| {
            with_f32(&rotary.sin, |sin| {
                with_f32(qkv, |src| {
                    let angles = |i: usize| {
                        let p = (offset + i) * half;
                        (&cos[p..p + half], &sin[p..p + half])
                    };
                    q.par_chunks_mut(h * hd).enumerate().for_each(|(row, dst)| {
                        let (c, s) = angles(row % t);
                        for (head, d) in dst.chunks_mut(hd).enumerate() {
                            rope_head(&src[row * width + head * hd..][..hd], c, s, d);
                        }
                    });
                    // k, v: [b, kv_heads, t, hd], the cache's layout.
                    let from = |idx: usize, first: usize| {
                        let (bi, g, i) = (idx / (kvh * t), idx / t % kvh, idx % t);
                        ((bi * t + i) * width + (first + g) * hd, i)
                    };
                    k.par_chunks_mut(hd).enumerate().for_each(|(idx, d)| {
                        let (at, i) = from(idx, h);
                        let (c, s) = angles(i);
                        rope_head(&src[at..at + hd], c, s, d);
                    });
                    v.par_chunks_mut(hd).enumerate().for_each(|(idx, d)| {
                        let (at, _) = from(idx, h + kvh);
                        d.copy_from_slice(&src[at..at + hd]);
                    });
                })
            })
        })???;
        let k = Tensor::from_vec(k, (b, kvh, t, hd), &Device::Cpu)?;
        let v = Tensor::from_vec(v, (b, kvh, t, hd), &Device::Cpu)?;
        let (kc, vc) = cache.append(&k, &v)?;
        let keys = offset + t;
        let shape = AttentionShape {
            heads: h,
            kv_heads: kvh,
            head_dim: hd,
            queries: t,
            keys,
            scale: 1.0 / (hd as f32).sqrt(),
            causal: Some(offset),
        };
        let mut out = zeroed(b * t * h * hd);
        let (ks, kl) = kc.storage_and_layout();
        let (vs, vl) = vc.storage_and_layout();
        // Sequence `bi` of a [b, kv_heads, capacity, hd] cache view.
        fn heads<'a, T>(d: &'a [T], start: usize, st: &[usize], bi: usize) -> Heads<'a, T> {
            Heads {
                data: &d[start + bi * st[0]..],
                row: st[2],
                head: st[1],
            }
        }
        // Every sequence of the batch against its own cache rows.
        fn run<T: KvElement>(
            shape: &AttentionShape,
            q: &[f32],
            kv: (&[T], &[T]),
            (k0, v0): (usize, usize),
            (kst, vst): (&[usize], &[usize]),
            out: &mut [f32],
        ) {
            let (t, row) = (shape.queries, shape.heads * shape.head_dim);
            for (bi, (q, out)) in q.chunks(t * row).zip(out.chunks_mut(t * row)).enumerate() {
                let qh = Heads {
                    data: q,
                    row,
                    head: shape.head_dim,
                };
                let (k, v) = (heads(kv.0, k0, kst, bi), heads(kv.1, v0, vst, bi));
                attention(shape, qh, k, v, out, row);
            }
        }
        let starts = (kl.start_offset(), vl.start_offset());
        let strides = (kl.stride(), vl.stride());
        use candle_core::Storage::Cpu;
        match (&*ks, &*vs) {
            (Cpu(CpuStorage::F32(kd)), Cpu(CpuStorage::F32(vd))) => {
                run(&shape, &q, (kd, vd), starts, strides, &mut out)
            }
            (Cpu(CpuStorage::BF16(kd)), Cpu(CpuStorage::BF16(vd))) => {
                run(&shape, &q, (kd, vd), starts, strides, &mut out)
            }
            _ => candle_core::bail!("attention: f32 or bf16 CPU key/value cache expected"),
        }
        drop((ks, vs));
        Tensor::from_vec(out, (b, t, h * hd), &Device::Cpu)
    }
}

/// One query position per sequence (decoding) on the CPU in f32: scores,
/// softmax and the weighted sum of values for every (sequence, head) in one
/// parallel pass over the cache buffers (f32 or bf16), instead of two
/// batched matmuls of `b * heads` tiny products. `q` [b, h, 1, d]; `k`, `v`
/// [b, kvh, len, d] views of the cache; sequence i attends from position
/// `starts[i]` on (all from 0 when empty, see [`KvCache::stack`]). Returns
/// [b, 1, h * d], or None when not applicable.
fn decode_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    n_rep: usize,
    starts: &[usize],
) -> Result<Option<Tensor>> {
    use candle_core::{CpuStorage, Storage};
    if !q.device().is_cpu() || q.dtype() != DType::F32 || k.dtype() != v.dtype() {
        return Ok(None);
    }
    let (b, h, _, d) = q.dims4()?;
    let q = if q.is_contiguous() {
        q.clone()
    } else {
        q.contiguous()?
    };
    let (qs, ql) = q.storage_and_layout();
    let (ks, kl) = k.storage_and_layout();
    let (vs, vl) = v.storage_and_layout();
    let Storage::Cpu(CpuStorage::F32(qv)) = &*qs else {
        return Ok(None);
    };
    // The cache views: [b, kvh, len, d] inside [b, kvh, cap, d] buffers.
    let (kst, vst) = (kl.stride(), vl.stride());
    if kst[3] != 1 || vst[3] != 1 || kst[2] != d || vst[2] != d || kst != vst {
        return Ok(None);
    }
    let qv = &qv[ql.start_offset()..ql.start_offset() + b * h * d];
    let view = CacheView {
        len: k.dim(2)?,
        starts,
        d,
        h,
        n_rep,
        batch_stride: kst[0],
        head_stride: kst[1],
    };
    let (k0, v0) = (kl.start_offset(), vl.start_offset());
    let out = match (&*ks, &*vs) {
        (Storage::Cpu(CpuStorage::F32(kv)), Storage::Cpu(CpuStorage::F32(vv))) => {
            view.attend(qv, &kv[k0..], &vv[v0..], b)
        }
        (Storage::Cpu(CpuStorage::BF16(kv)), Storage::Cpu(CpuStorage::BF16(vv))) => {
            view.attend(qv, &kv[k0..], &vv[v0..], b)
        }
        _ => return Ok(None),
    };
    drop((qs, ks, vs));
    Ok(Some(Tensor::from_vec(out, (b, 1, h * d), &Device::Cpu)?))
}

/// Where [`decode_attention`] finds a head's keys and values.
struct CacheView<'a> {
    len: usize,
    /// Per sequence, the first position it attends to (empty: all from 0).
    starts: &'a [usize],
    d: usize,
    h: usize,
    n_rep: usize,
    batch_stride: usize,
    head_stride: usize,
}

impl CacheView<'_> {
    fn attend<T: KvElement>(&self, qv: &[f32], kv: &[T], vv: &[T], b: usize) -> Vec<f32> {
        use rayon::prelude::*;
        let (d, h) = (self.d, self.h);
        let scale = 1.0 / (d as f32).sqrt();
        let mut out = vec![0f32; b * h * d];
        out.par_chunks_mut(d).enumerate().for_each_init(
            || vec![0f32; self.len],
            |scores, (i, o)| {
                let (bi, hi) = (i / h, i % h);
                let start = self.starts.get(bi).copied().unwrap_or(0);
                let scores = &mut scores[..self.len - start];
                let base =
                    bi * self.batch_stride + (hi / self.n_rep) * self.head_stride + start * d;
                let qrow = &qv[i * d..(i + 1) * d];
                for (j, s) in scores.iter_mut().enumerate() {
                    *s = dot(qrow, &kv[base + j * d..base + (j + 1) * d]);
                }
                janus_kernels::math::softmax_scaled(scores, scale);
                for (j, &p) in scores.iter().enumerate() {
                    let vrow = &vv[base + j * d..base + (j + 1) * d];
                    for (o, &x) in o.iter_mut().zip(vrow) {
                        *o += p * x.to_f32();
                    }
                }
            },
        );
        out
    }
}

/// Dot product in 8 independent lanes, so it vectorises.
#[inline]
fn dot<T: KvElement>(a: &[f32], b: &[T]) -> f32 {
    let mut lanes = [0f32; 8];
    let mut ca = a.chunks_exact(8);
    let mut cb = b.chunks_exact(8);
    for (x, y) in (&mut ca).zip(&mut cb) {
        for l in 0..8 {
            lanes[l] += x[l] * y[l].to_f32();
        }
    }
    let mut s: f32 = lanes.iter().sum();
    for (x, y) in ca.remainder().iter().zip(cb.remainder()) {
        s += x * y.to_f32();
    }
    s
}

/// Grouped-query attention: each key/value head serves `n_rep` query heads.
fn repeat_kv(x: &Tensor, n_rep: usize) -> Result<Tensor> {
    if n_rep == 1 {
        return Ok(x.clone());
    }
    let (b, kvh, t, d) = x.dims4()?;
    x.unsqueeze(2)?
        .expand((b, kvh, n_rep, t, d))?
        .reshape((b, kvh * n_rep, t, d))
}

struct Mlp {
    gate_up_proj: QLinear,
    down_proj: QLinear,
    intermediate: usize,
    /// bf16 compute: `silu(gate) * up` in one pass (the exact f32 path keeps
    /// candle's ops).
    fast: bool,
}

impl Mlp {
    fn load(vb: VarBuilder, cfg: &LlamaConfig, quant: Quant) -> Result<Self> {
        let (h, i) = (cfg.hidden_size, cfg.intermediate_size);
        Ok(Self {
            gate_up_proj: QLinear::stacked(&vb, &[("gate_proj", i), ("up_proj", i)], h, quant)?,
            down_proj: QLinear::load(i, h, false, vb.pp("down_proj"), quant)?,
            intermediate: i,
            fast: bf16_compute(vb.device(), vb.dtype(), quant),
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let gate_up = self.gate_up_proj.forward(x)?;
        let i = self.intermediate;
        if self.fast && gate_up.dtype() == DType::F32 {
            return self.down_proj.forward(&silu_mul(&gate_up, i)?);
        }
        let gate = candle_nn::ops::silu(&gate_up.narrow(2, 0, i)?)?;
        self.down_proj.forward(&(gate * gate_up.narrow(2, i, i)?)?)
    }
}

/// `silu(gate) * up` of `gate_up` [.., 2 i] (gate first) -> [.., i].
fn silu_mul(gate_up: &Tensor, i: usize) -> Result<Tensor> {
    use janus_kernels::math::fast_exp;
    use rayon::prelude::*;
    janus_kernels::tensor::map_rows(gate_up, 2 * i, i, |src, _, out| {
        out.par_chunks_mut(i)
            .zip(src.par_chunks(2 * i))
            .for_each(|(o, row)| {
                let (g, u) = row.split_at(i);
                for ((o, &g), &u) in o.iter_mut().zip(g).zip(u) {
                    *o = g / (1.0 + fast_exp(-g)) * u;
                }
            });
        Ok(())
    })
}

struct DecoderLayer {
    input_layernorm: RmsNorm,
    self_attn: Attention,
    post_attention_layernorm: RmsNorm,
    mlp: Mlp,
}

/// RMSNorm weights in the activation dtype, whatever the checkpoint holds.
fn rms_norm(size: usize, eps: f64, vb: VarBuilder, act: DType) -> Result<RmsNorm> {
    let w = vb.get(size, "weight")?.to_dtype(act)?;
    Ok(RmsNorm::new(w, eps))
}

impl DecoderLayer {
    fn load(vb: VarBuilder, cfg: &LlamaConfig, quant: Quant, act: DType) -> Result<Self> {
        Ok(Self {
            input_layernorm: rms_norm(
                cfg.hidden_size,
                cfg.rms_norm_eps,
                vb.pp("input_layernorm"),
                act,
            )?,
            self_attn: Attention::load(vb.pp("self_attn"), cfg, quant)?,
            post_attention_layernorm: rms_norm(
                cfg.hidden_size,
                cfg.rms_norm_eps,
                vb.pp("post_attention_layernorm"),
                act,
            )?,
            mlp: Mlp::load(vb.pp("mlp"), cfg, quant)?,
        })
    }

    fn forward(
        &self,
        x: &Tensor,
        rotary: &Rotary,
        cache: &mut LayerCache,
        mask: Option<&Tensor>,
    ) -> Result<Tensor> {
        let h = (x + self.self_attn.forward(
            &self.input_layernorm.forward(x)?,
            rotary,
            cache,
            mask,
        )?)?;
        &h + self
            .mlp
            .forward(&self.post_attention_layernorm.forward(&h)?)?
    }
}

/// Keys and values of one layer: buffers [b, kv_heads, capacity, head_dim]
/// of which the first `len` positions are filled. New positions are written
/// in place, so a decoding step copies only its own keys and values.
#[derive(Default)]
struct LayerCache {
    kv: Option<(Tensor, Tensor)>,
    len: usize,
    /// Per sequence, the position its keys start at (empty: all at 0): set
    /// by [`KvCache::stack`], where shorter sequences start later.
    starts: Vec<usize>,
    /// Capacity to allocate on first use (at least the first chunk's length).
    reserve: usize,
    /// Storage dtype (bf16 with bf16 compute), or that of the keys given.
    dtype: Option<DType>,
}

impl Clone for LayerCache {
    /// A deep copy: the buffers are written in place, so clones must not share them.
    fn clone(&self) -> Self {
        let kv = self.kv.as_ref().map(|(k, v)| {
            let copy = |t: &Tensor| {
                t.copy()
                    .expect("copying a key/value cache buffer on its own device")
            };
            (copy(k), copy(v))
        });
        Self {
            kv,
            len: self.len,
            starts: self.starts.clone(),
            reserve: self.reserve,
            dtype: self.dtype,
        }
    }
}

impl LayerCache {
    fn append(&mut self, k: &Tensor, v: &Tensor) -> Result<(Tensor, Tensor)> {
        let (k, v) = match self.dtype {
            Some(dt) if dt != k.dtype() => (&k.to_dtype(dt)?, &v.to_dtype(dt)?),
            _ => (k, v),
        };
        let (b, kvh, t, d) = k.dims4()?;
        let needed = self.len + t;
        let capacity = self.kv.as_ref().map_or(0, |(kb, _)| kb.dim(2).unwrap_or(0));
        let batch_ok = self
            .kv
            .as_ref()
            .is_none_or(|(kb, _)| kb.dim(0).ok() == Some(b));
        if !batch_ok {
            candle_core::bail!("key/value cache holds a different batch size than the input")
        }
        if needed > capacity {
            // First use: the reserved size; growth: doubling, so appends stay amortised O(1).
            let new_cap = needed.max(self.reserve).max(2 * capacity);
            let alloc = || cache_buffer((b, kvh, new_cap, d), k.dtype(), k.device());
            let (nk, nv) = (alloc()?, alloc()?);
            if let Some((ok, ov)) = &self.kv {
                if self.len > 0 {
                    nk.slice_set(&ok.narrow(2, 0, self.len)?.contiguous()?, 2, 0)?;
                    nv.slice_set(&ov.narrow(2, 0, self.len)?.contiguous()?, 2, 0)?;
                }
            }
            self.kv = Some((nk, nv));
        }
        let (kb, vb) = self.kv.as_ref().expect("allocated above");
        let k = if k.is_contiguous() {
            k.clone()
        } else {
            k.contiguous()?
        };
        let v = if v.is_contiguous() {
            v.clone()
        } else {
            v.contiguous()?
        };
        kb.slice_set(&k, 2, self.len)?;
        vb.slice_set(&v, 2, self.len)?;
        self.len = needed;
        Ok((kb.narrow(2, 0, needed)?, vb.narrow(2, 0, needed)?))
    }
}

/// A zeroed cache buffer. On the CPU the zeros come from the allocator
/// (fresh pages, not written): a buffer reserved for a whole image's 576
/// tokens costs memory only as positions are filled. (candle writes the
/// zeros of a bf16 tensor one by one, which would touch all of it.)
fn cache_buffer(shape: (usize, usize, usize, usize), dtype: DType, dev: &Device) -> Result<Tensor> {
    if dtype != DType::BF16 || !dev.is_cpu() {
        return Tensor::zeros(shape, dtype, dev);
    }
    let n = shape.0 * shape.1 * shape.2 * shape.3;
    let bits = std::mem::ManuallyDrop::new(vec![0u16; n]);
    // SAFETY: bf16 is a transparent u16 (same size and alignment) and 0 is
    // +0.0; the allocation moves over whole, with its length and capacity.
    let zeros = unsafe {
        Vec::from_raw_parts(
            bits.as_ptr() as *mut half::bf16,
            bits.len(),
            bits.capacity(),
        )
    };
    Tensor::from_vec(zeros, shape, dev)
}

/// The attention state of a sequence batch; reused across decoding steps
/// (and across chat turns), so earlier tokens are never recomputed.
#[derive(Clone)]
pub struct KvCache {
    layers: Vec<LayerCache>,
}

impl KvCache {
    /// Number of positions already processed.
    pub fn len(&self) -> usize {
        self.layers.first().map_or(0, |l| l.len)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Forgets every position from `len` on (e.g. to rewind a chat to the
    /// part of a conversation that is unchanged); the buffers are kept.
    pub fn truncate(&mut self, len: usize) {
        for l in &mut self.layers {
            l.len = l.len.min(len);
        }
    }

    /// One cache for the sequences of several: `caches` (each filled by a
    /// prompt of its own length, none stacked itself) become the rows of
    /// one batch, in order, aligned at their ends, with room for
    /// `positions` in all; each row attends only to its own keys and
    /// rotates at its own positions, so decoding steps run all sequences
    /// at once with the same results as one by one. Only one position per
    /// step can follow (and only on the CPU).
    pub fn stack(caches: &[KvCache], positions: usize) -> Result<KvCache> {
        let end = caches.iter().map(KvCache::len).max().unwrap_or(0);
        let n_layers = caches.first().map_or(0, |c| c.layers.len());
        if caches
            .iter()
            .any(|c| c.layers.len() != n_layers || c.is_empty())
        {
            candle_core::bail!("stacking needs filled caches of the same model")
        }
        let capacity = positions.max(end);
        let mut layers = Vec::with_capacity(n_layers);
        for l in 0..n_layers {
            let mut ks = vec![];
            let mut vs = vec![];
            let mut starts = vec![];
            for c in caches {
                let lc = &c.layers[l];
                if !lc.starts.is_empty() {
                    candle_core::bail!("a stacked cache cannot be stacked again")
                }
                let (k, v) = lc.kv.as_ref().expect("filled caches have buffers");
                let (b, kvh, _, d) = k.dims4()?;
                let pad = |t: &Tensor| -> Result<Tensor> {
                    let zeros = |n: usize| cache_buffer((b, kvh, n, d), t.dtype(), t.device());
                    let mut parts = vec![];
                    if end > lc.len {
                        parts.push(zeros(end - lc.len)?);
                    }
                    parts.push(t.narrow(2, 0, lc.len)?);
                    if capacity > end {
                        parts.push(zeros(capacity - end)?);
                    }
                    Tensor::cat(&parts, 2)
                };
                ks.push(pad(k)?);
                vs.push(pad(v)?);
                starts.extend(std::iter::repeat_n(end - lc.len, b));
            }
            let first = &caches[0].layers[l];
            layers.push(LayerCache {
                kv: Some((Tensor::cat(&ks, 0)?, Tensor::cat(&vs, 0)?)),
                len: end,
                starts,
                reserve: capacity,
                dtype: first.dtype,
            });
        }
        Ok(KvCache { layers })
    }

    /// Positions the buffers hold before they must grow.
    pub fn capacity(&self) -> usize {
        self.layers.first().map_or(0, |l| {
            l.kv.as_ref()
                .map_or(l.reserve, |(k, _)| k.dim(2).unwrap_or(0))
        })
    }
}

pub struct Llama {
    embed_tokens: TokenEmbedding,
    layers: Vec<DecoderLayer>,
    norm: RmsNorm,
    lm_head: QLinear,
    rotary: Rotary,
    act_dtype: DType,
    /// Keys and values are cached in bf16 with bf16 compute (the attention
    /// GEMMs round them to bf16 anyway; half the memory), else in `act_dtype`.
    kv_dtype: DType,
    cfg: LlamaConfig,
}

impl Llama {
    /// `vb` is the `language_model` prefix (`model.*` and `lm_head`).
    pub fn load(vb: VarBuilder, cfg: &LlamaConfig) -> Result<Self> {
        Self::load_quantized(vb, cfg, Quant::None)
    }

    /// As [`Llama::load`], with the linear weights (and `lm_head`) in `quant`.
    /// With quantisation the token embedding table is stored in the same
    /// blocks (rows are dequantised as they are looked up); otherwise in the
    /// load dtype.
    pub fn load_quantized(vb: VarBuilder, cfg: &LlamaConfig, quant: Quant) -> Result<Self> {
        let act = activation_dtype(vb.device(), vb.dtype());
        let m = vb.pp("model");
        let embed_tokens = TokenEmbedding::load(m.pp("embed_tokens"), cfg, quant)?;
        // The two vocabulary-sized matrices first, while little else is
        // resident: their full-precision transients then never stack on top
        // of the whole model.
        let lm_head = if cfg.tie_word_embeddings {
            embed_tokens.tied_head(quant)?
        } else {
            QLinear::load(
                cfg.hidden_size,
                cfg.vocab_size,
                false,
                vb.pp("lm_head"),
                quant,
            )?
        };
        let layers = (0..cfg.num_hidden_layers)
            .map(|i| DecoderLayer::load(m.pp(format!("layers.{i}")), cfg, quant, act))
            .collect::<Result<Vec<_>>>()?;
        let norm = rms_norm(cfg.hidden_size, cfg.rms_norm_eps, m.pp("norm"), act)?;
        let rotary = Rotary::new(cfg, act, vb.device())?;
        let kv_dtype = if bf16_compute(vb.device(), vb.dtype(), quant) {
            DType::BF16
        } else {
            act
        };
        Ok(Self {
            embed_tokens,
            layers,
            norm,
            lm_head,
            rotary,
            act_dtype: act,
            kv_dtype,
            cfg: cfg.clone(),
        })
    }

    pub fn config(&self) -> &LlamaConfig {
        &self.cfg
    }

    /// The dtype of hidden states (f32 on the CPU).
    pub fn activation_dtype(&self) -> DType {
        self.act_dtype
    }

    /// Bytes held by the linear weights of the decoder layers and `lm_head`.
    pub fn linear_weight_bytes(&self) -> usize {
        self.layers
            .iter()
            .map(|l| {
                l.self_attn.qkv_proj.weight_bytes()
                    + l.self_attn.o_proj.weight_bytes()
                    + l.mlp.gate_up_proj.weight_bytes()
                    + l.mlp.down_proj.weight_bytes()
            })
            .sum::<usize>()
            + self.lm_head.weight_bytes()
    }

    /// An empty cache; its buffers are sized on first use and grow as needed.
    pub fn new_cache(&self) -> KvCache {
        self.new_cache_with_capacity(0)
    }

    /// An empty cache whose buffers are allocated once for `positions`
    /// positions (e.g. prompt + 576 image tokens), so decoding never reallocates.
    pub fn new_cache_with_capacity(&self, positions: usize) -> KvCache {
        let reserve = positions.min(self.cfg.max_position_embeddings);
        KvCache {
            layers: vec![
                LayerCache {
                    kv: None,
                    len: 0,
                    starts: vec![],
                    reserve,
                    dtype: Some(self.kv_dtype),
                };
                self.layers.len()
            ],
        }
    }

    /// Token embeddings, `ids` [b, t] -> [b, t, hidden].
    pub fn embed(&self, ids: &Tensor) -> Result<Tensor> {
        let e = self.embed_tokens.lookup(ids)?;
        if e.dtype() == self.act_dtype {
            Ok(e)
        } else {
            e.to_dtype(self.act_dtype)
        }
    }

    /// Runs `embeds` [b, t, hidden] after the positions already in `cache`
    /// and returns the final-norm hidden states [b, t, hidden].
    pub fn forward_embeds(&self, embeds: &Tensor, cache: &mut KvCache) -> Result<Tensor> {
        let (_, t, _) = embeds.dims3()?;
        let offset = cache.len();
        if offset + t > self.cfg.max_position_embeddings {
            candle_core::bail!(
                "sequence of {} tokens exceeds the model's context of {} positions",
                offset + t,
                self.cfg.max_position_embeddings
            )
        }
        let embeds = if embeds.dtype() == self.act_dtype {
            embeds.clone()
        } else {
            embeds.to_dtype(self.act_dtype)?
        };
        let mask = if t > 1 {
            Some(causal_mask(t, offset, self.act_dtype, embeds.device())?)
        } else {
            None
        };
        // One position per sequence (decoding) is dozens of short parallel
        // loops: run them from a pool thread. Not a prefill: its large
        // buffers would then come from that thread's malloc arena and stay
        // there, out of reach of later allocations on this thread (peak RSS
        // +0.4-0.6 GB by the VQ decode).
        let on_pool = embeds.device().is_cpu() && t == 1;
        let run = || {
            let mut x = embeds;
            for (layer, c) in self.layers.iter().zip(cache.layers.iter_mut()) {
                x = layer.forward(&x, &self.rotary, c, mask.as_ref())?;
            }
            self.norm.forward(&x)
        };
        if on_pool {
            janus_kernels::on_pool(run)
        } else {
            run()
        }
    }

    /// Text logits of hidden states [.., hidden] -> [.., vocab].
    pub fn lm_logits(&self, hidden: &Tensor) -> Result<Tensor> {
        self.lm_head.forward(hidden)
    }
}

/// The token embedding table: as loaded, or in the model's quantisation blocks.
enum TokenEmbedding {
    Dense(Embedding),
    Quantized(candle_core::quantized::QTensor),
}

impl TokenEmbedding {
    /// `vb` is the `embed_tokens` prefix. The table is quantised with the
    /// model (see [`Quant::for_in_dim`]) on the CPU, or taken as stored.
    fn load(vb: VarBuilder, cfg: &LlamaConfig, quant: Quant) -> Result<Self> {
        use janus_kernels::blocks::{load_weight, Loaded};
        let dims = (cfg.vocab_size, cfg.hidden_size);
        let dtype = quant.for_in_dim(cfg.hidden_size).ggml();
        Ok(match load_weight(&vb, "weight", dims, dtype)? {
            Loaded::Blocks(q) => Self::Quantized(q),
            Loaded::Dense(w) => Self::Dense(Embedding::new(w, cfg.hidden_size)),
        })
    }

    /// An output head tied to this table, in `quant`.
    fn tied_head(&self, quant: Quant) -> Result<QLinear> {
        match self {
            Self::Dense(e) => QLinear::from_weight(e.embeddings().clone(), None, quant),
            Self::Quantized(q) => QLinear::from_blocks(
                candle_core::quantized::ggml_file::qtensor_from_ggml(
                    q.dtype(),
                    &q.data()?,
                    q.shape().dims().to_vec(),
                    &Device::Cpu,
                )?,
                None,
                quant,
            ),
        }
    }

    fn lookup(&self, ids: &Tensor) -> Result<Tensor> {
        match self {
            Self::Dense(e) => e.forward(ids),
            Self::Quantized(q) => q.embedding(ids),
        }
    }
}

/// Additive mask [t, offset + t]: query i sees keys 0..=offset+i.
fn causal_mask(t: usize, offset: usize, dtype: DType, dev: &Device) -> Result<Tensor> {
    let mask: Vec<f32> = (0..t)
        .flat_map(|i| {
            (0..offset + t).map(move |j| {
                if j > offset + i {
                    f32::NEG_INFINITY
                } else {
                    0.0
                }
            })
        })
        .collect();
    Tensor::from_vec(mask, (t, offset + t), dev)?.to_dtype(dtype)
}
