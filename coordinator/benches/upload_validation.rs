//! Streaming upload validation and version assembly, measured.
//!
//! Writes a random expert for a wide synthetic configuration (hidden 1024,
//! FFN 2816, as many layers as it takes to reach the requested size) to a
//! temporary file, then, in the same run:
//!
//! 1. `sha256sum` of the file: the ceiling (one pass of SHA-256);
//! 2. the file read in 1 MiB chunks (as gRPC delivers them) through
//!    [`UploadValidator`] and a [`BlobWriter`] into a local blob store,
//!    committed under its digest: throughput and peak RSS (`VmHWM`);
//! 3. planning a version of 64 experts from their headers.
//!
//! ```text
//! cargo bench --workspace --bench upload_validation            # 128 MiB
//! TRIBUTARY_BENCH_EXPERT_MIB=1024 cargo bench --workspace --bench upload_validation
//! ```
//! `TRIBUTARY_BENCH_DIR` chooses where the expert and the store are written
//! (default: the system temporary directory).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;
use std::io::Read as _;
use std::sync::Arc;
use std::time::Instant;

use common::{AMPLITUDE, CHUNK, mb_per_s, peak_rss_mib};
use coordinator::assemble::{AssembledCheckpoint, BlobLayout, TensorSlice};
use coordinator::blobs::BlobStore;
use coordinator::validate::{
    AnchorReference, ExpectedTensor, UploadValidator, ValidationLimits, ValidationOutcome,
};
use tributary_ledger::Sha256Digest;
use tributary_model::FlexOlmoConfig;
use tributary_model::checkpoint::Checkpoint;
use tributary_model::expert::expected_expert_shapes;

fn reference(config: &FlexOlmoConfig) -> AnchorReference {
    let expected = expected_expert_shapes(config)
        .into_iter()
        .map(|(name, shape)| {
            let n = shape.iter().product::<usize>() as f64;
            let reference_norm = f64::from(AMPLITUDE) * (n / 3.0).sqrt();
            (
                name,
                ExpectedTensor {
                    shape,
                    dtype: "F32".into(),
                    reference_norm,
                },
            )
        })
        .collect();
    AnchorReference {
        digest: Sha256Digest::of(b"synthetic anchor"),
        config: config.clone(),
        expected,
        tokenizer: None,
    }
}

/// A blob layout with `shapes` laid out contiguously (no bytes needed to plan).
fn layout(digest: Sha256Digest, shapes: &[(String, Vec<usize>)]) -> BlobLayout {
    let mut sorted = shapes.to_vec();
    sorted.sort();
    let mut tensors = BTreeMap::new();
    let mut offset = 4096u64;
    for (name, shape) in sorted {
        let len = shape.iter().product::<usize>() as u64 * 4;
        tensors.insert(
            name,
            TensorSlice {
                dtype: "F32".into(),
                shape,
                range: offset..offset + len,
            },
        );
        offset += len;
    }
    BlobLayout {
        digest,
        size: offset,
        tensors,
    }
}

fn main() {
    let config = common::wide_config(common::expert_mib(128));
    let layers = config.num_hidden_layers;
    let dir = tempfile::tempdir_in(common::bench_base()).unwrap();
    let path = dir.path().join("expert.safetensors");

    let t = Instant::now();
    let (manifest, size) =
        common::write_expert(&path, &config, Sha256Digest::of(b"synthetic anchor"), 0);
    println!(
        "expert: {layers} layers of hidden {} / FFN {}, {:.1} MiB, written in {:.2?}",
        common::HIDDEN,
        common::INTER,
        common::mib(size),
        t.elapsed()
    );
    let rss_before = peak_rss_mib();

    // 1. The ceiling: sha256sum of the same file.
    let sha256sum = common::sha256sum(&path, &manifest.total.0);
    if sha256sum.is_none() {
        println!("sha256sum is not available; no ceiling");
    }

    // 2. Validation + blob store, chunk by chunk.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let store = BlobStore::open_local(&dir.path().join("blobs")).unwrap();
    let anchor = Arc::new(reference(&config));
    let limits = ValidationLimits {
        max_payload_bytes: 64 << 30,
        ..ValidationLimits::default()
    };
    let t = Instant::now();
    let accepted = runtime.block_on(async {
        let mut validator = UploadValidator::new(anchor, limits, manifest.clone(), size).unwrap();
        let mut writer = store.writer().await.unwrap();
        let mut file = std::fs::File::open(&path).unwrap();
        let mut buf = vec![0u8; CHUNK];
        loop {
            let n = file.read(&mut buf).unwrap();
            if n == 0 {
                break;
            }
            validator.feed(&buf[..n]).unwrap();
            writer.write(&buf[..n]).await.unwrap();
        }
        match validator.finish() {
            ValidationOutcome::Accepted(v) => {
                writer.commit(&v.digest.0).await.unwrap();
                v
            }
            ValidationOutcome::Rejected(r) => panic!("the synthetic expert was rejected: {r}"),
        }
    });
    let pipeline = t.elapsed();
    let rss_after = peak_rss_mib();
    println!(
        "validate + store: {:.1} MB/s ({:.2?}); peak RSS {:.0} MiB (was {:.0} MiB before)",
        mb_per_s(size, pipeline),
        pipeline,
        rss_after,
        rss_before
    );
    if let Some(sha256sum) = sha256sum {
        println!(
            "sha256sum:        {:.1} MB/s ({:.2?}); validate + store / sha256sum = {:.2}",
            mb_per_s(size, sha256sum),
            sha256sum,
            sha256sum.as_secs_f64() / pipeline.as_secs_f64()
        );
    }
    let results: Vec<String> = accepted
        .results
        .iter()
        .map(|r| {
            format!(
                "{}={}",
                r.check,
                r.figure.map_or("-".into(), |f| format!("{f:.4}"))
            )
        })
        .collect();
    println!("checks: {}", results.join(" "));

    // 3. A version of 64 experts, planned from headers.
    let anchor_layout = layout(
        Sha256Digest::of(b"anchor"),
        &Checkpoint::expected_shapes(&config),
    );
    let expert_shapes = expected_expert_shapes(&config);
    let experts: Vec<BlobLayout> = (0..64u32)
        .map(|i| layout(Sha256Digest::of(&i.to_le_bytes()), &expert_shapes))
        .collect();
    let mut times = Vec::new();
    let mut plan = None;
    for _ in 0..20 {
        let t = Instant::now();
        plan = Some(AssembledCheckpoint::plan(&config, &anchor_layout, &experts, 2).unwrap());
        times.push(t.elapsed());
    }
    times.sort();
    let plan = plan.unwrap();
    println!(
        "assemble 64 experts: median {:.2?} (min {:.2?}) for a {:.1} GiB checkpoint in {} segments",
        times[times.len() / 2],
        times[0],
        plan.len() as f64 / (1u64 << 30) as f64,
        plan.segments.len()
    );
}
