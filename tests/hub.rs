//! The hub download path of `janus`, against a stand-in of the Hugging Face
//! hub's HTTP API on loopback (tests/fake_hub.py, reached through
//! `HF_ENDPOINT` as a mirror would be): listing, downloads with the hub's
//! headers, `HF_TOKEN`, a download dropped midway and resumed, sharded
//! weights, the cache reused offline, unknown ids and refused tokens.

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Output, Stdio};

use common::*;

/// tests/fake_hub.py serving `repos` (id, folder); stopped when dropped
/// (and by itself when this process ends: it exits when its stdin closes).
struct FakeHub {
    child: Child,
    _stdin: ChildStdin,
    url: String,
    log: PathBuf,
}

impl FakeHub {
    fn start(repos: &[(&str, &Path)], extra: &[&str], log: PathBuf) -> Self {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fake_hub.py");
        let mut cmd = Command::new("python3");
        cmd.arg(script).arg("--log").arg(&log).args(extra);
        for (id, dir) in repos {
            cmd.arg("--repo").arg(format!("{id}={}", dir.display()));
        }
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3 runs tests/fake_hub.py");
        let stdin = child.stdin.take().unwrap();
        let mut port = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut port)
            .unwrap();
        let url = format!("http://127.0.0.1:{}", port.trim());
        Self {
            child,
            _stdin: stdin,
            url,
            log,
        }
    }

    /// The requests it served: (method, path, range, authorization).
    fn requests(&self) -> Vec<serde_json::Value> {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        text.lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }
}

impl Drop for FakeHub {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `janus understand` of the fixture's `understand.single` case on `model`,
/// with the hub environment given (and none inherited).
fn understand(model: &str, env: &[(&str, &str)]) -> Output {
    let image = fixture_dir().join("images/wide.png");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_janus"));
    cmd.args([
        "understand",
        "--model",
        model,
        "--image",
        image.to_str().unwrap(),
    ])
    .args([
        "--question",
        "Describe this image in detail.",
        "--max-new-tokens",
        "12",
        "--json",
    ]);
    for var in [
        "HF_ENDPOINT",
        "HF_TOKEN",
        "HF_TOKEN_PATH",
        "HF_HUB_OFFLINE",
        "HF_HUB_CACHE",
        "HF_HOME",
    ] {
        cmd.env_remove(var);
    }
    cmd.envs(env.iter().copied()).output().unwrap()
}

fn assert_expected_answer(out: &Output) {
    assert!(
        out.status.success(),
        "janus failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        v["token_ids"],
        expected_json()["cases"]["understand.single"]["generated_ids"]
    );
}

fn one_line_error(out: &Output, needle: &str) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(err.contains(needle), "{needle:?} not in {err}");
}

/// The tiny model's folder without its weights, for other weight layouts.
fn tiny_without_weights(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    for entry in std::fs::read_dir(fixture_dir()).unwrap() {
        let entry = entry.unwrap();
        if entry.file_type().unwrap().is_file() && entry.file_name() != "model.safetensors" {
            std::fs::copy(entry.path(), dir.join(entry.file_name())).unwrap();
        }
    }
}

#[test]
fn downloads_from_a_mirror_with_a_token_and_resumes_a_dropped_file() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = fixture_dir();
    let hub = FakeHub::start(
        &[("acme/tiny-janus", &repo)],
        &[
            "--token",
            "secret-token",
            "--fail-once",
            "model.safetensors",
        ],
        tmp.path().join("hub.log"),
    );
    let cache = tmp.path().join("cache");
    let env = [
        ("HF_ENDPOINT", hub.url.as_str()),
        ("HF_TOKEN", "secret-token"),
        ("HF_HUB_CACHE", cache.to_str().unwrap()),
    ];
    assert_expected_answer(&understand("acme/tiny-janus", &env));

    let requests = hub.requests();
    assert!(
        requests
            .iter()
            .all(|r| r["authorization"] == "Bearer secret-token"),
        "{requests:?}"
    );
    assert!(requests.iter().any(|r| r["path"]
        .as_str()
        .unwrap()
        .starts_with("/api/models/acme/tiny-janus")));
    // The weights: dropped after half, then resumed from where they stopped.
    let size = std::fs::metadata(repo.join("model.safetensors"))
        .unwrap()
        .len();
    let resumed = requests.iter().any(|r| {
        r["path"]
            .as_str()
            .unwrap()
            .ends_with("/resolve/main/model.safetensors")
            && r["range"].as_str().and_then(|v| {
                v.strip_prefix("bytes=")?
                    .strip_suffix('-')?
                    .parse::<u64>()
                    .ok()
            }) == Some(size / 2)
    });
    assert!(
        resumed,
        "no request resumed model.safetensors at byte {}: {requests:?}",
        size / 2
    );

    // The cache is whole: offline (no hub at all) gives the same answer.
    drop(hub);
    let offline = [
        ("HF_HUB_OFFLINE", "1"),
        ("HF_HUB_CACHE", cache.to_str().unwrap()),
    ];
    assert_expected_answer(&understand("acme/tiny-janus", &offline));
}

#[test]
fn downloads_sharded_weights_through_their_index() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = tmp.path().join("repo");
    tiny_without_weights(&repo);
    // model.safetensors split in two shards, as the 7B release is.
    let weights = fixture_dir().join("model.safetensors");
    let tensors = candle_core::safetensors::load(weights, &candle_core::Device::Cpu).unwrap();
    let mut names: Vec<_> = tensors.keys().cloned().collect();
    names.sort();
    let mut weight_map = serde_json::Map::new();
    for (i, part) in names.chunks(names.len().div_ceil(2)).enumerate() {
        let file = format!("model-{:05}-of-00002.safetensors", i + 1);
        let shard: std::collections::HashMap<_, _> = part
            .iter()
            .map(|n| (n.clone(), tensors[n].clone()))
            .collect();
        candle_core::safetensors::save(&shard, repo.join(&file)).unwrap();
        for n in part {
            weight_map.insert(n.clone(), file.clone().into());
        }
    }
    let index = serde_json::json!({"metadata": {}, "weight_map": weight_map});
    std::fs::write(repo.join("model.safetensors.index.json"), index.to_string()).unwrap();

    let hub = FakeHub::start(
        &[("acme/sharded", &repo)],
        &["--slow", "model-00001-of-00002.safetensors"],
        tmp.path().join("hub.log"),
    );
    let cache = tmp.path().join("cache");
    let env = [
        ("HF_ENDPOINT", hub.url.as_str()),
        ("HF_HUB_CACHE", cache.to_str().unwrap()),
    ];
    assert_expected_answer(&understand("acme/sharded", &env));
    let fetched: Vec<String> = hub
        .requests()
        .iter()
        .map(|r| r["path"].as_str().unwrap().to_owned())
        .collect();
    for shard in [
        "model-00001-of-00002.safetensors",
        "model-00002-of-00002.safetensors",
    ] {
        assert!(
            fetched.iter().any(|p| p.ends_with(shard)),
            "{shard} not fetched: {fetched:?}"
        );
    }
}

#[test]
fn unknown_ids_and_refused_tokens_are_one_line_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let hub = FakeHub::start(
        &[("acme/tiny-janus", &fixture_dir())],
        &["--token", "right"],
        tmp.path().join("hub.log"),
    );
    let cache = tmp.path().join("cache");
    let cache = cache.to_str().unwrap();

    let out = understand(
        "acme/nothing-here",
        &[
            ("HF_ENDPOINT", &hub.url),
            ("HF_TOKEN", "right"),
            ("HF_HUB_CACHE", cache),
        ],
    );
    one_line_error(
        &out,
        &format!(
            "hub model \"acme/nothing-here\" (or one of its files) was not found at {}",
            hub.url
        ),
    );

    let out = understand(
        "acme/tiny-janus",
        &[
            ("HF_ENDPOINT", &hub.url),
            ("HF_TOKEN", "wrong"),
            ("HF_HUB_CACHE", cache),
        ],
    );
    one_line_error(
        &out,
        "refused access to hub model \"acme/tiny-janus\": set HF_TOKEN",
    );

    // The token file (as `huggingface-cli login` writes it) when HF_TOKEN is unset.
    let token_file = tmp.path().join("token");
    std::fs::write(&token_file, "right\n").unwrap();
    let env = [
        ("HF_ENDPOINT", hub.url.as_str()),
        ("HF_TOKEN_PATH", token_file.to_str().unwrap()),
        ("HF_HUB_CACHE", cache),
    ];
    assert_expected_answer(&understand("acme/tiny-janus", &env));
}

#[test]
fn the_cache_is_hf_hub_cache_else_hf_home_else_home() {
    let tmp = tempfile::tempdir().unwrap();
    let hub = FakeHub::start(
        &[("acme/tiny-janus", &fixture_dir())],
        &[],
        tmp.path().join("hub.log"),
    );
    let repo_dir = "models--acme--tiny-janus";
    let (hf_home, home) = (tmp.path().join("hf-home"), tmp.path().join("home"));
    let env = [
        ("HF_ENDPOINT", hub.url.as_str()),
        ("HF_HOME", hf_home.to_str().unwrap()),
    ];
    assert_expected_answer(&understand("acme/tiny-janus", &env));
    assert!(hf_home
        .join("hub")
        .join(repo_dir)
        .join("snapshots")
        .is_dir());
    let env = [
        ("HF_ENDPOINT", hub.url.as_str()),
        ("HOME", home.to_str().unwrap()),
    ];
    assert_expected_answer(&understand("acme/tiny-janus", &env));
    assert!(home
        .join(".cache/huggingface/hub")
        .join(repo_dir)
        .join("snapshots")
        .is_dir());
    // Offline, each finds its own copy.
    drop(hub);
    let offline = [
        ("HF_HUB_OFFLINE", "1"),
        ("HF_HOME", hf_home.to_str().unwrap()),
    ];
    assert_expected_answer(&understand("acme/tiny-janus", &offline));
}
