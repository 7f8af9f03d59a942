//! Image generations run together ([`ImageBatch`]) get the codes they get
//! alone, however requests join and leave, on the tiny fixture (f32).

mod common;

use std::collections::HashMap;

use candle_core::{DType, Device};
use common::*;
use janus::{GenerateOptions, JanusPro, SamplingParams};

fn tiny() -> JanusPro {
    JanusPro::load(&fixture_dir(), &Device::Cpu, DType::F32).unwrap()
}

fn requests() -> Vec<(&'static str, GenerateOptions)> {
    let opts = |parallel_size, cfg_weight, sampling, seed| GenerateOptions {
        parallel_size,
        cfg_weight,
        sampling,
        seed: Some(seed),
    };
    vec![
        ("a cat", opts(2, 5.0, SamplingParams::default(), 3)),
        (
            "A close-up photo of a red apple on a wooden table.",
            opts(1, 5.0, SamplingParams::greedy(), 0),
        ),
        (
            "Hi",
            opts(
                3,
                1.5,
                SamplingParams {
                    top_k: Some(20),
                    ..Default::default()
                },
                9,
            ),
        ),
    ]
}

#[test]
fn requests_joining_and_leaving_get_their_codes_alone() {
    let model = tiny();
    let requests = requests();
    let alone: Vec<Vec<Vec<u32>>> = requests
        .iter()
        .map(|(p, o)| model.generate_tokens(p, o, &mut |_| Ok(())).unwrap())
        .collect();
    let total = model.image_grid().unwrap().0;
    let mut batch = model.image_batch();
    let mut got: HashMap<u64, Vec<Vec<u32>>> = HashMap::new();
    let mut steps_seen: HashMap<u64, Vec<usize>> = HashMap::new();
    let mut run = |batch: &mut janus::ImageBatch, n: usize| {
        for _ in 0..n {
            for s in batch.step().unwrap() {
                assert_eq!(s.total, total);
                steps_seen.entry(s.key).or_default().push(s.step);
                if let Some(codes) = s.finished {
                    got.insert(s.key, codes);
                }
            }
        }
    };
    let (p, o) = &requests[0];
    batch.add(0, p, o).unwrap();
    run(&mut batch, 3);
    let (p, o) = &requests[1];
    batch.add(1, p, o).unwrap();
    let (p, o) = &requests[2];
    batch.add(2, p, o).unwrap();
    assert_eq!(batch.images(), 6);
    run(&mut batch, 5);
    // A fourth request joins and is cancelled.
    batch.add(3, "a dog", &requests[0].1).unwrap();
    run(&mut batch, 1);
    assert!(batch.remove(3).unwrap());
    assert!(!batch.remove(3).unwrap());
    while !batch.is_empty() {
        run(&mut batch, 1);
    }
    for key in 0..3u64 {
        assert_eq!(got[&key], alone[key as usize], "request {key}");
        assert_eq!(steps_seen[&key], (1..=total).collect::<Vec<_>>());
    }
    assert!(!got.contains_key(&3));
}

#[test]
fn bad_requests_are_refused_and_leave_the_batch_as_it_was() {
    let model = tiny();
    let requests = requests();
    let mut batch = model.image_batch();
    let (p, o) = &requests[1];
    batch.add(0, p, o).unwrap();
    assert!(batch.add(0, p, o).is_err(), "same key");
    assert!(batch.add(1, "", o).is_err(), "empty prompt");
    let none = GenerateOptions {
        parallel_size: 0,
        ..o.clone()
    };
    assert!(batch.add(2, p, &none).is_err());
    assert_eq!((batch.len(), batch.images()), (1, 1));
    let mut last = None;
    while !batch.is_empty() {
        last = batch.step().unwrap().pop().unwrap().finished;
    }
    assert_eq!(
        last.unwrap(),
        model.generate_tokens(p, o, &mut |_| Ok(())).unwrap()
    );
}
