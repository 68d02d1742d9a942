//! The state changes that publish versions, shared by uploads, batched
//! publishing, withdrawals and consent expiry:
//!
//! - [`publish_adding`]: a purpose's head version plus some experts;
//! - [`end_consent`]: a consent ends (`ConsentWithdrawn` signed by its
//!   contributor, or `ConsentExpired` by the coordinator): the versions that
//!   list it are revoked, each head among them is replaced by a version
//!   without its experts, and the expert is erased when no other consent of
//!   its owner covers it (`ExpertErased`, blob deleted).
//!
//! Each runs inside the caller's [`LedgerTx`], so it is part of one
//! all-or-nothing transaction.

use tributary_ledger::event::{ExpertErased, ModelVersionPublished, VersionExpert};
use tributary_ledger::{ContributorId, Event, Purpose, Sha256Digest, SignedEvent, VersionNumber};

use super::versions::manifest_digest;
use super::writer::LedgerTx;
use super::{AppState, ServiceError, ServiceResult};
use crate::store::records;
use crate::store::state::{self as rows, ConsentRow, ConsentState, VersionRow};

/// Experts per token of a purpose's first version.
pub const DEFAULT_TOP_K: u32 = 2;

/// An expert as a version lists it, with its owner.
pub type Listed = (VersionExpert, ContributorId);

/// Appends `ModelVersionPublished` for `experts` and records the version.
pub async fn publish(
    ledger: &mut LedgerTx<'_>,
    purpose: &Purpose,
    parent: Option<VersionNumber>,
    anchor: Sha256Digest,
    top_k: u32,
    experts: Vec<Listed>,
) -> ServiceResult<VersionNumber> {
    let number = rows::next_version(ledger.conn()).await?;
    let list: Vec<_> = experts.iter().map(|(e, _)| e.clone()).collect();
    let checkpoint = manifest_digest(&anchor, &list, top_k);
    let appended = ledger
        .append(SignedEvent::coordinator(Event::ModelVersionPublished(
            ModelVersionPublished {
                version: number,
                parent,
                experts: list,
                purpose: purpose.clone(),
                top_k,
                checkpoint,
            },
        )))
        .await?;
    rows::insert_version(
        ledger.conn(),
        &VersionRow {
            version: number,
            parent,
            purpose: purpose.clone(),
            top_k,
            anchor,
            checkpoint,
            ledger_index: appended.index(),
            published_unix_ms: 0,
            revoked_index: None,
            experts,
        },
    )
    .await?;
    Ok(number)
}

/// The newest unrevoked version of `purpose` that no version replaced.
pub async fn head(
    conn: &mut sqlx::PgConnection,
    purpose: &Purpose,
) -> ServiceResult<Option<VersionRow>> {
    let head: Option<i64> = sqlx::query_scalar(
        r"SELECT v.version FROM versions v
          WHERE v.purpose = $1 AND v.revoked_idx IS NULL
            AND NOT EXISTS (SELECT 1 FROM versions c WHERE c.parent = v.version)
          ORDER BY v.version DESC LIMIT 1",
    )
    .bind(purpose.as_str())
    .fetch_optional(&mut *conn)
    .await?;
    match head {
        Some(h) => Ok(rows::version(
            conn,
            VersionNumber(u64::try_from(h).map_err(ServiceError::internal)?),
        )
        .await?),
        None => Ok(None),
    }
}

/// Publishes `purpose`'s head (on `anchor`; a head on another anchor is not
/// carried over) plus `added` (replacing any listing of the same digests).
pub async fn publish_adding(
    ledger: &mut LedgerTx<'_>,
    purpose: &Purpose,
    anchor: Sha256Digest,
    added: &[Listed],
) -> ServiceResult<VersionNumber> {
    let parent = head(ledger.conn(), purpose).await?;
    let mut experts: Vec<Listed> = parent
        .as_ref()
        .filter(|p| p.anchor == anchor)
        .map(|p| {
            p.experts
                .iter()
                .filter(|(e, _)| added.iter().all(|(a, _)| a.expert != e.expert))
                .cloned()
                .collect()
        })
        .unwrap_or_default();
    experts.extend(added.iter().cloned());
    let top_k = parent.as_ref().map_or(DEFAULT_TOP_K, |p| p.top_k);
    publish(
        ledger,
        purpose,
        parent.as_ref().map(|p| p.version),
        anchor,
        top_k,
        experts,
    )
    .await
}

/// What ending a consent did.
#[derive(Debug, Default)]
pub struct Ended {
    /// Index of the `ConsentWithdrawn` / `ConsentExpired` entry.
    pub index: u64,
    /// Versions revoked.
    pub revoked: Vec<VersionNumber>,
    /// Replacement versions published.
    pub published: Vec<VersionNumber>,
    /// Whether the expert's weights were erased.
    pub erased: bool,
}

/// Ends `consent` with `event` (its `ConsentWithdrawn` or `ConsentExpired`,
/// ending it as `how`) and carries out the duties that follow.
pub async fn end_consent(
    state: &AppState,
    ledger: &mut LedgerTx<'_>,
    consent: &ConsentRow,
    event: SignedEvent,
    how: ConsentState,
) -> ServiceResult<Ended> {
    let id = &consent.terms.consent;
    let ended = ledger.append(event).await?;
    rows::end_consent(ledger.conn(), id, how, ended.index()).await?;
    let revoked = rows::revoke_versions_listing(ledger.conn(), id, ended.index()).await?;
    let mut published = Vec::new();
    for number in rows::head_versions_listing(ledger.conn(), id).await? {
        let Some(parent) = rows::version(ledger.conn(), number).await? else {
            continue;
        };
        let experts = parent
            .experts
            .iter()
            .filter(|(e, _)| &e.consent != id)
            .cloned()
            .collect();
        published.push(
            publish(
                ledger,
                &parent.purpose,
                Some(number),
                parent.anchor,
                parent.top_k,
                experts,
            )
            .await?,
        );
    }
    let erased = erase_if_unconsented(state, ledger, consent).await?;
    Ok(Ended {
        index: ended.index(),
        revoked,
        published,
        erased,
    })
}

/// Erases the expert's weights when no active consent of its owner covers it
/// any more: deletes the blob, appends `ExpertErased`, marks the rows.
/// Returns whether it erased.
async fn erase_if_unconsented(
    state: &AppState,
    ledger: &mut LedgerTx<'_>,
    consent: &ConsentRow,
) -> ServiceResult<bool> {
    let digest = consent.terms.expert;
    let Some(expert) = rows::expert(ledger.conn(), &digest).await? else {
        return Ok(false);
    };
    if expert.erased_index.is_some() || expert.contributor != consent.terms.contributor {
        return Ok(false);
    }
    let others = rows::list_consents(
        ledger.conn(),
        Some(&expert.contributor),
        Some(&digest),
        None,
        1000,
    )
    .await?;
    if others
        .iter()
        .any(|c| c.state == ConsentState::Active && c.terms.consent != consent.terms.consent)
    {
        return Ok(false);
    }
    // Deleted before the commit: should the commit fail, the weights are gone
    // but the consent is still recorded; the withdrawal is retried, never the
    // other way round (a committed erasure whose weights remain).
    state
        .blobs
        .delete(&expert.blob)
        .await
        .map_err(ServiceError::internal)?;
    let appended = ledger
        .append(SignedEvent::coordinator(Event::ExpertErased(
            ExpertErased { expert: digest },
        )))
        .await?;
    rows::mark_expert_erased(ledger.conn(), &expert, appended.index()).await?;
    records::mark_blob_erased(ledger.conn(), &expert.blob).await?;
    Ok(true)
}
