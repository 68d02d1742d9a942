//! Background work of a running coordinator, each pass one all-or-nothing
//! transaction through [`LedgerTx`] (so several coordinators on one database
//! never do the same work twice: the append lock serialises them, and each
//! pass re-reads the state under it):
//!
//! - [`expire_due`]: every active consent past its expiry ends with
//!   `ConsentExpired`, exactly like a withdrawal (versions revoked and
//!   replaced, the expert erased);
//! - [`publish_pending`]: with batched publishing, every accepted expert that
//!   a purpose's head version does not list yet joins one new version per
//!   purpose.
//!
//! [`run`] calls both at their intervals until shutdown, and sweeps the blob
//! store's staging area of uploads abandoned by a crashed process (staged
//! more than [`STAGING_MAX_AGE`] ago: a shared store may hold another
//! coordinator's upload in flight) at start and hourly.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use sqlx::Row as _;
use tributary_ledger::event::{ConsentExpired, VersionExpert};
use tributary_ledger::{
    ConsentId, ContributorId, Event, ExpertDigest, Purpose, Sha256Digest, SignedEvent,
    SubmissionId, VersionNumber,
};

use super::publish::{self, Listed};
use super::writer::{LedgerTx, now};
use super::{AppState, ServiceError, ServiceResult};
use crate::store::state::{self as rows, ConsentState};

/// Age beyond which a staged upload is taken for abandoned.
pub const STAGING_MAX_AGE: Duration = Duration::from_secs(6 * 3600);

/// How often the background passes run.
#[derive(Clone, Copy, Debug)]
pub struct Intervals {
    /// Between expiry checks.
    pub expiry: Duration,
    /// Between batch publications (`None`: publishing is immediate).
    pub publish: Option<Duration>,
}

/// Runs the passes until `stop` turns true. A failed pass is logged and
/// retried at the next tick.
pub async fn run(
    state: Arc<AppState>,
    intervals: Intervals,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut expiry = tokio::time::interval(intervals.expiry);
    let mut publish = tokio::time::interval(intervals.publish.unwrap_or(Duration::from_secs(3600)));
    let mut sweep = tokio::time::interval(Duration::from_secs(3600));
    sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    expiry.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    publish.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let stopped = async move {
        let _ = stop.wait_for(|s| *s).await;
    };
    tokio::pin!(stopped);
    loop {
        tokio::select! {
            () = &mut stopped => return,
            _ = expiry.tick() => {
                if let Err(e) = expire_due(&state).await {
                    tracing::warn!(error = %e.detail, "consent expiry pass failed");
                }
            }
            _ = sweep.tick() => {
                match state.store.sweep_staging(STAGING_MAX_AGE).await {
                    Ok(0) => {}
                    Ok(n) => tracing::info!(removed = n, "abandoned staged uploads removed"),
                    Err(e) => tracing::warn!(error = %e, "sweeping the staging area failed"),
                }
            }
            _ = publish.tick(), if intervals.publish.is_some() => {
                if let Err(e) = publish_pending(&state).await {
                    tracing::warn!(error = %e.detail, "batch publication failed");
                }
            }
        }
    }
}

/// Ends every active consent whose expiry has passed; returns how many.
pub async fn expire_due(state: &AppState) -> ServiceResult<usize> {
    let due: Vec<String> = sqlx::query_scalar(
        r"SELECT consent_id FROM consents
          WHERE state = 'active' AND expires_at IS NOT NULL AND expires_at <= now()
          ORDER BY expires_at",
    )
    .fetch_all(&state.pool)
    .await?;
    let mut ended = 0;
    for id in due {
        let id = ConsentId::new(id).map_err(ServiceError::internal)?;
        if expire(state, &id).await? {
            ended += 1;
        }
    }
    Ok(ended)
}

/// Ends one consent as expired, if it still is active and due.
async fn expire(state: &AppState, id: &ConsentId) -> ServiceResult<bool> {
    let mut tx = state.pool.begin().await?;
    let Some(consent) = rows::consent_for_update(&mut *tx, id).await? else {
        return Ok(false);
    };
    let due = consent.terms.expires_at.is_some_and(|e| now() >= e);
    if consent.state != ConsentState::Active || !due {
        return Ok(false);
    }
    let mut ledger = LedgerTx::begin(state, tx).await?;
    let event = SignedEvent::coordinator(Event::ConsentExpired(ConsentExpired {
        consent: id.clone(),
    }));
    let ended =
        publish::end_consent(state, &mut ledger, &consent, event, ConsentState::Expired).await?;
    ledger.commit().await?;
    state
        .metrics
        .consents_expired
        .fetch_add(1, Ordering::Relaxed);
    tracing::info!(consent = %id, revoked = ?ended.revoked, published = ?ended.published, ended.erased, "consent expired");
    Ok(true)
}

/// Publishes, per purpose, one version adding every accepted expert on the
/// current anchor whose active consent allows the purpose and which the
/// purpose's head does not list; returns the versions published.
pub async fn publish_pending(state: &AppState) -> ServiceResult<Vec<VersionNumber>> {
    let Some(anchor) = state.fresh_anchor().await?.map(|a| a.digest) else {
        return Ok(Vec::new());
    };
    expire_due(state).await?;
    let tx = state.pool.begin().await?;
    let mut ledger = LedgerTx::begin(state, tx).await?;
    let candidates = accepted_with_consent(ledger.conn(), &anchor).await?;
    let mut by_purpose: std::collections::BTreeMap<Purpose, Vec<Listed>> = Default::default();
    for (listed, purposes) in candidates {
        for purpose in purposes {
            by_purpose.entry(purpose).or_default().push(listed.clone());
        }
    }
    let mut published = Vec::new();
    for (purpose, candidates) in by_purpose {
        let head = publish::head(ledger.conn(), &purpose).await?;
        let listed = |e: &VersionExpert| {
            head.as_ref().is_some_and(|h| {
                h.anchor == anchor && h.experts.iter().any(|(x, _)| x.expert == e.expert)
            })
        };
        let added: Vec<Listed> = candidates.into_iter().filter(|(e, _)| !listed(e)).collect();
        if !added.is_empty() {
            published.push(publish::publish_adding(&mut ledger, &purpose, anchor, &added).await?);
        }
    }
    if published.is_empty() {
        return Ok(published);
    }
    ledger.commit().await?;
    state
        .metrics
        .batch_versions
        .fetch_add(published.len() as u64, Ordering::Relaxed);
    tracing::info!(?published, "batch published");
    Ok(published)
}

/// Accepted, unerased experts trained on `anchor` with an active, unexpired
/// consent of their owner, in acceptance order, with the consent's purposes.
async fn accepted_with_consent(
    conn: &mut sqlx::PgConnection,
    anchor: &Sha256Digest,
) -> ServiceResult<Vec<(Listed, Vec<Purpose>)>> {
    let found = sqlx::query(
        r"SELECT e.expert_digest, e.submission_id, e.contributor_id, c.consent_id, c.purposes
          FROM experts e
          JOIN submissions s ON s.submission_id = e.submission_id
          JOIN consents c ON c.expert_digest = e.expert_digest AND c.contributor_id = e.contributor_id
          WHERE e.erased_idx IS NULL AND s.anchor_digest = $1 AND c.state = 'active'
            AND (c.expires_at IS NULL OR c.expires_at > now())
          ORDER BY e.accepted_idx, c.granted_idx",
    )
    .bind(anchor.0.as_slice())
    .fetch_all(&mut *conn)
    .await?;
    let mut out: Vec<(Listed, Vec<Purpose>)> = Vec::new();
    for row in found {
        let digest: Vec<u8> = row.try_get("expert_digest")?;
        let digest = Sha256Digest(
            digest
                .as_slice()
                .try_into()
                .map_err(|_| ServiceError::internal("expert digest is not 32 bytes"))?,
        );
        // One listing per expert: its earliest consent.
        if out.iter().any(|((e, _), _)| e.expert.0 == digest) {
            continue;
        }
        let purposes: Vec<String> = row.try_get("purposes")?;
        let listed = VersionExpert {
            submission: SubmissionId::new(row.try_get::<String, _>("submission_id")?)
                .map_err(ServiceError::internal)?,
            expert: ExpertDigest(digest),
            consent: ConsentId::new(row.try_get::<String, _>("consent_id")?)
                .map_err(ServiceError::internal)?,
        };
        let owner = ContributorId::new(row.try_get::<String, _>("contributor_id")?)
            .map_err(ServiceError::internal)?;
        let purposes = purposes
            .into_iter()
            .map(Purpose::new)
            .collect::<Result<_, _>>()
            .map_err(ServiceError::internal)?;
        out.push(((listed, owner), purposes));
    }
    Ok(out)
}
