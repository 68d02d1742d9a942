//! `coordinator anchor pretrain` as an operator runs it: a tiny anchor on a
//! directory of text, paused and resumed to the byte-identical weights of an
//! uninterrupted run, with the recipe naming every invocation and every file,
//! and resumes that would change the run refused without touching its state.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::servers::anchor_dir;

/// Arguments of a run that takes a couple of seconds.
fn args(data: &Path, out: &Path, extra: &[&str]) -> Vec<String> {
    let tokenizer = anchor_dir();
    let mut v: Vec<String> = [
        "anchor",
        "pretrain",
        "--data",
        &data.display().to_string(),
        "--tokenizer",
        &tokenizer.display().to_string(),
        "--out",
        &out.display().to_string(),
        "--hidden",
        "32",
        "--layers",
        "2",
        "--heads",
        "2",
        "--intermediate",
        "48",
        "--context",
        "32",
        "--steps",
        "12",
        "--batch-size",
        "2",
        "--warmup",
        "2",
        "--eval-every",
        "6",
        "--checkpoint-every",
        "4",
    ]
    .iter()
    .map(ToString::to_string)
    .collect();
    v.extend(extra.iter().map(ToString::to_string));
    v
}

fn run(args: &[String]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_coordinator"))
        .args(args)
        .env("RUST_BACKTRACE", "0")
        .output()
        .expect("running coordinator")
}

fn succeeds(args: &[String]) -> String {
    let out = run(args);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{args:?} failed: {stderr}");
    stderr
}

fn fails(args: &[String]) -> String {
    let out = run(args);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "{args:?} should have failed");
    stderr
}

fn recipe(dir: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(dir.join("recipe.json")).expect("recipe.json");
    serde_json::from_str(&text).expect("recipe.json is JSON")
}

fn saved_step(out: &Path) -> u64 {
    let text = std::fs::read_to_string(out.join("resume/trainer_state.json")).expect("a state");
    let v: serde_json::Value = serde_json::from_str(&text).expect("JSON state");
    v["step"].as_u64().expect("step")
}

#[test]
fn a_paused_pretraining_resumes_to_the_same_anchor_and_refuses_changed_settings() {
    let tmp = tempfile::tempdir().expect("tempdir");
    // A directory of text: the recipe must list (and digest) both files.
    let data = tmp.path().join("public");
    let public = std::fs::read_to_string(
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../data/slices/public/heldout.jsonl"),
    )
    .expect("the committed public slice");
    let lines: Vec<&str> = public.lines().collect();
    std::fs::create_dir_all(data.join("more")).expect("mkdir");
    std::fs::write(data.join("a.jsonl"), lines[..lines.len() / 2].join("\n")).expect("write");
    std::fs::write(
        data.join("more/b.jsonl"),
        lines[lines.len() / 2..].join("\n"),
    )
    .expect("write");

    let whole = tmp.path().join("whole");
    succeeds(&args(&data, &whole, &[]));
    let r = recipe(&whole);
    assert!(r.get("resumed_by").is_none(), "{r}");
    let files: Vec<&str> = r["data"]
        .as_array()
        .expect("data digests")
        .iter()
        .map(|d| d["path"].as_str().expect("path"))
        .collect();
    assert_eq!(files.len(), 2, "{files:?}");
    assert!(files[0].ends_with("a.jsonl") && files[1].ends_with("b.jsonl"));
    assert!(
        r["data"][0]["sha256"]
            .as_str()
            .is_some_and(|h| h.len() == 64)
    );

    // Paused after step 5: a state, no model.
    let split = tmp.path().join("split");
    let stderr = succeeds(&args(&data, &split, &["--pause-at", "5"]));
    assert!(stderr.contains("paused after step 5 of 12"), "{stderr}");
    assert!(!split.join("model.safetensors").exists());
    assert_eq!(saved_step(&split), 5);

    // Starting afresh over it, or resuming with other settings, is refused
    // and leaves the state as it was.
    let state = || std::fs::read(split.join("resume/trainer_state.json")).expect("a state");
    let saved = state();
    let stderr = fails(&args(&data, &split, &[]));
    assert!(stderr.contains("unfinished run; pass --resume"), "{stderr}");
    let stderr = fails(&args(&data, &split, &["--resume", "--lr", "0.001"]));
    assert!(stderr.contains("lr: 0.003 → 0.001"), "{stderr}");
    let stderr = fails(&args(&data, &split, &["--resume", "--seed", "4"]));
    assert!(
        stderr.contains("resume it with --steps 12 --seed 0"),
        "{stderr}"
    );
    std::fs::write(data.join("more/b.jsonl"), lines[0]).expect("write");
    let stderr = fails(&args(&data, &split, &["--resume"]));
    assert!(
        stderr.contains("data: file 2 of 2 (") && stderr.contains("b.jsonl) has other contents"),
        "{stderr}"
    );
    std::fs::write(
        data.join("more/b.jsonl"),
        lines[lines.len() / 2..].join("\n"),
    )
    .expect("write");
    let stderr = fails(&args(&data, &split, &["--resume", "--pause-at", "12"]));
    assert!(
        stderr.contains("--pause-at 12 is not before the last step"),
        "{stderr}"
    );
    assert_eq!(state(), saved, "a refused resume changed the saved state");

    // Resumed, naming the same files by another path: the same bytes as the
    // uninterrupted run, both commands recorded.
    succeeds(&args(&data.join("."), &split, &["--resume"]));
    assert_eq!(
        std::fs::read(split.join("model.safetensors")).expect("model"),
        std::fs::read(whole.join("model.safetensors")).expect("model"),
        "the paused and resumed anchor differs from the uninterrupted one"
    );
    assert!(!split.join("resume").exists());
    let r = recipe(&split);
    let first = r["command"].as_str().expect("command");
    assert!(first.starts_with("coordinator anchor pretrain") && first.contains("--pause-at 5"));
    let resumed: Vec<&str> = r["resumed_by"]
        .as_array()
        .expect("resumed_by")
        .iter()
        .map(|c| c.as_str().expect("a command"))
        .collect();
    assert_eq!(resumed.len(), 1);
    assert!(resumed[0].ends_with("--resume"), "{resumed:?}");
    assert_eq!(r["model_sha256"], recipe(&whole)["model_sha256"]);
}
