//! The coordinator calls of the contributor agent, one small function each.
//! They return what the coordinator answered; [`super::report`] prints it.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail, ensure};
use tributary_client::{Client, DownloadedFile, Invite};
use tributary_ledger::event::ConsentGranted;
use tributary_ledger::{
    ConsentId, ContributorId, Entry, Event, ExpertDigest, PublicKey, Purpose, SubmissionId,
    Timestamp,
};
use tributary_protos::v1;

use super::{Session, failed, package};

/// Reads an invite: a file written by `coordinator invite`, or its text.
pub fn read_invite(source: &str) -> Result<Invite> {
    let path = Path::new(source);
    let text = if path.is_file() {
        std::fs::read_to_string(path)
            .with_context(|| format!("reading the invite {}", path.display()))?
    } else {
        source.to_string()
    };
    Invite::from_json(&text).context("--invite is neither an invite file nor an invite's text")
}

/// Checks that `invite` was issued for this session's id and key.
fn check_invite(s: &Session, invite: &Invite) -> Result<()> {
    let signer = s.client.signer().context("the session has no key")?;
    ensure!(
        invite.contributor_id == s.contributor,
        "the invite is for contributor {:?}, this key is {:?}",
        invite.contributor_id.as_str(),
        s.contributor.as_str()
    );
    ensure!(
        invite.public_key == PublicKey::of(signer.signing_key()),
        "the invite names another public key than this key's"
    );
    Ok(())
}

/// Registers with an invite. `organisation` must match the invite's, which
/// is used when it is `None`.
pub async fn register(
    s: &Session,
    invite: &Invite,
    organisation: Option<&str>,
) -> Result<v1::RegisterResponse> {
    check_invite(s, invite)?;
    let organisation = organisation.unwrap_or(&invite.organisation);
    ensure!(
        organisation == invite.organisation,
        "the invite is for organisation {:?}, not {organisation:?}",
        invite.organisation
    );
    s.client
        .register(organisation, &invite.invite)
        .await
        .map_err(failed("register"))
}

/// When a consent lapses: an RFC 3339 UTC time (`2027-06-30T00:00:00Z`), or
/// `days` from `now` (Unix seconds); `None` when neither is given.
pub fn expiry(rfc3339: Option<&str>, days: Option<u64>, now: u64) -> Result<Option<Timestamp>> {
    match (rfc3339, days) {
        (Some(_), Some(_)) => bail!("give --expires or --days, not both"),
        (Some(text), None) => {
            let at = humantime::parse_rfc3339_weak(text)
                .with_context(|| format!("--expires {text:?} is not an RFC 3339 UTC time"))?;
            let secs = at
                .duration_since(std::time::UNIX_EPOCH)
                .context("--expires is before 1970")?
                .as_secs();
            ensure!(secs > now, "--expires {text} is in the past");
            Ok(Some(Timestamp(secs)))
        }
        (None, Some(days)) => Ok(Some(Timestamp(now + days * 86_400))),
        (None, None) => Ok(None),
    }
}

/// The terms of a consent, as `consent grant` takes them.
#[derive(clap::Args, Debug, Clone)]
pub struct Terms {
    /// The expert it covers: a package directory written by `train`, or its
    /// digest (64 hex digits).
    #[arg(long)]
    pub expert: String,
    /// Uses you allow, e.g. `research`, `commercial` (one or more).
    #[arg(long = "purpose", required = true, num_args = 1..)]
    pub purposes: Vec<String>,
    /// When the consent lapses, RFC 3339 in UTC, e.g. `2027-06-30T00:00:00Z`
    /// (default: never; you can withdraw at any time).
    #[arg(long, conflicts_with = "days")]
    pub expires: Option<String>,
    /// Lapse this many days from now instead of at `--expires`.
    #[arg(long)]
    pub days: Option<u64>,
    /// SPDX licence identifier of the contribution, e.g. `CC-BY-4.0`.
    #[arg(long)]
    pub licence: String,
    /// Jurisdiction whose law governs the consent, e.g. `EU`.
    #[arg(long)]
    pub jurisdiction: String,
    /// What data the expert was trained on, in your words.
    #[arg(long)]
    pub description: String,
    /// The consent's id (default: `consent-` + the first 16 hex digits of the
    /// expert digest). Not `--id`, which names you.
    #[arg(long)]
    pub consent_id: Option<String>,
}

fn default_consent_id(expert: &ExpertDigest) -> String {
    format!("consent-{}", &expert.0.to_string()[..16])
}

/// The `ConsentGranted` event for `terms`, granted by `contributor` at `now`.
pub fn consent_terms(
    contributor: &ContributorId,
    terms: &Terms,
    now: u64,
) -> Result<ConsentGranted> {
    let expert = package::expert_digest(&terms.expert)?;
    let id = terms
        .consent_id
        .clone()
        .unwrap_or_else(|| default_consent_id(&expert));
    let purposes = terms
        .purposes
        .iter()
        .map(|p| Purpose::new(p.as_str()).with_context(|| format!("purpose {p:?}")))
        .collect::<Result<Vec<_>>>()?;
    Ok(ConsentGranted {
        consent: ConsentId::new(id.as_str()).with_context(|| format!("consent id {id:?}"))?,
        contributor: contributor.clone(),
        expert,
        purposes,
        expires_at: expiry(terms.expires.as_deref(), terms.days, now)?,
        data_description: terms.description.clone(),
        licence: terms.licence.clone(),
        jurisdiction: terms.jurisdiction.clone(),
    })
}

/// Seconds since the Unix epoch.
pub fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Grants a consent.
pub async fn grant(s: &Session, terms: &Terms) -> Result<v1::ConsentResponse> {
    let event = consent_terms(&s.contributor, terms, now_unix())?;
    s.client
        .grant_consent(event)
        .await
        .map_err(failed("consent grant"))
}

/// The contributor's consents.
pub async fn list_consents(s: &Session) -> Result<Vec<v1::Consent>> {
    s.client
        .list_consents(1000)
        .await
        .map_err(failed("consent list"))
}

/// Withdraws a consent now.
pub async fn withdraw(s: &Session, consent: &str) -> Result<v1::WithdrawConsentResponse> {
    let id = ConsentId::new(consent).with_context(|| format!("consent id {consent:?}"))?;
    s.client
        .withdraw_consent(&id)
        .await
        .map_err(failed("consent withdraw"))
}

/// Uploads the package in `dir` as `submission` (default: `<contributor>-`
/// + the first 16 hex digits of the expert digest).
pub async fn upload(
    s: &Session,
    dir: &Path,
    submission: Option<&str>,
) -> Result<v1::SubmissionStatus> {
    let (manifest, payload) = package::load_for_upload(dir)?;
    let id = submission.map_or_else(
        || {
            format!(
                "{}-{}",
                s.contributor.as_str(),
                &manifest.total.0.to_string()[..16]
            )
        },
        str::to_string,
    );
    let id = SubmissionId::new(id.as_str()).with_context(|| format!("submission id {id:?}"))?;
    s.client
        .upload_expert(&id, &manifest, &payload)
        .await
        .map_err(failed("upload"))
}

/// A submission's status.
pub async fn status(client: &Client, submission: &str) -> Result<v1::SubmissionStatus> {
    client
        .get_submission(submission)
        .await
        .map_err(failed("status"))
}

/// Published versions, newest first (`purpose` empty: all; `revoked`: with
/// the revoked ones).
pub async fn versions(
    client: &Client,
    purpose: &str,
    revoked: bool,
) -> Result<Vec<v1::ModelVersion>> {
    client
        .list_versions(purpose, revoked)
        .await
        .map_err(failed("versions"))
}

/// The newest version in force (for `purpose`, or any).
pub async fn latest_version(client: &Client, purpose: &str) -> Result<u64> {
    versions(client, purpose, false)
        .await?
        .first()
        .map(|v| v.version)
        .context("the coordinator has published no version in force yet")
}

/// The tokenizer files a checkpoint directory carries besides its weights.
pub const TOKENIZER_FILES: [&str; 3] = [
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
];

/// Copies the tokenizer files present in `from` (e.g. the anchor) into `to`.
pub fn copy_tokenizer(from: &Path, to: &Path) -> Result<Vec<PathBuf>> {
    let mut copied = Vec::new();
    for name in TOKENIZER_FILES {
        let source = from.join(name);
        if source.is_file() {
            std::fs::copy(&source, to.join(name))
                .with_context(|| format!("copying {}", source.display()))?;
            copied.push(to.join(name));
        }
    }
    ensure!(
        !copied.is_empty(),
        "{} holds no tokenizer.json",
        from.display()
    );
    Ok(copied)
}

/// Downloads `version` into `out`, checking every file's size and sha256,
/// and adds the tokenizer of `tokenizer_from` when given.
pub async fn download(
    client: &Client,
    version: u64,
    out: &Path,
    tokenizer_from: Option<&Path>,
) -> Result<Vec<DownloadedFile>> {
    let files = client
        .download_version(version, out)
        .await
        .map_err(failed("download"))?;
    if let Some(from) = tokenizer_from {
        copy_tokenizer(from, out)?;
    }
    Ok(files)
}

/// A receipt for entry `index` against `checkpoint`: the entry, its
/// inclusion proof in the checkpoint's tree, and the signed note.
async fn receipt_for(
    client: &Client,
    index: u64,
    checkpoint: &v1::SignedCheckpoint,
) -> Result<v1::Receipt> {
    let entry = client
        .entries(index, index + 1)
        .await
        .map_err(failed("reading the ledger"))?
        .into_iter()
        .find(|e| e.index == index)
        .with_context(|| format!("the coordinator did not return entry {index}"))?;
    let request = v1::GetInclusionProofRequest {
        index,
        tree_size: checkpoint.size,
    };
    let proof = client
        .ledger()
        .get_inclusion_proof(request)
        .await
        .map_err(|e| failed("inclusion proof")(e.into()))?
        .into_inner();
    Ok(v1::Receipt {
        entry: entry.data,
        index,
        inclusion_proof: proof.hashes,
        checkpoint: checkpoint.note.clone(),
    })
}

/// The entries at `indices` (those the checkpoint covers), each with a
/// receipt verified against the session's operator key.
async fn verified_entries(
    s: &Session,
    indices: &[u64],
    checkpoint: &v1::SignedCheckpoint,
) -> Result<Vec<Entry>> {
    let mut entries = Vec::with_capacity(indices.len());
    for &index in indices.iter().filter(|&&i| i < checkpoint.size) {
        let receipt = receipt_for(&s.client, index, checkpoint).await?;
        let entry = s
            .check(Some(&receipt))?
            .with_context(|| format!("no receipt for entry {index}"))?;
        entries.push(entry);
    }
    Ok(entries)
}

/// The experts the contributor consented to or submitted in `entries`.
fn experts_in(entries: &[Entry]) -> Vec<ExpertDigest> {
    let mut experts: Vec<ExpertDigest> = entries
        .iter()
        .filter_map(|e| match &e.event {
            Event::ConsentGranted(c) => Some(c.expert),
            Event::ExpertSubmitted(x) => Some(x.manifest.total),
            _ => None,
        })
        .collect();
    experts.sort();
    experts.dedup();
    experts
}

/// Every ledger entry about the contributor and about its experts (the
/// coordinator's decisions, the versions listing them, their erasure), each
/// with a receipt verified against the operator's key (which the session
/// must have), in ledger order.
pub async fn receipts(s: &Session) -> Result<Vec<Entry>> {
    ensure!(
        !s.verifiers.is_empty(),
        "receipts are verified against the operator's key: give --operator-key"
    );
    let indices = s
        .client
        .lookup_contributor(&s.contributor)
        .await
        .map_err(failed("ledger lookup"))?;
    let checkpoint = s.client.checkpoint().await.map_err(failed("checkpoint"))?;
    let mut entries = verified_entries(s, &indices, &checkpoint).await?;
    let mut more = Vec::new();
    for expert in experts_in(&entries) {
        let about = s
            .client
            .lookup_expert(&expert)
            .await
            .map_err(failed("ledger lookup"))?;
        more.extend(about.into_iter().filter(|i| !indices.contains(i)));
    }
    more.sort_unstable();
    more.dedup();
    entries.extend(verified_entries(s, &more, &checkpoint).await?);
    entries.sort_by_key(|e| e.index.0);
    Ok(entries)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn expiry_takes_an_rfc3339_utc_time_or_days_and_refuses_the_past() {
        let now = 1_800_000_000;
        assert_eq!(expiry(None, None, now).unwrap(), None);
        assert_eq!(
            expiry(None, Some(2), now).unwrap(),
            Some(Timestamp(now + 2 * 86_400))
        );
        assert_eq!(
            expiry(Some("2030-01-01T00:00:00Z"), None, now).unwrap(),
            Some(Timestamp(1_893_456_000))
        );
        assert!(expiry(Some("2020-01-01T00:00:00Z"), None, now).is_err());
        assert!(expiry(Some("next tuesday"), None, now).is_err());
        assert!(expiry(Some("2030-01-01T00:00:00Z"), Some(1), now).is_err());
    }
}
