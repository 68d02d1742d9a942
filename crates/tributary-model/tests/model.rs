//! Integration tests of the model library: merge and opt-out algebra, expert
//! training invariants, checkpoint round trips, and agreement with transformers
//! on committed reference fixtures.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::path::PathBuf;

use burn::tensor::Device;
use tributary_model::eval::{evaluate, next_token_logprobs};
use tributary_model::expert_train::train_expert;
use tributary_model::merge::{merge, select_experts, soup};
use tributary_model::model::Trace;
use tributary_model::names;
use tributary_model::objective::{TrainOptions, lm_loss_traced};
use tributary_model::pretrain::{
    PretrainRun, Pretrained, RESUME_DIR, TrainerState, UNRECORDED_INVOCATION, init_anchor,
    load_resume, pretrain, set_public_router,
};
use tributary_model::router::{fit_gaussian_offsets, router_features};
use tributary_model::{Checkpoint, ExpertPackage, FlexOlmo, FlexOlmoConfig};

fn tiny_config() -> FlexOlmoConfig {
    FlexOlmoConfig::new(64, 32, 48, 2, 4, 1, 1, 64)
}

fn device() -> Device {
    Device::flex()
}

/// A deterministic pseudo-text: a repeated pattern with some noise, over a 64-token vocabulary.
fn stream(len: usize, seed: u32) -> Vec<u32> {
    let mut x = seed.wrapping_mul(2_654_435_761).wrapping_add(1);
    (0..len)
        .map(|i| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            if x.is_multiple_of(4) {
                x % 64
            } else {
                ((i as u32 * 7 + seed) % 13) + 3 * (seed % 5)
            }
        })
        .collect()
}

fn anchor_with_router() -> (Checkpoint, String) {
    let mut anchor = init_anchor(&tiny_config(), 7).unwrap();
    set_public_router(&mut anchor, &stream(512, 1), 32, 512, &device()).unwrap();
    let digest = anchor.digest().unwrap();
    (anchor, digest)
}

fn quick_opts(steps: u64) -> TrainOptions {
    TrainOptions {
        steps,
        batch_size: 4,
        seq_len: 32,
        lr: 5e-3,
        warmup: 2,
        eval_tokens: 256,
        // These pseudo-texts share most of their patterns with the public one,
        // and the anchor is untrained: holding the expert to the public FFN on
        // public text would leave it nothing to learn. The term has its own test.
        public_match_weight: 0.0,
        ..TrainOptions::default()
    }
}

fn train(anchor: &Checkpoint, digest: &str, seed: u32, steps: u64) -> ExpertPackage {
    let data = stream(2_000, seed);
    let held = stream(300, seed + 100);
    let public = stream(2_000, 1);
    train_expert(
        anchor,
        digest,
        &data,
        Some(&held),
        Some(&public),
        &quick_opts(steps),
        &device(),
        &mut |_| {},
    )
    .unwrap()
}

#[test]
fn too_little_training_text_is_refused_with_its_size() {
    let (anchor, digest) = anchor_with_router();
    let opts = quick_opts(1);
    for len in [0, 5, 32] {
        let err = train_expert(
            &anchor,
            &digest,
            &stream(len, 3),
            None,
            Some(&stream(2_000, 1)),
            &opts,
            &device(),
            &mut |_| {},
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains(&format!("has {len} tokens")) && err.contains("33 are needed"),
            "{err}"
        );
    }
    // One sequence and its next token are enough.
    train_with(&anchor, &digest, &stream(33, 3), &stream(2_000, 1), &opts);
}

/// An expert trained on `data` with `opts`, calibrated against `public`, no held-out text.
fn train_with(
    anchor: &Checkpoint,
    digest: &str,
    data: &[u32],
    public: &[u32],
    opts: &TrainOptions,
) -> ExpertPackage {
    train_expert(
        anchor,
        digest,
        data,
        None,
        Some(public),
        opts,
        &device(),
        &mut |_| {},
    )
    .unwrap()
}

fn logits(ckpt: &Checkpoint, tokens: &[u32]) -> Vec<f32> {
    let m = FlexOlmo::from_tensors(&ckpt.config, &ckpt.tensors, &device()).unwrap();
    m.logits(tokens, 1, &mut Trace::default())
        .unwrap()
        .into_data()
        .try_into_vec_as::<f32>()
        .unwrap()
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

#[test]
fn training_changes_only_the_expert_and_is_deterministic() {
    let (anchor, digest) = anchor_with_router();
    let e1 = train(&anchor, &digest, 3, 12);
    let e1_again = train(&anchor, &digest, 3, 12);
    assert_eq!(
        e1.digest(),
        e1_again.digest(),
        "same seed and data must give the same expert"
    );

    // The package holds exactly the expert tensors.
    let expected: Vec<String> = tributary_model::expert::expected_expert_shapes(&anchor.config)
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    let got: Vec<String> = e1.tensors.0.keys().cloned().collect();
    assert_eq!(got, expected);

    // The trained FFN moved away from the public one.
    let public = anchor
        .tensors
        .get(&names::expert(0, 0, "gate_proj"))
        .unwrap();
    let own = e1.tensors.get(&names::package_ffn(0, "gate_proj")).unwrap();
    assert!(max_abs_diff(&public.data, &own.data) > 1e-4);

    // Every shared tensor of a merged model is the anchor's, bit for bit.
    let merged = merge(&anchor, &digest, std::slice::from_ref(&e1), 2).unwrap();
    for (name, t) in &anchor.tensors.0 {
        if names::is_shared(name) || name.contains(".experts.0.") {
            assert_eq!(
                merged.tensors.get(name).unwrap(),
                t,
                "{name} differs from the anchor"
            );
        }
    }
    // Held-out loss went down on this (learnable) stream.
    let m = &e1.manifest.training;
    assert!(
        m.heldout_loss.unwrap() < m.anchor_heldout_loss.unwrap(),
        "{m:?}"
    );
    // The calibrated router row prefers the expert on its own text and the
    // public expert on public text.
    assert!(m.router_own_positive.unwrap() > 0.9, "{m:?}");
    assert!(m.router_public_positive.unwrap() < 0.1, "{m:?}");
    // The learned bias of every layer is recorded, and training moved it from 0.
    let bias = m.router_bias.as_ref().unwrap();
    assert_eq!(bias.len(), anchor.config.num_hidden_layers, "{m:?}");
    assert!(bias.iter().all(|b| b.is_finite() && *b != 0.0), "{bias:?}");
    // The manifest says how: the default objective, with the public sample.
    let r = m.recipe.as_ref().unwrap();
    let opts = quick_opts(12);
    assert_eq!(r.router_init, "logistic");
    assert_eq!(r.public_loss_weight, opts.public_loss_weight);
    assert_eq!(r.router_calibration_weight, opts.router_calibration_weight);
    assert_eq!((r.warmup, r.z_loss_weight), (2, opts.z_loss_weight));
    assert_eq!(r.calibration_tokens, Some(2_000));
    let sample = r.calibration_sha256.as_deref().unwrap();
    assert_eq!(
        sample,
        train(&anchor, &digest, 4, 1)
            .manifest
            .training
            .recipe
            .unwrap()
            .calibration_sha256
            .unwrap()
    );
    assert_eq!(sample.len(), 64);
}

#[test]
fn without_public_text_the_manifest_records_flexolmos_recipe() {
    let (anchor, digest) = anchor_with_router();
    let expert = train_expert(
        &anchor,
        &digest,
        &stream(2_000, 3),
        None,
        None,
        // Asked for, but without public text neither public term can apply.
        &TrainOptions {
            public_match_weight: 4.0,
            ..quick_opts(2)
        },
        &device(),
        &mut |_| {},
    )
    .unwrap();
    let t = &expert.manifest.training;
    let r = t.recipe.as_ref().unwrap();
    assert_eq!(r.router_init, "mean-router-input");
    assert_eq!(
        (
            r.public_loss_weight,
            r.public_match_weight,
            r.router_calibration_weight
        ),
        (0.0, 0.0, 0.0)
    );
    assert_eq!(
        (r.calibration_tokens, r.calibration_sha256.as_deref()),
        (None, None)
    );
    assert_eq!(
        (t.router_own_positive, t.router_public_positive),
        (None, None)
    );
    // The record survives the package's round trip through disk.
    let dir = tempfile::tempdir().unwrap();
    expert.save(dir.path()).unwrap();
    let back = ExpertPackage::load(dir.path()).unwrap();
    assert_eq!(back.manifest.training, *t);
}

#[test]
fn removing_every_expert_gives_back_the_anchor_exactly() {
    let (anchor, digest) = anchor_with_router();
    let experts = vec![train(&anchor, &digest, 1, 4), train(&anchor, &digest, 2, 4)];
    let merged = merge(&anchor, &digest, &experts, 2).unwrap();
    assert_eq!(merged.config.num_experts, 3);
    let back = select_experts(&merged, &[0], 1).unwrap();
    assert_eq!(back.tensors, anchor.tensors);
    let toks = stream(40, 9);
    assert_eq!(logits(&back, &toks), logits(&anchor, &toks));

    // Opting out of expert 1 equals merging expert 2 alone.
    let without_first = select_experts(&merged, &[0, 2], 2).unwrap();
    let only_second = merge(&anchor, &digest, &experts[1..], 2).unwrap();
    assert_eq!(without_first.tensors, only_second.tensors);
}

#[test]
fn merge_rejects_foreign_and_duplicate_experts() {
    let (anchor, digest) = anchor_with_router();
    let e = train(&anchor, &digest, 1, 2);
    assert!(
        merge(
            &anchor,
            "0".repeat(64).as_str(),
            std::slice::from_ref(&e),
            2
        )
        .is_err()
    );
    assert!(merge(&anchor, &digest, &[e.clone(), e.clone()], 2).is_err());
    let merged = merge(&anchor, &digest, std::slice::from_ref(&e), 2).unwrap();
    assert!(
        merge(&merged, &digest, std::slice::from_ref(&e), 2).is_err(),
        "a merged model is not an anchor"
    );
    assert!(select_experts(&merged, &[0, 5], 2).is_err());
    assert!(select_experts(&merged, &[1, 1], 2).is_err());
    assert!(select_experts(&merged, &[], 2).is_err());
}

#[test]
fn identical_experts_with_all_active_reproduce_the_anchor() {
    // With every expert a copy of the public FFN and all experts active, the
    // un-renormalised probabilities still sum to one: the output is the anchor's.
    let (anchor, digest) = anchor_with_router();
    let mut e = train(&anchor, &digest, 1, 1);
    for l in 0..anchor.config.num_hidden_layers {
        for p in names::FFN_PROJS {
            let public = anchor.tensors.get(&names::expert(l, 0, p)).unwrap().clone();
            e.tensors.insert(names::package_ffn(l, p), public);
        }
    }
    let e = ExpertPackage::new(
        &anchor.config,
        digest.clone(),
        e.tensors,
        e.manifest.training,
    )
    .unwrap();
    let merged = merge(&anchor, &digest, &[e], 2).unwrap();
    let toks = stream(50, 4);
    let d = max_abs_diff(&logits(&merged, &toks), &logits(&anchor, &toks));
    assert!(d < 1e-4, "max difference {d}");
    // With top-1 of 2 the output differs (the weight is no longer 1).
    let top1 = select_experts(&merged, &[0, 1], 1).unwrap();
    assert!(max_abs_diff(&logits(&top1, &toks), &logits(&anchor, &toks)) > 1e-4);
}

#[test]
fn checkpoints_and_packages_round_trip_and_detect_tampering() {
    let (anchor, digest) = anchor_with_router();
    let e = train(&anchor, &digest, 1, 2);
    let dir = tempfile::tempdir().unwrap();
    let edir = dir.path().join("expert");
    e.save(&edir).unwrap();
    let back = ExpertPackage::load(&edir).unwrap();
    assert_eq!(back.tensors, e.tensors);
    assert_eq!(back.manifest, e.manifest);

    // Flip one byte of the payload: the digest check must catch it.
    let payload = edir.join("expert.safetensors");
    let mut bytes = std::fs::read(&payload).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    std::fs::write(&payload, &bytes).unwrap();
    let err = ExpertPackage::load(&edir).unwrap_err().to_string();
    assert!(err.contains("sha256"), "{err}");

    // A merged checkpoint loads back identically (tokenizer copying is skipped: no source dir).
    let merged = merge(&anchor, &digest, &[e], 2).unwrap();
    let mdir = dir.path().join("merged");
    merged.save(&mdir, None).unwrap();
    let loaded = Checkpoint::load(&mdir).unwrap();
    assert_eq!(loaded.tensors, merged.tensors);
    assert_eq!(loaded.config, merged.config);
}

#[test]
fn soup_of_no_change_is_the_anchor() {
    let (anchor, digest) = anchor_with_router();
    let mut e = train(&anchor, &digest, 1, 1);
    for l in 0..anchor.config.num_hidden_layers {
        for p in names::FFN_PROJS {
            e.tensors.insert(
                names::package_ffn(l, p),
                anchor.tensors.get(&names::expert(l, 0, p)).unwrap().clone(),
            );
        }
    }
    let e = ExpertPackage::new(
        &anchor.config,
        digest.clone(),
        e.tensors,
        e.manifest.training,
    )
    .unwrap();
    let s = soup(&anchor, &digest, &[e]).unwrap();
    for (name, t) in &anchor.tensors.0 {
        let d = max_abs_diff(&s.tensors.get(name).unwrap().data, &t.data);
        assert!(d < 1e-6, "{name}: {d}");
    }
}

/// Settings of the small pretraining runs below.
fn pretrain_opts(steps: u64) -> TrainOptions {
    TrainOptions {
        steps,
        batch_size: 4,
        seq_len: 32,
        lr: 1e-2,
        warmup: 2,
        eval_tokens: 400,
        ..TrainOptions::default()
    }
}

#[test]
fn pretraining_lowers_loss_and_resumes_to_the_same_weights() {
    let config = tiny_config();
    let data = stream(3_000, 2);
    let held = stream(400, 50);
    let opts = pretrain_opts(8);
    let start = init_anchor(&config, 1).unwrap();
    let before = {
        let m = FlexOlmo::from_tensors(&config, &start.tensors, &device()).unwrap();
        evaluate(&m, &held, 32, 4, &mut |_, _| {}).unwrap().nll
    };
    let run = |start: Checkpoint, resume, dir: Option<&std::path::Path>| {
        let r = run_of(start, resume, &opts, dir, 4, 0);
        pretrain(r, &data, Some(&held), &device(), &mut |_| {})
            .unwrap()
            .finished()
            .unwrap()
    };
    let (full, loss) = run(start.clone(), None, None);
    assert!(
        loss.unwrap() < before,
        "held-out loss {loss:?} did not drop below {before}"
    );

    // A run that saves its state at step 4; resuming from that state must end
    // exactly where the uninterrupted run ended.
    let dir = tempfile::tempdir().unwrap();
    let r = run_of(start.clone(), None, &opts, Some(dir.path()), 4, 0);
    let mut seen = 0;
    pretrain(r, &data, Some(&held), &device(), &mut |s| seen = s.step)
        .unwrap()
        .finished()
        .unwrap();
    assert_eq!(seen, 8);
    let (ckpt, moments, state) = load_resume(dir.path())
        .unwrap()
        .expect("a resumable checkpoint at step 4");
    assert_eq!(state.step, 4);
    let (resumed, _) = run(ckpt, Some((moments, state)), None);
    for (name, t) in &full.tensors.0 {
        let d = max_abs_diff(&resumed.tensors.get(name).unwrap().data, &t.data);
        assert!(d < 1e-5, "{name} differs after resume by {d}");
    }
}

type Saved = Option<(tributary_model::weights::TensorMap, TrainerState)>;

fn assert_bit_identical(want: &Checkpoint, got: &Checkpoint) {
    assert_eq!(want.tensors.0.len(), got.tensors.0.len());
    for (name, t) in &want.tensors.0 {
        let g = &got.tensors.get(name).unwrap().data;
        assert_eq!(g.len(), t.data.len(), "{name}");
        assert!(
            g.iter()
                .zip(&t.data)
                .all(|(a, b)| a.to_bits() == b.to_bits()),
            "{name} differs after pause and resume"
        );
    }
}

fn sorted_listing(d: &std::path::Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(d)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// Resumes the state in `dir` (saving every 2 steps) to the end of an 8-step
/// run, which must give `full`'s weights and leave only step 6's state.
fn resume_to_the_end(dir: &std::path::Path, data: &[u32], opts: &TrainOptions, full: &Checkpoint) {
    let (ckpt, moments, state) = load_resume(dir).unwrap().unwrap();
    let run = paused_run(ckpt, Some((moments, state)), opts, Some(dir), None);
    let (resumed, _) = pretrain(run, data, None, &device(), &mut |_| {})
        .unwrap()
        .finished()
        .unwrap();
    assert_bit_identical(full, &resumed);
    assert_eq!(
        sorted_listing(&dir.join(RESUME_DIR)),
        ["step-00000006", "trainer_state.json"]
    );
}

/// A pretraining run that neither pauses nor records its invocation.
fn run_of<'a>(
    start: Checkpoint,
    resume: Saved,
    opts: &TrainOptions,
    dir: Option<&'a std::path::Path>,
    checkpoint_every: u64,
    context_heads: usize,
) -> PretrainRun<'a> {
    PretrainRun {
        start,
        resume,
        opts: opts.clone(),
        out_dir: dir,
        checkpoint_every,
        tokenizer_dir: None,
        context_heads,
        pause_at: None,
        invocation: None,
        settings: None,
    }
}

/// A run saving every 2 steps that may pause, recording its invocation and settings.
fn paused_run<'a>(
    start: Checkpoint,
    resume: Saved,
    opts: &TrainOptions,
    dir: Option<&'a std::path::Path>,
    pause_at: Option<u64>,
) -> PretrainRun<'a> {
    PretrainRun {
        pause_at,
        invocation: Some(format!("pause at {pause_at:?}")),
        settings: Some(serde_json::json!({ "lr": opts.lr })),
        ..run_of(start, resume, opts, dir, 2, 0)
    }
}

#[test]
fn a_paused_run_resumes_exactly_and_a_half_saved_state_is_never_loaded() {
    let config = tiny_config();
    let data = stream(3_000, 2);
    let opts = pretrain_opts(8);
    let start = init_anchor(&config, 1).unwrap();
    let go = |run: PretrainRun<'_>| pretrain(run, &data, None, &device(), &mut |_| {});
    let (full, _) = go(paused_run(start.clone(), None, &opts, None, None))
        .unwrap()
        .finished()
        .unwrap();

    // Saves every 2 steps and a pause at 3: the state at 3 is what remains.
    let dir = tempfile::tempdir().unwrap();
    let resume_dir = dir.path().join(RESUME_DIR);
    let outcome = go(paused_run(
        start.clone(),
        None,
        &opts,
        Some(dir.path()),
        Some(3),
    ))
    .unwrap();
    assert!(
        matches!(outcome, Pretrained::Paused { step: 3 }),
        "{outcome:?}"
    );
    let listing = sorted_listing;
    assert_eq!(
        listing(&resume_dir),
        ["step-00000003", "trainer_state.json"]
    );
    let (_, _, state) = load_resume(dir.path()).unwrap().unwrap();
    assert_eq!(state.step, 3);
    assert_eq!(state.invocations, ["pause at Some(3)"]);
    assert_eq!(state.settings, Some(serde_json::json!({ "lr": opts.lr })));

    // A run killed while saving step 4 leaves that step's directory half
    // written; the state file still names step 3, and that is what loads.
    let half = resume_dir.join("step-00000004");
    std::fs::create_dir_all(&half).unwrap();
    std::fs::write(half.join("model.safetensors"), b"truncated").unwrap();
    std::fs::write(half.join("stray.partial"), b"").unwrap();
    let (ckpt, moments, state) = load_resume(dir.path()).unwrap().unwrap();
    assert_eq!(state.step, 3);

    // Resuming and pausing again at 4 saves step 4 afresh: the leftover
    // directory is replaced, not written over.
    let outcome = go(paused_run(
        ckpt,
        Some((moments, state.clone())),
        &opts,
        Some(dir.path()),
        Some(4),
    ))
    .unwrap();
    assert!(
        matches!(outcome, Pretrained::Paused { step: 4 }),
        "{outcome:?}"
    );
    assert_eq!(
        listing(&resume_dir),
        ["step-00000004", "trainer_state.json"]
    );
    assert!(!listing(&half).contains(&"stray.partial".to_owned()));

    // Resuming again saves step 6 and ends exactly where the uninterrupted
    // run ended.
    resume_to_the_end(dir.path(), &data, &opts, &full);
    let (ckpt, moments, last) = load_resume(dir.path()).unwrap().unwrap();
    assert_eq!(last.step, 6);
    assert_eq!(
        last.invocations,
        ["pause at Some(3)", "pause at Some(4)", "pause at None"]
    );
    assert!(last.seconds > state.seconds);

    // A state is refused by a run of other steps or another seed, and a
    // pause must fall inside the run and have somewhere to save.
    let mut longer = opts.clone();
    longer.steps = 9;
    let err = go(paused_run(
        ckpt.clone(),
        Some((moments, last)),
        &longer,
        None,
        None,
    ))
    .unwrap_err();
    assert!(
        err.to_string().contains("run of 8 steps with seed 0"),
        "{err}"
    );
    let err = go(paused_run(
        start.clone(),
        None,
        &opts,
        Some(dir.path()),
        Some(8),
    ))
    .unwrap_err();
    assert!(err.to_string().contains("cannot pause at step 8"), "{err}");
    let err = go(paused_run(start, None, &opts, None, Some(2))).unwrap_err();
    assert!(err.to_string().contains("a directory to save"), "{err}");
}

#[test]
fn a_state_saved_in_the_layout_before_step_directories_still_resumes() {
    let config = tiny_config();
    let data = stream(3_000, 2);
    let opts = pretrain_opts(8);
    let start = init_anchor(&config, 1).unwrap();
    let go = |run: PretrainRun<'_>| pretrain(run, &data, None, &device(), &mut |_| {});
    let (full, _) = go(run_of(start.clone(), None, &opts, None, 0, 0))
        .unwrap()
        .finished()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let resume_dir = dir.path().join(RESUME_DIR);
    go(paused_run(start, None, &opts, Some(dir.path()), Some(3))).unwrap();
    // Rewrite it as older versions saved it: the files directly in resume/,
    // and a state file without the fields added since.
    let step = resume_dir.join("step-00000003");
    for name in sorted_listing(&step) {
        std::fs::rename(step.join(&name), resume_dir.join(&name)).unwrap();
    }
    std::fs::remove_dir(&step).unwrap();
    std::fs::write(
        resume_dir.join("trainer_state.json"),
        r#"{"step": 3, "total_steps": 8, "seed": 0, "last_eval_loss": null}"#,
    )
    .unwrap();
    let (_, _, state) = load_resume(dir.path()).unwrap().unwrap();
    assert_eq!((state.step, state.dir.as_deref()), (3, None));
    assert!(state.invocations.is_empty() && state.settings.is_none());
    // Saving in the new layout removes the old files.
    resume_to_the_end(dir.path(), &data, &opts, &full);
    // The unrecorded start stays first in every later state.
    let (_, _, last) = load_resume(dir.path()).unwrap().unwrap();
    assert_eq!(last.invocations, [UNRECORDED_INVOCATION, "pause at None"]);
}

#[test]
fn context_heads_keep_zero_queries_through_training_and_resume() {
    let config = tiny_config();
    let data = stream(3_000, 2);
    let held = stream(400, 50);
    let opts = pretrain_opts(6);
    let start = init_anchor(&config, 3).unwrap();
    let hd = config.head_dim();
    let run = |start: Checkpoint, resume, dir: Option<&std::path::Path>, heads| {
        let r = run_of(start, resume, &opts, dir, 3, heads);
        pretrain(r, &data, Some(&held), &device(), &mut |_| {})
            .unwrap()
            .finished()
            .unwrap()
    };
    let dir = tempfile::tempdir().unwrap();
    let (plain, _) = run(start.clone(), None, None, 0);
    // This run also leaves a resumable state at step 3.
    let (ctx, loss) = run(start.clone(), None, Some(dir.path()), 1);
    assert!(loss.unwrap().is_finite());
    for l in 0..config.num_hidden_layers {
        let name = names::attn(l, "q_proj");
        let q = ctx.tensors.get(&name).unwrap();
        let [_, cols] = q.dims2().unwrap();
        let (head0, rest) = q.data.split_at(hd * cols);
        assert!(
            head0.iter().all(|&v| v == 0.0),
            "{name}: head 0 query moved"
        );
        let before = &start.tensors.get(&name).unwrap().data[hd * cols..];
        assert!(
            max_abs_diff(rest, before) > 1e-4,
            "{name}: the other heads did not train"
        );
        // Without context heads, head 0's query trains like any other.
        let p = plain.tensors.get(&name).unwrap();
        assert!(p.data[..hd * cols].iter().any(|&v| v != 0.0));
    }

    // Resuming a context-head run ends where the uninterrupted one ended.
    let (ckpt, moments, state) = load_resume(dir.path()).unwrap().unwrap();
    let (resumed, _) = run(ckpt, Some((moments, state)), None, 1);
    for (name, t) in &ctx.tensors.0 {
        let d = max_abs_diff(&resumed.tensors.get(name).unwrap().data, &t.data);
        assert!(d < 1e-5, "{name} differs after resume by {d}");
    }

    // More context heads than heads is an error, not a panic.
    let r = run_of(start, None, &opts, None, 0, config.num_attention_heads + 1);
    let err = pretrain(r, &data, None, &device(), &mut |_| {}).unwrap_err();
    assert!(err.to_string().contains("context heads"), "{err}");
}

fn fixture_dir(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

#[test]
fn logprobs_agree_with_transformers_on_reference_fixtures() {
    for name in ["tiny-moe", "tiny-dense"] {
        let dir = fixture_dir(name);
        let ckpt = Checkpoint::load(&dir).unwrap();
        let model = FlexOlmo::from_tensors(&ckpt.config, &ckpt.tensors, &device()).unwrap();
        let expected: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("expected.json")).unwrap())
                .unwrap();
        let cases = expected["sequences"].as_array().expect("sequences");
        assert!(!cases.is_empty());
        for case in cases {
            let ids: Vec<u32> = case["tokens"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_u64().unwrap() as u32)
                .collect();
            let want: Vec<f64> = case["logprobs"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_f64().unwrap())
                .collect();
            let got = next_token_logprobs(&model, &ids, 1, &mut Trace::default()).unwrap();
            assert_eq!(got.len(), want.len());
            let worst = got
                .iter()
                .zip(&want)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0, f64::max);
            assert!(
                worst < 2e-4,
                "{name}: per-token log-prob differs by {worst}"
            );
            let nll_got = -got.iter().sum::<f64>() / got.len() as f64;
            let nll_want = -want.iter().sum::<f64>() / want.len() as f64;
            let rel = (nll_got.exp() / nll_want.exp() - 1.0).abs();
            assert!(rel < 1e-3, "{name}: perplexity differs by {rel} relative");
        }
    }
}

#[test]
fn bad_inputs_are_errors_not_panics() {
    let (anchor, _) = anchor_with_router();
    let m = FlexOlmo::from_tensors(&anchor.config, &anchor.tensors, &device()).unwrap();
    assert!(
        m.logits(&[1, 2, 999], 1, &mut Trace::default()).is_err(),
        "token outside the vocabulary"
    );
    assert!(
        m.logits(&[1, 2, 3], 2, &mut Trace::default()).is_err(),
        "rows of unequal length"
    );
    assert!(
        m.logits(&vec![1; 65], 1, &mut Trace::default()).is_err(),
        "longer than the context"
    );
    assert!(
        evaluate(&m, &[1], 32, 4, &mut |_, _| {}).is_err(),
        "nothing to score"
    );
    // A row's last token is only a target: it never reaches the forward pass,
    // and must still be refused rather than crash the scorer or the loss.
    assert!(
        next_token_logprobs(&m, &[1, 2, 999], 1, &mut Trace::default()).is_err(),
        "target outside the vocabulary"
    );
    assert!(
        lm_loss_traced(&m, &[1, 2, 999], 1, &mut Trace::default()).is_err(),
        "loss target outside the vocabulary"
    );
    let mut broken = anchor.tensors.clone();
    broken.0.remove(names::NORM);
    assert!(FlexOlmo::from_tensors(&anchor.config, &broken, &device()).is_err());
}

#[test]
fn a_public_loss_keeps_the_expert_from_harming_public_text() {
    let (anchor, digest) = anchor_with_router();
    let data = stream(2_000, 3);
    let public = stream(2_000, 1);
    let public_heldout = stream(600, 1);
    let public_ppl = |weight: f64| {
        let opts = TrainOptions {
            public_loss_weight: weight,
            public_match_weight: 0.0,
            ..quick_opts(30)
        };
        let expert = train_with(&anchor, &digest, &data, &public, &opts);
        let merged = merge(&anchor, &digest, std::slice::from_ref(&expert), 2).unwrap();
        let model = FlexOlmo::from_tensors(&merged.config, &merged.tensors, &device()).unwrap();
        evaluate(&model, &public_heldout, 32, 4, &mut |_, _| {})
            .unwrap()
            .perplexity
    };
    let own_only = public_ppl(0.0);
    let with_public = public_ppl(1.0);
    assert!(
        with_public < own_only,
        "public perplexity {with_public} with the public loss, {own_only} without"
    );
}

/// `Trace::expert_gaps` of every layer of `model` on `tokens` (one row).
fn expert_gaps(model: &FlexOlmo, tokens: &[u32]) -> Vec<f32> {
    let mut trace = Trace {
        expert_gaps: Some(Vec::new()),
        ..Trace::default()
    };
    model.hidden(tokens, 1, &mut trace).unwrap();
    trace
        .expert_gaps
        .unwrap()
        .into_iter()
        .map(|g| g.into_scalar::<f32>())
        .collect()
}

#[test]
fn expert_gaps_measure_how_far_experts_stray_from_the_first() {
    let (anchor, _) = anchor_with_router();
    let mut model = FlexOlmo::from_tensors(&anchor.config, &anchor.tensors, &device()).unwrap();
    let text = stream(32, 5);
    assert!(
        expert_gaps(&model, &text).is_empty(),
        "one expert: nothing to compare"
    );
    // A copy of the public expert, then one whose down projection is doubled
    // (so its output is exactly twice the public one: a relative gap of 1).
    for layer in model.layers.iter_mut() {
        let public = layer.experts[0].clone();
        layer.router = burn::tensor::Tensor::cat(vec![layer.router.clone(); 2], 1);
        layer.experts = vec![public.clone(), public];
    }
    model.config.num_experts = 2;
    model.top_k = 2;
    let same = expert_gaps(&model, &text);
    assert_eq!(same.len(), anchor.config.num_hidden_layers);
    for (l, g) in same.iter().enumerate() {
        assert!(g.abs() < 1e-6, "layer {l}: identical experts, gap {g}");
    }
    for layer in model.layers.iter_mut() {
        layer.experts[1].down = layer.experts[1].down.clone().mul_scalar(2.0);
    }
    for (l, g) in expert_gaps(&model, &text).iter().enumerate() {
        assert!((g - 1.0).abs() < 1e-4, "layer {l}: doubled expert, gap {g}");
    }
    // With top-k below the number of experts no gap is measured (the experts
    // do not all see every token).
    model.top_k = 1;
    assert!(expert_gaps(&model, &text).is_empty());
}

#[test]
fn a_public_match_term_keeps_the_expert_close_to_the_public_ffn_on_public_text() {
    let (anchor, digest) = anchor_with_router();
    let data = stream(2_000, 3);
    let public = stream(2_000, 1);
    let public_heldout = stream(256, 1);
    let trained_with = |weight: f64, public_loss: f64| {
        let opts = TrainOptions {
            public_match_weight: weight,
            public_loss_weight: public_loss,
            ..quick_opts(30)
        };
        let expert = train_with(&anchor, &digest, &data, &public, &opts);
        let recipe = expert.manifest.training.recipe.clone().unwrap();
        assert_eq!(recipe.public_match_weight, weight);
        let merged = merge(&anchor, &digest, std::slice::from_ref(&expert), 2).unwrap();
        let model = FlexOlmo::from_tensors(&merged.config, &merged.tensors, &device()).unwrap();
        let gaps = expert_gaps(&model, &public_heldout[..64]);
        let ppl = evaluate(&model, &public_heldout, 32, 4, &mut |_, _| {})
            .unwrap()
            .perplexity;
        (gaps.iter().sum::<f32>() / gaps.len() as f32, ppl)
    };
    let trained = |weight: f64| trained_with(weight, TrainOptions::default().public_loss_weight);
    let plain = FlexOlmo::from_tensors(&anchor.config, &anchor.tensors, &device()).unwrap();
    let anchor_ppl = evaluate(&plain, &public_heldout, 32, 4, &mut |_, _| {})
        .unwrap()
        .perplexity;
    let (gap_off, ppl_off) = trained(0.0);
    let (gap_on, ppl_on) = trained(16.0);
    assert!(gap_off > 0.0, "training moved the expert: gap {gap_off}");
    assert!(
        gap_on < 0.5 * gap_off,
        "mean gap on public text {gap_on} with the term, {gap_off} without"
    );
    // The term works on its own too (the public batch then skips the LM head).
    let (gap_alone, _) = trained_with(16.0, 0.0);
    assert!(
        gap_alone < 0.5 * gap_off,
        "mean gap on public text {gap_alone} with the term alone, {gap_off} without it"
    );
    // The merged model then treats public text more as the anchor does.
    let off_by = |ppl: f64| (ppl / anchor_ppl - 1.0).abs();
    assert!(
        off_by(ppl_on) < off_by(ppl_off),
        "public perplexity {ppl_on} with the term, {ppl_off} without, {anchor_ppl} for the anchor"
    );
}

#[test]
fn a_gaussian_router_row_is_used_and_can_be_kept_fixed() {
    let (anchor, digest) = anchor_with_router();
    let data = stream(2_000, 3);
    let public = stream(2_000, 1);
    let opts = TrainOptions {
        router_gaussian_scale: 0.5,
        router_lr_scale: 0.0,
        router_calibration_weight: 0.0,
        ..quick_opts(5)
    };
    let expert = train_with(&anchor, &digest, &data, &public, &opts);
    let r = expert.manifest.training.recipe.as_ref().unwrap();
    assert_eq!(r.router_init, "gaussian");
    assert_eq!((r.router_gaussian_scale, r.router_lr_scale), (0.5, 0.0));
    assert_eq!(r.router_calibration_weight, 0.0);
    let plain = FlexOlmo::from_tensors(&anchor.config, &anchor.tensors, &device()).unwrap();
    let own = router_features(&plain, &data, 32, opts.calibration_tokens).unwrap();
    let reference = router_features(&plain, &public, 32, opts.calibration_tokens).unwrap();
    let fits = fit_gaussian_offsets(&own, &reference, opts.router_l2, true).unwrap();
    for (l, fit) in fits.iter().enumerate() {
        let r_pub = &anchor.tensors.get(&names::router(l)).unwrap().data;
        let row = &expert.tensors.get(&names::package_router(l)).unwrap().data;
        let norm: f32 = fit.offset.iter().map(|v| v * v).sum::<f32>().sqrt();
        assert!(norm > 0.0, "layer {l}: empty Gaussian offset");
        for ((got, base), w) in row.iter().zip(r_pub).zip(&fit.offset) {
            let want = base + 0.5 * w;
            assert!(
                (got - want).abs() <= 1e-5 * want.abs().max(1.0),
                "layer {l}: row {got}, expected {want}"
            );
        }
    }
}

#[test]
fn joint_calibration_from_statistics_refits_only_the_contributed_rows() {
    use tributary_model::calibrate::{
        DEFAULT_FOLD, DEFAULT_RIDGE, Fold, RouterStats, recalibrate, refit_rows,
    };
    use tributary_model::router::{RouterFeatures, fit_gaussian_offsets_with};

    let (anchor, digest) = anchor_with_router();
    let texts = [stream(2_000, 3), stream(2_000, 4)];
    let public = stream(2_000, 1);
    let experts: Vec<ExpertPackage> = texts
        .iter()
        .map(|t| train_with(&anchor, &digest, t, &public, &quick_opts(10)))
        .collect();
    let merged = merge(&anchor, &digest, &experts, 2).unwrap();
    let merged_digest = merged.digest().unwrap();
    let (seq, tokens) = (32, 1_024);

    // Statistics measured apart, each stored and read back as a contributor would send them.
    let measure = |expert: usize, text: &[u32]| {
        let s = RouterStats::measure(
            &merged,
            &merged_digest,
            expert,
            text,
            seq,
            tokens,
            &device(),
        )
        .unwrap();
        RouterStats::from_bytes(&s.to_bytes().unwrap()).unwrap()
    };
    let public_stats = measure(0, &public);
    let own_stats: Vec<RouterStats> = texts
        .iter()
        .enumerate()
        .map(|(i, t)| measure(i + 1, t))
        .collect();
    let refitted = refit_rows(
        &merged,
        &merged_digest,
        &public_stats,
        &own_stats,
        DEFAULT_RIDGE,
        Fold::OwnAndPublic,
    )
    .unwrap();

    // The same rows as the fit on the raw router inputs with the pooled covariance.
    let net = FlexOlmo::from_tensors(&merged.config, &merged.tensors, &device()).unwrap();
    let public_f = router_features(&net, &public, seq, tokens).unwrap();
    let own_f: Vec<RouterFeatures> = texts
        .iter()
        .map(|t| router_features(&net, t, seq, tokens).unwrap())
        .collect();
    let mut spread = public_f.centred();
    for f in &own_f {
        spread.append(&f.centred());
    }
    let h = merged.config.hidden_size;
    for (i, f) in own_f.iter().enumerate() {
        let fits = fit_gaussian_offsets_with(f, &public_f, &spread, DEFAULT_RIDGE, true).unwrap();
        for (l, fit) in fits.iter().enumerate() {
            let rows = &refitted.tensors.get(&names::router(l)).unwrap().data;
            let r_pub = &merged.tensors.get(&names::router(l)).unwrap().data[..h];
            for ((got, base), w) in rows[(i + 1) * h..(i + 2) * h]
                .iter()
                .zip(r_pub)
                .zip(&fit.offset)
            {
                let want = base + w;
                assert!(
                    (got - want).abs() <= 1e-3 * want.abs().max(1.0),
                    "layer {l} expert {}: {got} vs {want}",
                    i + 1
                );
            }
        }
    }

    // Only contributed router rows change: r_pub, FFNs and shared tensors stay bit for bit.
    for (name, t) in &merged.tensors.0 {
        let after = refitted.tensors.get(name).unwrap();
        if name.contains("mlp.gate.") {
            assert_eq!(after.data[..h], t.data[..h], "{name}: r_pub moved");
            assert_ne!(after.data[h..], t.data[h..], "{name}: rows not refitted");
        } else {
            assert_eq!(after, t, "{name} changed");
        }
    }

    // Layer l is exact after l + 1 rounds: one more round after L changes nothing.
    let layers = merged.config.num_hidden_layers;
    let owns: Vec<&[u32]> = texts.iter().map(Vec::as_slice).collect();
    let mut rounds = Vec::new();
    let settled = recalibrate(
        &merged,
        &public,
        &owns,
        layers,
        seq,
        tokens,
        &device(),
        &mut |r| {
            rounds.push(r);
        },
    )
    .unwrap();
    assert_eq!(rounds, (1..=layers).collect::<Vec<_>>());
    let again = recalibrate(
        &settled,
        &public,
        &owns,
        1,
        seq,
        tokens,
        &device(),
        &mut |_| {},
    )
    .unwrap();
    for l in 0..layers {
        let (a, b) = (
            &settled.tensors.get(&names::router(l)).unwrap().data,
            &again.tensors.get(&names::router(l)).unwrap().data,
        );
        assert!(
            max_abs_diff(a, b) <= 1e-4 * a.iter().fold(1.0f32, |m, v| m.max(v.abs())),
            "layer {l}"
        );
    }
    // Each contributor's text now goes to its own expert more than to the other's.
    let model = FlexOlmo::from_tensors(&settled.config, &settled.tensors, &device()).unwrap();
    for (i, t) in texts.iter().enumerate() {
        let r = evaluate(&model, &t[..1_024], seq, 4, &mut |_, _| {}).unwrap();
        let share = |e: usize| r.routing.iter().map(|l| l[e]).sum::<f64>();
        assert!(
            share(i + 1) > share(2 - i),
            "text {i}: routing {:?}",
            r.routing
        );
    }

    // Statistics of another model, or a missing contributor, are refused.
    let mut stale = own_stats.clone();
    stale[0].model = digest.clone();
    let err = refit_rows(
        &merged,
        &merged_digest,
        &public_stats,
        &stale,
        DEFAULT_RIDGE,
        DEFAULT_FOLD,
    )
    .unwrap_err();
    assert!(err.to_string().contains("measured on model"), "{err}");
    let err = refit_rows(
        &merged,
        &merged_digest,
        &public_stats,
        &own_stats[..1],
        DEFAULT_RIDGE,
        DEFAULT_FOLD,
    )
    .unwrap_err();
    assert!(
        err.to_string().contains("no statistics for expert(s) 2"),
        "{err}"
    );
}
