//! Model folders for the tests, made of links to a fixture's files. Only
//! std and serde_json, so that test crates without candle (the server's)
//! include this file too.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

/// The tiny random Janus-Pro with the official code's intermediates.
pub fn fixture_dir() -> PathBuf {
    PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../tests/fixtures/tiny"
    ))
}

/// Fills `dest` with links to `source`'s files, but for those named in
/// `except`.
pub fn link_files(source: &Path, dest: &Path, except: &[&str]) {
    std::fs::create_dir_all(dest).unwrap();
    for entry in std::fs::read_dir(source).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name();
        let skipped = except.iter().any(|e| name == std::ffi::OsStr::new(e));
        if entry.file_type().unwrap().is_file() && !skipped {
            std::os::unix::fs::symlink(entry.path(), dest.join(&name)).unwrap();
        }
    }
}

/// The tiny model drawing a 24x24 grid (576 steps per image, as the
/// released models), in a folder `tiny576` of links under `tmp`.
pub fn tiny_576(tmp: &Path) -> PathBuf {
    let dir = tmp.join("tiny576");
    link_files(&fixture_dir(), &dir, &["processor_config.json"]);
    let text = std::fs::read_to_string(fixture_dir().join("processor_config.json")).unwrap();
    let mut config: serde_json::Value = serde_json::from_str(&text).unwrap();
    config["num_image_tokens"] = serde_json::json!(576);
    std::fs::write(dir.join("processor_config.json"), config.to_string()).unwrap();
    dir
}
