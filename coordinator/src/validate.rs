//! Validation of an expert upload (DESIGN.md, "Validation of an upload").
//!
//! [`UploadValidator`] is fed the payload chunk by chunk and holds, whatever
//! the payload's size, only the safetensors header (bounded by
//! [`ValidationLimits::max_header_bytes`]) and a few numbers per tensor: running
//! SHA-256s, sums of squares and counts of non-finite values. At
//! [`UploadValidator::finish`] it reports steps 3 to 5 in DESIGN's order, each
//! with its figure, stopping at the first failure with a stable
//! [`RejectReason`]:
//!
//! 1. `payload_size` — the stream carried exactly the declared size, within
//!    the limit (`PAYLOAD_TOO_LARGE`, `TRUNCATED`, `EXTRA_BYTES`);
//! 2. `payload_sha256` — the payload hashes to the manifest's total
//!    (`PAYLOAD_DIGEST_MISMATCH`);
//! 3. `tensor_sha256` — every tensor hashes to its manifest entry and the
//!    manifest lists exactly the payload's tensors (`TENSOR_DIGEST_MISMATCH`;
//!    `BAD_HEADER` or `TRUNCATED` when the header does not let the tensors be
//!    found);
//! 4. `anchor` — the manifest names the current anchor (`WRONG_ANCHOR`);
//! 5. `safetensors_header` — exactly the expected names, shapes and dtypes for
//!    the anchor's configuration, no bytes after the last tensor
//!    (`EXTRA_BYTES`, `UNEXPECTED_TENSOR`, `MISSING_TENSOR`, `WRONG_DTYPE`,
//!    `WRONG_SHAPE`);
//! 6. `finite` — every value finite (`NON_FINITE`);
//! 7. `norm_ratio` — each tensor's L2 norm over the anchor's public FFN tensor
//!    (router row over `r_pub`) within bounds (`NORM_OUT_OF_BOUNDS`).
//!
//! The whole stream is always read (unless it exceeds its declared size), so
//! the reported failure never depends on how the payload was chunked.
//! Steps 1–2 (request and manifest signatures) and 6 (consent) belong to the
//! server; [`verify_manifest_signature`] performs the manifest check for it.
//! Step 7, the quality gate, is [`quality_gate`]: it loads the expert in
//! memory and runs the model, so it is separate.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::Path;
use std::sync::Arc;

use sha2::{Digest as _, Sha256};
use tributary_ledger::entry::statement_message;
use tributary_ledger::event::{ExpertManifest, ExpertSubmitted, Figure, ValidationResult};
use tributary_ledger::{
    ContributorId, Event, ExpertDigest, PublicKey, ReasonCode, Sha256Digest, Signature,
    SignatureRole, SubmissionId,
};
use tributary_model::checkpoint::{Checkpoint, file_sha256};
use tributary_model::eval::evaluate;
use tributary_model::expert::{ExpertPackage, TrainingMetadata, expected_expert_shapes};
use tributary_model::merge::merge;
use tributary_model::weights::TensorMap;
use tributary_model::{FlexOlmo, FlexOlmoConfig, ModelError, names};

use crate::assemble::{BlobLayout, parse_header};

/// Why an upload was rejected: a stable code recorded in the ledger.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RejectReason {
    /// The declared or received size exceeds the limit.
    PayloadTooLarge,
    /// The stream ended before the declared size, or the header describes more
    /// data than the payload holds.
    Truncated,
    /// The stream carried more than the declared size, or the payload has
    /// bytes after its last tensor.
    ExtraBytes,
    /// The payload does not hash to the manifest's total digest.
    PayloadDigestMismatch,
    /// A tensor does not hash to its manifest entry, or the manifest and the
    /// payload list different tensors.
    TensorDigestMismatch,
    /// The manifest names another anchor than the current one.
    WrongAnchor,
    /// The safetensors header is malformed (length, JSON, offsets).
    BadHeader,
    /// The payload has a tensor the anchor's expert layout does not.
    UnexpectedTensor,
    /// The payload lacks a tensor of the anchor's expert layout.
    MissingTensor,
    /// A tensor has the wrong shape.
    WrongShape,
    /// A tensor has the wrong dtype.
    WrongDtype,
    /// A value is NaN or infinite.
    NonFinite,
    /// A tensor's norm is too far from the anchor's public FFN.
    NormOutOfBounds,
    /// The manifest signature does not verify under the contributor's key.
    BadManifestSignature,
    /// Adding the expert raises public perplexity beyond the margin.
    QualityGatePerplexity,
    /// The expert captures too large a share of the public tokens.
    QualityGateRouting,
}

impl RejectReason {
    /// Every reason, in the order of the checks.
    pub const ALL: [RejectReason; 16] = [
        RejectReason::PayloadTooLarge,
        RejectReason::Truncated,
        RejectReason::ExtraBytes,
        RejectReason::PayloadDigestMismatch,
        RejectReason::TensorDigestMismatch,
        RejectReason::WrongAnchor,
        RejectReason::BadHeader,
        RejectReason::UnexpectedTensor,
        RejectReason::MissingTensor,
        RejectReason::WrongShape,
        RejectReason::WrongDtype,
        RejectReason::NonFinite,
        RejectReason::NormOutOfBounds,
        RejectReason::BadManifestSignature,
        RejectReason::QualityGatePerplexity,
        RejectReason::QualityGateRouting,
    ];

    /// The stable code, e.g. `NORM_OUT_OF_BOUNDS`.
    pub fn as_str(self) -> &'static str {
        match self {
            RejectReason::PayloadTooLarge => "PAYLOAD_TOO_LARGE",
            RejectReason::Truncated => "TRUNCATED",
            RejectReason::ExtraBytes => "EXTRA_BYTES",
            RejectReason::PayloadDigestMismatch => "PAYLOAD_DIGEST_MISMATCH",
            RejectReason::TensorDigestMismatch => "TENSOR_DIGEST_MISMATCH",
            RejectReason::WrongAnchor => "WRONG_ANCHOR",
            RejectReason::BadHeader => "BAD_HEADER",
            RejectReason::UnexpectedTensor => "UNEXPECTED_TENSOR",
            RejectReason::MissingTensor => "MISSING_TENSOR",
            RejectReason::WrongShape => "WRONG_SHAPE",
            RejectReason::WrongDtype => "WRONG_DTYPE",
            RejectReason::NonFinite => "NON_FINITE",
            RejectReason::NormOutOfBounds => "NORM_OUT_OF_BOUNDS",
            RejectReason::BadManifestSignature => "BAD_MANIFEST_SIGNATURE",
            RejectReason::QualityGatePerplexity => "QUALITY_GATE_PERPLEXITY",
            RejectReason::QualityGateRouting => "QUALITY_GATE_ROUTING",
        }
    }

    /// The code as the ledger's [`ReasonCode`].
    #[allow(clippy::expect_used)] // constant codes, all valid ids (tested)
    pub fn code(self) -> ReasonCode {
        ReasonCode::new(self.as_str()).expect("reason codes are valid ids")
    }
}

impl fmt::Display for RejectReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The outcome of one validation check.
#[derive(Clone, Debug, PartialEq)]
pub struct StepResult {
    /// Which check, e.g. `payload_sha256`, `norm_ratio`.
    pub check: &'static str,
    /// Whether it passed.
    pub passed: bool,
    /// The measured figure, where the check measures one.
    pub figure: Option<f64>,
    /// The reason code when it failed.
    pub reason: Option<RejectReason>,
    /// A human-readable explanation.
    pub detail: String,
}

impl StepResult {
    fn pass(check: &'static str, figure: Option<f64>, detail: impl Into<String>) -> Self {
        Self {
            check,
            passed: true,
            figure,
            reason: None,
            detail: detail.into(),
        }
    }

    fn fail(
        check: &'static str,
        reason: RejectReason,
        figure: Option<f64>,
        detail: impl Into<String>,
    ) -> Self {
        Self {
            check,
            passed: false,
            figure,
            reason: Some(reason),
            detail: detail.into(),
        }
    }

    /// The ledger's form (figure as a canonical decimal; non-finite figures are dropped).
    pub fn to_ledger(&self) -> ValidationResult {
        ValidationResult {
            check: self.check.to_owned(),
            passed: self.passed,
            figure: self.figure.and_then(Figure::from_f64),
        }
    }
}

/// An upload that failed a check.
#[derive(Clone, Debug, PartialEq)]
pub struct Rejection {
    /// The first failing check's reason.
    pub reason: RejectReason,
    /// Every check run, in order, the failing one last.
    pub results: Vec<StepResult>,
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let detail = self.results.last().map_or("", |r| r.detail.as_str());
        write!(f, "{}: {detail}", self.reason)
    }
}

impl std::error::Error for Rejection {}

/// Configured limits of the streaming checks.
#[derive(Clone, Debug, PartialEq)]
pub struct ValidationLimits {
    /// Largest payload accepted, in bytes.
    pub max_payload_bytes: u64,
    /// Largest safetensors header accepted, in bytes.
    pub max_header_bytes: u64,
    /// Smallest accepted ratio of a tensor's L2 norm to the anchor's.
    pub norm_ratio_min: f64,
    /// Largest accepted ratio of a tensor's L2 norm to the anchor's.
    pub norm_ratio_max: f64,
}

impl Default for ValidationLimits {
    fn default() -> Self {
        Self {
            max_payload_bytes: 16 << 30,
            max_header_bytes: 1 << 20,
            norm_ratio_min: 0.1,
            norm_ratio_max: 10.0,
        }
    }
}

/// One tensor an expert for the current anchor must have.
#[derive(Clone, Debug, PartialEq)]
pub struct ExpectedTensor {
    /// Dimensions.
    pub shape: Vec<usize>,
    /// safetensors dtype (`F32`).
    pub dtype: String,
    /// L2 norm of the anchor's counterpart (public FFN projection or `r_pub`).
    pub reference_norm: f64,
}

/// What uploads are validated against: the current anchor's digest,
/// configuration and the norms of its public FFN and router rows.
#[derive(Clone, Debug)]
pub struct AnchorReference {
    /// SHA-256 of the anchor's `model.safetensors`.
    pub digest: Sha256Digest,
    /// Its configuration.
    pub config: FlexOlmoConfig,
    /// The expert layout, by tensor name.
    pub expected: BTreeMap<String, ExpectedTensor>,
    /// SHA-256 of its `tokenizer.json`, when it came with one: the quality
    /// gate reads its public text with the current anchor's tokenizer.
    pub tokenizer: Option<Sha256Digest>,
}

impl AnchorReference {
    /// From an anchor in memory and the digest of its `model.safetensors`.
    pub fn from_checkpoint(anchor: &Checkpoint, digest: Sha256Digest) -> Result<Self, ModelError> {
        if anchor.config.num_experts != 1 {
            return Err(ModelError::Argument(format!(
                "an anchor has exactly one expert; this checkpoint has {}",
                anchor.config.num_experts
            )));
        }
        let mut expected = BTreeMap::new();
        for (name, shape) in expected_expert_shapes(&anchor.config) {
            let reference_norm = match counterpart(&name) {
                Some(anchor_name) => anchor.tensors.get(&anchor_name)?.l2_norm(),
                None => {
                    return Err(ModelError::Tensor(format!(
                        "no anchor counterpart for {name}"
                    )));
                }
            };
            expected.insert(
                name,
                ExpectedTensor {
                    shape,
                    dtype: "F32".to_owned(),
                    reference_norm,
                },
            );
        }
        Ok(Self {
            digest,
            config: anchor.config.clone(),
            expected,
            tokenizer: None,
        })
    }

    /// Reads an anchor checkpoint directory (digest = sha256 of its
    /// `model.safetensors`; its `tokenizer.json`, if any, is noted by digest).
    pub fn load(dir: &Path) -> Result<Self, ModelError> {
        let anchor = Checkpoint::load(dir)?;
        let sha = |name: &str| -> Result<Sha256Digest, ModelError> {
            let hex = file_sha256(&dir.join(name))?;
            Sha256Digest::from_hex(&hex).map_err(|e| ModelError::Argument(e.to_string()))
        };
        let tokenizer = dir.join("tokenizer.json");
        let mut reference = Self::from_checkpoint(&anchor, sha("model.safetensors")?)?;
        reference.tokenizer = tokenizer
            .is_file()
            .then(|| sha("tokenizer.json"))
            .transpose()?;
        Ok(reference)
    }
}

/// The anchor tensor an expert tensor is compared with: the public FFN's
/// projection, or `mlp.gate.weight` (1 × hidden, i.e. `r_pub`) for the router row.
fn counterpart(expert_name: &str) -> Option<String> {
    let rest = expert_name.strip_prefix("model.layers.")?;
    let (layer, tail) = rest.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    if tail == "mlp.router.weight" {
        return Some(names::router(layer));
    }
    let proj = tail.strip_prefix("mlp.expert.")?.strip_suffix(".weight")?;
    names::FFN_PROJS
        .contains(&proj)
        .then(|| names::expert(layer, 0, proj))
}

/// Verifies the contributor's statement signature over the `ExpertSubmitted`
/// event of this upload (DESIGN step 2), as result `manifest_signature`.
pub fn verify_manifest_signature(
    submission: &SubmissionId,
    contributor: &ContributorId,
    manifest: &ExpertManifest,
    signature: &Signature,
    key: &PublicKey,
) -> StepResult {
    const CHECK: &str = "manifest_signature";
    let event = Event::ExpertSubmitted(ExpertSubmitted {
        submission: submission.clone(),
        contributor: contributor.clone(),
        manifest: manifest.clone(),
    });
    let verified = statement_message(&event, SignatureRole::Contributor)
        .map_err(|e| e.to_string())
        .and_then(|m| key.verify(&m, signature).map_err(|e| e.to_string()));
    match verified {
        Ok(()) => StepResult::pass(CHECK, None, "the contributor's signature verifies"),
        Err(e) => StepResult::fail(CHECK, RejectReason::BadManifestSignature, None, e),
    }
}

/// An upload that passed the streaming checks.
#[derive(Clone, Debug, PartialEq)]
pub struct ValidatedExpert {
    /// The expert's digest (the payload's SHA-256).
    pub digest: ExpertDigest,
    /// Payload size in bytes.
    pub size: u64,
    /// Where each tensor lies in the payload, for assembling versions.
    pub layout: BlobLayout,
    /// Every check, all passed.
    pub results: Vec<StepResult>,
}

/// What [`UploadValidator::finish`] decides.
#[derive(Clone, Debug, PartialEq)]
pub enum ValidationOutcome {
    /// Every streaming check passed.
    Accepted(ValidatedExpert),
    /// A check failed.
    Rejected(Rejection),
}

/// Running state of one tensor's bytes.
struct TensorState {
    name: String,
    len: u64,
    is_f32: bool,
    hasher: Sha256,
    /// Sums of squares of the finite values whose index is 0, 1, 2, 3 mod 4:
    /// four independent chains (fast), each summed in element order, so the
    /// total does not depend on how the payload was chunked.
    sum_sq: [f64; 4],
    /// Values scanned so far.
    values: u64,
    non_finite: u64,
    carry: [u8; 4],
    carry_len: usize,
}

impl TensorState {
    fn new(name: String, len: u64, dtype: &str) -> Self {
        Self {
            name,
            len,
            is_f32: dtype == "F32",
            hasher: Sha256::new(),
            sum_sq: [0.0; 4],
            values: 0,
            non_finite: 0,
            carry: [0; 4],
            carry_len: 0,
        }
    }

    fn norm(&self) -> f64 {
        let [a, b, c, d] = self.sum_sq;
        (((a + b) + c) + d).sqrt()
    }

    fn one(&mut self, w: [u8; 4]) {
        let v = f32::from_le_bytes(w);
        let lane = (self.values % 4) as usize;
        self.values += 1;
        if v.is_finite() {
            self.sum_sq[lane] += f64::from(v) * f64::from(v);
        } else {
            self.non_finite += 1;
        }
    }

    /// Scans whole `f32` values (`bytes.len()` a multiple of 4).
    fn scan(&mut self, mut bytes: &[u8]) {
        while !self.values.is_multiple_of(4) && bytes.len() >= 4 {
            self.one([bytes[0], bytes[1], bytes[2], bytes[3]]);
            bytes = &bytes[4..];
        }
        let mut groups = bytes.chunks_exact(16);
        let mut acc = self.sum_sq;
        let mut bad = 0u64;
        for g in &mut groups {
            for (k, a) in acc.iter_mut().enumerate() {
                let v = f32::from_le_bytes([g[4 * k], g[4 * k + 1], g[4 * k + 2], g[4 * k + 3]]);
                if v.is_finite() {
                    *a += f64::from(v) * f64::from(v);
                } else {
                    bad += 1;
                }
            }
        }
        self.sum_sq = acc;
        self.non_finite += bad;
        self.values += (bytes.len() / 16 * 4) as u64;
        for w in groups.remainder().chunks_exact(4) {
            self.one([w[0], w[1], w[2], w[3]]);
        }
    }

    fn update(&mut self, mut bytes: &[u8]) {
        self.hasher.update(bytes);
        if !self.is_f32 {
            return;
        }
        if self.carry_len > 0 {
            let take = (4 - self.carry_len).min(bytes.len());
            self.carry[self.carry_len..self.carry_len + take].copy_from_slice(&bytes[..take]);
            self.carry_len += take;
            bytes = &bytes[take..];
            if self.carry_len < 4 {
                return;
            }
            self.carry_len = 0;
            self.one(self.carry);
        }
        let aligned = bytes.len() / 4 * 4;
        self.scan(&bytes[..aligned]);
        let rest = &bytes[aligned..];
        self.carry[..rest.len()].copy_from_slice(rest);
        self.carry_len = rest.len();
    }
}

/// Where the validator is in the payload.
enum Phase {
    /// Reading the 8-byte header length.
    Prefix { buf: [u8; 8], have: usize },
    /// Reading the header's `n` bytes of JSON.
    Header { n: u64, buf: Vec<u8> },
    /// In the data section, at tensor `current` (in offset order).
    Data { current: usize },
    /// The header is unusable: the rest is only hashed.
    Opaque,
}

/// Steps 3–5 of DESIGN's validation over a payload streamed in chunks.
pub struct UploadValidator {
    anchor: Arc<AnchorReference>,
    limits: ValidationLimits,
    manifest: ExpertManifest,
    declared_size: u64,
    received: u64,
    payload: Sha256,
    phase: Phase,
    header_error: Option<String>,
    header_len: u64,
    data_len: u64,
    slices: BTreeMap<String, crate::assemble::TensorSlice>,
    /// Tensors in offset order with the bytes each has received.
    tensors: Vec<(TensorState, u64)>,
    trailing: u64,
    overflow: Option<Rejection>,
}

impl fmt::Debug for UploadValidator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UploadValidator")
            .field("declared_size", &self.declared_size)
            .field("received", &self.received)
            .finish_non_exhaustive()
    }
}

impl UploadValidator {
    /// Starts validating a payload of `declared_size` bytes described by
    /// `manifest`, against `anchor`. Fails at once (`PAYLOAD_TOO_LARGE`) when
    /// the declared size exceeds the limit, before any byte is read.
    pub fn new(
        anchor: Arc<AnchorReference>,
        limits: ValidationLimits,
        manifest: ExpertManifest,
        declared_size: u64,
    ) -> Result<Self, Rejection> {
        if declared_size > limits.max_payload_bytes {
            return Err(Rejection {
                reason: RejectReason::PayloadTooLarge,
                results: vec![StepResult::fail(
                    "payload_size",
                    RejectReason::PayloadTooLarge,
                    Some(declared_size as f64),
                    format!(
                        "declared {declared_size} bytes, the limit is {}",
                        limits.max_payload_bytes
                    ),
                )],
            });
        }
        Ok(Self {
            anchor,
            limits,
            manifest,
            declared_size,
            received: 0,
            payload: Sha256::new(),
            phase: Phase::Prefix {
                buf: [0; 8],
                have: 0,
            },
            header_error: None,
            header_len: 0,
            data_len: 0,
            slices: BTreeMap::new(),
            tensors: Vec::new(),
            trailing: 0,
            overflow: None,
        })
    }

    /// Bytes received so far.
    pub fn received(&self) -> u64 {
        self.received
    }

    /// Takes the next chunk. Fails only when the stream runs past its declared
    /// size (`EXTRA_BYTES`): the caller should stop reading and reject. Every
    /// other failure is reported by [`Self::finish`].
    pub fn feed(&mut self, chunk: &[u8]) -> Result<(), Rejection> {
        if let Some(r) = &self.overflow {
            return Err(r.clone());
        }
        let total = self.received.saturating_add(chunk.len() as u64);
        if total > self.declared_size {
            let r = Rejection {
                reason: RejectReason::ExtraBytes,
                results: vec![StepResult::fail(
                    "payload_size",
                    RejectReason::ExtraBytes,
                    Some(total as f64),
                    format!(
                        "the stream carried at least {total} bytes, {} were declared",
                        self.declared_size
                    ),
                )],
            };
            self.overflow = Some(r.clone());
            return Err(r);
        }
        self.received = total;
        self.payload.update(chunk);
        let mut bytes = chunk;
        while !bytes.is_empty() {
            match &mut self.phase {
                Phase::Prefix { buf, have } => {
                    let take = (8 - *have).min(bytes.len());
                    buf[*have..*have + take].copy_from_slice(&bytes[..take]);
                    *have += take;
                    bytes = &bytes[take..];
                    if *have == 8 {
                        let n = u64::from_le_bytes(*buf);
                        self.start_header(n);
                    }
                }
                Phase::Header { n, buf } => {
                    let want = usize::try_from(*n).unwrap_or(usize::MAX) - buf.len();
                    let take = want.min(bytes.len());
                    buf.extend_from_slice(&bytes[..take]);
                    bytes = &bytes[take..];
                    if buf.len() as u64 == *n {
                        self.end_header();
                    }
                }
                Phase::Data { .. } => {
                    self.feed_data(bytes);
                    bytes = &[];
                }
                Phase::Opaque => bytes = &[],
            }
        }
        Ok(())
    }

    fn start_header(&mut self, n: u64) {
        self.header_len = n;
        if n > self.limits.max_header_bytes {
            self.header_error = Some(format!(
                "header of {n} bytes exceeds the limit of {}",
                self.limits.max_header_bytes
            ));
            self.phase = Phase::Opaque;
        } else if n.saturating_add(8) > self.declared_size {
            self.header_error = Some(format!(
                "header of {n} bytes does not fit in a payload of {}",
                self.declared_size
            ));
            self.phase = Phase::Opaque;
        } else {
            self.phase = Phase::Header {
                n,
                buf: Vec::with_capacity(usize::try_from(n).unwrap_or(0)),
            };
            if n == 0 {
                self.end_header();
            }
        }
    }

    fn end_header(&mut self) {
        let Phase::Header { buf, .. } = std::mem::replace(&mut self.phase, Phase::Opaque) else {
            return;
        };
        match parse_header(&buf) {
            Ok((slices, data_len)) => {
                let mut order: Vec<(&String, &crate::assemble::TensorSlice)> =
                    slices.iter().collect();
                order.sort_by_key(|(n, t)| (t.range.start, t.range.end, *n));
                self.tensors = order
                    .into_iter()
                    .map(|(n, t)| {
                        let len = t.range.end - t.range.start;
                        (TensorState::new(n.clone(), len, &t.dtype), 0)
                    })
                    .collect();
                self.slices = slices;
                self.data_len = data_len;
                self.phase = Phase::Data { current: 0 };
            }
            Err(e) => self.header_error = Some(e),
        }
    }

    fn feed_data(&mut self, mut bytes: &[u8]) {
        let Phase::Data { current } = &mut self.phase else {
            return;
        };
        while !bytes.is_empty() {
            let Some((state, got)) = self.tensors.get_mut(*current) else {
                self.trailing += bytes.len() as u64;
                return;
            };
            let take = usize::try_from(state.len - *got)
                .unwrap_or(usize::MAX)
                .min(bytes.len());
            state.update(&bytes[..take]);
            *got += take as u64;
            bytes = &bytes[take..];
            if *got == state.len {
                *current += 1;
            }
        }
    }

    /// Runs the checks in order on everything received and decides.
    pub fn finish(self) -> ValidationOutcome {
        match self.check() {
            Ok(v) => ValidationOutcome::Accepted(v),
            Err(r) => ValidationOutcome::Rejected(r),
        }
    }

    fn check(self) -> Result<ValidatedExpert, Rejection> {
        if let Some(r) = self.overflow {
            return Err(r);
        }
        let mut results = Vec::new();
        let mut step = |r: StepResult| -> Result<(), Rejection> {
            let failed = r.reason;
            results.push(r);
            match failed {
                Some(reason) => Err(Rejection {
                    reason,
                    results: std::mem::take(&mut results),
                }),
                None => Ok(()),
            }
        };
        let received = self.received;

        // Step 3: size and digests.
        step(if received < self.declared_size {
            StepResult::fail(
                "payload_size",
                RejectReason::Truncated,
                Some(received as f64),
                format!(
                    "the stream ended after {received} of {} bytes",
                    self.declared_size
                ),
            )
        } else {
            StepResult::pass("payload_size", Some(received as f64), "bytes received")
        })?;
        let digest = Sha256Digest(self.payload.clone().finalize().into());
        step(if digest == self.manifest.total.0 {
            StepResult::pass("payload_sha256", None, digest.to_string())
        } else {
            StepResult::fail(
                "payload_sha256",
                RejectReason::PayloadDigestMismatch,
                None,
                format!(
                    "the payload hashes to {digest}, the manifest says {}",
                    self.manifest.total
                ),
            )
        })?;
        step(self.tensor_digests())?;

        // Step 4: the expected layout of the current anchor.
        step(if self.manifest.anchor == self.anchor.digest {
            StepResult::pass("anchor", None, self.anchor.digest.to_string())
        } else {
            StepResult::fail(
                "anchor",
                RejectReason::WrongAnchor,
                None,
                format!(
                    "the expert was trained against anchor {}, the current anchor is {}",
                    self.manifest.anchor, self.anchor.digest
                ),
            )
        })?;
        step(self.header_layout())?;

        // Step 5: values.
        let non_finite: u64 = self.tensors.iter().map(|(t, _)| t.non_finite).sum();
        step(if non_finite == 0 {
            StepResult::pass("finite", Some(0.0), "every value is finite")
        } else {
            let first = self
                .tensors
                .iter()
                .find(|(t, _)| t.non_finite > 0)
                .map_or("", |(t, _)| t.name.as_str());
            StepResult::fail(
                "finite",
                RejectReason::NonFinite,
                Some(non_finite as f64),
                format!("{non_finite} values are NaN or infinite (first in {first})"),
            )
        })?;
        step(self.norm_ratios())?;

        let offset = 8 + self.header_len;
        let tensors = self
            .slices
            .into_iter()
            .map(|(n, mut t)| {
                t.range = t.range.start + offset..t.range.end + offset;
                (n, t)
            })
            .collect();
        Ok(ValidatedExpert {
            digest: ExpertDigest(digest),
            size: received,
            layout: BlobLayout {
                digest,
                size: received,
                tensors,
            },
            results,
        })
    }

    fn tensor_digests(&self) -> StepResult {
        const CHECK: &str = "tensor_sha256";
        if let Some(e) = &self.header_error {
            return StepResult::fail(CHECK, RejectReason::BadHeader, None, e.clone());
        }
        if !matches!(self.phase, Phase::Data { .. }) {
            return StepResult::fail(
                CHECK,
                RejectReason::BadHeader,
                None,
                format!(
                    "the payload ends inside its header ({} bytes)",
                    self.received
                ),
            );
        }
        let described = 8 + self.header_len + self.data_len;
        if described > self.received {
            return StepResult::fail(
                CHECK,
                RejectReason::Truncated,
                None,
                format!(
                    "the header describes {described} bytes, the payload has {}",
                    self.received
                ),
            );
        }
        let mut listed: HashMap<&str, &Sha256Digest> = HashMap::new();
        for t in &self.manifest.tensors {
            if listed.insert(t.name.as_str(), &t.sha256).is_some() {
                return StepResult::fail(
                    CHECK,
                    RejectReason::TensorDigestMismatch,
                    None,
                    format!("the manifest lists {} twice", t.name),
                );
            }
        }
        for (state, _) in &self.tensors {
            let actual = Sha256Digest(state.hasher.clone().finalize().into());
            match listed.remove(state.name.as_str()) {
                Some(expected) if *expected == actual => {}
                Some(expected) => {
                    return StepResult::fail(
                        CHECK,
                        RejectReason::TensorDigestMismatch,
                        None,
                        format!(
                            "tensor {} hashes to {actual}, the manifest says {expected}",
                            state.name
                        ),
                    );
                }
                None => {
                    return StepResult::fail(
                        CHECK,
                        RejectReason::TensorDigestMismatch,
                        None,
                        format!("the payload's tensor {} is not in the manifest", state.name),
                    );
                }
            }
        }
        if let Some(name) = listed.keys().min() {
            return StepResult::fail(
                CHECK,
                RejectReason::TensorDigestMismatch,
                None,
                format!("the manifest's tensor {name} is not in the payload"),
            );
        }
        StepResult::pass(
            CHECK,
            Some(self.tensors.len() as f64),
            "every tensor matches the manifest",
        )
    }

    fn header_layout(&self) -> StepResult {
        const CHECK: &str = "safetensors_header";
        let fail = |reason, detail: String| StepResult::fail(CHECK, reason, None, detail);
        if self.trailing > 0 {
            return fail(
                RejectReason::ExtraBytes,
                format!("{} bytes follow the last tensor", self.trailing),
            );
        }
        let expected = &self.anchor.expected;
        if let Some(name) = self.slices.keys().find(|n| !expected.contains_key(*n)) {
            return fail(
                RejectReason::UnexpectedTensor,
                format!("tensor {name} is not part of an expert for this anchor"),
            );
        }
        if let Some(name) = expected.keys().find(|n| !self.slices.contains_key(*n)) {
            return fail(
                RejectReason::MissingTensor,
                format!("tensor {name} is missing"),
            );
        }
        for (name, want) in expected {
            let Some(got) = self.slices.get(name) else {
                continue;
            };
            if got.dtype != want.dtype {
                return fail(
                    RejectReason::WrongDtype,
                    format!("{name} is {}, expected {}", got.dtype, want.dtype),
                );
            }
        }
        for (name, want) in expected {
            let Some(got) = self.slices.get(name) else {
                continue;
            };
            if got.shape != want.shape {
                return fail(
                    RejectReason::WrongShape,
                    format!(
                        "{name} has shape {:?}, expected {:?}",
                        got.shape, want.shape
                    ),
                );
            }
        }
        StepResult::pass(
            CHECK,
            Some(self.slices.len() as f64),
            "names, shapes and dtypes match the anchor",
        )
    }

    fn norm_ratios(&self) -> StepResult {
        const CHECK: &str = "norm_ratio";
        let (lo, hi) = (self.limits.norm_ratio_min, self.limits.norm_ratio_max);
        let mut worst: Option<(f64, &str)> = None;
        let mut out_of_bounds: Option<(f64, &str)> = None;
        for (state, _) in &self.tensors {
            let Some(want) = self.anchor.expected.get(&state.name) else {
                continue;
            };
            let norm = state.norm();
            let ratio = if want.reference_norm > 0.0 {
                norm / want.reference_norm
            } else if norm == 0.0 {
                1.0
            } else {
                f64::INFINITY
            };
            let distance = ratio.ln().abs();
            if worst.is_none_or(|(w, _)| distance > w.ln().abs()) {
                worst = Some((ratio, &state.name));
            }
            if out_of_bounds.is_none() && !(lo..=hi).contains(&ratio) {
                out_of_bounds = Some((ratio, &state.name));
            }
        }
        match (out_of_bounds, worst) {
            (Some((ratio, name)), _) => StepResult::fail(
                CHECK,
                RejectReason::NormOutOfBounds,
                Some(ratio),
                format!("{name}: norm ratio {ratio} to the anchor is outside [{lo}, {hi}]"),
            ),
            (None, Some((ratio, name))) => StepResult::pass(
                CHECK,
                Some(ratio),
                format!("the ratio farthest from 1 is {ratio} ({name})"),
            ),
            (None, None) => StepResult::pass(CHECK, None, "no tensors"),
        }
    }
}

/// Thresholds of the quality gate (DESIGN step 7).
#[derive(Clone, Debug, PartialEq)]
pub struct QualityGateConfig {
    /// Largest accepted relative increase of public perplexity (0.05 = 5 %).
    pub max_perplexity_increase: f64,
    /// Largest accepted share of public tokens whose first choice, in any
    /// layer, is the new expert.
    pub max_routing_share: f64,
    /// Experts per token of the version being extended.
    pub top_k: usize,
    /// Evaluation window, tokens.
    pub seq_len: usize,
    /// Windows per forward pass.
    pub batch_size: usize,
    /// burn backend (`flex`, `cuda`, `tch`).
    pub backend: String,
}

impl Default for QualityGateConfig {
    fn default() -> Self {
        Self {
            max_perplexity_increase: 0.05,
            max_routing_share: 0.5,
            top_k: 2,
            seq_len: 128,
            batch_size: 8,
            backend: "flex".to_owned(),
        }
    }
}

/// What the quality gate measured and decided.
#[derive(Clone, Debug, PartialEq)]
pub struct QualityReport {
    /// Public perplexity of the current version (or the anchor alone).
    pub perplexity_before: f64,
    /// Public perplexity with the new expert added.
    pub perplexity_after: f64,
    /// Largest per-layer share of public tokens whose first choice is the new expert.
    pub routing_share: f64,
    /// `public_perplexity` (figure: after / before) and `public_routing_share`,
    /// stopping at the first failure.
    pub results: Vec<StepResult>,
    /// The first failure, if any.
    pub rejection: Option<RejectReason>,
}

/// Reads an uploaded payload into an expert package for `anchor` (for the
/// quality gate; model-sized, in memory).
pub fn load_expert(payload: &[u8], anchor: &AnchorReference) -> Result<ExpertPackage, ModelError> {
    let tensors = TensorMap::from_safetensors(payload)?;
    ExpertPackage::new(
        &anchor.config,
        anchor.digest.to_string(),
        tensors,
        TrainingMetadata::default(),
    )
}

/// DESIGN step 7: public perplexity of `anchor` + `current` experts with and
/// without `candidate`, and the share of public tokens routed first to
/// `candidate`, on `public_tokens` (the operator's public validation text,
/// tokenized). Loads every expert in memory: run it after the streaming checks.
pub fn quality_gate(
    anchor: &Checkpoint,
    current: &[ExpertPackage],
    candidate: &ExpertPackage,
    public_tokens: &[u32],
    config: &QualityGateConfig,
) -> Result<QualityReport, ModelError> {
    let device = tributary_model::device::device_for(&config.backend)?;
    let anchor_digest = &candidate.manifest.anchor_digest;
    let run = |experts: &[ExpertPackage], top_k: usize| {
        let merged = merge(anchor, anchor_digest, experts, top_k)?;
        let model = FlexOlmo::from_tensors(&merged.config, &merged.tensors, &device)?;
        evaluate(
            &model,
            public_tokens,
            config.seq_len,
            config.batch_size,
            &mut |_, _| {},
        )
    };
    let mut with: Vec<ExpertPackage> = current.to_vec();
    with.push(candidate.clone());
    let before = run(current, config.top_k)?;
    let after = run(&with, config.top_k)?;
    let ratio = after.perplexity / before.perplexity;
    let mut results = vec![];
    let limit = 1.0 + config.max_perplexity_increase;
    let mut report = QualityReport {
        perplexity_before: before.perplexity,
        perplexity_after: after.perplexity,
        routing_share: f64::NAN,
        results: Vec::new(),
        rejection: None,
    };
    if ratio.is_finite() && ratio <= limit {
        results.push(StepResult::pass(
            "public_perplexity",
            Some(ratio),
            format!(
                "public perplexity {} -> {} (ratio {ratio}, limit {limit})",
                before.perplexity, after.perplexity
            ),
        ));
    } else {
        results.push(StepResult::fail(
            "public_perplexity",
            RejectReason::QualityGatePerplexity,
            Some(ratio),
            format!(
                "public perplexity {} -> {} (ratio {ratio} above {limit})",
                before.perplexity, after.perplexity
            ),
        ));
        report.results = results;
        report.rejection = Some(RejectReason::QualityGatePerplexity);
        return Ok(report);
    }
    let first_choice = run(&with, 1)?;
    let new = with.len();
    let share = first_choice
        .routing
        .iter()
        .filter_map(|layer| layer.get(new).copied())
        .fold(0.0, f64::max);
    report.routing_share = share;
    if share <= config.max_routing_share {
        results.push(StepResult::pass(
            "public_routing_share",
            Some(share),
            format!(
                "at most {share} of public tokens choose the new expert first (cap {})",
                config.max_routing_share
            ),
        ));
    } else {
        results.push(StepResult::fail(
            "public_routing_share",
            RejectReason::QualityGateRouting,
            Some(share),
            format!(
                "{share} of public tokens choose the new expert first in some layer (cap {})",
                config.max_routing_share
            ),
        ));
        report.rejection = Some(RejectReason::QualityGateRouting);
    }
    report.results = results;
    Ok(report)
}
