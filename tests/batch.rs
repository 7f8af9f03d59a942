//! `janus batch understand|generate`: results equal the single commands,
//! bad rows become error lines, reruns resume, Ctrl-C leaves whole files.

mod common;

use std::collections::HashMap;
use std::path::Path;
use std::process::{Command, Output};

use common::*;
use serde_json::Value;

fn janus(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_janus"))
        .args(args)
        .output()
        .expect("run janus")
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn lines(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).expect("every line is whole JSON"))
        .collect()
}

/// A folder of the fixture's images, one in a subfolder, and one broken file.
fn image_folder(dir: &Path) -> std::path::PathBuf {
    let imgs = dir.join("imgs");
    std::fs::create_dir_all(imgs.join("sub")).unwrap();
    for name in ["wide.png", "tall.png", "small.png", "rgba.png"] {
        std::fs::copy(fixture_dir().join("images").join(name), imgs.join(name)).unwrap();
    }
    std::fs::copy(
        fixture_dir().join("images/square.png"),
        imgs.join("sub/square.png"),
    )
    .unwrap();
    std::fs::write(imgs.join("broken.png"), "not an image").unwrap();
    imgs
}

const SAMPLING: [&str; 6] = [
    "--temperature",
    "0.8",
    "--seed",
    "4",
    "--max-new-tokens",
    "10",
];

fn caption(imgs: &Path, out: &Path, batch: &str, extra: &[&str]) -> Output {
    let model = fixture_dir();
    let mut args = vec![
        "batch",
        "understand",
        "--model",
        s(&model),
        "--images",
        s(imgs),
        "--question",
        "Describe this image.",
        "--batch-size",
        batch,
        "--out",
        s(out),
    ];
    args.extend(SAMPLING);
    args.extend(extra);
    janus(&args)
}

#[test]
fn captions_equal_single_runs_and_bad_images_become_error_lines() {
    let tmp = tempfile::tempdir().unwrap();
    let imgs = image_folder(tmp.path());
    let mut by_batch = vec![];
    for batch in ["1", "4"] {
        let out = tmp.path().join(format!("b{batch}.jsonl"));
        let run = caption(&imgs, &out, batch, &[]);
        assert_eq!(run.status.code(), Some(3), "rows failed: exit 3");
        let rows: HashMap<String, Value> = lines(&out)
            .into_iter()
            .map(|l| (l["image"].as_str().unwrap().to_owned(), l))
            .collect();
        assert_eq!(rows.len(), 6, "one line per image");
        by_batch.push(rows);
    }
    let (one, four) = (&by_batch[0], &by_batch[1]);
    let model = fixture_dir();
    let broken = s(&imgs.join("broken.png")).to_owned();
    assert!(four[&broken]["error"]
        .as_str()
        .unwrap()
        .contains("not an image"));
    for (image, row) in four {
        if *image == broken {
            continue;
        }
        assert_eq!(row["token_ids"], one[image]["token_ids"], "{image}");
        let mut args = vec![
            "understand",
            "--model",
            s(&model),
            "--image",
            image,
            "--question",
            "Describe this image.",
            "--json",
        ];
        args.extend(SAMPLING);
        let single: Value = serde_json::from_slice(&janus(&args).stdout).unwrap();
        assert_eq!(row["token_ids"], single["token_ids"], "{image}");
        assert_eq!(row["answer"], single["answer"], "{image}");
    }
}

#[test]
fn a_rerun_skips_done_rows_and_redoes_torn_and_failed_ones() {
    let tmp = tempfile::tempdir().unwrap();
    let imgs = image_folder(tmp.path());
    let out = tmp.path().join("r.jsonl");
    assert_eq!(caption(&imgs, &out, "3", &[]).status.code(), Some(3));
    let first = lines(&out);
    // Fix the broken image; tear the last line as a crash would.
    std::fs::copy(
        fixture_dir().join("images/gray.png"),
        imgs.join("broken.png"),
    )
    .unwrap();
    let mut text = std::fs::read_to_string(&out).unwrap();
    let last_answer = first
        .iter()
        .rposition(|l| l.get("answer").is_some())
        .unwrap();
    let torn_image = first[last_answer]["image"].as_str().unwrap().to_owned();
    let kept: Vec<String> = text
        .lines()
        .filter(|l| !l.contains(&format!("\"image\":{}", Value::from(torn_image.as_str()))))
        .map(str::to_owned)
        .collect();
    text = kept.join("\n") + "\n" + &first[last_answer].to_string()[..20];
    std::fs::write(&out, text).unwrap();
    let rerun = caption(&imgs, &out, "3", &[]);
    assert!(
        rerun.status.success(),
        "{}",
        String::from_utf8_lossy(&rerun.stderr)
    );
    let second = lines(&out);
    assert_eq!(second.len(), 6, "every image once");
    assert!(second.iter().all(|l| l.get("error").is_none()));
    let redone: Vec<&str> = second[4..]
        .iter()
        .map(|l| l["image"].as_str().unwrap())
        .collect();
    let broken = imgs.join("broken.png");
    let mut want = vec![torn_image.as_str(), s(&broken)];
    want.sort();
    let mut redone = redone.clone();
    redone.sort();
    assert_eq!(redone, want, "only the torn and the failed rows ran again");
    let torn_again = second
        .iter()
        .find(|l| l["image"] == torn_image.as_str())
        .unwrap();
    assert_eq!(torn_again["token_ids"], first[last_answer]["token_ids"]);
    // Other options into the same file: refused, the file untouched.
    let before = std::fs::read(&out).unwrap();
    let other = caption(&imgs, &out, "3", &["--top-p", "0.5"]);
    assert_eq!(other.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&other.stderr).contains("other options"));
    assert_eq!(std::fs::read(&out).unwrap(), before);
}

#[test]
fn rendered_rows_equal_janus_generate_and_resume() {
    let tmp = tempfile::tempdir().unwrap();
    let prompts = tmp.path().join("p.jsonl");
    std::fs::write(
        &prompts,
        "{\"prompt\": \"a cat\", \"seed\": 5, \"n\": 2}\n\
         {\"prompt\": \"\"}\n\
         not json\n\
         {\"prompt\": \"A close-up photo of a red apple on a wooden table.\"}\n\
         {\"prompt\": \"a dog\", \"n\": 3}\n",
    )
    .unwrap();
    let out = tmp.path().join("out");
    let render = || {
        janus(&[
            "batch",
            "generate",
            "--model",
            s(&fixture_dir()),
            "--prompts",
            s(&prompts),
            "--seed",
            "10",
            "--batch-size",
            "4",
            "--out",
            s(&out),
        ])
    };
    assert_eq!(render().status.code(), Some(3));
    let manifest = lines(&out.join("manifest.jsonl"));
    let errors: Vec<u64> = manifest
        .iter()
        .filter(|l| l.get("error").is_some())
        .map(|l| l["row"].as_u64().unwrap())
        .collect();
    assert_eq!(errors, [1, 2]);
    // Each row as `janus generate` with its seed: row 3 takes 10 + 3.
    for (row, prompt, seed, n) in [
        (0, "a cat", 5, 2),
        (
            3,
            "A close-up photo of a red apple on a wooden table.",
            13,
            1,
        ),
        (4, "a dog", 14, 3),
    ] {
        let single = tmp.path().join(format!("single{row}"));
        let ran = janus(&[
            "generate",
            "--model",
            s(&fixture_dir()),
            "--prompt",
            prompt,
            "--seed",
            &seed.to_string(),
            "--parallel-size",
            &n.to_string(),
            "--out",
            s(&single),
            "--json",
        ]);
        let v: Value = serde_json::from_slice(&ran.stdout).unwrap();
        for k in 0..n {
            let line = manifest
                .iter()
                .find(|l| l["row"] == row && l["image"] == k)
                .unwrap();
            assert_eq!(line["seed"], seed);
            assert_eq!(line["codes"], v["image_tokens"][k], "row {row} image {k}");
            let file = out.join(line["file"].as_str().unwrap());
            assert_eq!(
                std::fs::read(file).unwrap(),
                std::fs::read(single.join(format!("{k}.png"))).unwrap()
            );
        }
    }
    // A lost image: only its row runs again, its lines replaced.
    std::fs::remove_file(out.join("00004-1.png")).unwrap();
    assert_eq!(render().status.code(), Some(3), "the bad rows fail again");
    let again = lines(&out.join("manifest.jsonl"));
    let images = again.iter().filter(|l| l.get("file").is_some()).count();
    assert_eq!(images, 6, "every image once");
    assert!(out.join("00004-1.png").is_file());
    let order: Vec<u64> = again.iter().map(|l| l["row"].as_u64().unwrap()).collect();
    assert_eq!(
        order,
        [0, 0, 3, 1, 2, 4, 4, 4],
        "kept rows first, then the rerun's"
    );
}

/// Ctrl-C mid-job: exit 130, whole lines and files only; the rerun completes.
#[test]
fn an_interrupted_job_leaves_whole_files_and_resumes() {
    let tmp = tempfile::tempdir().unwrap();
    let prompts = tmp.path().join("p.txt");
    let text: String = (0..400).map(|i| format!("a cat number {i}\n")).collect();
    std::fs::write(&prompts, text).unwrap();
    let out = tmp.path().join("out");
    let model = fixture_dir();
    let args = [
        "batch",
        "generate",
        "--model",
        s(&model),
        "--prompts",
        s(&prompts),
        "--batch-size",
        "2",
        "--out",
        s(&out),
        "--quiet",
    ];
    let mut child = Command::new(env!("CARGO_BIN_EXE_janus"))
        .args(args)
        .spawn()
        .unwrap();
    let manifest = out.join("manifest.jsonl");
    let start = std::time::Instant::now();
    while std::fs::read_to_string(&manifest).map_or(0, |t| t.lines().count()) < 4 {
        assert!(start.elapsed().as_secs() < 60, "the job writes rows");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let killed = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    assert_eq!(child.wait().unwrap().code(), Some(130));
    let partial = lines(&manifest);
    assert!(partial.len() < 400, "stopped early");
    let names: Vec<String> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(names.iter().all(|n| !n.ends_with(".partial")), "{names:?}");
    for l in &partial {
        assert!(out.join(l["file"].as_str().unwrap()).is_file());
    }
    let rerun = janus(&args);
    assert!(
        rerun.status.success(),
        "{}",
        String::from_utf8_lossy(&rerun.stderr)
    );
    let all = lines(&manifest);
    assert_eq!(all.len(), 400);
    assert_eq!(
        &all[..partial.len()],
        &partial[..],
        "done rows kept as they were"
    );
}
