//! Token choice from logits: argmax at temperature 0, otherwise softmax of
//! `logits / temperature` with optional top-k / top-p filtering, drawn from
//! a seeded generator so a seed fixes the result.

use candle_core::{DType, Tensor};
use rand::{rngs::StdRng, Rng, SeedableRng};

use crate::error::Result;

#[derive(Debug, Clone, PartialEq)]
pub struct SamplingParams {
    /// 0 means greedy (argmax).
    pub temperature: f64,
    /// Nucleus sampling; 1.0 keeps the full distribution.
    pub top_p: f64,
    /// Keep only the k most likely tokens; `None` keeps all.
    pub top_k: Option<usize>,
}

impl SamplingParams {
    pub fn greedy() -> Self {
        Self {
            temperature: 0.0,
            top_p: 1.0,
            top_k: None,
        }
    }
}

pub struct Sampler {
    params: SamplingParams,
    rng: StdRng,
}

/// Index of the largest value; the first one on ties, as `torch.argmax`.
pub fn argmax(values: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &v) in values.iter().enumerate() {
        if v > values[best] || (values[best].is_nan() && !v.is_nan()) {
            best = i;
        }
    }
    best as u32
}

impl Sampler {
    /// A sampler; `seed` None draws a fresh seed from the OS.
    pub fn new(params: SamplingParams, seed: Option<u64>) -> Self {
        let rng = match seed {
            Some(s) => StdRng::seed_from_u64(s),
            None => StdRng::from_os_rng(),
        };
        Self { params, rng }
    }

    pub fn is_greedy(&self) -> bool {
        self.params.temperature <= 0.0
    }

    /// One token per row of `logits` [rows, vocab] (or a single [vocab] row).
    pub fn sample_rows(&mut self, logits: &Tensor) -> Result<Vec<u32>> {
        let logits = logits.to_dtype(DType::F32)?;
        let rows: Vec<Vec<f32>> = match logits.rank() {
            1 => vec![logits.to_vec1()?],
            _ => logits.flatten_to(logits.rank() - 2)?.to_vec2()?,
        };
        Ok(rows.iter().map(|r| self.sample(r)).collect())
    }

    pub fn sample(&mut self, logits: &[f32]) -> u32 {
        if self.is_greedy() {
            return argmax(logits);
        }
        let t = self.params.temperature;
        let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let mut probs: Vec<(u32, f64)> = logits
            .iter()
            .enumerate()
            .map(|(i, &l)| (i as u32, ((l - max) as f64 / t).exp()))
            .collect();
        let filter = self.params.top_k.is_some() || self.params.top_p < 1.0;
        if filter {
            probs.sort_by(|a, b| b.1.total_cmp(&a.1));
            if let Some(k) = self.params.top_k {
                probs.truncate(k.max(1));
            }
            if self.params.top_p < 1.0 {
                let total: f64 = probs.iter().map(|p| p.1).sum();
                let mut cum = 0.0;
                let mut keep = 0;
                for p in &probs {
                    keep += 1;
                    cum += p.1 / total;
                    if cum >= self.params.top_p {
                        break;
                    }
                }
                probs.truncate(keep.max(1));
            }
        }
        let total: f64 = probs.iter().map(|p| p.1).sum();
        let mut u = self.rng.random::<f64>() * total;
        for &(id, p) in &probs {
            if u < p {
                return id;
            }
            u -= p;
        }
        probs.last().map_or(0, |p| p.0)
    }
}
