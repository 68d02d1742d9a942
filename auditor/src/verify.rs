//! `auditor verify`: download the log, verify the checkpoint's signature, the
//! tiles against the entries and the signed root, the consistency with the
//! checkpoint saved by the previous run, then replay every entry through the
//! ledger's rules; and save the new checkpoint when the tree is sound.

use std::path::PathBuf;

use tributary_ledger::note::NoteVerifier;
use tributary_ledger::{
    LedgerIndex, MemoryStore, PublicKey, Replay, ReplayOptions, Rule, Violation, consistency_proof,
    replay, verify_consistency,
};

use crate::client::TileClient;
use crate::download::{DownloadError, Downloaded, download};
use crate::report::Report;
use crate::state;

/// What `verify` needs.
#[derive(Clone, Debug)]
pub struct VerifyOptions {
    /// The log prefix, e.g. `http://127.0.0.1:8081`.
    pub url: String,
    /// The operator's verifier key string (`name+id+key`).
    pub key: String,
    /// The state file holding the last checkpoint accepted.
    pub state: Option<PathBuf>,
    /// A PEM file of CA certificates to trust instead of the webpki roots.
    pub ca: Option<PathBuf>,
    /// Show a progress bar on stderr.
    pub progress: bool,
}

/// The operator's verifier and the Ed25519 key inside it (which also seals entries).
pub fn parse_key(text: &str) -> anyhow::Result<(NoteVerifier, PublicKey)> {
    use base64::Engine as _;
    let verifier = NoteVerifier::from_key_string(text.trim())
        .map_err(|e| anyhow::anyhow!("--key is not a verifier key string: {e}"))?;
    // `name+id+base64`: the key is everything after the second `+` (base64 may hold `+`).
    let encoded = text.trim().splitn(3, '+').nth(2).unwrap_or_default();
    let raw = base64::engine::general_purpose::STANDARD.decode(encoded)?;
    let key: [u8; 32] = raw
        .get(1..)
        .and_then(|k| k.try_into().ok())
        .ok_or_else(|| anyhow::anyhow!("--key does not hold a 32-byte Ed25519 key"))?;
    Ok((verifier, PublicKey(key)))
}

/// A downloaded and replayed log.
pub struct Audited {
    /// What was downloaded.
    pub downloaded: Downloaded,
    /// The replay of its entries.
    pub replay: Replay,
}

/// Downloads and replays a log; the report holds the checks made so far.
pub fn download_and_replay(
    client: &TileClient,
    verifier: &NoteVerifier,
    operator: PublicKey,
    progress: bool,
    report: &mut Report,
) -> Result<Audited, DownloadError> {
    let downloaded = match download(client, verifier, progress) {
        Ok(d) => d,
        Err(DownloadError::Checkpoint(reason)) => {
            report.check("checkpoint signature", false, reason.clone());
            return Err(DownloadError::Checkpoint(reason));
        }
        Err(other) => {
            report.check("download", false, other.to_string());
            return Err(other);
        }
    };
    let checkpoint = &downloaded.checkpoint;
    report.origin = Some(checkpoint.origin.clone());
    report.tree_size = Some(checkpoint.size);
    report.root = Some(checkpoint.root.to_hex());
    report.signed_by = downloaded.signed_by.clone();
    report.check(
        "checkpoint signature",
        true,
        format!("verified by {}", downloaded.signed_by.join(", ")),
    );
    report.check(
        "download",
        true,
        format!(
            "{} entries, {} resources, {} bytes",
            downloaded.entries.len(),
            downloaded.requests,
            downloaded.bytes
        ),
    );
    let tiles_ok = downloaded.mismatches.is_empty();
    report.check(
        "tiles agree with entries and root",
        tiles_ok,
        if tiles_ok {
            format!("tile root {}", downloaded.tile_root)
        } else {
            format!("{} disagreement(s)", downloaded.mismatches.len())
        },
    );
    let options = ReplayOptions {
        operator_key: Some(operator),
        checkpoints: vec![checkpoint.clone()],
    };
    let replay = replay(&downloaded.entries, &options);
    Ok(Audited { downloaded, replay })
}

/// Checks the new checkpoint against the saved one using the tree the tiles
/// give; returns the violation when history was rewritten.
fn check_consistency(
    report: &mut Report,
    downloaded: &Downloaded,
    saved: Option<&tributary_ledger::Checkpoint>,
) -> Option<Violation> {
    let Some(old) = saved else {
        report.check(
            "consistent with saved checkpoint",
            true,
            "no checkpoint saved before",
        );
        return None;
    };
    let new = &downloaded.checkpoint;
    let fail = |reason: String| Violation {
        index: LedgerIndex(old.size.min(new.size).saturating_sub(1)),
        rule: Rule::TreeHead,
        reason,
    };
    let problem = if old.origin != new.origin {
        Some(fail(format!(
            "the saved checkpoint is of log {}, this one of {}",
            old.origin, new.origin
        )))
    } else if old.size > new.size {
        Some(fail(format!(
            "the log shrank from {} entries (saved checkpoint) to {}: history was rewritten",
            old.size, new.size
        )))
    } else {
        let mut store = MemoryStore::new();
        for leaf in &downloaded.tile_leaves {
            store.append_leaf_hash(*leaf);
        }
        let proof = if old.size == new.size || old.size == 0 {
            Ok(Vec::new())
        } else {
            consistency_proof(&store, old.size, new.size)
        };
        match proof.map_err(|e| e.to_string()).and_then(|proof| {
            verify_consistency(old.size, new.size, &proof, &old.root, &new.root)
                .map_err(|e| e.to_string())
        }) {
            Ok(()) => None,
            Err(reason) => Some(fail(format!(
                "the checkpoint of size {} is not consistent with the saved checkpoint of size {} \
                 (root {}): {reason}; history was rewritten — keep both signed notes as evidence",
                new.size, old.size, old.root
            ))),
        }
    };
    match &problem {
        None => report.check(
            "consistent with saved checkpoint",
            true,
            format!("extends the saved checkpoint of size {}", old.size),
        ),
        Some(v) => report.check("consistent with saved checkpoint", false, v.reason.clone()),
    }
    problem
}

/// Runs `auditor verify` and returns its report.
pub fn verify(options: &VerifyOptions) -> anyhow::Result<Report> {
    let (verifier, operator) = parse_key(&options.key)?;
    let client = TileClient::new(&options.url, options.ca.as_deref())?;
    let saved = match &options.state {
        Some(path) => state::load(path, &verifier)?,
        None => None,
    };
    let mut report = Report {
        url: options.url.clone(),
        ..Report::default()
    };
    let audited =
        match download_and_replay(&client, &verifier, operator, options.progress, &mut report) {
            Ok(audited) => audited,
            Err(_) => {
                report.conclude(Vec::new(), false);
                return Ok(report);
            }
        };
    let mut violations = audited.replay.violations.clone();
    violations.extend(audited.downloaded.mismatches.iter().cloned());
    let inconsistency = check_consistency(
        &mut report,
        &audited.downloaded,
        saved.as_ref().map(|(c, _)| c),
    );
    let tree_sound = audited.downloaded.mismatches.is_empty() && inconsistency.is_none();
    violations.extend(inconsistency);
    if let Some(path) = &options.state
        && tree_sound
    {
        state::save(path, &audited.downloaded.note)?;
    }
    report.conclude(violations, true);
    Ok(report)
}
