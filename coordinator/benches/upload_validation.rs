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
//! cargo bench -p coordinator --bench upload_validation            # 128 MiB
//! TRIBUTARY_BENCH_EXPERT_MIB=1024 cargo bench -p coordinator --bench upload_validation
//! ```
//! `TRIBUTARY_BENCH_DIR` chooses where the expert and the store are written
//! (default: the system temporary directory).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::io::{Read as _, Write as _};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use coordinator::assemble::{AssembledCheckpoint, BlobLayout, TensorSlice};
use coordinator::blobs::BlobStore;
use coordinator::validate::{
    AnchorReference, ExpectedTensor, UploadValidator, ValidationLimits, ValidationOutcome,
};
use sha2::{Digest as _, Sha256};
use tributary_ledger::event::{ExpertManifest, Figure, TensorDigest, TrainingMetadata};
use tributary_ledger::{ExpertDigest, Sha256Digest};
use tributary_model::FlexOlmoConfig;
use tributary_model::checkpoint::Checkpoint;
use tributary_model::expert::expected_expert_shapes;

const HIDDEN: usize = 1024;
const INTER: usize = 2816;
/// Values are uniform in ±AMPLITUDE, so a tensor of n values has norm
/// AMPLITUDE·√(n/3): the reference norms below, making every ratio ≈ 1.
const AMPLITUDE: f32 = 0.02;
const CHUNK: usize = 1 << 20;

fn config(layers: usize) -> FlexOlmoConfig {
    FlexOlmoConfig::new(4096, HIDDEN, INTER, layers, 8, 1, 1, 256)
}

/// VmHWM (peak resident set) of this process, in MiB.
fn peak_rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

/// A fast deterministic generator (xorshift64*) for the payload's values.
struct Xorshift(u64);

impl Xorshift {
    fn next_f32(&mut self) -> f32 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        let bits = self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 40; // 24 bits
        (bits as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * AMPLITUDE
    }
}

/// Writes the expert's safetensors file, streaming, and returns its manifest.
fn write_expert(path: &Path, config: &FlexOlmoConfig) -> (ExpertManifest, u64) {
    let shapes = expected_expert_shapes(config);
    let mut header = serde_json::Map::new();
    let mut offset = 0usize;
    for (name, shape) in &shapes {
        let len = shape.iter().product::<usize>() * 4;
        header.insert(
            name.clone(),
            serde_json::json!({"dtype": "F32", "shape": shape, "data_offsets": [offset, offset + len]}),
        );
        offset += len;
    }
    let mut json = serde_json::to_vec(&header).unwrap();
    json.resize(json.len().next_multiple_of(8), b' ');
    let mut file = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    let mut total = Sha256::new();
    let put = |file: &mut std::io::BufWriter<std::fs::File>, bytes: &[u8], total: &mut Sha256| {
        total.update(bytes);
        file.write_all(bytes).unwrap();
    };
    put(&mut file, &(json.len() as u64).to_le_bytes(), &mut total);
    put(&mut file, &json, &mut total);
    let mut rng = Xorshift(0x9e37_79b9_7f4a_7c15);
    let mut tensors = Vec::new();
    let mut buf = Vec::with_capacity(CHUNK);
    for (name, shape) in &shapes {
        let mut left: usize = shape.iter().product();
        let mut h = Sha256::new();
        while left > 0 {
            let n = left.min(CHUNK / 4);
            buf.clear();
            for _ in 0..n {
                buf.extend_from_slice(&rng.next_f32().to_le_bytes());
            }
            h.update(&buf);
            put(&mut file, &buf, &mut total);
            left -= n;
        }
        tensors.push(TensorDigest {
            name: name.clone(),
            sha256: Sha256Digest(h.finalize().into()),
        });
    }
    file.flush().unwrap();
    let size = (8 + json.len() + offset) as u64;
    let manifest = ExpertManifest {
        anchor: Sha256Digest::of(b"synthetic anchor"),
        tensors,
        total: ExpertDigest(Sha256Digest(total.finalize().into())),
        training: TrainingMetadata {
            tokens: 0,
            steps: 0,
            held_out_loss: Figure::from_f64(0.0).unwrap(),
        },
    };
    (manifest, size)
}

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

fn mb_per_s(bytes: u64, d: Duration) -> f64 {
    bytes as f64 / 1e6 / d.as_secs_f64()
}

fn main() {
    let mib: usize = std::env::var("TRIBUTARY_BENCH_EXPERT_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(128);
    let per_layer = (3 * HIDDEN * INTER + HIDDEN) * 4;
    let layers = (mib << 20).div_ceil(per_layer).max(1);
    let config = config(layers);
    let base = std::env::var_os("TRIBUTARY_BENCH_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    let dir = tempfile::tempdir_in(base).unwrap();
    let path = dir.path().join("expert.safetensors");

    let t = Instant::now();
    let (manifest, size) = write_expert(&path, &config);
    println!(
        "expert: {layers} layers of hidden {HIDDEN} / FFN {INTER}, {:.1} MiB, written in {:.2?}",
        size as f64 / (1 << 20) as f64,
        t.elapsed()
    );
    let rss_before = peak_rss_mib();

    // 1. The ceiling: sha256sum of the same file.
    let t = Instant::now();
    let out = std::process::Command::new("sha256sum").arg(&path).output();
    let sha256sum = t.elapsed();
    match &out {
        Ok(o) if o.status.success() => {
            let line = String::from_utf8_lossy(&o.stdout);
            assert!(line.starts_with(&manifest.total.to_string()));
        }
        _ => println!("sha256sum is not available; no ceiling"),
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
    if out.map(|o| o.status.success()).unwrap_or(false) {
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
