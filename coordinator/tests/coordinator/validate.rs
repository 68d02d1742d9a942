//! Streaming validation of expert uploads against the shipped anchor: a good
//! expert in any chunking, one crafted bad payload per reason code, the
//! order of the checks, the manifest signature and the quality gate.

use std::sync::{Arc, OnceLock};

use coordinator::validate::{
    AnchorReference, QualityGateConfig, RejectReason, Rejection, UploadValidator, ValidatedExpert,
    ValidationLimits, ValidationOutcome, load_expert, quality_gate, verify_manifest_signature,
};
use ed25519_dalek::SigningKey;
use rand::{Rng as _, SeedableRng as _, rngs::StdRng};
use tributary_ledger::event::{
    ExpertManifest, ExpertSubmitted, Figure, TensorDigest, TrainingMetadata,
};
use tributary_ledger::{
    ContributorId, Event, ExpertDigest, PublicKey, Sha256Digest, SignedEvent, SubmissionId,
};
use tributary_model::checkpoint::Checkpoint;
use tributary_model::names;
use tributary_model::weights::{HostTensor, TensorMap};

pub use crate::servers::anchor_dir;

/// The shipped anchor, loaded once.
pub fn anchor() -> &'static (Checkpoint, Arc<AnchorReference>) {
    static ANCHOR: OnceLock<(Checkpoint, Arc<AnchorReference>)> = OnceLock::new();
    ANCHOR.get_or_init(|| {
        let dir = anchor_dir();
        (
            Checkpoint::load(&dir).unwrap(),
            Arc::new(AnchorReference::load(&dir).unwrap()),
        )
    })
}

/// A plausible expert: the anchor's public FFN and `r_pub`, each value moved
/// by a seeded perturbation of a few percent of the tensor's RMS.
pub fn expert_tensors(seed: u64) -> TensorMap {
    let (ckpt, _) = anchor();
    let mut rng = StdRng::seed_from_u64(seed);
    let mut out = TensorMap::new();
    let mut perturbed = |t: &HostTensor, shape: Vec<usize>| {
        let rms = (t.l2_norm() / (t.data.len() as f64).sqrt()) as f32;
        let data = t
            .data
            .iter()
            .map(|v| v + rms * 0.05 * (rng.random::<f32>() - 0.5))
            .collect();
        HostTensor::new(shape, data).unwrap()
    };
    for l in 0..ckpt.config.num_hidden_layers {
        for proj in names::FFN_PROJS {
            let public = ckpt.tensors.get(&names::expert(l, 0, proj)).unwrap();
            out.insert(
                names::package_ffn(l, proj),
                perturbed(public, public.shape.clone()),
            );
        }
        let r_pub = ckpt.tensors.get(&names::router(l)).unwrap();
        out.insert(
            names::package_router(l),
            perturbed(r_pub, vec![ckpt.config.hidden_size]),
        );
    }
    out
}

/// One tensor of a hand-made safetensors file.
pub struct Raw {
    pub name: String,
    pub dtype: &'static str,
    pub shape: Vec<usize>,
    pub bytes: Vec<u8>,
}

/// The raw entries of a tensor map (`F32`).
pub fn raw_entries(tensors: &TensorMap) -> Vec<Raw> {
    tensors
        .0
        .iter()
        .map(|(n, t)| Raw {
            name: n.clone(),
            dtype: "F32",
            shape: t.shape.clone(),
            bytes: t.to_le_bytes(),
        })
        .collect()
}

/// Encodes entries (in the given order, contiguous) as safetensors, followed
/// by `trailing` bytes, and the manifest's honest per-tensor digests.
pub fn craft(entries: &[Raw], trailing: &[u8]) -> (Vec<u8>, Vec<TensorDigest>) {
    let mut header = serde_json::Map::new();
    let mut offset = 0usize;
    for e in entries {
        header.insert(
            e.name.clone(),
            serde_json::json!({
                "dtype": e.dtype,
                "shape": e.shape,
                "data_offsets": [offset, offset + e.bytes.len()],
            }),
        );
        offset += e.bytes.len();
    }
    let mut json = serde_json::to_vec(&header).unwrap();
    json.resize(json.len().next_multiple_of(8), b' ');
    let mut payload = (json.len() as u64).to_le_bytes().to_vec();
    payload.extend_from_slice(&json);
    for e in entries {
        payload.extend_from_slice(&e.bytes);
    }
    payload.extend_from_slice(trailing);
    let digests = entries
        .iter()
        .map(|e| TensorDigest {
            name: e.name.clone(),
            sha256: Sha256Digest::of(&e.bytes),
        })
        .collect();
    (payload, digests)
}

/// The manifest a contributor would sign for `payload`.
pub fn manifest(payload: &[u8], tensors: Vec<TensorDigest>) -> ExpertManifest {
    ExpertManifest {
        anchor: anchor().1.digest,
        tensors,
        total: ExpertDigest(Sha256Digest::of(payload)),
        training: TrainingMetadata {
            tokens: 1000,
            steps: 10,
            held_out_loss: Figure::from_f64(3.5).unwrap(),
        },
    }
}

/// A good expert's payload (as `tributary-model` writes it) and manifest.
pub fn good_upload(seed: u64) -> (Vec<u8>, ExpertManifest) {
    upload_of(&expert_tensors(seed))
}

/// `tensors` as a payload (as `tributary-model` writes it) and its manifest.
pub fn upload_of(tensors: &TensorMap) -> (Vec<u8>, ExpertManifest) {
    let payload = tensors.to_safetensors().unwrap();
    let digests = tensors
        .0
        .iter()
        .map(|(n, t)| TensorDigest {
            name: n.clone(),
            sha256: Sha256Digest::from_hex(&t.sha256()).unwrap(),
        })
        .collect();
    let m = manifest(&payload, digests);
    (payload, m)
}

fn run_with(
    payload: &[u8],
    manifest: ExpertManifest,
    declared: u64,
    limits: ValidationLimits,
    chunk: usize,
) -> ValidationOutcome {
    let mut v = UploadValidator::new(anchor().1.clone(), limits, manifest, declared).unwrap();
    for c in payload.chunks(chunk) {
        if let Err(r) = v.feed(c) {
            return ValidationOutcome::Rejected(r);
        }
    }
    v.finish()
}

fn run(payload: &[u8], manifest: ExpertManifest) -> ValidationOutcome {
    run_with(
        payload,
        manifest,
        payload.len() as u64,
        ValidationLimits::default(),
        64 * 1024 + 3,
    )
}

fn accepted(outcome: ValidationOutcome) -> ValidatedExpert {
    match outcome {
        ValidationOutcome::Accepted(v) => v,
        ValidationOutcome::Rejected(r) => panic!("expected acceptance, got {r}"),
    }
}

fn rejected(outcome: ValidationOutcome) -> Rejection {
    match outcome {
        ValidationOutcome::Rejected(r) => r,
        ValidationOutcome::Accepted(_) => panic!("expected a rejection"),
    }
}

/// Asserts the rejection's reason, that it is the last result and the only
/// failure, and which check failed.
fn assert_rejected(outcome: ValidationOutcome, reason: RejectReason, check: &str) -> Rejection {
    let r = rejected(outcome);
    assert_eq!(r.reason, reason, "{r}");
    let last = r.results.last().unwrap();
    assert_eq!(
        (last.check, last.passed, last.reason),
        (check, false, Some(reason))
    );
    assert!(r.results[..r.results.len() - 1].iter().all(|s| s.passed));
    r
}

const ALL_CHECKS: [&str; 7] = [
    "payload_size",
    "payload_sha256",
    "tensor_sha256",
    "anchor",
    "safetensors_header",
    "finite",
    "norm_ratio",
];

#[test]
fn a_good_expert_passes_every_check_in_order_whatever_the_chunking() {
    let (payload, m) = good_upload(1);
    let mut outcomes = Vec::new();
    for chunk in [1usize, 3, 4093, 1 << 20, payload.len()] {
        // Byte-by-byte only over a prefix-sized run would be slow at opt-level 1;
        // the whole 2 MB payload is fine.
        outcomes.push(accepted(run_with(
            &payload,
            m.clone(),
            payload.len() as u64,
            ValidationLimits::default(),
            chunk,
        )));
    }
    let v = &outcomes[0];
    assert!(outcomes.iter().all(|o| o == v));
    assert_eq!(v.digest, m.total);
    assert_eq!(v.size, payload.len() as u64);
    let checks: Vec<&str> = v.results.iter().map(|r| r.check).collect();
    assert_eq!(checks, ALL_CHECKS);
    assert!(v.results.iter().all(|r| r.passed && r.reason.is_none()));
    // Figures: size, tensor count, zero non-finite values, a norm ratio near 1.
    assert_eq!(v.results[0].figure, Some(payload.len() as f64));
    let n = anchor().1.expected.len() as f64;
    assert_eq!(v.results[2].figure, Some(n));
    assert_eq!(v.results[5].figure, Some(0.0));
    let ratio = v.results[6].figure.unwrap();
    assert!((0.9..1.1).contains(&ratio), "norm ratio {ratio}");
    // Every result converts to the ledger's form with its figure.
    for r in &v.results {
        assert_eq!(r.to_ledger().figure.map(|f| f.to_f64()), r.figure);
    }
    // The layout points at each tensor's bytes in the payload.
    let tensors = expert_tensors(1);
    for (name, t) in &tensors.0 {
        let slice = &v.layout.tensors[name];
        let bytes = &payload[slice.range.start as usize..slice.range.end as usize];
        assert_eq!(bytes, t.to_le_bytes().as_slice(), "{name}");
    }
}

#[test]
fn oversized_uploads_are_refused_before_reading() {
    let (payload, m) = good_upload(2);
    let limits = ValidationLimits {
        max_payload_bytes: payload.len() as u64 - 1,
        ..ValidationLimits::default()
    };
    let r = UploadValidator::new(anchor().1.clone(), limits, m, payload.len() as u64).unwrap_err();
    assert_eq!(r.reason, RejectReason::PayloadTooLarge);
    assert_eq!(r.results.len(), 1);
    assert_eq!(r.results[0].check, "payload_size");
    assert_eq!(r.results[0].figure, Some(payload.len() as f64));
}

#[test]
fn a_stream_longer_than_declared_is_stopped() {
    let (mut payload, m) = good_upload(3);
    let declared = payload.len() as u64;
    payload.push(0);
    let mut v =
        UploadValidator::new(anchor().1.clone(), ValidationLimits::default(), m, declared).unwrap();
    let mut stopped = None;
    for c in payload.chunks(1000) {
        if let Err(r) = v.feed(c) {
            stopped = Some(r);
            break;
        }
    }
    let r = stopped.expect("the extra byte stops the stream");
    assert_eq!(r.reason, RejectReason::ExtraBytes);
    assert_eq!(r.results[0].check, "payload_size");
    assert!(v.received() <= declared);
    assert_rejected(v.finish(), RejectReason::ExtraBytes, "payload_size");
}

#[test]
fn a_stream_shorter_than_declared_is_truncated() {
    let (payload, m) = good_upload(4);
    let cut = &payload[..payload.len() - 100];
    let outcome = run_with(
        cut,
        m,
        payload.len() as u64,
        ValidationLimits::default(),
        4096,
    );
    let r = assert_rejected(outcome, RejectReason::Truncated, "payload_size");
    assert_eq!(r.results[0].figure, Some(cut.len() as f64));
}

#[test]
fn a_payload_shorter_than_its_header_says_is_truncated() {
    let (payload, _) = good_upload(5);
    let cut = payload[..payload.len() - 100].to_vec();
    // The contributor signed the cut payload: size and total digest agree.
    let (_, tensors) = craft(&raw_entries(&expert_tensors(5)), &[]);
    let m = manifest(&cut, tensors);
    assert_rejected(run(&cut, m), RejectReason::Truncated, "tensor_sha256");
}

#[test]
fn bytes_after_the_last_tensor_are_refused() {
    let (payload, digests) = craft(&raw_entries(&expert_tensors(6)), b"hidden data");
    let m = manifest(&payload, digests);
    assert_rejected(
        run(&payload, m),
        RejectReason::ExtraBytes,
        "safetensors_header",
    );
}

#[test]
fn a_wrong_total_digest_is_refused() {
    let (payload, mut m) = good_upload(7);
    m.total = ExpertDigest(Sha256Digest::of(b"another payload"));
    assert_rejected(
        run(&payload, m),
        RejectReason::PayloadDigestMismatch,
        "payload_sha256",
    );
}

#[test]
fn a_wrong_or_missing_tensor_digest_is_refused() {
    let (payload, m) = good_upload(8);
    let mut wrong = m.clone();
    wrong.tensors[3].sha256 = Sha256Digest::of(b"not this tensor");
    let r = assert_rejected(
        run(&payload, wrong),
        RejectReason::TensorDigestMismatch,
        "tensor_sha256",
    );
    assert!(r.results[2].detail.contains(&m.tensors[3].name));

    let mut missing = m.clone();
    missing.tensors.remove(0);
    assert_rejected(
        run(&payload, missing),
        RejectReason::TensorDigestMismatch,
        "tensor_sha256",
    );

    let mut extra = m.clone();
    extra.tensors.push(TensorDigest {
        name: "model.layers.9.mlp.router.weight".into(),
        sha256: Sha256Digest::of(b"x"),
    });
    assert_rejected(
        run(&payload, extra),
        RejectReason::TensorDigestMismatch,
        "tensor_sha256",
    );

    let mut twice = m;
    twice.tensors.push(twice.tensors[0].clone());
    assert_rejected(
        run(&payload, twice),
        RejectReason::TensorDigestMismatch,
        "tensor_sha256",
    );
}

#[test]
fn malformed_headers_are_refused() {
    // Not JSON.
    let mut garbage = 16u64.to_le_bytes().to_vec();
    garbage.extend_from_slice(b"this is not json");
    garbage.extend_from_slice(&[0; 64]);
    let m = manifest(&garbage, vec![]);
    assert_rejected(run(&garbage, m), RejectReason::BadHeader, "tensor_sha256");

    // A header length beyond the payload and beyond the limit.
    let mut huge = u64::MAX.to_le_bytes().to_vec();
    huge.extend_from_slice(&[b'{'; 100]);
    let m = manifest(&huge, vec![]);
    assert_rejected(run(&huge, m), RejectReason::BadHeader, "tensor_sha256");

    // Shorter than the length prefix.
    let tiny = vec![1u8, 2, 3];
    let m = manifest(&tiny, vec![]);
    assert_rejected(run(&tiny, m), RejectReason::BadHeader, "tensor_sha256");

    // Offsets with a gap: the first tensor claims to start at 4, not 0.
    let entries = raw_entries(&expert_tensors(9));
    let (_, digests) = craft(&entries, &[]);
    let mut header = serde_json::Map::new();
    let mut offset = 0usize;
    for (i, e) in entries.iter().enumerate() {
        let start = if i == 0 { 4 } else { offset };
        header.insert(
            e.name.clone(),
            serde_json::json!({"dtype": e.dtype, "shape": e.shape,
                               "data_offsets": [start, offset + e.bytes.len()]}),
        );
        offset += e.bytes.len();
    }
    let json = serde_json::to_vec(&header).unwrap();
    let mut bad = (json.len() as u64).to_le_bytes().to_vec();
    bad.extend_from_slice(&json);
    for e in &entries {
        bad.extend_from_slice(&e.bytes);
    }
    let m = manifest(&bad, digests);
    let r = assert_rejected(run(&bad, m), RejectReason::BadHeader, "tensor_sha256");
    assert!(r.results.last().unwrap().detail.contains(&entries[0].name));
}

#[test]
fn an_expert_for_another_anchor_is_refused() {
    let (payload, mut m) = good_upload(10);
    m.anchor = Sha256Digest::of(b"another anchor");
    assert_rejected(run(&payload, m), RejectReason::WrongAnchor, "anchor");
}

#[test]
fn an_extra_tensor_is_refused() {
    let mut tensors = expert_tensors(11);
    tensors.insert(
        "model.layers.0.mlp.secret.weight",
        HostTensor::new(vec![4], vec![1.0; 4]).unwrap(),
    );
    let (payload, digests) = craft(&raw_entries(&tensors), &[]);
    let m = manifest(&payload, digests);
    let r = assert_rejected(
        run(&payload, m),
        RejectReason::UnexpectedTensor,
        "safetensors_header",
    );
    assert!(r.results.last().unwrap().detail.contains("secret"));
}

#[test]
fn a_missing_tensor_is_refused() {
    let mut tensors = expert_tensors(12);
    tensors.take(&names::package_router(2)).unwrap();
    let (payload, digests) = craft(&raw_entries(&tensors), &[]);
    let m = manifest(&payload, digests);
    assert_rejected(
        run(&payload, m),
        RejectReason::MissingTensor,
        "safetensors_header",
    );
}

#[test]
fn a_wrong_shape_is_refused() {
    let mut entries = raw_entries(&expert_tensors(13));
    // down_proj is [hidden, inter]; claim [inter, hidden] (same byte count).
    let down = names::package_ffn(1, "down_proj");
    let e = entries.iter_mut().find(|e| e.name == down).unwrap();
    e.shape.reverse();
    let (payload, digests) = craft(&entries, &[]);
    let m = manifest(&payload, digests);
    assert_rejected(
        run(&payload, m),
        RejectReason::WrongShape,
        "safetensors_header",
    );
}

#[test]
fn a_wrong_dtype_is_refused() {
    let mut entries = raw_entries(&expert_tensors(14));
    let router = names::package_router(0);
    let e = entries.iter_mut().find(|e| e.name == router).unwrap();
    // The same values as F64.
    e.dtype = "F64";
    e.bytes = e
        .bytes
        .chunks_exact(4)
        .flat_map(|b| f64::from(f32::from_le_bytes(b.try_into().unwrap())).to_le_bytes())
        .collect();
    let (payload, digests) = craft(&entries, &[]);
    let m = manifest(&payload, digests);
    assert_rejected(
        run(&payload, m),
        RejectReason::WrongDtype,
        "safetensors_header",
    );
}

#[test]
fn nan_and_infinity_are_refused_with_their_count() {
    let mut tensors = expert_tensors(15);
    let name = names::package_ffn(3, "up_proj");
    let mut t = tensors.take(&name).unwrap();
    t.data[17] = f32::NAN;
    t.data[1000] = f32::INFINITY;
    t.data[2000] = f32::NEG_INFINITY;
    tensors.insert(name.clone(), t);
    let (payload, digests) = craft(&raw_entries(&tensors), &[]);
    let m = manifest(&payload, digests);
    let r = assert_rejected(run(&payload, m), RejectReason::NonFinite, "finite");
    let last = r.results.last().unwrap();
    assert_eq!(last.figure, Some(3.0));
    assert!(last.detail.contains(&name));
}

#[test]
fn zeroed_or_exploding_weights_are_out_of_bounds() {
    for (scale, expect) in [(0.0f32, 0.0), (50.0, 50.0)] {
        let mut tensors = expert_tensors(16);
        let name = names::package_ffn(2, "gate_proj");
        let public = anchor()
            .0
            .tensors
            .get(&names::expert(2, 0, "gate_proj"))
            .unwrap();
        let scaled: Vec<f32> = public.data.iter().map(|v| v * scale).collect();
        tensors.insert(
            name.clone(),
            HostTensor::new(public.shape.clone(), scaled).unwrap(),
        );
        let (payload, digests) = craft(&raw_entries(&tensors), &[]);
        let m = manifest(&payload, digests);
        let r = assert_rejected(
            run(&payload, m),
            RejectReason::NormOutOfBounds,
            "norm_ratio",
        );
        let last = r.results.last().unwrap();
        let figure = last.figure.unwrap();
        assert!((figure - expect).abs() < 1e-3 * expect.max(1.0), "{figure}");
        assert!(last.detail.contains(&name));
    }
    // A zeroed router row too (compared with r_pub).
    let mut tensors = expert_tensors(16);
    let h = anchor().0.config.hidden_size;
    tensors.insert(
        names::package_router(1),
        HostTensor::new(vec![h], vec![0.0; h]).unwrap(),
    );
    let (payload, digests) = craft(&raw_entries(&tensors), &[]);
    let m = manifest(&payload, digests);
    assert_rejected(
        run(&payload, m),
        RejectReason::NormOutOfBounds,
        "norm_ratio",
    );
}

#[test]
fn the_first_failing_check_in_design_order_decides() {
    // NaN (step 5) and a wrong total digest (step 3): the digest decides.
    let mut tensors = expert_tensors(17);
    let name = names::package_ffn(0, "up_proj");
    let mut t = tensors.take(&name).unwrap();
    t.data[0] = f32::NAN;
    tensors.insert(name, t);
    let (payload, digests) = craft(&raw_entries(&tensors), &[]);
    let mut m = manifest(&payload, digests);
    m.total = ExpertDigest(Sha256Digest::of(b"no"));
    let r = assert_rejected(
        run(&payload, m.clone()),
        RejectReason::PayloadDigestMismatch,
        "payload_sha256",
    );
    assert_eq!(r.results.len(), 2);
    // An extra tensor (step 4) and NaN (step 5): the header decides.
    m.total = ExpertDigest(Sha256Digest::of(&payload));
    let mut tensors2 = tensors.clone();
    tensors2.insert("extra", HostTensor::new(vec![1], vec![1.0]).unwrap());
    let (payload2, digests2) = craft(&raw_entries(&tensors2), &[]);
    let m2 = manifest(&payload2, digests2);
    assert_rejected(
        run(&payload2, m2),
        RejectReason::UnexpectedTensor,
        "safetensors_header",
    );
    // Alone, the NaN is what fails.
    assert_rejected(run(&payload, m), RejectReason::NonFinite, "finite");
}

#[test]
fn reason_codes_are_stable_distinct_ledger_codes() {
    let mut seen = std::collections::HashSet::new();
    for r in RejectReason::ALL {
        let code = r.code();
        assert_eq!(code.as_str(), r.as_str());
        assert_eq!(r.to_string(), r.as_str());
        assert!(seen.insert(r.as_str()));
        assert!(
            r.as_str()
                .chars()
                .all(|c| c.is_ascii_uppercase() || c == '_')
        );
    }
    assert_eq!(RejectReason::NormOutOfBounds.as_str(), "NORM_OUT_OF_BOUNDS");
    assert_eq!(RejectReason::NonFinite.as_str(), "NON_FINITE");
}

#[test]
fn the_manifest_signature_is_the_contributors_statement() {
    let (_, m) = good_upload(18);
    let key = SigningKey::from_bytes(&[7; 32]);
    let other = SigningKey::from_bytes(&[8; 32]);
    let submission = SubmissionId::new("sub-1").unwrap();
    let contributor = ContributorId::new("hospital-7").unwrap();
    let event = Event::ExpertSubmitted(ExpertSubmitted {
        submission: submission.clone(),
        contributor: contributor.clone(),
        manifest: m.clone(),
    });
    let signature = SignedEvent::contributor(event, &key)
        .unwrap()
        .contributor_signature
        .unwrap();
    let ok = verify_manifest_signature(
        &submission,
        &contributor,
        &m,
        &signature,
        &PublicKey::of(&key),
    );
    assert!(ok.passed);
    assert_eq!(ok.check, "manifest_signature");
    let wrong_key = verify_manifest_signature(
        &submission,
        &contributor,
        &m,
        &signature,
        &PublicKey::of(&other),
    );
    assert_eq!(wrong_key.reason, Some(RejectReason::BadManifestSignature));
    let mut altered = m;
    altered.training.steps += 1;
    let wrong_manifest = verify_manifest_signature(
        &submission,
        &contributor,
        &altered,
        &signature,
        &PublicKey::of(&key),
    );
    assert_eq!(
        wrong_manifest.reason,
        Some(RejectReason::BadManifestSignature)
    );
}

fn public_tokens() -> Vec<u32> {
    let tok = tributary_corpus::TextTokenizer::load(anchor_dir()).unwrap();
    let docs = tributary_corpus::read_documents(&[crate::servers::public_heldout()]).unwrap();
    let mut stream = tributary_corpus::token_stream(&docs, &tok).unwrap();
    stream.truncate(1025);
    stream
}

/// The tensors of an expert whose FFN is the public FFN with `down_proj`
/// times `down_scale` and whose router row is `r_pub` times `router_scale`.
pub fn scaled_tensors(down_scale: f32, router_scale: f32) -> TensorMap {
    let (ckpt, _) = anchor();
    let mut tensors = TensorMap::new();
    for l in 0..ckpt.config.num_hidden_layers {
        for proj in names::FFN_PROJS {
            let t = ckpt.tensors.get(&names::expert(l, 0, proj)).unwrap();
            let scale = if proj == "down_proj" { down_scale } else { 1.0 };
            let data = t.data.iter().map(|v| v * scale).collect();
            tensors.insert(
                names::package_ffn(l, proj),
                HostTensor::new(t.shape.clone(), data).unwrap(),
            );
        }
        let r = ckpt.tensors.get(&names::router(l)).unwrap();
        let data = r.data.iter().map(|v| v * router_scale).collect();
        tensors.insert(
            names::package_router(l),
            HostTensor::new(vec![ckpt.config.hidden_size], data).unwrap(),
        );
    }
    tensors
}

fn scaled_expert(down_scale: f32, router_scale: f32) -> tributary_model::ExpertPackage {
    let payload = scaled_tensors(down_scale, router_scale)
        .to_safetensors()
        .unwrap();
    load_expert(&payload, &anchor().1).unwrap()
}

#[test]
fn the_quality_gate_passes_a_harmless_expert_and_catches_harmful_ones() {
    let (ckpt, _) = anchor();
    let tokens = public_tokens();
    let config = QualityGateConfig {
        seq_len: 128,
        batch_size: 8,
        ..QualityGateConfig::default()
    };

    // A copy of the public FFN whose router row points away from r_pub:
    // both experts active (top-2 of 2), so the output is the anchor's, and
    // public tokens still choose the public expert first.
    let harmless = scaled_expert(1.0, -1.0);
    let report = quality_gate(ckpt, &[], &harmless, &tokens, &config).unwrap();
    assert_eq!(report.rejection, None, "{report:?}");
    assert_eq!(report.results.len(), 2);
    assert!((report.perplexity_after / report.perplexity_before - 1.0).abs() < 1e-3);
    assert!(report.routing_share < 0.5, "{}", report.routing_share);
    assert!(report.results.iter().all(|r| r.passed));

    // The same FFN with a router row that outbids r_pub: harmless to
    // perplexity, but it captures the public traffic.
    let captor = scaled_expert(1.0, 3.0);
    let report = quality_gate(ckpt, &[], &captor, &tokens, &config).unwrap();
    assert_eq!(
        report.rejection,
        Some(RejectReason::QualityGateRouting),
        "{report:?}"
    );
    assert!(report.routing_share > 0.5);
    assert_eq!(report.results[1].check, "public_routing_share");
    assert_eq!(report.results[1].figure, Some(report.routing_share));

    // An FFN whose output is negated and doubled, routed like the public one:
    // the MoE output flips sign (a mere scale would be undone by the
    // post-feedforward RMSNorm), and public perplexity rises.
    let loud = scaled_expert(-2.0, 1.0);
    let report = quality_gate(ckpt, &[], &loud, &tokens, &config).unwrap();
    assert_eq!(
        report.rejection,
        Some(RejectReason::QualityGatePerplexity),
        "{report:?}"
    );
    assert!(report.perplexity_after > report.perplexity_before * 1.05);
    assert_eq!(report.results.len(), 1);

    // With a current version of one expert, another copy of the public FFN
    // still passes (every active expert computes the same function).
    let report = quality_gate(
        ckpt,
        std::slice::from_ref(&harmless),
        &scaled_expert(1.0, -2.0),
        &tokens,
        &config,
    )
    .unwrap();
    assert_eq!(report.rejection, None, "{report:?}");
}
