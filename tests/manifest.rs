//! The loader fits the released checkpoints: building the 1B and 7B models
//! from their released configs asks for exactly the parameters in the
//! official manifests (names and shapes), without allocating any of them.

use std::collections::BTreeMap;
use std::path::PathBuf;

use candle_core::{DType, Device};
use candle_nn::VarBuilder;
use janus::checkpoint::ShapeRecorder;
use janus::models::JanusModel;
use janus::JanusConfig;

fn reference(size: &str) -> PathBuf {
    PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../tests/fixtures/reference"
    ))
    .join(format!("Janus-Pro-{size}"))
}

fn check(size: &str) {
    let dir = reference(size);
    let cfg = JanusConfig::from_file(&dir.join("config.json")).unwrap();
    let recorder = ShapeRecorder::default();
    let vb = VarBuilder::from_backend(Box::new(recorder.clone()), DType::F32, Device::Cpu);
    JanusModel::load(vb, &cfg).unwrap();
    let requested: BTreeMap<String, Vec<usize>> = recorder.requested().into_iter().collect();

    let text = std::fs::read_to_string(dir.join("manifest.json")).unwrap();
    let manifest: BTreeMap<String, Vec<usize>> = serde_json::from_str(&text).unwrap();
    // In the checkpoint but never used by inference: the SigLIP attention-pooling
    // head and the VQ codebook usage counter (a training statistic).
    let ignored = |k: &str| {
        k.starts_with("vision_model.vision_tower.attn_pool.")
            || k == "gen_vision_model.quantize.codebook_used"
    };
    let expected: BTreeMap<String, Vec<usize>> =
        manifest.into_iter().filter(|(k, _)| !ignored(k)).collect();

    let missing: Vec<_> = expected
        .keys()
        .filter(|k| !requested.contains_key(*k))
        .collect();
    let extra: Vec<_> = requested
        .keys()
        .filter(|k| !expected.contains_key(*k))
        .collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "{size}: not loaded {missing:?}; not in manifest {extra:?}"
    );
    for (k, shape) in &expected {
        assert_eq!(&requested[k], shape, "{size}: shape of {k}");
    }
    assert!(expected.len() > 800, "{size}: manifest looks truncated");
}

#[test]
fn loader_fits_janus_pro_1b() {
    check("1B");
}

#[test]
fn loader_fits_janus_pro_7b() {
    check("7B");
}
