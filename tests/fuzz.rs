//! Seeded mutation fuzzing of what a user's files reach: config and processor
//! JSON, tokenizer.json, safetensors (one file and sharded through an index),
//! torch pickles (the archive's `data.pkl` mutated and re-zipped, so the
//! unpickler sees it), a `janus quantize`d model.gguf, conversation JSON and
//! image files. Each input is loaded as a user's would be; it must end in
//! `Ok` or an error, never a panic, an abort or a hang. The unmutated input
//! must get all the way through (so a harness that never reaches the code
//! under test fails), and each target says how many mutated inputs did.
//!
//! Each target runs for `JANUS_FUZZ_SECONDS` (default 2) from seed
//! `JANUS_FUZZ_SEED` (default 1); a failing input is written to the cargo
//! target's temporary folder, named in the failure, to become a regression
//! test. A longer run: `JANUS_FUZZ_SECONDS=600 cargo test -p janus-rs --test
//! fuzz --release`.

mod common;

use std::io::{Read, Write};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use candle_core::{DType, Device};
use common::fixture_dir;
use janus::{
    load_conversation, question_conversation, ImageProcessor, JanusConfig, JanusPro, Quant,
    SamplingParams, UnderstandOptions,
};

/// An input taking longer than this counts as a hang.
const HANG: Duration = Duration::from_secs(60);

/// xorshift64*: small, seeded, the same sequence everywhere.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// One to four random edits: a flipped bit, an extreme byte, a cut, a
/// repeated slice, inserted bytes, or a digit changed (reaches numbers in JSON).
fn mutate(input: &[u8], rng: &mut Rng) -> Vec<u8> {
    let mut out = input.to_vec();
    for _ in 0..1 + rng.below(4) {
        if out.is_empty() {
            out.push(rng.next() as u8);
            continue;
        }
        let at = rng.below(out.len());
        match rng.below(6) {
            0 => out[at] ^= 1 << rng.below(8),
            1 => out[at] = [0x00, 0xff, 0x7f, 0x80, b'9', b'-'][rng.below(6)],
            2 => out.truncate(at),
            3 => {
                let end = (at + 1 + rng.below(64)).min(out.len());
                let slice = out[at..end].to_vec();
                let to = rng.below(out.len());
                out.splice(to..to, slice);
            }
            4 => {
                let bytes: Vec<u8> = (0..1 + rng.below(8)).map(|_| rng.next() as u8).collect();
                out.splice(at..at, bytes);
            }
            _ => {
                let digits: Vec<usize> = (0..out.len())
                    .filter(|&i| out[i].is_ascii_digit())
                    .collect();
                if !digits.is_empty() {
                    let i = digits[rng.below(digits.len())];
                    out[i] = b"0123456789"[rng.below(10)];
                    if rng.below(3) == 0 {
                        out.splice(i..i, b"999999".iter().copied());
                    }
                }
            }
        }
    }
    out
}

fn seconds() -> f64 {
    std::env::var("JANUS_FUZZ_SECONDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2.0)
}

fn seed() -> u64 {
    std::env::var("JANUS_FUZZ_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1)
        .max(1)
}

/// Runs `run` on mutations of `original` for the time budget; `run` gets
/// the mutated bytes and says whether they went all the way through.
/// Panics (with the saved input's path) on a panic or hang, and when the
/// unmutated input does not go through.
fn fuzz(target: &str, original: &[u8], mut run: impl FnMut(&[u8]) -> bool) {
    assert!(
        run(original),
        "fuzz {target}: the unmutated input fails, so the mutations test nothing past it"
    );
    let saved =
        PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("fuzz-{target}-seed{}", seed()));
    let started = Arc::new(AtomicU64::new(0));
    let current = Arc::new(Mutex::new(Vec::new()));
    let clock = Instant::now();
    let watchdog = {
        let (started, current, saved, target) = (
            started.clone(),
            current.clone(),
            saved.clone(),
            target.to_owned(),
        );
        std::thread::spawn(move || loop {
            std::thread::sleep(Duration::from_millis(200));
            let at = started.load(Ordering::SeqCst);
            if at == u64::MAX {
                return;
            }
            if at > 0
                && (clock.elapsed().as_millis() as u64).saturating_sub(at) > HANG.as_millis() as u64
            {
                let _ = std::fs::write(&saved, &*current.lock().unwrap());
                eprintln!(
                    "fuzz {target}: an input ran over {HANG:?}; saved at {}",
                    saved.display()
                );
                std::process::abort();
            }
        })
    };
    let mut rng = Rng(seed());
    let deadline = Instant::now() + Duration::from_secs_f64(seconds());
    let (mut runs, mut through) = (0, 0);
    while Instant::now() < deadline || runs < 5 {
        let input = mutate(original, &mut rng);
        *current.lock().unwrap() = input.clone();
        started.store(clock.elapsed().as_millis() as u64 + 1, Ordering::SeqCst);
        let Ok(ok) = catch_unwind(AssertUnwindSafe(|| run(&input))) else {
            std::fs::write(&saved, &input).unwrap();
            panic!(
                "fuzz {target}: input {runs} panicked; saved at {}",
                saved.display()
            );
        };
        through += ok as usize;
        started.store(0, Ordering::SeqCst);
        runs += 1;
    }
    started.store(u64::MAX, Ordering::SeqCst);
    watchdog.join().unwrap();
    eprintln!(
        "fuzz {target}: {runs} inputs ({through} all the way through), no panic, abort or hang"
    );
}

/// A model folder whose files link to `source`'s, but for `replaced`
/// (written fresh for each input).
fn folder_like(source: &Path, replaced: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    common::link_files(source, dir.path(), &[replaced]);
    dir
}

/// Loads the folder as `janus` does and, where that works, answers a
/// question (reaching the tokenizer, the ViT and the LLM with its weights);
/// whether both worked.
fn load_and_use(dir: &Path) -> bool {
    let Ok(model) = JanusPro::load(dir, &Device::Cpu, DType::F32) else {
        return false;
    };
    let image = ImageProcessor::open(&fixture_dir().join("images/small.png")).unwrap();
    let opts = UnderstandOptions {
        max_new_tokens: 2,
        sampling: SamplingParams::greedy(),
        seed: None,
    };
    model
        .understand(&question_conversation("What is it?", 1), &[image], &opts)
        .is_ok()
}

fn fuzz_model_file(target: &str, source: &Path, file: &str) {
    let original = std::fs::read(source.join(file)).unwrap();
    let dir = folder_like(source, file);
    fuzz(target, &original, |bytes| {
        std::fs::write(dir.path().join(file), bytes).unwrap();
        load_and_use(dir.path())
    });
}

#[test]
fn fuzz_config_files() {
    let tiny = fixture_dir();
    let config = std::fs::read(tiny.join("config.json")).unwrap();
    fuzz("config-parse", &config, |bytes| {
        JanusConfig::from_json_str(&String::from_utf8_lossy(bytes)).is_ok()
    });
    fuzz_model_file("config", &tiny, "config.json");
    fuzz_model_file("processor-config", &tiny, "processor_config.json");
    fuzz_model_file("preprocessor-config", &tiny, "preprocessor_config.json");
    fuzz_model_file("tokenizer", &tiny, "tokenizer.json");
}

#[test]
fn fuzz_safetensors_and_index() {
    fuzz_model_file("safetensors", &fixture_dir(), "model.safetensors");
    fuzz_model_file(
        "pickle-index",
        &fixture_dir().join("bin-bf16"),
        "pytorch_model.bin.index.json",
    );
}

#[test]
fn fuzz_pickles() {
    let source = fixture_dir().join("bin-bf16");
    let shard = "pytorch_model-00001-of-00002.bin";
    let archive = std::fs::read(source.join(shard)).unwrap();
    // The torch archive's entries, data.pkl's mutated and all re-zipped
    // (the archive's checksums would stop a raw mutation before the unpickler).
    let mut zip = zip::ZipArchive::new(std::io::Cursor::new(&archive)).unwrap();
    let mut entries = Vec::new();
    for i in 0..zip.len() {
        let mut entry = zip.by_index(i).unwrap();
        let mut data = Vec::new();
        entry.read_to_end(&mut data).unwrap();
        entries.push((entry.name().unwrap().into_owned(), data));
    }
    let pickle = entries
        .iter()
        .position(|(n, _)| n.ends_with("data.pkl"))
        .unwrap();
    let dir = folder_like(&source, shard);
    fuzz("pickle", &entries[pickle].1.clone(), |bytes| {
        let file = std::fs::File::create(dir.path().join(shard)).unwrap();
        let mut out = zip::ZipWriter::new(file);
        let options = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Stored);
        for (i, (name, data)) in entries.iter().enumerate() {
            out.start_file(name.as_str(), options).unwrap();
            out.write_all(if i == pickle { bytes } else { data })
                .unwrap();
        }
        out.finish().unwrap();
        load_and_use(dir.path())
    });
    fuzz_model_file("pickle-archive", &source, shard);
}

#[test]
fn fuzz_gguf() {
    let quantised = tempfile::tempdir().unwrap();
    let out = quantised.path().join("q8");
    janus::save_quantized(&fixture_dir(), Quant::Q8_0, &out, &mut |_| Ok(())).unwrap();
    fuzz_model_file("gguf", &out, "model.gguf");
}

#[test]
fn fuzz_conversations_and_images() {
    let tmp = tempfile::tempdir().unwrap();
    let conversation =
        serde_json::to_vec(&common::expected_json()["cases"]["understand.multi"]["conversation"])
            .unwrap();
    let path = tmp.path().join("conversation.json");
    fuzz("conversation", &conversation, |bytes| {
        std::fs::write(&path, bytes).unwrap();
        load_conversation(&path).is_ok()
    });
    for image in [
        "images/wide.png",
        "images/rgba.png",
        "../jpeg/progressive.jpg",
        "../jpeg/cmyk.jpg",
    ] {
        let original = std::fs::read(fixture_dir().join(image)).unwrap();
        let name = Path::new(image)
            .file_name()
            .unwrap()
            .to_string_lossy()
            .into_owned();
        fuzz(&format!("image-{name}"), &original, |bytes| {
            ImageProcessor::decode(bytes, "fuzzed").is_ok()
        });
    }
}

/// Found by `fuzz_config_files`: tokenizers panicked (an `expect` in its
/// decoder's deserializer) on a truncated tokenizer.json.
#[test]
fn a_truncated_tokenizer_is_an_error() {
    let tiny = fixture_dir();
    let dir = folder_like(&tiny, "tokenizer.json");
    let text = std::fs::read(tiny.join("tokenizer.json")).unwrap();
    std::fs::write(dir.path().join("tokenizer.json"), &text[..4079]).unwrap();
    assert_load_fails(dir.path(), "tokenizer.json: EOF while parsing");
}

/// Found by `fuzz_config_files`: tokenizers panicked when encoding with a
/// template that names a special token its file lacks.
#[test]
fn a_template_naming_a_missing_special_token_is_an_error() {
    let tiny = fixture_dir();
    let dir = folder_like(&tiny, "tokenizer.json");
    let mut json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(tiny.join("tokenizer.json")).unwrap()).unwrap();
    json["post_processor"]["special_tokens"] = serde_json::json!({});
    std::fs::write(dir.path().join("tokenizer.json"), json.to_string()).unwrap();
    assert_load_fails(dir.path(), "the tokenizer fails on a sample prompt");
}

/// A pickle nested 200 000 deep overflowed candle's unpickler's stack (an
/// abort that took the Python interpreter with it).
#[test]
fn a_deeply_nested_pickle_is_an_error() {
    let source = fixture_dir().join("bin-bf16");
    let shard = "pytorch_model-00001-of-00002.bin";
    let dir = folder_like(&source, shard);
    let n = 200_000;
    let pickle = [&b"\x80\x02"[..], &vec![b']'; n], &vec![b'a'; n - 1], b"."].concat();
    let mut out = zip::ZipWriter::new(std::fs::File::create(dir.path().join(shard)).unwrap());
    let options =
        zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    out.start_file("archive/data.pkl", options).unwrap();
    out.write_all(&pickle).unwrap();
    out.finish().unwrap();
    assert_load_fails(dir.path(), "archive/data.pkl: nests deeper than 64 levels");
}

/// Loading `dir` fails with an error containing `needle`.
fn assert_load_fails(dir: &Path, needle: &str) {
    match JanusPro::load(dir, &Device::Cpu, DType::F32) {
        Ok(_) => panic!(
            "{} loaded; expected an error containing {needle:?}",
            dir.display()
        ),
        Err(err) => assert!(err.to_string().contains(needle), "{err}"),
    }
}
