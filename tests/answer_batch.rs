//! Conversations answered together ([`AnswerBatch`]) get the answers they
//! get one by one, however rows join and leave, on the tiny fixture (f32).

mod common;

use std::collections::HashMap;

use candle_core::{DType, Device};
use common::*;
use janus::{question_conversation, Message, DEFAULT_SYSTEM_PROMPT};
use janus::{Answer, Finish, ImageProcessor, JanusPro, SamplingParams, UnderstandOptions};

fn tiny() -> JanusPro {
    JanusPro::load(&fixture_dir(), &Device::Cpu, DType::F32).unwrap()
}

struct Case {
    conversation: Vec<Message>,
    images: Vec<image::DynamicImage>,
    system: &'static str,
    opts: UnderstandOptions,
}

/// Conversations of different lengths, images and options.
fn cases() -> Vec<Case> {
    let image = |n: &str| ImageProcessor::open(&fixture_dir().join("images").join(n)).unwrap();
    let opts = |max_new_tokens, sampling: SamplingParams, seed| UnderstandOptions {
        max_new_tokens,
        sampling,
        seed,
    };
    vec![
        Case {
            conversation: question_conversation("Describe this image in detail.", 1),
            images: vec![image("wide.png")],
            system: DEFAULT_SYSTEM_PROMPT,
            opts: opts(9, SamplingParams::greedy(), None),
        },
        Case {
            conversation: question_conversation("Hi", 0),
            images: vec![],
            system: "",
            opts: opts(14, SamplingParams::default(), Some(5)),
        },
        Case {
            conversation: question_conversation("Compare the two pictures, please.", 2),
            images: vec![image("tall.png"), image("rgba.png")],
            system: DEFAULT_SYSTEM_PROMPT,
            opts: opts(4, SamplingParams::demo(), Some(7)),
        },
        Case {
            conversation: question_conversation("What colour is it?", 1),
            images: vec![image("small.png")],
            system: "Answer briefly.",
            opts: opts(11, SamplingParams::default(), Some(1)),
        },
    ]
}

fn one_by_one(model: &JanusPro, cases: &[Case]) -> Vec<Answer> {
    cases
        .iter()
        .map(|c| {
            model
                .understand_with_system(
                    &c.conversation,
                    &c.images,
                    c.system,
                    &c.opts,
                    &mut |_, _| Ok(()),
                )
                .unwrap()
        })
        .collect()
}

#[test]
fn answers_together_equal_answers_one_by_one() {
    let model = tiny();
    let cases = cases();
    let want = one_by_one(&model, &cases);
    let mut batch = model.answer_batch();
    for (key, c) in cases.iter().enumerate() {
        batch
            .add(key as u64, &c.conversation, &c.images, c.system, &c.opts)
            .unwrap();
    }
    let mut streamed: HashMap<u64, Vec<u32>> = HashMap::new();
    let mut got: HashMap<u64, (Answer, Finish)> = HashMap::new();
    let mut steps = 0;
    while !batch.is_empty() {
        let before = batch.len();
        let out = batch.step().unwrap();
        assert_eq!(out.len(), before, "one token per conversation per step");
        for s in out {
            streamed.entry(s.key).or_default().push(s.token);
            if let Some(done) = s.finished {
                got.insert(s.key, done);
            }
        }
        steps += 1;
    }
    assert_eq!(steps, 14, "as many steps as the longest answer");
    for (key, want) in want.iter().enumerate() {
        let (answer, finish) = &got[&(key as u64)];
        assert_eq!(answer, want, "conversation {key}");
        assert_eq!(&streamed[&(key as u64)], &want.token_ids);
        let eos = model.text_processor().special.eos;
        let expected = if want.token_ids.last() == Some(&eos) {
            Finish::Stop
        } else {
            Finish::Length
        };
        assert_eq!(*finish, expected);
        assert_eq!(
            answer.token_ids.len() == cases[key].opts.max_new_tokens,
            expected == Finish::Length
        );
    }
}

#[test]
fn conversations_joining_and_leaving_keep_their_answers() {
    let model = tiny();
    let cases = cases();
    let want = one_by_one(&model, &cases);
    let mut batch = model.answer_batch();
    let add = |batch: &mut janus::AnswerBatch, key: usize| {
        let c = &cases[key];
        batch
            .add(key as u64, &c.conversation, &c.images, c.system, &c.opts)
            .unwrap();
    };
    let mut got: HashMap<u64, Vec<u32>> = HashMap::new();
    let mut record = |out: Vec<janus::AnswerStep>| {
        for s in out {
            got.entry(s.key).or_default().push(s.token);
        }
    };
    add(&mut batch, 1);
    record(batch.step().unwrap());
    record(batch.step().unwrap());
    // A shorter and a longer prompt join a row two tokens in.
    add(&mut batch, 0);
    add(&mut batch, 2);
    record(batch.step().unwrap());
    // Row 3 joins, then row 0 is cancelled after its first token.
    add(&mut batch, 3);
    let kept = batch.remove(0).unwrap().unwrap();
    assert_eq!(kept, want[0].token_ids[..1]);
    assert!(batch.remove(0).unwrap().is_none(), "gone already");
    assert_eq!(batch.keys().collect::<Vec<_>>(), [1, 2, 3]);
    while !batch.is_empty() {
        record(batch.step().unwrap());
    }
    for key in [1, 2, 3] {
        assert_eq!(
            got[&key], want[key as usize].token_ids,
            "conversation {key}"
        );
    }
}

#[test]
fn bad_rows_are_refused_and_leave_the_batch_as_it_was() {
    let model = tiny();
    let cases = cases();
    let want = one_by_one(&model, &cases[..1]);
    let mut batch = model.answer_batch();
    let c = &cases[0];
    batch
        .add(0, &c.conversation, &c.images, c.system, &c.opts)
        .unwrap();
    // Same key, a missing image, zero tokens, a bad temperature.
    assert!(batch
        .add(0, &c.conversation, &c.images, c.system, &c.opts)
        .is_err());
    assert!(batch
        .add(1, &c.conversation, &[], c.system, &c.opts)
        .is_err());
    let zero = UnderstandOptions {
        max_new_tokens: 0,
        ..c.opts.clone()
    };
    assert!(batch
        .add(2, &c.conversation, &c.images, c.system, &zero)
        .is_err());
    let mut hot = c.opts.clone();
    hot.sampling.temperature = -1.0;
    assert!(batch
        .add(3, &c.conversation, &c.images, c.system, &hot)
        .is_err());
    assert_eq!(batch.len(), 1);
    let mut last = None;
    while !batch.is_empty() {
        last = batch.step().unwrap().pop().unwrap().finished;
    }
    assert_eq!(last.unwrap().0, want[0]);
}

/// bf16 compute keeps a bf16 cache: rows still join, leave and finish, each
/// with the answer it gets alone in bf16.
#[test]
fn bf16_rows_join_and_leave() {
    let model = JanusPro::load(&fixture_dir(), &Device::Cpu, DType::BF16).unwrap();
    let cases = cases();
    let want = one_by_one(&model, &cases);
    let mut batch = model.answer_batch();
    let mut got = HashMap::new();
    for (key, c) in cases.iter().enumerate() {
        batch
            .add(key as u64, &c.conversation, &c.images, c.system, &c.opts)
            .unwrap();
        for s in batch.step().unwrap() {
            got.extend(s.finished.map(|f| (s.key, f)));
        }
    }
    batch.remove(3).unwrap();
    while !batch.is_empty() {
        for s in batch.step().unwrap() {
            got.extend(s.finished.map(|f| (s.key, f)));
        }
    }
    assert_eq!(got.len(), 3, "every row but the removed one finished once");
    for (key, (answer, finish)) in got {
        let (alone, c) = (&want[key as usize], &cases[key as usize]);
        let length = answer.token_ids.len() == c.opts.max_new_tokens;
        assert_eq!(finish, if length { Finish::Length } else { Finish::Stop });
        assert_eq!(answer.token_ids, alone.token_ids, "row {key}");
    }
}

/// `answer_all` reads rows as places free up; bad rows get their errors.
#[test]
fn answer_all_gives_every_row_its_answer_or_error() {
    use janus::{AnswerRequest, JanusError};
    let model = tiny();
    let cases = cases();
    let want = one_by_one(&model, &cases);
    let mut requests: Vec<janus::Result<AnswerRequest>> = cases
        .iter()
        .map(|c| {
            Ok(AnswerRequest {
                conversation: c.conversation.clone(),
                images: c.images.clone(),
                system_prompt: c.system.to_owned(),
                options: c.opts.clone(),
            })
        })
        .collect();
    requests.insert(1, Err(JanusError::Input("unreadable".into())));
    let mut missing_image = requests[0].as_ref().unwrap().clone();
    missing_image.images.clear();
    requests.push(Ok(missing_image));
    for batch_size in [1, 2, 8] {
        let mut got: Vec<Option<janus::Result<Answer>>> =
            (0..requests.len()).map(|_| None).collect();
        let mut steps = 0;
        let rows = requests.iter().map(|r| match r {
            Ok(r) => Ok(r.clone()),
            Err(e) => Err(JanusError::Input(e.to_string())),
        });
        model
            .answer_all(
                rows,
                batch_size,
                &mut || {
                    steps += 1;
                    Ok(())
                },
                &mut |i, r| {
                    assert!(got[i].replace(r).is_none(), "row {i} finished once");
                    Ok(())
                },
            )
            .unwrap();
        let got: Vec<_> = got.into_iter().map(Option::unwrap).collect();
        assert!(got[1].is_err() && got[5].is_err());
        for (k, i) in [0, 2, 3, 4].into_iter().enumerate() {
            assert_eq!(
                got[i].as_ref().unwrap(),
                &want[k],
                "row {i}, batch {batch_size}"
            );
        }
        let longest = cases.iter().map(|c| c.opts.max_new_tokens).max().unwrap();
        let total: usize = want.iter().map(|a| a.token_ids.len()).sum();
        assert!(steps >= longest && steps <= total, "{steps} steps");
        if batch_size == 1 {
            assert_eq!(steps, total, "one row at a time");
        }
    }
}
