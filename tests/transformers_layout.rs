//! The transformers-native layout (`model_type: janus`, as published in
//! `deepseek-community/Janus-Pro-*`) loads into the same modules: the tiny
//! fixture is converted here (key map, q/k/v split, squeezed position
//! embedding, HF config and preprocessor schema) and must give identical
//! outputs.

mod common;

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use common::*;
use janus::question_conversation;
use janus::{GenerateOptions, ImageProcessor, JanusPro, SamplingParams, UnderstandOptions};

/// Released name -> transformers name(s), written independently of the loader.
fn convert(name: &str, t: &Tensor, out: &mut HashMap<String, Tensor>) {
    if name.contains("attn_pool.") || name.ends_with("codebook_used") {
        return;
    }
    let ordered: [(&str, &str); 17] = [
        (
            "vision_model.vision_tower.pos_embed",
            "model.vision_model.embeddings.position_embedding.weight",
        ),
        (
            "vision_model.vision_tower.patch_embed.proj",
            "model.vision_model.embeddings.patch_embedding",
        ),
        (
            "vision_model.vision_tower.norm.",
            "model.vision_model.post_layernorm.",
        ),
        (
            "vision_model.vision_tower.blocks.",
            "model.vision_model.encoder.layers.",
        ),
        (".attn.proj.", ".self_attn.projection_layer."),
        (".attn.qkv.", ".self_attn.qkv."),
        (".norm1.", ".layer_norm1."),
        (".norm2.", ".layer_norm2."),
        ("gen_aligner.layers.0.", "model.generation_aligner.fc1."),
        (
            "gen_aligner.layers.2.",
            "model.generation_aligner.hidden_layers.0.",
        ),
        ("aligner.layers.0.", "model.aligner.fc1."),
        ("aligner.layers.2.", "model.aligner.hidden_layers.0."),
        (
            "gen_head.output_mlp_projector.",
            "model.generation_head.proj_out.",
        ),
        ("gen_head.", "model.generation_head."),
        ("gen_embed.", "model.generation_embeddings."),
        ("language_model.model.", "model.language_model."),
        ("language_model.lm_head.", "lm_head."),
    ];
    let mut new = name.to_owned();
    if let Some(rest) = name.strip_prefix("gen_vision_model.") {
        new = format!("model.vqmodel.{rest}")
            .replace("encoder.conv_blocks.", "encoder.down.")
            .replace("decoder.conv_blocks.", "decoder.up.")
            .replace(".res.", ".block.")
            .replace("mid.0.", "mid.block_1.")
            .replace("mid.1.", "mid.attn_1.")
            .replace("mid.2.", "mid.block_2.");
    } else {
        for (from, to) in ordered {
            if new.contains(from)
                && !(from.starts_with("aligner") && new.starts_with("gen_aligner"))
            {
                new = new.replacen(from, to, 1);
            }
        }
    }
    if new.contains(".self_attn.qkv.") {
        let n = t.dim(0).unwrap() / 3;
        for (i, p) in ["q_proj", "k_proj", "v_proj"].iter().enumerate() {
            out.insert(
                new.replace("qkv", p),
                t.narrow(0, i * n, n).unwrap().contiguous().unwrap(),
            );
        }
    } else if new.ends_with("position_embedding.weight") {
        out.insert(new, t.squeeze(0).unwrap());
    } else {
        out.insert(new, t.clone());
    }
}

fn write_transformers_copy(dir: &Path) {
    let src = fixture_dir();
    let released: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(src.join("config.json")).unwrap()).unwrap();
    let mut text = released["language_config"].clone();
    text["model_type"] = "llama".into();
    let config = serde_json::json!({
        "model_type": "janus",
        "architectures": ["JanusForConditionalGeneration"],
        "image_token_id": 474,
        "text_config": text,
        "vision_config": {
            "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "patch_size": 8,
            "image_size": 32, "mlp_ratio": 4.0, "projection_dim": 64, "depth": 2, "num_image_tokens": 16,
            "model_type": "janus_vision_model"
        },
        "vq_config": {
            "embed_dim": 8, "num_embeddings": 256, "base_channels": 32, "channel_multiplier": [1, 1, 2],
            "latent_channels": 32, "num_res_blocks": 2, "projection_dim": 64, "num_hidden_layers": 2,
            "image_token_embed_dim": 64, "model_type": "janus_vqgan"
        }
    });
    std::fs::write(
        dir.join("config.json"),
        serde_json::to_string_pretty(&config).unwrap(),
    )
    .unwrap();
    std::fs::write(
        dir.join("preprocessor_config.json"),
        r#"{"image_processor_type": "JanusImageProcessor", "size": {"height": 32, "width": 32}, "min_size": 14,
            "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5], "rescale_factor": 0.00392156862745098,
            "do_normalize": true, "do_resize": true, "do_rescale": true, "resample": 3}"#,
    )
    .unwrap();
    std::fs::write(
        dir.join("processor_config.json"),
        r#"{"processor_class": "JanusProcessor", "num_image_tokens": 16, "use_default_system_prompt": true}"#,
    )
    .unwrap();
    for f in [
        "tokenizer.json",
        "tokenizer_config.json",
        "special_tokens_map.json",
    ] {
        std::fs::copy(src.join(f), dir.join(f)).unwrap();
    }
    let weights =
        candle_core::safetensors::load(src.join("model.safetensors"), &Device::Cpu).unwrap();
    let mut out = HashMap::new();
    for (name, t) in &weights {
        convert(name, t, &mut out);
    }
    assert!(out.keys().any(|k| k.ends_with("self_attn.k_proj.weight")));
    candle_core::safetensors::save(&out, dir.join("model.safetensors")).unwrap();
}

#[test]
fn transformers_layout_gives_identical_outputs() {
    let tmp = tempfile::tempdir().unwrap();
    write_transformers_copy(tmp.path());
    let native = JanusPro::load(tmp.path(), &Device::Cpu, DType::F32).unwrap();
    let released = JanusPro::load(&fixture_dir(), &Device::Cpu, DType::F32).unwrap();

    let image = ImageProcessor::open(&fixture_dir().join("images/wide.png")).unwrap();
    let conv = question_conversation("Describe this image in detail.", 1);
    let (ids_a, emb_a) = native
        .understanding_inputs(&conv, std::slice::from_ref(&image))
        .unwrap();
    let (ids_b, emb_b) = released
        .understanding_inputs(&conv, std::slice::from_ref(&image))
        .unwrap();
    assert_eq!(ids_a, ids_b);
    assert_eq!(rel_l2(&emb_a, &emb_b), 0.0, "input embeddings");

    let opts = UnderstandOptions {
        max_new_tokens: 12,
        ..Default::default()
    };
    let a = native
        .understand(&conv, std::slice::from_ref(&image), &opts)
        .unwrap();
    assert_eq!(a, released.understand(&conv, &[image], &opts).unwrap());
    assert_eq!(
        a.token_ids,
        common::ids(&expected()["understand.single.generated_ids"])
    );

    let opts = GenerateOptions {
        parallel_size: 2,
        sampling: SamplingParams::greedy(),
        ..Default::default()
    };
    let prompt = "A close-up photo of a red apple on a wooden table.";
    let a = native.generate(prompt, &opts).unwrap();
    let b = released.generate(prompt, &opts).unwrap();
    assert_eq!(a.tokens, b.tokens);
    assert_eq!(a.images, b.images);
    assert_eq!(
        a.tokens.concat(),
        common::ids(&expected()["t2i.apple.image_tokens"])
    );
}

/// A quantised copy saved from the transformers layout holds the released
/// names and loads to the model a quantising load of the original makes.
#[test]
fn transformers_layout_saves_a_quantised_folder() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("hf");
    std::fs::create_dir(&src).unwrap();
    write_transformers_copy(&src);
    let out = tmp.path().join("hf-q8_0");
    janus::save_quantized(&src, janus::Quant::Q8_0, &out, &mut |_| Ok(())).unwrap();
    let saved = JanusPro::load(&out, &Device::Cpu, DType::F32).unwrap();
    let direct =
        JanusPro::load_quantized(&fixture_dir(), &Device::Cpu, DType::F32, janus::Quant::Q8_0)
            .unwrap();
    let image = ImageProcessor::open(&fixture_dir().join("images/wide.png")).unwrap();
    let conv = question_conversation("Describe this image in detail.", 1);
    let opts = UnderstandOptions {
        max_new_tokens: 12,
        ..Default::default()
    };
    assert_eq!(
        saved
            .understand(&conv, std::slice::from_ref(&image), &opts)
            .unwrap(),
        direct.understand(&conv, &[image], &opts).unwrap()
    );
    let opts = GenerateOptions {
        sampling: SamplingParams::greedy(),
        ..Default::default()
    };
    let prompt = "A close-up photo of a red apple on a wooden table.";
    assert_eq!(
        saved.generate(prompt, &opts).unwrap().images,
        direct.generate(prompt, &opts).unwrap().images
    );
}
