//! Model versions assembled from blobs, never copied.
//!
//! A version is a [`VersionManifest`]: the anchor's blob digest, the ordered
//! expert blob digests and top-k. [`AssembledCheckpoint::plan`] turns it, with
//! the safetensors layouts of those blobs ([`BlobLayout`]), into the
//! `flex_olmo` checkpoint a consumer downloads: a `config.json` for n + 1
//! experts and a `model.safetensors` described as a freshly written header
//! followed by byte ranges of the blobs. Planning reads only headers, so
//! publishing costs the same whatever the model size; [`AssembledCheckpoint::stream`]
//! produces the file and [`AssembledCheckpoint::sha256`] its digest by
//! streaming.
//!
//! The layout reproduces `tributary_model::merge` exactly (tensors sorted by
//! name, `{"format":"pt"}` metadata, 8-byte aligned header): expert 0 is the
//! anchor's public FFN, experts 1..n the contributed FFNs in order, and
//! `mlp.gate.weight` stacks `r_pub, r_1, …, r_n` — which, rows being
//! contiguous, is itself just the anchor's router bytes followed by each
//! expert's router bytes.

use std::collections::{BTreeMap, HashMap};
use std::ops::Range;

use bytes::Bytes;
use futures::stream::{self, BoxStream, StreamExt as _, TryStreamExt as _};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use tributary_ledger::Sha256Digest;
use tributary_model::checkpoint::Checkpoint;
use tributary_model::expert::expected_expert_shapes;
use tributary_model::{FlexOlmoConfig, names};

use crate::blobs::{BlobError, BlobStore};

/// Largest safetensors header read from a blob (the 64-expert header of a
/// large model is well under a megabyte).
pub const MAX_HEADER_BYTES: u64 = 16 << 20;

/// Why a version could not be assembled.
#[derive(Debug, thiserror::Error)]
pub enum AssembleError {
    /// A blob is not a well-formed safetensors file.
    #[error("blob {digest}: {reason}")]
    BadBlob {
        /// The blob.
        digest: Sha256Digest,
        /// What is wrong.
        reason: String,
    },
    /// The anchor or an expert does not have the tensors the anchor's
    /// configuration implies.
    #[error("{0}")]
    Mismatch(String),
    /// Reading a blob failed.
    #[error(transparent)]
    Blob(#[from] BlobError),
}

/// One tensor inside a blob.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TensorSlice {
    /// safetensors dtype, e.g. `F32`.
    pub dtype: String,
    /// Dimensions.
    pub shape: Vec<usize>,
    /// Byte range in the blob (absolute: past the length prefix and header).
    pub range: Range<u64>,
}

/// The safetensors layout of a stored blob: where each tensor's bytes are.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlobLayout {
    /// The blob.
    pub digest: Sha256Digest,
    /// Its size in bytes.
    pub size: u64,
    /// Tensors by name.
    pub tensors: BTreeMap<String, TensorSlice>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTensorInfo {
    dtype: String,
    shape: Vec<usize>,
    data_offsets: [u64; 2],
}

/// Bytes per element of a safetensors dtype, `None` for names it does not define.
pub fn dtype_size(dtype: &str) -> Option<u64> {
    Some(match dtype {
        "BOOL" | "U8" | "I8" | "F8_E5M2" | "F8_E4M3" => 1,
        "I16" | "U16" | "F16" | "BF16" => 2,
        "I32" | "U32" | "F32" => 4,
        "I64" | "U64" | "F64" => 8,
        _ => return None,
    })
}

/// Parses a safetensors header (the JSON after the 8-byte length) into tensor
/// slices with offsets relative to the start of the data section, and checks
/// that they tile it: sorted by offset, they start at 0, follow each other
/// without gap or overlap, and each spans exactly `shape × dtype` bytes.
/// Returns the slices and the data section's length; the error says what is
/// malformed.
pub fn parse_header(json: &[u8]) -> Result<(BTreeMap<String, TensorSlice>, u64), String> {
    let text = std::str::from_utf8(json).map_err(|e| format!("header is not UTF-8: {e}"))?;
    let map: serde_json::Map<String, serde_json::Value> =
        serde_json::from_str(text.trim_end_matches(' '))
            .map_err(|e| format!("header is not a JSON object: {e}"))?;
    let mut tensors = BTreeMap::new();
    for (name, value) in map {
        if name == "__metadata__" {
            let _: HashMap<String, String> = serde_json::from_value(value)
                .map_err(|e| format!("__metadata__ is not a string map: {e}"))?;
            continue;
        }
        let info: RawTensorInfo =
            serde_json::from_value(value).map_err(|e| format!("tensor {name:?}: {e}"))?;
        let size = dtype_size(&info.dtype)
            .ok_or_else(|| format!("tensor {name:?}: unknown dtype {:?}", info.dtype))?;
        let bytes = info
            .shape
            .iter()
            .try_fold(size, |acc, &d| acc.checked_mul(d as u64))
            .ok_or_else(|| format!("tensor {name:?}: shape {:?} overflows", info.shape))?;
        let [start, end] = info.data_offsets;
        if end < start || end - start != bytes {
            return Err(format!(
                "tensor {name:?}: offsets {start}..{end} do not hold {bytes} bytes of {} {:?}",
                info.dtype, info.shape
            ));
        }
        tensors.insert(
            name,
            TensorSlice {
                dtype: info.dtype,
                shape: info.shape,
                range: start..end,
            },
        );
    }
    let mut spans: Vec<(&String, &Range<u64>)> =
        tensors.iter().map(|(n, t)| (n, &t.range)).collect();
    spans.sort_by_key(|(n, r)| (r.start, r.end, *n));
    let mut pos = 0u64;
    for (name, range) in spans {
        if range.start != pos {
            return Err(format!(
                "tensor {name:?} starts at {} but the previous data ends at {pos} \
                 (offsets must be contiguous)",
                range.start
            ));
        }
        pos = range.end;
    }
    Ok((tensors, pos))
}

impl BlobLayout {
    /// The layout from a blob's first bytes (length prefix and header), with
    /// ranges made absolute; `size` is the blob's size, which must be exactly
    /// what the header describes.
    pub fn from_header(
        digest: Sha256Digest,
        size: u64,
        head: &[u8],
    ) -> Result<Self, AssembleError> {
        let bad = |reason: String| AssembleError::BadBlob { digest, reason };
        let prefix: [u8; 8] = head
            .get(..8)
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| bad("shorter than the 8-byte header length".into()))?;
        let n = u64::from_le_bytes(prefix);
        let json = usize::try_from(n)
            .ok()
            .and_then(|n| head.get(8..8 + n))
            .ok_or_else(|| bad(format!("header of {n} bytes is cut short")))?;
        let (mut tensors, data_len) = parse_header(json).map_err(bad)?;
        let data_start = 8 + n;
        if data_start + data_len != size {
            return Err(bad(format!(
                "header describes {} bytes, the blob has {size}",
                data_start + data_len
            )));
        }
        for t in tensors.values_mut() {
            t.range = t.range.start + data_start..t.range.end + data_start;
        }
        Ok(Self {
            digest,
            size,
            tensors,
        })
    }

    /// Reads a stored blob's layout (two small range reads).
    pub async fn read(store: &BlobStore, digest: &Sha256Digest) -> Result<Self, AssembleError> {
        let size = store
            .size(digest)
            .await?
            .ok_or(BlobError::NotFound(*digest))?;
        let bad = |reason: String| AssembleError::BadBlob {
            digest: *digest,
            reason,
        };
        if size < 8 {
            return Err(bad(format!("{size} bytes is too short for safetensors")));
        }
        let prefix = store.get_range(digest, 0..8).await?;
        let n = u64::from_le_bytes(
            prefix
                .as_ref()
                .try_into()
                .map_err(|_| bad("short read".into()))?,
        );
        if n > MAX_HEADER_BYTES || 8 + n > size {
            return Err(bad(format!("header length {n} is out of bounds")));
        }
        let head = store.get_range(digest, 0..8 + n).await?;
        Self::from_header(*digest, size, &head)
    }

    fn get(&self, name: &str, shape: &[usize]) -> Result<&TensorSlice, AssembleError> {
        let t = self.tensors.get(name).ok_or_else(|| {
            AssembleError::Mismatch(format!("blob {} has no tensor {name}", self.digest))
        })?;
        if t.shape != shape {
            return Err(AssembleError::Mismatch(format!(
                "blob {}: {name} has shape {:?}, expected {shape:?}",
                self.digest, t.shape
            )));
        }
        Ok(t)
    }
}

/// What a published version is made of: metadata only.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionManifest {
    /// The anchor's `model.safetensors` blob.
    pub anchor: Sha256Digest,
    /// Contributed experts 1..n, in merge order (their payload blobs).
    pub experts: Vec<Sha256Digest>,
    /// Experts active per token (capped at n + 1 when assembled).
    pub top_k: usize,
}

impl VersionManifest {
    /// SHA-256 of the manifest's canonical JSON: what a `ModelVersionPublished`
    /// event records as the version's checkpoint digest.
    pub fn digest(&self) -> Result<Sha256Digest, AssembleError> {
        let bytes = tributary_ledger::canonical::to_canonical_bytes(self)
            .map_err(|e| AssembleError::Mismatch(format!("manifest encoding: {e}")))?;
        Ok(Sha256Digest::of(&bytes))
    }
}

/// A piece of the assembled `model.safetensors`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Segment {
    /// Bytes made by the assembler (the length prefix and header).
    Inline(Bytes),
    /// A byte range of a stored blob.
    Blob {
        /// The blob.
        digest: Sha256Digest,
        /// Bytes of it.
        range: Range<u64>,
    },
}

impl Segment {
    /// Bytes this segment contributes.
    pub fn len(&self) -> u64 {
        match self {
            Segment::Inline(b) => b.len() as u64,
            Segment::Blob { range, .. } => range.end - range.start,
        }
    }

    /// Whether it contributes nothing.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The `flex_olmo` checkpoint of a version, as a plan over blobs.
#[derive(Clone, Debug)]
pub struct AssembledCheckpoint {
    /// `config.json` of the merged model (n + 1 experts, top-k).
    pub config: FlexOlmoConfig,
    /// `model.safetensors` as a sequence of pieces.
    pub segments: Vec<Segment>,
}

struct Planned<'a> {
    dtype: &'a str,
    shape: Vec<usize>,
    parts: Vec<(Sha256Digest, Range<u64>)>,
}

impl AssembledCheckpoint {
    /// Plans the merged checkpoint of `anchor_config`'s anchor (layout
    /// `anchor`) with `experts` in order, `top_k` experts per token.
    pub fn plan(
        anchor_config: &FlexOlmoConfig,
        anchor: &BlobLayout,
        experts: &[BlobLayout],
        top_k: usize,
    ) -> Result<Self, AssembleError> {
        if anchor_config.num_experts != 1 {
            return Err(AssembleError::Mismatch(format!(
                "an anchor has exactly one expert; this configuration has {}",
                anchor_config.num_experts
            )));
        }
        let mut seen = std::collections::HashSet::new();
        for e in experts {
            if !seen.insert(e.digest) {
                return Err(AssembleError::Mismatch(format!(
                    "expert {} is listed twice",
                    e.digest
                )));
            }
        }
        let anchor_shapes = Checkpoint::expected_shapes(anchor_config);
        for (name, shape) in &anchor_shapes {
            anchor.get(name, shape)?;
        }
        if anchor.tensors.len() != anchor_shapes.len() {
            return Err(AssembleError::Mismatch(format!(
                "anchor blob {} has {} tensors, its configuration implies {}",
                anchor.digest,
                anchor.tensors.len(),
                anchor_shapes.len()
            )));
        }
        let expert_shapes = expected_expert_shapes(anchor_config);
        for e in experts {
            for (name, shape) in &expert_shapes {
                e.get(name, shape)?;
            }
            if e.tensors.len() != expert_shapes.len() {
                return Err(AssembleError::Mismatch(format!(
                    "expert blob {} has {} tensors, expected {}",
                    e.digest,
                    e.tensors.len(),
                    expert_shapes.len()
                )));
            }
        }

        let n = experts.len() + 1;
        let mut config = anchor_config.clone();
        config.num_experts = n;
        config.num_experts_per_tok = top_k.clamp(1, n);
        let h = config.hidden_size;

        let mut plan: BTreeMap<String, Planned<'_>> = BTreeMap::new();
        for (name, t) in &anchor.tensors {
            if names::is_shared(name) || name.contains(".mlp.experts.0.") {
                plan.insert(
                    name.clone(),
                    Planned {
                        dtype: &t.dtype,
                        shape: t.shape.clone(),
                        parts: vec![(anchor.digest, t.range.clone())],
                    },
                );
            }
        }
        for l in 0..config.num_hidden_layers {
            let r_pub = anchor.get(&names::router(l), &[1, h])?;
            let mut parts = vec![(anchor.digest, r_pub.range.clone())];
            for (i, e) in experts.iter().enumerate() {
                for proj in names::FFN_PROJS {
                    let t = &e.tensors[&names::package_ffn(l, proj)];
                    plan.insert(
                        names::expert(l, i + 1, proj),
                        Planned {
                            dtype: &t.dtype,
                            shape: t.shape.clone(),
                            parts: vec![(e.digest, t.range.clone())],
                        },
                    );
                }
                let r = &e.tensors[&names::package_router(l)];
                if r.dtype != r_pub.dtype {
                    return Err(AssembleError::Mismatch(format!(
                        "expert {} router of layer {l} is {}, the anchor's is {}",
                        e.digest, r.dtype, r_pub.dtype
                    )));
                }
                parts.push((e.digest, r.range.clone()));
            }
            plan.insert(
                names::router(l),
                Planned {
                    dtype: &r_pub.dtype,
                    shape: vec![n, h],
                    parts,
                },
            );
        }

        let mut infos = Vec::with_capacity(plan.len());
        let mut offset = 0usize;
        let mut segments: Vec<Segment> = Vec::new();
        for (name, p) in &plan {
            let len: u64 = p.parts.iter().map(|(_, r)| r.end - r.start).sum();
            let len = usize::try_from(len)
                .map_err(|_| AssembleError::Mismatch(format!("{name} is too large")))?;
            let dtype: safetensors::Dtype = serde_json::from_value(p.dtype.into())
                .map_err(|e| AssembleError::Mismatch(format!("{name}: dtype: {e}")))?;
            infos.push((
                name.clone(),
                safetensors::tensor::TensorInfo {
                    dtype,
                    shape: p.shape.clone(),
                    data_offsets: (offset, offset + len),
                },
            ));
            offset += len;
            for (digest, range) in &p.parts {
                push_range(&mut segments, *digest, range.clone());
            }
        }
        let meta = HashMap::from([("format".to_owned(), "pt".to_owned())]);
        let metadata = safetensors::tensor::Metadata::new(Some(meta), infos)
            .map_err(|e| AssembleError::Mismatch(format!("safetensors header: {e}")))?;
        let mut header = serde_json::to_vec(&metadata)
            .map_err(|e| AssembleError::Mismatch(format!("safetensors header: {e}")))?;
        header.resize(header.len().next_multiple_of(8), b' ');
        let mut head = Vec::with_capacity(8 + header.len());
        head.extend_from_slice(&(header.len() as u64).to_le_bytes());
        head.extend_from_slice(&header);
        segments.insert(0, Segment::Inline(Bytes::from(head)));
        Ok(Self { config, segments })
    }

    /// Reads the layouts of `manifest`'s blobs from `store` and plans the checkpoint.
    pub async fn from_manifest(
        store: &BlobStore,
        anchor_config: &FlexOlmoConfig,
        manifest: &VersionManifest,
    ) -> Result<Self, AssembleError> {
        let anchor = BlobLayout::read(store, &manifest.anchor).await?;
        let experts: Vec<BlobLayout> = stream::iter(&manifest.experts)
            .then(|d| BlobLayout::read(store, d))
            .try_collect()
            .await?;
        Self::plan(anchor_config, &anchor, &experts, manifest.top_k)
    }

    /// `config.json` of the merged model.
    pub fn config_json(&self) -> String {
        self.config.to_json()
    }

    /// Size of the assembled `model.safetensors`.
    pub fn len(&self) -> u64 {
        self.segments.iter().map(Segment::len).sum()
    }

    /// Whether the file is empty (never, for a plan from [`Self::plan`]).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The distinct blobs this checkpoint reads.
    pub fn blobs(&self) -> Vec<Sha256Digest> {
        let mut out: Vec<Sha256Digest> = self
            .segments
            .iter()
            .filter_map(|s| match s {
                Segment::Blob { digest, .. } => Some(*digest),
                Segment::Inline(_) => None,
            })
            .collect();
        out.sort();
        out.dedup();
        out
    }

    /// The bytes of `model.safetensors`, read from the blobs range by range.
    pub fn stream(&self, store: &BlobStore) -> BoxStream<'static, Result<Bytes, BlobError>> {
        let store = store.clone();
        stream::iter(self.segments.clone())
            .then(move |segment| {
                let store = store.clone();
                async move {
                    match segment {
                        Segment::Inline(bytes) => Ok(stream::once(async { Ok(bytes) }).boxed()),
                        Segment::Blob { digest, range } => {
                            store.get_range_stream(&digest, range).await
                        }
                    }
                }
            })
            .try_flatten()
            .boxed()
    }

    /// SHA-256 of `model.safetensors`, computed by streaming it.
    pub async fn sha256(&self, store: &BlobStore) -> Result<Sha256Digest, BlobError> {
        let mut hasher = Sha256::new();
        let mut s = self.stream(store);
        while let Some(chunk) = s.try_next().await? {
            hasher.update(&chunk);
        }
        Ok(Sha256Digest(hasher.finalize().into()))
    }
}

/// Appends a blob range, merging it into the previous one when contiguous.
fn push_range(segments: &mut Vec<Segment>, digest: Sha256Digest, range: Range<u64>) {
    if range.is_empty() {
        return;
    }
    if let Some(Segment::Blob {
        digest: last,
        range: prev,
    }) = segments.last_mut()
        && *last == digest
        && prev.end == range.start
    {
        prev.end = range.end;
        return;
    }
    segments.push(Segment::Blob { digest, range });
}
