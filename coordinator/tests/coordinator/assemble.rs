//! Versions assembled from blob ranges: the streamed `model.safetensors` is
//! byte for byte what `tributary-model`'s merge writes, loads as a
//! `flex_olmo` checkpoint, and planning reads headers only.

use bytes::Bytes;
use coordinator::assemble::{
    AssembleError, AssembledCheckpoint, BlobLayout, Segment, VersionManifest,
};
use coordinator::blobs::BlobStore;
use coordinator::validate::{UploadValidator, ValidationLimits, ValidationOutcome, load_expert};
use futures::TryStreamExt as _;
use sha2::{Digest as _, Sha256};
use tributary_ledger::Sha256Digest;
use tributary_model::checkpoint::Checkpoint;
use tributary_model::merge::merge;

use crate::validate::{anchor, anchor_dir, good_upload};

/// A store holding the anchor's `model.safetensors` and `n` validated experts.
async fn store_with_experts(
    n: u64,
) -> (
    tempfile::TempDir,
    BlobStore,
    Sha256Digest,
    Vec<Sha256Digest>,
    Vec<Vec<u8>>,
) {
    let dir = tempfile::tempdir().unwrap();
    let store = BlobStore::open_local(dir.path()).unwrap();
    let anchor_bytes = std::fs::read(anchor_dir().join("model.safetensors")).unwrap();
    let anchor_digest = store.put_bytes(Bytes::from(anchor_bytes)).await.unwrap();
    assert_eq!(anchor_digest, anchor().1.digest);
    let mut digests = Vec::new();
    let mut payloads = Vec::new();
    for seed in 0..n {
        let (payload, manifest) = good_upload(100 + seed);
        let mut w = store.writer().await.unwrap();
        let mut v = UploadValidator::new(
            anchor().1.clone(),
            ValidationLimits::default(),
            manifest.clone(),
            payload.len() as u64,
        )
        .unwrap();
        for chunk in payload.chunks(300_000) {
            v.feed(chunk).unwrap();
            w.write(chunk).await.unwrap();
        }
        let ValidationOutcome::Accepted(accepted) = v.finish() else {
            panic!("fixture expert rejected");
        };
        w.commit(&accepted.digest.0).await.unwrap();
        // The layout the validator found is the stored blob's.
        assert_eq!(
            BlobLayout::read(&store, &accepted.digest.0).await.unwrap(),
            accepted.layout
        );
        digests.push(accepted.digest.0);
        payloads.push(payload);
    }
    (dir, store, anchor_digest, digests, payloads)
}

async fn collect(plan: &AssembledCheckpoint, store: &BlobStore) -> Vec<u8> {
    let chunks: Vec<Bytes> = plan.stream(store).try_collect().await.unwrap();
    chunks.concat()
}

#[tokio::test]
async fn the_assembled_checkpoint_is_the_merge_byte_for_byte() {
    let (_dir, store, anchor_digest, experts, payloads) = store_with_experts(3).await;
    let (ckpt, reference) = anchor();
    for top_k in [1usize, 2, 7] {
        let manifest = VersionManifest {
            anchor: anchor_digest,
            experts: experts.clone(),
            top_k,
        };
        let plan = AssembledCheckpoint::from_manifest(&store, &ckpt.config, &manifest)
            .await
            .unwrap();
        let bytes = collect(&plan, &store).await;
        assert_eq!(bytes.len() as u64, plan.len());

        let packages: Vec<_> = payloads
            .iter()
            .map(|p| load_expert(p, reference).unwrap())
            .collect();
        let merged = merge(ckpt, &anchor_digest.to_string(), &packages, top_k).unwrap();
        let expected = merged.tensors.to_safetensors().unwrap();
        assert!(
            bytes == expected,
            "assembled bytes differ from the merge (top_k {top_k})"
        );
        assert_eq!(plan.config, merged.config);
        assert_eq!(
            plan.sha256(&store).await.unwrap(),
            Sha256Digest(Sha256::digest(&expected).into())
        );
        assert_eq!(plan.blobs().len(), 4);
    }
}

#[tokio::test]
async fn the_assembled_checkpoint_loads_as_flex_olmo() {
    let (dir, store, anchor_digest, experts, _) = store_with_experts(2).await;
    let manifest = VersionManifest {
        anchor: anchor_digest,
        experts,
        top_k: 2,
    };
    let plan = AssembledCheckpoint::from_manifest(&store, &anchor().0.config, &manifest)
        .await
        .unwrap();
    let out = dir.path().join("version-1");
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(out.join("config.json"), plan.config_json()).unwrap();
    std::fs::write(out.join("model.safetensors"), collect(&plan, &store).await).unwrap();
    let loaded = Checkpoint::load(&out).unwrap();
    assert_eq!(loaded.config.num_experts, 3);
    assert_eq!(loaded.config.num_experts_per_tok, 2);
    assert_eq!(loaded.config.model_type, "flex_olmo");
    // The router stacks r_pub then each expert's row.
    let router = loaded
        .tensors
        .get("model.layers.0.mlp.gate.weight")
        .unwrap();
    assert_eq!(router.shape, vec![3, anchor().0.config.hidden_size]);
    assert_eq!(
        router.rows(0, 1).unwrap().data,
        anchor()
            .0
            .tensors
            .get("model.layers.0.mlp.gate.weight")
            .unwrap()
            .data
    );
}

#[tokio::test]
async fn a_version_without_experts_is_the_anchor_itself() {
    let (_dir, store, anchor_digest, _, _) = store_with_experts(0).await;
    let manifest = VersionManifest {
        anchor: anchor_digest,
        experts: vec![],
        top_k: 2,
    };
    let plan = AssembledCheckpoint::from_manifest(&store, &anchor().0.config, &manifest)
        .await
        .unwrap();
    let expected = anchor().0.tensors.to_safetensors().unwrap();
    assert!(collect(&plan, &store).await == expected);
    assert_eq!(plan.config.num_experts, 1);
    assert_eq!(plan.config.num_experts_per_tok, 1);
}

#[tokio::test]
async fn planning_refuses_what_does_not_fit() {
    let (_dir, store, anchor_digest, experts, _) = store_with_experts(1).await;
    let config = &anchor().0.config;
    let anchor_layout = BlobLayout::read(&store, &anchor_digest).await.unwrap();
    let expert = BlobLayout::read(&store, &experts[0]).await.unwrap();

    // The same expert twice.
    assert!(matches!(
        AssembledCheckpoint::plan(config, &anchor_layout, &[expert.clone(), expert.clone()], 2),
        Err(AssembleError::Mismatch(_))
    ));
    // An expert missing a tensor.
    let mut short = expert.clone();
    short.tensors.remove("model.layers.0.mlp.router.weight");
    assert!(matches!(
        AssembledCheckpoint::plan(config, &anchor_layout, &[short], 2),
        Err(AssembleError::Mismatch(_))
    ));
    // An anchor that is not one (two experts).
    let mut two = config.clone();
    two.num_experts = 2;
    assert!(
        AssembledCheckpoint::plan(&two, &anchor_layout, std::slice::from_ref(&expert), 2).is_err()
    );
    // A blob that is not safetensors.
    let junk = store
        .put_bytes(Bytes::from_static(b"0123456789abcdef"))
        .await
        .unwrap();
    assert!(matches!(
        BlobLayout::read(&store, &junk).await,
        Err(AssembleError::BadBlob { .. })
    ));
    // A missing blob.
    let manifest = VersionManifest {
        anchor: anchor_digest,
        experts: vec![Sha256Digest::of(b"never stored")],
        top_k: 2,
    };
    assert!(
        AssembledCheckpoint::from_manifest(&store, config, &manifest)
            .await
            .is_err()
    );
}

#[tokio::test]
async fn a_plan_is_metadata_whatever_the_number_of_experts() {
    // 64 experts planned from their headers: the plan holds the header and
    // blob ranges, coalesced per contiguous run, and copies no weights.
    let (_dir, store, anchor_digest, experts, _) = store_with_experts(1).await;
    let config = &anchor().0.config;
    let anchor_layout = BlobLayout::read(&store, &anchor_digest).await.unwrap();
    let template = BlobLayout::read(&store, &experts[0]).await.unwrap();
    let many: Vec<BlobLayout> = (0..64u8)
        .map(|i| BlobLayout {
            digest: Sha256Digest::of(&[i]),
            ..template.clone()
        })
        .collect();
    let plan = AssembledCheckpoint::plan(config, &anchor_layout, &many, 4).unwrap();
    assert_eq!(plan.config.num_experts, 65);
    let inline: u64 = plan
        .segments
        .iter()
        .filter_map(|s| match s {
            Segment::Inline(b) => Some(b.len() as u64),
            Segment::Blob { .. } => None,
        })
        .sum();
    // Only the header is made; everything else is a range of a blob.
    let header_len = u64::from_le_bytes(match &plan.segments[0] {
        Segment::Inline(b) => b[..8].try_into().unwrap(),
        Segment::Blob { .. } => panic!("the plan starts with its header"),
    });
    assert_eq!(inline, 8 + header_len);
    let weights: u64 = plan.len() - inline;
    let data = |l: &BlobLayout| -> u64 {
        l.tensors
            .values()
            .map(|t| t.range.end - t.range.start)
            .sum()
    };
    assert_eq!(weights, data(&anchor_layout) + 64 * data(&template));
    // Per layer: the expert's FFN run and its router row, plus the anchor's runs.
    let layers = config.num_hidden_layers;
    assert!(
        plan.segments.len() <= 1 + layers * (2 * 64 + 8) + 4,
        "{}",
        plan.segments.len()
    );
}

#[test]
fn the_version_manifest_digest_names_its_content_and_order() {
    let a = Sha256Digest::of(b"anchor");
    let (x, y) = (Sha256Digest::of(b"x"), Sha256Digest::of(b"y"));
    let m = |experts: Vec<Sha256Digest>, top_k| VersionManifest {
        anchor: a,
        experts,
        top_k,
    };
    let d = m(vec![x, y], 2).digest().unwrap();
    assert_eq!(d, m(vec![x, y], 2).digest().unwrap());
    assert_ne!(d, m(vec![y, x], 2).digest().unwrap());
    assert_ne!(d, m(vec![x, y], 1).digest().unwrap());
    assert_ne!(d, m(vec![x], 2).digest().unwrap());
}
