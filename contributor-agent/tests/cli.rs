//! End-to-end tests of the `contributor-agent` binary on a tiny anchor built
//! with the committed tokenizer: train, merge, evaluate (with in-memory merges
//! and expert subsets), soup, and the errors a user meets.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use burn::tensor::Device;
use tributary_corpus::{TextTokenizer, read_documents, spread_sample, token_stream};
use tributary_model::FlexOlmoConfig;
use tributary_model::pretrain::{init_anchor, set_public_router};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn slice(domain: &str) -> PathBuf {
    repo()
        .join("data/slices")
        .join(domain)
        .join("heldout.jsonl")
}

fn agent(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_contributor-agent"))
        .args(args)
        .output()
        .unwrap()
}

fn ok(args: &[&str]) -> String {
    let out = agent(args);
    assert!(
        out.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn fails(args: &[&str], needle: &str) {
    let out = agent(args);
    assert!(!out.status.success(), "{args:?} should fail");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(needle),
        "{args:?}: expected {needle:?} in {err}"
    );
}

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

/// A 2-layer, 32-wide anchor over the real 4096-token vocabulary.
fn tiny_anchor(dir: &Path) {
    let tok_dir = repo().join("data/tokenizer");
    let tok = TextTokenizer::load(&tok_dir).unwrap();
    let config = FlexOlmoConfig::new(tok.vocab_size(), 32, 48, 2, 2, 1, 1, 64);
    let mut anchor = init_anchor(&config, 5).unwrap();
    let docs = read_documents(&[slice("public")]).unwrap();
    let stream = token_stream(&docs, &tok).unwrap();
    set_public_router(&mut anchor, &stream, 64, 4096, &Device::flex()).unwrap();
    anchor.save(dir, Some(&tok_dir)).unwrap();
    std::fs::write(
        dir.join(tributary_model::router::CALIBRATION_FILE),
        spread_sample(&docs, 16 * 1024),
    )
    .unwrap();
}

/// A temporary directory holding a tiny anchor at `anchor/`.
fn tiny_anchor_in_tmp() -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let anchor = tmp.path().join("anchor");
    tiny_anchor(&anchor);
    (tmp, anchor)
}

/// `train` arguments for a short run.
fn train_args<'a>(
    anchor: &'a Path,
    data: &'a Path,
    out: &'a Path,
    steps: &'a str,
    batch: &'a str,
    seq: &'a str,
) -> Vec<&'a str> {
    vec![
        "train",
        "--anchor",
        p(anchor),
        "--data",
        p(data),
        "--out",
        p(out),
        "--steps",
        steps,
        "--batch-size",
        batch,
        "--seq-len",
        seq,
        "--eval-every",
        "0",
    ]
}

fn perplexity(json: &str) -> f64 {
    let v: serde_json::Value = serde_json::from_str(json.trim()).unwrap();
    assert!(v["tokens"].as_u64().unwrap() > 1000);
    assert!(v["nll"].as_f64().unwrap().is_finite());
    v["perplexity"].as_f64().unwrap()
}

#[test]
fn train_merge_evaluate_and_opt_out() {
    let (tmp, anchor) = tiny_anchor_in_tmp();
    let expert = tmp.path().join("expert");
    let code = slice("code");
    let train_args = train_args(&anchor, &code, &expert, "3", "2", "32");
    ok(&train_args);
    assert!(expert.join("expert.safetensors").is_file() && expert.join("manifest.json").is_file());
    fails(&train_args, "already holds");

    let merged = tmp.path().join("merged");
    ok(&[
        "merge",
        "--anchor",
        p(&anchor),
        "--expert",
        p(&expert),
        "--out",
        p(&merged),
    ]);
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(merged.join("config.json")).unwrap())
            .unwrap();
    assert_eq!(config["num_experts"], 2);
    assert_eq!(config["num_experts_per_tok"], 2);
    assert_eq!(config["model_type"], "flex_olmo");
    assert!(merged.join("tokenizer.json").is_file());
    let merge_with_top_k = |k: &str, out: &str| {
        let out = tmp.path().join(out);
        let args = [
            "merge",
            "--anchor",
            p(&anchor),
            "--expert",
            p(&expert),
            "--top-k",
            k,
        ];
        agent(&[&args[..], &["--out", p(&out)]].concat())
    };
    let zero = merge_with_top_k("0", "top0");
    // Refused by the argument parser (clap's usage error, status 2).
    assert_eq!(zero.status.code(), Some(2));
    let err = String::from_utf8_lossy(&zero.stderr);
    assert!(
        err.contains("invalid value '0' for '--top-k") && err.contains("at least one expert"),
        "{err}"
    );
    assert!(
        !tmp.path().join("top0").exists(),
        "a refused merge wrote its --out"
    );
    let five = merge_with_top_k("5", "top5");
    let err = String::from_utf8_lossy(&five.stderr);
    assert!(
        five.status.success() && err.contains("every token uses all of them"),
        "{err}"
    );

    let text = slice("literature");
    let eval = |extra: &[&str]| {
        let mut args = vec!["evaluate", "--json", "--seq-len", "32", "--text", p(&text)];
        args.extend_from_slice(extra);
        perplexity(&ok(&args))
    };
    let anchor_ppl = eval(&["--model", p(&anchor)]);
    let merged_ppl = eval(&["--model", p(&merged)]);
    // Opting out of the only contributed expert gives the anchor back exactly.
    assert_eq!(eval(&["--model", p(&merged), "--experts", "0"]), anchor_ppl);
    // Merging in memory equals merging on disk.
    assert_eq!(
        eval(&["--model", p(&anchor), "--expert", p(&expert)]),
        merged_ppl
    );
    assert!(anchor_ppl > 1.0 && merged_ppl > 1.0);
    // --top-k 0 is refused the same way by every command that takes it.
    fails(
        &[
            "evaluate",
            "--model",
            p(&merged),
            "--top-k",
            "0",
            "--text",
            p(&text),
        ],
        "invalid value '0' for '--top-k",
    );
    // More than the model's experts: all of them, with a note saying so.
    let wide = agent(&[
        "evaluate",
        "--json",
        "--seq-len",
        "32",
        "--model",
        p(&merged),
        "--top-k",
        "5",
        "--text",
        p(&text),
    ]);
    let err = String::from_utf8_lossy(&wide.stderr);
    assert!(
        wide.status.success() && err.contains("every token uses all of them"),
        "{err}"
    );
    assert_eq!(
        perplexity(&String::from_utf8_lossy(&wide.stdout)),
        merged_ppl
    );

    // The table form names the routing shares.
    let table = ok(&[
        "evaluate",
        "--model",
        p(&merged),
        "--seq-len",
        "32",
        "--text",
        p(&text),
    ]);
    assert!(
        table.contains("perplexity") && table.contains("layer 1:"),
        "{table}"
    );
    // Under --experts the routing columns keep the model's expert indices.
    let only = |json: bool| {
        let mut args = vec!["evaluate", "--model", p(&merged), "--experts", "1"];
        args.extend_from_slice(&["--seq-len", "32", "--text", p(&text)]);
        if json {
            args.push("--json");
        }
        ok(&args)
    };
    let v: serde_json::Value = serde_json::from_str(only(true).trim()).unwrap();
    assert_eq!(v["experts"], serde_json::json!([1]), "{v}");
    assert_eq!(v["routing"][0], serde_json::json!([1.0]), "{v}");
    let table = only(false);
    assert!(table.contains("layer 0: 1:100.0%"), "{table}");

    let soup = tmp.path().join("soup");
    ok(&[
        "soup",
        "--anchor",
        p(&anchor),
        "--expert",
        p(&expert),
        "--out",
        p(&soup),
    ]);
    assert!(eval(&["--model", p(&soup)]).is_finite());
}

#[test]
fn clear_errors_for_bad_input() {
    let (tmp, anchor) = tiny_anchor_in_tmp();
    let text = slice("math");
    fails(
        &[
            "evaluate",
            "--model",
            p(&tmp.path().join("nope")),
            "--text",
            p(&text),
        ],
        "config.json",
    );
    fails(
        &[
            "evaluate",
            "--model",
            p(&anchor),
            "--experts",
            "0,7",
            "--text",
            p(&text),
        ],
        "does not exist",
    );
    fails(
        &[
            "evaluate",
            "--model",
            p(&anchor),
            "--experts",
            "zero",
            "--text",
            p(&text),
        ],
        "not an expert index",
    );
    fails(
        &[
            "evaluate",
            "--model",
            p(&anchor),
            "--text",
            p(&tmp.path().join("missing.txt")),
        ],
        "missing.txt",
    );
    fails(
        &[
            "train",
            "--anchor",
            p(&anchor),
            "--data",
            p(&text),
            "--out",
            p(&tmp.path().join("e")),
            "--backend",
            "quantum",
        ],
        "not available",
    );
    // Too little text for one training sequence: said in tokens, before any work.
    let short = tmp.path().join("short.txt");
    std::fs::write(&short, "A few words.").unwrap();
    fails(
        &[
            "train",
            "--anchor",
            p(&anchor),
            "--data",
            p(&short),
            "--out",
            p(&tmp.path().join("e-short")),
        ],
        "an expert needs at least 65 (one sequence of 64 tokens",
    );

    // An expert whose manifest names another anchor is refused at merge.
    let expert = tmp.path().join("expert");
    ok(&train_args(&anchor, &text, &expert, "1", "1", "16"));
    let mpath = expert.join("manifest.json");
    let mut manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&mpath).unwrap()).unwrap();
    manifest["anchor_digest"] = serde_json::Value::from("ab".repeat(32));
    std::fs::write(&mpath, manifest.to_string()).unwrap();
    fails(
        &[
            "merge",
            "--anchor",
            p(&anchor),
            "--expert",
            p(&expert),
            "--out",
            p(&tmp.path().join("m")),
        ],
        "trained against anchor",
    );

    // Without the anchor's public calibration sample, training says what to do;
    // `--no-router-calibration` trains the uncalibrated way.
    std::fs::remove_file(anchor.join(tributary_model::router::CALIBRATION_FILE)).unwrap();
    let plain = tmp.path().join("plain");
    let mut args = train_args(&anchor, &text, &plain, "1", "1", "16");
    fails(&args, "--calibration-text");
    args.push("--no-router-calibration");
    ok(&args);
    assert!(plain.join("expert.safetensors").is_file());
    // Each manifest records which recipe trained it.
    let recipe = |dir: &std::path::Path| {
        let m: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("manifest.json")).unwrap())
                .unwrap();
        m["training"]["recipe"].clone()
    };
    assert_eq!(recipe(&plain)["router_init"], "mean-router-input");
    assert_eq!(recipe(&plain)["public_loss_weight"], 0.0);
    assert_eq!(recipe(&expert)["router_init"], "logistic");
    assert_eq!(recipe(&expert)["public_loss_weight"], 1.0);
    assert_eq!(recipe(&plain)["public_match_weight"], 0.0);
    assert_eq!(recipe(&expert)["public_match_weight"], 4.0);
}

#[test]
fn the_experiment_writes_every_row_and_checks_the_targets() {
    let (tmp, anchor) = tiny_anchor_in_tmp();
    // Two domains and the public corpus: the first 16 KB of documents of each
    // held-out slice, standing in for its training text too, so the run stays short.
    let slices = tmp.path().join("slices");
    for d in ["code", "math", "public"] {
        let all = std::fs::read_to_string(slice(d)).unwrap();
        let mut head = String::new();
        for line in all.lines() {
            if head.len() >= 16 * 1024 {
                break;
            }
            head.push_str(line);
            head.push('\n');
        }
        std::fs::create_dir_all(slices.join(d)).unwrap();
        std::fs::write(slices.join(d).join("heldout.jsonl"), &head).unwrap();
        std::fs::write(slices.join(d).join("train.jsonl"), &head).unwrap();
    }
    let out = tmp.path().join("run");
    let base = [
        "experiment",
        "--anchor",
        p(&anchor),
        "--slices",
        p(&slices),
        "--out",
        p(&out),
    ];
    let run = |extra: &[&str]| {
        let mut args = base.to_vec();
        args.extend_from_slice(&[
            "--steps",
            "2",
            "--batch-size",
            "2",
            "--seq-len",
            "32",
            "--sweep-top-k",
            "1,3",
        ]);
        args.extend_from_slice(extra);
        ok(&args);
        let json = std::fs::read_to_string(out.join("results.json")).unwrap();
        serde_json::from_str::<serde_json::Value>(&json).unwrap()
    };
    let first = run(&[]);
    assert_eq!(first["domains"], serde_json::json!(["code", "math"]));
    let ppl = &first["perplexity"];
    for (model, sets) in [
        ("anchor", &["code", "math", "public"][..]),
        ("expert:code", &["code"][..]),
        ("expert:math", &["math"][..]),
        ("merged", &["code", "math", "public"][..]),
        ("merged-top-k:1", &["code", "math", "public"][..]),
        ("merged-top-k:3", &["code", "math", "public"][..]),
        ("merged-without:code", &["code", "math", "public"][..]),
        ("merged-without:math", &["code", "math", "public"][..]),
        ("soup", &["code", "math", "public"][..]),
        ("merged-joint", &["code", "math", "public"][..]),
        ("merged-joint-without:code", &["code", "math", "public"][..]),
        ("merged-joint-without:math", &["code", "math", "public"][..]),
    ] {
        for set in sets {
            let v = ppl[model][set].as_f64();
            assert!(
                v.is_some_and(|v| v.is_finite() && v > 1.0),
                "{model} on {set}: {v:?}"
            );
        }
    }
    // Four targets per domain, then the public one and the soup one; for the
    // jointly calibrated model the same without the experts' own.
    assert_eq!(first["targets"].as_array().unwrap().len(), 10 + 8);
    // Routing shares of the merged model: public + two experts, summing to one.
    let shares = first["routing"]["code"].as_array().unwrap();
    assert_eq!(shares.len(), 3);
    let total: f64 = shares.iter().map(|v| v.as_f64().unwrap()).sum();
    assert!((total - 1.0).abs() < 1e-6, "shares sum to {total}");
    let md = std::fs::read_to_string(out.join("results.md")).unwrap();
    for row in [
        "| merged |",
        "| merged-top-k:1 |",
        "| merged-without:math |",
        "| soup |",
        "| merged-joint-without:code |",
    ] {
        assert!(md.contains(row), "results.md lacks {row}");
    }
    // --reuse scores the same experts again instead of training new ones.
    let again = run(&["--reuse"]);
    assert_eq!(again["experts"], first["experts"]);
    assert_eq!(again["perplexity"], first["perplexity"]);

    fails(
        &[&base[..], &["--sweep-top-k", "1,0"]].concat(),
        "invalid value '0' for '--sweep-top-k",
    );
    fails(
        &[&base[..], &["--top-k", "0"]].concat(),
        "invalid value '0' for '--top-k",
    );
    fails(
        &[
            &base[..],
            &["--joint-rounds", "2", "--no-router-calibration"],
        ]
        .concat(),
        "needs the calibration sample",
    );
}

#[test]
fn a_joint_calibration_round_through_statistics_files() {
    let (tmp, anchor) = tiny_anchor_in_tmp();
    let t = tmp.path();
    let domains = ["code", "math"];
    for d in domains {
        let out = t.join(format!("expert-{d}"));
        ok(&train_args(&anchor, &slice(d), &out, "3", "2", "32"));
    }
    let merged = t.join("merged");
    let (code, math) = (t.join("expert-code"), t.join("expert-math"));
    ok(&[
        "merge",
        "--anchor",
        p(&anchor),
        "--expert",
        p(&code),
        "--expert",
        p(&math),
        "--out",
        p(&merged),
    ]);
    // `router-stats` of `own`'s domain text `d` on `model`, in windows of `seq`.
    let stats = |model: &Path, own: &Path, d: &str, out: &Path, seq: &str| -> Vec<String> {
        [
            "router-stats",
            "--model",
            p(model),
            "--own",
            p(own),
            "--data",
            p(&slice(d)),
            "--out",
            p(out),
            "--seq-len",
            seq,
            "--tokens",
            "2048",
        ]
        .map(str::to_owned)
        .to_vec()
    };
    let (code_stats, math_stats) = (t.join("code.stats"), t.join("math.stats"));
    ok(&strs(&stats(&merged, &code, "code", &code_stats, "32")));
    ok(&strs(&stats(&merged, &math, "math", &math_stats, "32")));
    let public = anchor.join(tributary_model::router::CALIBRATION_FILE);
    let recalibrate = |model: &Path, files: &[&Path], out: &Path| -> Vec<String> {
        let mut args: Vec<String> = [
            "recalibrate",
            "--model",
            p(model),
            "--public-text",
            p(&public),
            "--out",
            p(out),
            "--seq-len",
            "32",
            "--tokens",
            "2048",
            "--stats",
        ]
        .map(str::to_owned)
        .to_vec();
        args.extend(files.iter().map(|f| p(f).to_owned()));
        args
    };
    let round1 = t.join("round1");
    ok(&strs(&recalibrate(
        &merged,
        &[&code_stats, &math_stats],
        &round1,
    )));
    // Same architecture and experts; only router rows differ, and the model still runs.
    let config = |dir: &Path| std::fs::read_to_string(dir.join("config.json")).unwrap();
    assert_eq!(config(&round1), config(&merged));
    assert!(round1.join("tokenizer.json").is_file());
    let text = slice("literature");
    let eval = |model: &Path| {
        perplexity(&ok(&[
            "evaluate",
            "--json",
            "--seq-len",
            "32",
            "--model",
            p(model),
            "--text",
            p(&text),
        ]))
    };
    assert!(eval(&round1).is_finite());
    assert_ne!(
        std::fs::read(round1.join("model.safetensors")).unwrap(),
        std::fs::read(merged.join("model.safetensors")).unwrap()
    );

    // A second round needs statistics measured on the first round's output.
    fails(
        &strs(&recalibrate(
            &round1,
            &[&code_stats, &math_stats],
            &t.join("stale"),
        )),
        "measured on model",
    );
    fails(
        &strs(&recalibrate(&merged, &[&code_stats], &t.join("partial"))),
        "no statistics for expert(s) 2",
    );
    fails(
        &strs(&recalibrate(
            &merged,
            &[&code_stats, &code_stats],
            &t.join("twice"),
        )),
        "two sets of statistics",
    );
    // A package that is not in the model, and a file that is not statistics.
    let other = t.join("expert-other");
    ok(&train_args(
        &anchor,
        &slice("literature"),
        &other,
        "2",
        "2",
        "32",
    ));
    fails(
        &strs(&stats(
            &merged,
            &other,
            "literature",
            &t.join("x.stats"),
            "32",
        )),
        "is not one of this model's 2 contributed experts",
    );
    fails(
        &strs(&recalibrate(
            &merged,
            &[&code_stats, &merged.join("model.safetensors")],
            &t.join("bad"),
        )),
        "kind",
    );
    assert!(!t.join("stale").join("model.safetensors").exists());
    // Windows of another length than the public text's, or of no length.
    let short_windows = t.join("code-16.stats");
    ok(&strs(&stats(&merged, &code, "code", &short_windows, "16")));
    fails(
        &strs(&recalibrate(
            &merged,
            &[&short_windows, &math_stats],
            &t.join("mixed"),
        )),
        "windows of 16 tokens, public text in windows of 32",
    );
    fails(
        &strs(&stats(&merged, &code, "code", &t.join("zero.stats"), "0")),
        "at least 1",
    );
}
