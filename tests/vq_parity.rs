//! Parity of the VQ tokenizer with the official PyTorch implementation,
//! on the tiny random checkpoint in `tests/fixtures/tiny`.

use std::collections::HashMap;

use candle_core::{DType, Device, Error, Tensor};
use candle_nn::VarBuilder;
use janus_vq::{to_u8_pixels, VqConfig, VqModel};

const FIXTURE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/tiny");
/// 16x16 images with a downsample factor of 4.
const GRID: (usize, usize) = (4, 4);
const MAX_REL_L2: f64 = 1e-4;

fn fixture_config() -> VqConfig {
    let text = std::fs::read_to_string(format!("{FIXTURE}/config.json")).unwrap();
    let json: serde_json::Value = serde_json::from_str(&text).unwrap();
    let p = &json["gen_vision_config"]["params"];
    let usize_of = |v: &serde_json::Value| v.as_u64().unwrap() as usize;
    let mults = |v: &serde_json::Value| v.as_array().unwrap().iter().map(usize_of).collect();
    VqConfig {
        codebook_size: usize_of(&p["image_token_size"]),
        codebook_embed_dim: usize_of(&p["n_embed"]),
        ch: usize_of(&p["ch"]),
        encoder_ch_mult: mults(&p["encoder_ch_mult"]),
        decoder_ch_mult: mults(&p["decoder_ch_mult"]),
        z_channels: usize_of(&p["z_channels"]),
        num_res_blocks: usize_of(&p["num_res_blocks"]),
    }
}

fn load_model() -> VqModel {
    let path = format!("{FIXTURE}/model.safetensors");
    let vb = unsafe { VarBuilder::from_mmaped_safetensors(&[path], DType::F32, &Device::Cpu) }
        .unwrap()
        .pp("gen_vision_model");
    VqModel::load(vb, &fixture_config()).unwrap()
}

fn expected() -> HashMap<String, Tensor> {
    candle_core::safetensors::load(format!("{FIXTURE}/expected.safetensors"), &Device::Cpu).unwrap()
}

fn flat_f64(t: &Tensor) -> Vec<f64> {
    t.to_dtype(DType::F64)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap()
}

/// ||actual - expected|| / ||expected||, after checking the shapes agree.
fn rel_l2(actual: &Tensor, expected: &Tensor) -> f64 {
    janus_kernels::tensor::rel_l2(actual, expected).expect("comparable tensors")
}

#[test]
fn decode_code_matches_reference() {
    let vq = load_model();
    let exp = expected();
    let codes = &exp["vq.decode.codes"];
    let image = vq.decode_code(codes, GRID).unwrap();
    let err = rel_l2(&image, &exp["vq.decode.image"]);
    println!("vq.decode.image rel L2 = {err:e}");
    assert!(err <= MAX_REL_L2, "rel L2 {err}");

    // u32 codes, as produced by sampling, decode identically.
    let image_u32 = vq
        .decode_code(&codes.to_dtype(DType::U32).unwrap(), GRID)
        .unwrap();
    assert_eq!(flat_f64(&image_u32), flat_f64(&image));
}

#[test]
fn t2i_images_match_reference() {
    let vq = load_model();
    let exp = expected();
    for case in ["t2i.apple", "t2i.cat_cfg1"] {
        let decoded = vq
            .decode_code(&exp[&format!("{case}.image_tokens")], GRID)
            .unwrap();
        let err = rel_l2(&decoded, &exp[&format!("{case}.decoded")]);
        println!("{case}.decoded rel L2 = {err:e}");
        assert!(err <= MAX_REL_L2, "{case}: rel L2 {err}");

        let pixels = to_u8_pixels(&decoded).unwrap();
        let want = &exp[&format!("{case}.pixels_u8")];
        assert_eq!(pixels.dtype(), DType::U8);
        assert_eq!(pixels.dims(), want.dims());
        let (got, want) = (flat_f64(&pixels), flat_f64(want));
        let max_diff = got
            .iter()
            .zip(&want)
            .map(|(g, w)| (g - w).abs())
            .fold(0.0, f64::max);
        let differing = got.iter().zip(&want).filter(|(g, w)| g != w).count();
        println!(
            "{case}.pixels_u8: {differing}/{} differ, max |diff| = {max_diff}",
            got.len()
        );
        assert!(max_diff <= 1.0, "{case}: pixel differs by {max_diff}");
    }
}

#[test]
fn encode_matches_reference() {
    let vq = load_model();
    let exp = expected();
    let enc = vq.encode(&exp["vq.encode.input"]).unwrap();
    assert_eq!(enc.indices.dtype(), DType::U32);
    assert_eq!(flat_f64(&enc.indices), flat_f64(&exp["vq.encode.indices"]));
    assert_eq!(enc.indices.dims(), exp["vq.encode.indices"].dims());
    let err = rel_l2(&enc.quant, &exp["vq.encode.quant"]);
    println!("vq.encode.quant rel L2 = {err:e}");
    assert!(err <= MAX_REL_L2, "rel L2 {err}");
}

#[test]
fn invalid_codes_are_errors() {
    let vq = load_model();
    let dev = Device::Cpu;
    let size = vq.config().codebook_size as i64;
    let cases = [
        ("out of range", Tensor::full(size, (1, 16), &dev).unwrap()),
        ("negative", Tensor::full(-1i64, (1, 16), &dev).unwrap()),
        ("too few", Tensor::zeros((1, 15), DType::U32, &dev).unwrap()),
        (
            "too many",
            Tensor::zeros((2, 17), DType::I64, &dev).unwrap(),
        ),
        ("not [b, n]", Tensor::zeros(16, DType::U32, &dev).unwrap()),
        ("float", Tensor::zeros((1, 16), DType::F32, &dev).unwrap()),
    ];
    for (what, codes) in cases {
        match vq.decode_code(&codes, GRID) {
            Err(Error::Msg(msg)) => println!("{what}: {msg}"),
            other => panic!("{what}: expected Error::Msg, got {other:?}"),
        }
    }
}
