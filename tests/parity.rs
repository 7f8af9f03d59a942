//! Stage-by-stage parity with the official code on the tiny fixture, for
//! both weight formats (bf16 safetensors and sharded bf16 pickles).

mod common;

use candle_core::{DType, Device, Tensor};
use common::*;
use janus::Message;
use janus::{ImageProcessor, JanusPro, UnderstandOptions};

const TOL: f64 = 1e-4;

fn load(dir: &std::path::Path) -> JanusPro {
    JanusPro::load(dir, &Device::Cpu, DType::F32)
        .unwrap_or_else(|e| panic!("loading {}: {e}", dir.display()))
}

#[test]
fn vision_features_and_aligner_match() {
    let exp = expected();
    for dir in model_dirs() {
        let model = load(&dir);
        let pixels = &exp["vision.pixel_values"];
        let features = model.modules().vision.forward(pixels).unwrap();
        assert_close("vision.features", &features, &exp["vision.features"], TOL);
        let aligned = model.modules().encode_images(pixels).unwrap();
        assert_close("vision.aligned", &aligned, &exp["vision.aligned"], TOL);
    }
}

fn case_conversation(case: &serde_json::Value) -> (Vec<Message>, Vec<image::DynamicImage>) {
    let mut conv: Vec<Message> = serde_json::from_value(case["conversation"].clone()).unwrap();
    let mut images = vec![];
    for m in &mut conv {
        for p in &m.images {
            images.push(ImageProcessor::open(&fixture_dir().join(p)).unwrap());
        }
        m.images.clear();
    }
    (conv, images)
}

#[test]
fn understanding_matches_every_stage() {
    let exp = expected();
    let json = expected_json();
    for dir in model_dirs() {
        let model = load(&dir);
        for name in ["single", "multi", "text"] {
            let case = &json["cases"][format!("understand.{name}")];
            let key = |s: &str| format!("understand.{name}.{s}");
            let (conv, images) = case_conversation(case);
            assert_eq!(
                model
                    .text_processor()
                    .sft_prompt(&conv, janus::DEFAULT_SYSTEM_PROMPT),
                case["sft_format"].as_str().unwrap(),
                "{name}: sft prompt"
            );
            let (ids, embeds) = model.understanding_inputs(&conv, &images).unwrap();
            assert_eq!(
                ids,
                common::ids(&exp[&key("input_ids")]),
                "{name}: input ids"
            );
            assert_close(
                &key("inputs_embeds"),
                &embeds.squeeze(0).unwrap(),
                &exp[&key("inputs_embeds")],
                TOL,
            );

            let last = last_prompt_logits(&model, &embeds);
            assert_close(&key("last_logits"), &last, &exp[&key("last_logits")], TOL);

            let opts = UnderstandOptions {
                max_new_tokens: case["max_new_tokens"].as_u64().unwrap() as usize,
                ..Default::default()
            };
            let answer = model.understand(&conv, &images, &opts).unwrap();
            assert_eq!(
                answer.token_ids,
                common::ids(&exp[&key("generated_ids")]),
                "{name}: greedy ids"
            );
            assert_eq!(
                answer.text,
                case["answer"].as_str().unwrap(),
                "{name}: answer text"
            );
        }
    }
}

#[test]
fn text_to_image_matches_every_stage() {
    let exp = expected();
    let json = expected_json();
    for dir in model_dirs() {
        let model = load(&dir);
        for name in ["apple", "cat_cfg1"] {
            let case = &json["cases"][format!("t2i.{name}")];
            let key = |s: &str| format!("t2i.{name}.{s}");
            let prompt = case["prompt"].as_str().unwrap();
            assert_eq!(
                model.text_processor().generation_prompt(prompt),
                case["prompt_text"].as_str().unwrap()
            );
            let ids = model.generation_ids(prompt).unwrap();
            assert_eq!(
                ids,
                common::ids(&exp[&key("input_ids")]),
                "{name}: input ids"
            );
            let parallel = case["parallel_size"].as_u64().unwrap() as usize;
            let cfg_weight = case["cfg_weight"].as_f64().unwrap();

            let embeds = model.cfg_prompt_embeds(&ids, parallel).unwrap();
            let lm = &model.modules().language;
            let hidden = lm.forward_embeds(&embeds, &mut lm.new_cache()).unwrap();
            let first = model.cfg_logits(&hidden, cfg_weight).unwrap();
            assert_close(
                &key("first_logits_cond"),
                &first.cond.get(0).unwrap(),
                &exp[&key("first_logits_cond")],
                TOL,
            );
            assert_close(
                &key("first_logits_uncond"),
                &first.uncond.get(0).unwrap(),
                &exp[&key("first_logits_uncond")],
                TOL,
            );
            assert_close(
                &key("first_logits_cfg"),
                &first.mixed.get(0).unwrap(),
                &exp[&key("first_logits_cfg")],
                TOL,
            );

            let (tokens, steps) = greedy_image_tokens(&model, prompt, parallel, cfg_weight);
            assert_eq!(steps, case["image_token_num"].as_u64().unwrap() as usize);
            let want: Vec<Vec<u32>> = serde_json::from_value(case["image_tokens"].clone()).unwrap();
            assert_eq!(tokens, want, "{name}: greedy image tokens");

            let grid = case["grid"].as_u64().unwrap() as usize;
            let codes =
                Tensor::from_vec(tokens.concat(), (parallel, grid * grid), &Device::Cpu).unwrap();
            let decoded = model
                .modules()
                .gen_vision
                .decode_code(&codes, (grid, grid))
                .unwrap();
            assert_close(&key("decoded"), &decoded, &exp[&key("decoded")], TOL);

            let images = model.decode_images(&tokens).unwrap();
            let want_px: Vec<u8> = exp[&key("pixels_u8")]
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap();
            let got_px: Vec<u8> = images.iter().flat_map(|i| i.as_raw().clone()).collect();
            let worst = got_px
                .iter()
                .zip(&want_px)
                .map(|(a, b)| a.abs_diff(*b))
                .max()
                .unwrap();
            assert_eq!(got_px.len(), want_px.len());
            assert!(worst <= 1, "{name}: pixels differ by up to {worst} levels");
            for (i, img) in images.iter().enumerate() {
                let png = image::open(fixture_dir().join(format!("t2i_{name}_{i}.png")))
                    .unwrap()
                    .to_rgb8();
                let worst = img
                    .as_raw()
                    .iter()
                    .zip(png.as_raw())
                    .map(|(a, b)| a.abs_diff(*b))
                    .max()
                    .unwrap();
                assert!(
                    worst <= 1,
                    "{name}: image {i} differs from the reference PNG by {worst} levels"
                );
            }
        }
    }
}
