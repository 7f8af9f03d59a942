//! The language model's key/value cache: per layer, buffers written in
//! place, so a decoding step copies only its own keys and values.

use candle_core::{DType, Device, Result, Tensor};

/// Keys and values of one layer: buffers [b, kv_heads, capacity, head_dim]
/// of which the first `len` positions are filled. New positions are written
/// in place, so a decoding step copies only its own keys and values.
#[derive(Default)]
pub(crate) struct LayerCache {
    pub(crate) kv: Option<(Tensor, Tensor)>,
    pub(crate) len: usize,
    /// Per sequence, the position its keys start at (empty: all at 0): set
    /// by [`KvCache::stack`], where shorter sequences start later.
    pub(crate) starts: Vec<usize>,
    /// Capacity to allocate on first use (at least the first chunk's length).
    pub(crate) reserve: usize,
    /// Storage dtype (bf16 with bf16 compute), or that of the keys given.
    pub(crate) dtype: Option<DType>,
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
    pub(crate) fn append(&mut self, k: &Tensor, v: &Tensor) -> Result<(Tensor, Tensor)> {
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
    pub(crate) layers: Vec<LayerCache>,
}

impl KvCache {
    /// Number of positions already processed.
    pub fn len(&self) -> usize {
        self.layers.first().map_or(0, |l| l.len)
    }

    /// Whether no position is cached.
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
