//! What the coordinator benches share: random safetensors files for a wide
//! synthetic configuration (an anchor checkpoint, an expert package), written
//! streaming; peak RSS; throughput; the `sha256sum` ceiling.

// Each bench uses part of this module.
#![allow(dead_code)]

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use sha2::{Digest as _, Sha256};
use tributary_ledger::event::{ExpertManifest, Figure, TensorDigest, TrainingMetadata};
use tributary_ledger::{ExpertDigest, Sha256Digest};
use tributary_model::FlexOlmoConfig;
use tributary_model::checkpoint::Checkpoint;
use tributary_model::expert::expected_expert_shapes;

/// Hidden size of the wide configuration.
pub const HIDDEN: usize = 1024;
/// FFN size of the wide configuration.
pub const INTER: usize = 2816;
/// Values are uniform in ±AMPLITUDE, so a tensor of n values has norm
/// AMPLITUDE·√(n/3): anchor and expert have the same norms, every ratio ≈ 1.
pub const AMPLITUDE: f32 = 0.02;
/// Bytes per write (and per read where the benches read files).
pub const CHUNK: usize = 1 << 20;

/// The expert size asked for in `TRIBUTARY_BENCH_EXPERT_MIB`, or `default`.
pub fn expert_mib(default: usize) -> usize {
    std::env::var("TRIBUTARY_BENCH_EXPERT_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Where the benches write (`TRIBUTARY_BENCH_DIR`, default the system
/// temporary directory).
pub fn bench_base() -> PathBuf {
    std::env::var_os("TRIBUTARY_BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir)
}

/// The wide anchor configuration (hidden 1024, FFN 2816, vocabulary 4096, one
/// expert) with as many layers as an expert of about `mib` MiB needs.
pub fn wide_config(mib: usize) -> FlexOlmoConfig {
    let per_layer = (3 * HIDDEN * INTER + HIDDEN) * 4;
    let layers = (mib << 20).div_ceil(per_layer).max(1);
    FlexOlmoConfig::new(4096, HIDDEN, INTER, layers, 8, 1, 1, 256)
}

fn status_mib(field: &str) -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

/// VmHWM (peak resident set) of this process, in MiB.
pub fn peak_rss_mib() -> f64 {
    status_mib("VmHWM:")
}

/// VmRSS (resident set now) of this process, in MiB.
pub fn rss_mib() -> f64 {
    status_mib("VmRSS:")
}

/// Resets VmHWM to the current resident set (Linux `clear_refs` value 5);
/// false when the kernel refuses.
pub fn reset_peak_rss() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

/// Decimal megabytes per second.
pub fn mb_per_s(bytes: u64, d: Duration) -> f64 {
    bytes as f64 / 1e6 / d.as_secs_f64()
}

/// Bytes in MiB.
pub fn mib(bytes: u64) -> f64 {
    bytes as f64 / f64::from(1u32 << 20)
}

/// A fast deterministic generator (xorshift64*) for the values.
struct Xorshift(u64);

impl Xorshift {
    fn new(seed: u64) -> Self {
        Self((seed ^ 0x9e37_79b9_7f4a_7c15).max(1))
    }

    fn next_f32(&mut self) -> f32 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        let bits = self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 40; // 24 bits
        (bits as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * AMPLITUDE
    }
}

/// A safetensors file written by [`write_safetensors`].
pub struct Written {
    /// Each tensor's SHA-256, in file order.
    pub tensors: Vec<TensorDigest>,
    /// The whole file's SHA-256.
    pub total: Sha256Digest,
    /// Its size in bytes.
    pub size: u64,
}

fn header(shapes: &[(String, Vec<usize>)]) -> Vec<u8> {
    let mut header = serde_json::Map::new();
    let mut offset = 0usize;
    for (name, shape) in shapes {
        let len = shape.iter().product::<usize>() * 4;
        header.insert(
            name.clone(),
            serde_json::json!({"dtype": "F32", "shape": shape, "data_offsets": [offset, offset + len]}),
        );
        offset += len;
    }
    let mut json = serde_json::to_vec(&header).unwrap();
    json.resize(json.len().next_multiple_of(8), b' ');
    json
}

/// Writes `shapes` as F32 tensors of random values (uniform in ±AMPLITUDE,
/// from `seed`), streaming, in constant memory.
pub fn write_safetensors(path: &Path, shapes: &[(String, Vec<usize>)], seed: u64) -> Written {
    let mut file = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    let mut total = Sha256::new();
    let mut size = 0u64;
    let mut put = |bytes: &[u8]| {
        total.update(bytes);
        file.write_all(bytes).unwrap();
        size += bytes.len() as u64;
    };
    let json = header(shapes);
    put(&(json.len() as u64).to_le_bytes());
    put(&json);
    let mut rng = Xorshift::new(seed);
    let mut tensors = Vec::new();
    let mut buf = Vec::with_capacity(CHUNK);
    for (name, shape) in shapes {
        let mut left: usize = shape.iter().product();
        let mut h = Sha256::new();
        while left > 0 {
            let n = left.min(CHUNK / 4);
            buf.clear();
            for _ in 0..n {
                buf.extend_from_slice(&rng.next_f32().to_le_bytes());
            }
            h.update(&buf);
            put(&buf);
            left -= n;
        }
        tensors.push(TensorDigest {
            name: name.clone(),
            sha256: Sha256Digest(h.finalize().into()),
        });
    }
    file.flush().unwrap();
    Written {
        tensors,
        total: Sha256Digest(total.finalize().into()),
        size,
    }
}

/// Writes a random expert package for `config` trained against `anchor`;
/// returns its manifest and size.
pub fn write_expert(
    path: &Path,
    config: &FlexOlmoConfig,
    anchor: Sha256Digest,
    seed: u64,
) -> (ExpertManifest, u64) {
    let written = write_safetensors(path, &expected_expert_shapes(config), seed);
    let manifest = ExpertManifest {
        anchor,
        tensors: written.tensors,
        total: ExpertDigest(written.total),
        training: TrainingMetadata {
            tokens: 0,
            steps: 0,
            held_out_loss: Figure::from_f64(0.0).unwrap(),
        },
    };
    (manifest, written.size)
}

/// Writes a random anchor checkpoint directory for `config` (`config.json`,
/// `model.safetensors`); returns the weights' digest and size.
pub fn write_anchor(dir: &Path, config: &FlexOlmoConfig, seed: u64) -> (Sha256Digest, u64) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("config.json"), config.to_json()).unwrap();
    let written = write_safetensors(
        &dir.join("model.safetensors"),
        &Checkpoint::expected_shapes(config),
        seed,
    );
    (written.total, written.size)
}

/// Runs `sha256sum` on `path` (the ceiling: one SHA-256 pass over the file)
/// and checks its answer; `None` when it is not available.
pub fn sha256sum(path: &Path, expected: &Sha256Digest) -> Option<Duration> {
    hash_with(&["sha256sum"], path, expected)
}

/// Runs `openssl dgst -sha256 -r` on `path` (SHA-256 with the CPU's SHA
/// extensions, which coreutils' `sha256sum` may not use); `None` when it is
/// not available.
pub fn openssl_sha256(path: &Path, expected: &Sha256Digest) -> Option<Duration> {
    hash_with(&["openssl", "dgst", "-sha256", "-r"], path, expected)
}

fn hash_with(command: &[&str], path: &Path, expected: &Sha256Digest) -> Option<Duration> {
    let t = Instant::now();
    let out = std::process::Command::new(command[0])
        .args(&command[1..])
        .arg(path)
        .output()
        .ok()?;
    let elapsed = t.elapsed();
    if !out.status.success() {
        return None;
    }
    let line = String::from_utf8_lossy(&out.stdout);
    assert!(line.starts_with(&expected.to_string()), "{line}");
    Some(elapsed)
}
