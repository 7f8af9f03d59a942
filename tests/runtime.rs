//! The runtime around the engine: seeds, streaming, cancellation, chat
//! cache reuse, batching and hub-cache loading, on the tiny fixture.

mod common;

use std::path::Path;

use candle_core::{DType, Device};
use common::*;
use janus::{question_conversation, Message, TextStreamer};
use janus::{
    CancelToken, ChatSession, GenerateOptions, ImageProcessor, JanusError, JanusPro, LoadOptions,
    SamplingParams, UnderstandOptions,
};

fn tiny() -> JanusPro {
    JanusPro::load(&fixture_dir(), &Device::Cpu, DType::F32).unwrap()
}

fn image(name: &str) -> image::DynamicImage {
    ImageProcessor::open(&fixture_dir().join("images").join(name)).unwrap()
}

fn sampled(seed: u64) -> UnderstandOptions {
    UnderstandOptions {
        max_new_tokens: 12,
        sampling: SamplingParams::default(),
        seed: Some(seed),
    }
}

#[test]
fn understanding_seed_fixes_the_answer_and_changes_it() {
    let model = tiny();
    let conv = question_conversation("Describe this image in detail.", 1);
    let img = [image("wide.png")];
    let a = model.understand(&conv, &img, &sampled(1)).unwrap();
    let b = model.understand(&conv, &img, &sampled(1)).unwrap();
    let c = model.understand(&conv, &img, &sampled(2)).unwrap();
    assert_eq!(a, b, "same seed, same answer");
    assert_ne!(a.token_ids, c.token_ids, "another seed, another answer");
    let greedy = model
        .understand(
            &conv,
            &img,
            &UnderstandOptions {
                max_new_tokens: 12,
                ..Default::default()
            },
        )
        .unwrap();
    assert_ne!(a.token_ids, greedy.token_ids, "sampling is not greedy");
}

#[test]
fn generation_seed_fixes_every_image_whatever_the_batching() {
    let model = tiny();
    let opts = |seed, parallel_size| GenerateOptions {
        parallel_size,
        seed: Some(seed),
        ..Default::default()
    };
    let prompt = "The cat sat on the mat.";
    let a = model.generate(prompt, &opts(7, 3)).unwrap();
    let b = model.generate(prompt, &opts(7, 3)).unwrap();
    assert_eq!(a.tokens, b.tokens);
    assert_eq!(a.images, b.images);
    assert_ne!(a.tokens[0], a.tokens[1], "images of one prompt differ");
    let c = model.generate(prompt, &opts(8, 3)).unwrap();
    assert_ne!(a.tokens, c.tokens, "another seed, other images");

    // One image per batch, or several prompts in one call: same codes.
    let one_by_one = model
        .generate_tokens_many(&[prompt], &opts(7, 3), 1, &mut |_| Ok(()))
        .unwrap();
    assert_eq!(one_by_one[0], a.tokens);
    let two = model
        .generate_tokens_many(&[prompt, "A red apple."], &opts(7, 3), 2, &mut |_| Ok(()))
        .unwrap();
    assert_eq!(two[0], a.tokens);
    // Images are numbered across prompts: the second prompt's three are
    // images 3 to 5 of the seed.
    let six = model
        .generate_tokens_many(&["A red apple."], &opts(7, 6), 2, &mut |_| Ok(()))
        .unwrap();
    assert_eq!(two[1], six[0][3..]);
}

#[test]
fn multi_prompt_progress_counts_every_step() {
    let model = tiny();
    let opts = GenerateOptions {
        parallel_size: 3,
        sampling: SamplingParams::greedy(),
        ..Default::default()
    };
    let mut seen = vec![];
    model
        .generate_tokens_many(&["a cat", "a dog"], &opts, 2, &mut |p| {
            seen.push((p.step, p.total));
            Ok(())
        })
        .unwrap();
    // Two prompts of 3 images in batches of 2: 3 batches of 16 steps (the
    // middle one holds the last image of one prompt and the first of the other).
    assert_eq!(seen.len(), 48);
    assert!(seen
        .iter()
        .enumerate()
        .all(|(i, &(s, t))| s == i + 1 && t == 48));
}

/// Images of prompts of different lengths decoded in one batch get the
/// codes they get one by one, and the fixture's greedy apple images come
/// out of a batch that also holds another prompt.
#[test]
fn batches_spanning_prompts_give_the_same_codes() {
    let model = tiny();
    let prompts = [
        "a cat",
        "A close-up photo of a red apple on a wooden table.",
        "Hi",
    ];
    for sampling in [SamplingParams::greedy(), SamplingParams::default()] {
        let greedy = sampling.temperature == 0.0;
        let opts = GenerateOptions {
            parallel_size: 2,
            seed: Some(11),
            sampling,
            ..Default::default()
        };
        let one_by_one = model
            .generate_tokens_many(&prompts, &opts, 1, &mut |_| Ok(()))
            .unwrap();
        for batch in [3, 4, 6] {
            let batched = model
                .generate_tokens_many(&prompts, &opts, batch, &mut |_| Ok(()))
                .unwrap();
            assert_eq!(batched, one_by_one, "batches of {batch} images");
        }
        if greedy {
            let apple = common::ids(&common::expected()["t2i.apple.image_tokens"]);
            assert_eq!(one_by_one[1].concat(), apple);
        }
    }
}

#[test]
fn streamed_pieces_join_to_the_answer() {
    let model = tiny();
    let conv = question_conversation("What is a cat?", 0);
    for opts in [
        UnderstandOptions {
            max_new_tokens: 12,
            ..Default::default()
        },
        sampled(3),
    ] {
        let mut streamer = TextStreamer::new(model.text_processor());
        let mut pieces = String::new();
        let answer = model
            .understand_with(&conv, &[], &opts, &mut |id, _| {
                if let Some(p) = streamer.push(id)? {
                    pieces.push_str(&p);
                }
                Ok(())
            })
            .unwrap();
        if let Some(p) = streamer.finish().unwrap() {
            pieces.push_str(&p);
        }
        assert_eq!(pieces, answer.text);
    }
}

#[test]
fn cancellation_stops_generation_and_understanding() {
    let model = tiny();
    let token = CancelToken::new();
    let mut steps = 0;
    let err = model
        .generate_with("a cat", &GenerateOptions::default(), &mut |p| {
            steps = p.step;
            if p.step == 3 {
                token.cancel();
            }
            token.check()
        })
        .unwrap_err();
    assert!(matches!(err, JanusError::Cancelled));
    assert_eq!(steps, 3, "stopped at the step that cancelled");

    token.reset();
    let conv = question_conversation("What is a cat?", 0);
    let mut n = 0;
    let err = model
        .understand_with(&conv, &[], &sampled(1), &mut |_, _| {
            n += 1;
            token.cancel();
            token.check()
        })
        .unwrap_err();
    assert!(matches!(err, JanusError::Cancelled));
    assert_eq!(n, 1);
}

#[test]
fn chat_reuses_the_cache_and_matches_a_full_recompute() {
    let model = tiny();
    let opts = UnderstandOptions {
        max_new_tokens: 6,
        ..Default::default()
    };
    let mut session = ChatSession::new();
    let imgs = vec![image("tall.png"), image("square.png")];
    let q1 = "<image_placeholder> is Figure 1.\n<image_placeholder> is Figure 2.\nWhich image is brighter?";
    let first = model
        .chat_turn(&mut session, q1, imgs.clone(), &opts, &mut |_, _| Ok(()))
        .unwrap();
    let second = model
        .chat_turn(&mut session, "Why?", vec![], &opts, &mut |_, _| Ok(()))
        .unwrap();

    let conv = vec![
        Message::user(q1),
        Message::assistant(first.answer.text.clone()),
        Message::user("Why?"),
        Message::assistant(""),
    ];
    let full = model.understand(&conv, &imgs, &opts).unwrap();
    assert_eq!(
        second.answer, full,
        "the cached turn answers as a full recompute"
    );
    let (ids, _) = model.understanding_inputs(&conv, &imgs).unwrap();
    assert!(
        second.new_prompt_tokens < ids.len(),
        "turn 2 ran {} of {} prompt tokens",
        second.new_prompt_tokens,
        ids.len()
    );
    assert_eq!(session.messages().len(), 4);

    // A cancelled turn keeps what was said (the start of the whole
    // answer); reset forgets everything.
    let mut conv3: Vec<Message> = session.messages().to_vec();
    conv3.extend([Message::user("And then?"), Message::assistant("")]);
    let whole = model.understand(&conv3, &imgs, &opts).unwrap();
    let token = CancelToken::new();
    let third = model
        .chat_turn(&mut session, "And then?", vec![], &opts, &mut |_, p| {
            if p.step == 2 {
                token.cancel();
            }
            token.check()
        })
        .unwrap();
    assert!(third.stopped);
    assert_eq!(third.answer.token_ids, whole.token_ids[..2]);
    session.reset();
    assert!(session.messages().is_empty());
}

/// Lays the tiny model out as the Hugging Face cache does for a hub id.
fn fake_hub_cache(root: &Path, id: &str) {
    let repo = root.join(format!("models--{}", id.replace('/', "--")));
    let snapshot = repo.join("snapshots").join("0123456789abcdef");
    std::fs::create_dir_all(&snapshot).unwrap();
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    std::fs::write(repo.join("refs/main"), "0123456789abcdef").unwrap();
    for f in std::fs::read_dir(fixture_dir()).unwrap() {
        let f = f.unwrap().path();
        if f.is_file()
            && (f.extension().is_some_and(|e| e == "json") || f.ends_with("model.safetensors"))
            && !f.ends_with("expected.json")
        {
            std::fs::copy(&f, snapshot.join(f.file_name().unwrap())).unwrap();
        }
    }
}

#[test]
fn hub_ids_load_from_the_cache_offline() {
    let tmp = tempfile::tempdir().unwrap();
    fake_hub_cache(tmp.path(), "janus-rs/tiny-test");
    // HF_HUB_CACHE points at the folder holding models--*; set for this process only.
    std::env::set_var("HF_HUB_CACHE", tmp.path());
    let opts = LoadOptions {
        offline: true,
        ..Default::default()
    };
    let model = JanusPro::from_pretrained("janus-rs/tiny-test", &opts).unwrap();
    let conv = question_conversation("What is a cat?", 0);
    let answer = model
        .understand(
            &conv,
            &[],
            &UnderstandOptions {
                max_new_tokens: 12,
                ..Default::default()
            },
        )
        .unwrap();
    assert_eq!(
        answer.token_ids,
        common::ids(&expected()["understand.text.generated_ids"])
    );

    let err = JanusPro::from_pretrained("janus-rs/not-cached", &opts)
        .err()
        .unwrap();
    let msg = err.to_string();
    assert!(
        msg.contains("not in the Hugging Face cache") && msg.contains("offline"),
        "{msg}"
    );
}

/// Prompts with their own image counts and seeds, batched across prompts,
/// get the codes `generate` gives each prompt alone with that seed.
#[test]
fn prompts_with_their_own_seeds_match_single_runs() {
    use janus::PromptImages;
    let model = tiny();
    let rows = [
        PromptImages {
            prompt: "a cat",
            images: 2,
            seed: 3,
        },
        PromptImages {
            prompt: "A close-up photo of a red apple on a wooden table.",
            images: 1,
            seed: 99,
        },
        PromptImages {
            prompt: "Hi",
            images: 3,
            seed: 3,
        },
    ];
    let opts = GenerateOptions::default();
    let alone: Vec<_> = rows
        .iter()
        .map(|r| {
            let single = GenerateOptions {
                parallel_size: r.images,
                seed: Some(r.seed),
                ..opts.clone()
            };
            model
                .generate_tokens(r.prompt, &single, &mut |_| Ok(()))
                .unwrap()
        })
        .collect();
    for batch in [1, 4, 16] {
        let together = model
            .generate_tokens_for(&rows, &opts, batch, &mut |_| Ok(()))
            .unwrap();
        assert_eq!(together, alone, "batches of {batch}");
    }
    assert_ne!(
        alone[0],
        alone[2][..2],
        "same seed, other prompt, other codes"
    );
    let none = [PromptImages {
        images: 0,
        ..rows[0].clone()
    }];
    let err = model
        .generate_tokens_for(&none, &opts, 4, &mut |_| Ok(()))
        .unwrap_err();
    assert!(err.to_string().contains("asks for no image"), "{err}");
}
