//! How much each quantised weight of a model changes its layer's output:
//! every weight the quantised configuration stores in blocks, filled with
//! the benchmark's random values, run as the model runs it (same linear,
//! same kernels, inputs rounded as they are) against the f32 weight, on
//! Gaussian input rows. Random weights make every layer of a kind look
//! alike; what this shows is the per-layer error of each format and kernel
//! path, not how a trained checkpoint degrades (BENCHMARKS.md cites
//! llama.cpp's perplexity tables for that).

use std::collections::BTreeMap;
use std::path::Path;

use candle_core::quantized::GgmlDType;
use candle_core::{DType, Device, Module, Tensor};
use janus_nn::{QLinear, Quant};

use crate::config::JanusConfig;
use crate::error::{JanusError, Result};
use crate::quantize::plan;

/// The errors of one kind of layer (one weight name with the layer index
/// taken out), over every layer of that kind.
#[derive(Debug, Clone, serde::Serialize)]
pub struct LayerKindErrors {
    /// The weight's name with `*` for the layer index, e.g.
    /// `language_model.model.layers.*.mlp.down_proj.weight`.
    pub kind: String,
    /// The block format it is stored in (`q8_0`, `q4k`).
    pub format: String,
    /// Its shape [out, in].
    pub shape: Vec<usize>,
    /// Layers of this kind.
    pub count: usize,
    /// ‖W_q − W‖ / ‖W‖ (the weights alone): smallest, median, largest.
    pub weight_rel_l2: [f64; 3],
    /// ‖x·W_qᵀ − x·Wᵀ‖ / ‖x·Wᵀ‖ through the model's own linear (inputs
    /// rounded where its kernel rounds them): smallest, median, largest.
    /// For an embedding table (looked up, not multiplied) the weight error.
    pub output_rel_l2: [f64; 3],
}

/// The errors of every weight `quant` stores in blocks for the model of
/// `config` (a Janus-Pro `config.json`), on `rows` Gaussian input rows.
pub fn layer_errors(config: &Path, quant: Quant, rows: usize) -> Result<Vec<LayerKindErrors>> {
    let text = std::fs::read_to_string(config).map_err(|e| JanusError::bad_file(config, e))?;
    let cfg = JanusConfig::from_json_str(&text)?;
    let (params, blocks) = plan(&cfg, quant)?;
    // Per kind: its format, its shape, and (weight, output) errors per layer.
    type Kind = (GgmlDType, Vec<usize>, Vec<(f64, f64)>);
    let mut kinds: BTreeMap<String, Kind> = BTreeMap::new();
    for (name, shape) in &params {
        let Some(&format) = blocks.get(name) else {
            continue;
        };
        let &[out_dim, in_dim] = shape.as_slice() else {
            continue;
        };
        let mut values = vec![half::bf16::ZERO; out_dim * in_dim];
        super::fill_param(name, &mut values);
        let w = Tensor::from_vec(values, (out_dim, in_dim), &Device::Cpu)?.to_dtype(DType::F32)?;
        let as_quant = match format {
            GgmlDType::Q4K => Quant::Q4K,
            _ => Quant::Q8_0,
        };
        let q = janus_kernels::quant::quantize_rows(&w, format)?;
        let wq = q.dequantize(&Device::Cpu)?;
        let weight_err = janus_kernels::tensor::rel_l2(&wq, &w)?;
        let output_err = if name.contains("embed") {
            weight_err
        } else {
            let x = janus_kernels::random::randn(0.0, 1.0, (1, rows, in_dim), 7)?;
            let exact = x.broadcast_matmul(&w.t()?)?;
            let quantised = QLinear::from_blocks(q, None, as_quant)?;
            janus_kernels::tensor::rel_l2(&quantised.forward(&x)?, &exact)?
        };
        let kind = layer_kind(name);
        let entry = kinds
            .entry(kind)
            .or_insert_with(|| (format, shape.clone(), vec![]));
        entry.2.push((weight_err, output_err));
    }
    Ok(kinds
        .into_iter()
        .map(|(kind, (format, shape, errs))| {
            let spread = |mut v: Vec<f64>| {
                v.sort_by(f64::total_cmp);
                [v[0], v[v.len() / 2], v[v.len() - 1]]
            };
            LayerKindErrors {
                kind,
                format: if format == GgmlDType::Q4K {
                    "q4k"
                } else {
                    "q8_0"
                }
                .into(),
                shape,
                count: errs.len(),
                weight_rel_l2: spread(errs.iter().map(|e| e.0).collect()),
                output_rel_l2: spread(errs.iter().map(|e| e.1).collect()),
            }
        })
        .collect())
}

/// The name with its layer index replaced by `*`.
fn layer_kind(name: &str) -> String {
    name.split('.')
        .map(|part| {
            if !part.is_empty() && part.bytes().all(|b| b.is_ascii_digit()) {
                "*"
            } else {
                part
            }
        })
        .collect::<Vec<_>>()
        .join(".")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// On the tiny model (rows of 64: q8_0 everywhere), q8_0's error on
    /// the random weights: about 0.5 % (a step of max/127 per 32 values),
    /// and the outputs' about the same (isotropic inputs, rounded to 16
    /// bits). An unquantised or a broken path falls outside.
    #[test]
    fn q8_0_errors_on_the_tiny_model() {
        let config =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/tiny/config.json");
        let kinds = layer_errors(&config, Quant::Q4K, 8).unwrap();
        assert!(kinds
            .iter()
            .any(|k| k.kind.contains("layers.*.self_attn.o_proj")));
        for k in &kinds {
            assert_eq!(k.format, "q8_0", "{}", k.kind);
            let [lo, _, hi] = k.weight_rel_l2;
            assert!(2e-3 < lo && hi < 1e-2, "{}: {:?}", k.kind, k.weight_rel_l2);
            let [lo, _, hi] = k.output_rel_l2;
            assert!(2e-3 < lo && hi < 2e-2, "{}: {:?}", k.kind, k.output_rel_l2);
        }
    }

    #[test]
    fn layer_kind_replaces_indices() {
        assert_eq!(
            super::layer_kind("language_model.model.layers.12.mlp.down_proj.weight"),
            "language_model.model.layers.*.mlp.down_proj.weight"
        );
    }
}
