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

    /// One cache for the sequences of several: the rows of `caches` (each
    /// filled by a prompt of its own length, or stacked already) become the
    /// rows of one batch, in order, aligned at their ends, with room for
    /// `positions` in all; each row attends only to its own keys and
    /// rotates at its own positions, so decoding steps run all sequences
    /// at once with the same results as one by one. Only one position per
    /// step can follow (and only on the CPU).
    pub fn stack(caches: &[&KvCache], positions: usize) -> Result<KvCache> {
        let end = caches.iter().map(|c| c.len()).max().unwrap_or(0);
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
                let (k, v) = lc.kv.as_ref().expect("filled caches have buffers");
                let b = k.dim(0)?;
                let shift = end - lc.len;
                ks.push(rows_at(k, None, 0, lc.len, shift, capacity)?);
                vs.push(rows_at(v, None, 0, lc.len, shift, capacity)?);
                starts.extend((0..b).map(|i| shift + lc.starts.get(i).copied().unwrap_or(0)));
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

    /// Number of sequences (batch rows) held; 0 before the first position.
    pub fn rows(&self) -> usize {
        self.layers
            .first()
            .and_then(|l| l.kv.as_ref())
            .map_or(0, |(k, _)| k.dim(0).unwrap_or(0))
    }

    /// Positions cached for sequence `row` (a stacked row may hold fewer
    /// than [`KvCache::len`]).
    pub fn row_len(&self, row: usize) -> usize {
        self.layers.first().map_or(0, |l| {
            l.len - l.starts.get(row).copied().unwrap_or(0).min(l.len)
        })
    }

    /// Keeps only the sequences `rows` (indices, in the order given) and
    /// drops the positions none of them uses any more, so a batch whose
    /// rows come and go (see [`KvCache::stack`]) stays as short as its
    /// longest sequence. The kept rows' results are unchanged.
    pub fn retain_rows(&mut self, rows: &[usize]) -> Result<()> {
        let held = self.rows();
        if rows.is_empty() || rows.iter().any(|&r| r >= held) {
            candle_core::bail!("keeping rows {rows:?} of a cache of {held}")
        }
        for lc in &mut self.layers {
            let Some((k, v)) = &lc.kv else { continue };
            let starts: Vec<usize> = rows
                .iter()
                .map(|&r| lc.starts.get(r).copied().unwrap_or(0))
                .collect();
            let from = starts.iter().copied().min().unwrap_or(0);
            let capacity = k.dim(2)? - from;
            let len = lc.len - from;
            let index = Tensor::new(
                rows.iter().map(|&r| r as u32).collect::<Vec<_>>(),
                k.device(),
            )?;
            let (k, v) = (
                rows_at(k, Some(&index), from, len, 0, capacity)?,
                rows_at(v, Some(&index), from, len, 0, capacity)?,
            );
            lc.kv = Some((k, v));
            lc.len = len;
            lc.starts = if starts.iter().all(|&s| s == from) {
                vec![]
            } else {
                starts.iter().map(|s| s - from).collect()
            };
        }
        Ok(())
    }

    /// Positions the buffers hold before they must grow.
    pub fn capacity(&self) -> usize {
        self.layers.first().map_or(0, |l| {
            l.kv.as_ref()
                .map_or(l.reserve, |(k, _)| k.dim(2).unwrap_or(0))
        })
    }
}

/// A cache buffer of `capacity` positions holding positions
/// `from..from + len` of `buf` [b, kv_heads, cap, d] (rows `index`, or all)
/// at `shift..shift + len`, zeros elsewhere.
fn rows_at(
    buf: &Tensor,
    index: Option<&Tensor>,
    from: usize,
    len: usize,
    shift: usize,
    capacity: usize,
) -> Result<Tensor> {
    let part = buf.narrow(2, from, len)?;
    let part = match index {
        Some(i) => part.contiguous()?.index_select(i, 0)?,
        None => part,
    };
    let (b, kvh, _, d) = part.dims4()?;
    let zeros = |n: usize| cache_buffer((b, kvh, n, d), buf.dtype(), buf.device());
    let mut parts = vec![];
    if shift > 0 {
        parts.push(zeros(shift)?);
    }
    parts.push(part);
    if capacity > shift + len {
        parts.push(zeros(capacity - shift - len)?);
    }
    Tensor::cat(&parts, 2)
}

/// Keeps rows `rows` (indices, in order) of a batch being decoded: its
/// cache's sequences and its pending hidden states [rows, ..]; keeping none
/// drops both.
pub(crate) fn keep_batch_rows(
    cache: &mut Option<KvCache>,
    hidden: &mut Option<Tensor>,
    rows: &[usize],
) -> Result<()> {
    if rows.is_empty() {
        *cache = None;
        *hidden = None;
        return Ok(());
    }
    if let Some(cache) = cache {
        cache.retain_rows(rows)?;
    }
    if let Some(h) = hidden {
        let index = Tensor::new(
            rows.iter().map(|&r| r as u32).collect::<Vec<_>>(),
            h.device(),
        )?;
        *h = h.index_select(&index, 0)?;
    }
    Ok(())
}
