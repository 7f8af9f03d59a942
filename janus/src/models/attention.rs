//! Grouped-query self-attention of the language model, with the CPU's fused
//! paths: rope and attention kernels for bf16-compute prefills, and one
//! parallel pass over the cache for decoding steps.

use candle_core::{CpuStorage, DType, Device, Module, Result, Tensor};
use candle_nn::VarBuilder;
use janus_kernels::attention::{rope_head, DecodeCache, KvElement};
use janus_kernels::tensor::zeroed;
use janus_nn::{bf16_compute, QLinear, Quant};

use super::kv_cache::LayerCache;
use super::rotary::Rotary;
use crate::config::LlamaConfig;

pub(crate) struct Attention {
    qkv_proj: QLinear,
    o_proj: QLinear,
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
    /// bf16 compute (see [`bf16_compute`]): many-position passes use the
    /// fused rope and attention kernels.
    bf16_compute: bool,
}

/// Runs `f` on the contiguous f32 CPU data of `t`.
fn with_f32<R>(t: &Tensor, f: impl FnOnce(&[f32]) -> R) -> Result<R> {
    janus_kernels::tensor::with_cpu_slice(t, f)
}

impl Attention {
    /// Bytes of the projection weights.
    pub(crate) fn weight_bytes(&self) -> usize {
        self.qkv_proj.weight_bytes() + self.o_proj.weight_bytes()
    }
}

impl Attention {
    pub(crate) fn load(vb: VarBuilder, cfg: &LlamaConfig, quant: Quant) -> Result<Self> {
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
            bf16_compute: bf16_compute(vb.device(), vb.dtype(), quant),
        })
    }

    pub(crate) fn forward(
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
        if self.bf16_compute && t > 1 && mask.is_some() && qkv.dtype() == DType::F32 {
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
/// `starts[i]` on (all from 0 when empty, see [`super::KvCache::stack`]). Returns
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
    let view = DecodeCache {
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
