//! The coordinator's derived state beside the ledger: signed checkpoints,
//! consents, experts and versions. Like [`super::records`], each function is
//! one statement (or one read), so the service composes them with the ledger
//! append in one transaction.

use sqlx::{PgExecutor, Row as _};
use tributary_ledger::event::{ConsentGranted, VersionExpert};
use tributary_ledger::{
    ConsentId, ContributorId, ExpertDigest, Hash, Purpose, Sha256Digest, SubmissionId, Timestamp,
    VersionNumber,
};

use super::{StoreError, to_i64, to_u64};

/// A stored signed checkpoint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredCheckpoint {
    /// Tree size.
    pub size: u64,
    /// Root hash.
    pub root: Hash,
    /// The C2SP signed note.
    pub note: String,
}

/// Records the signed checkpoint of tree size `size` (once per size).
pub async fn insert_checkpoint(
    conn: impl PgExecutor<'_>,
    checkpoint: &StoredCheckpoint,
) -> Result<(), StoreError> {
    sqlx::query(r"INSERT INTO ledger_checkpoints (size, root_hash, note) VALUES ($1, $2, $3)")
        .bind(to_i64(checkpoint.size, "tree size")?)
        .bind(checkpoint.root.0.as_slice())
        .bind(&checkpoint.note)
        .execute(conn)
        .await
        .map_err(StoreError::from_sqlx)?;
    Ok(())
}

/// The checkpoint of the largest tree, if any.
pub async fn latest_checkpoint(
    conn: impl PgExecutor<'_>,
) -> Result<Option<StoredCheckpoint>, StoreError> {
    let row = sqlx::query(
        r"SELECT size, root_hash, note FROM ledger_checkpoints ORDER BY size DESC LIMIT 1",
    )
    .fetch_optional(conn)
    .await?;
    row.map(|row| {
        let root: Vec<u8> = row.try_get("root_hash")?;
        Ok(StoredCheckpoint {
            size: to_u64(row.try_get("size")?, "tree size")?,
            root: Hash::from_slice(&root)
                .map_err(|e| StoreError::Corrupt(format!("checkpoint root: {e}")))?,
            note: row.try_get("note")?,
        })
    })
    .transpose()
}

/// Whether a consent is in force.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConsentState {
    /// In force.
    Active,
    /// Withdrawn by its contributor.
    Withdrawn,
    /// Past its expiry.
    Expired,
}

impl ConsentState {
    fn as_str(self) -> &'static str {
        match self {
            ConsentState::Active => "active",
            ConsentState::Withdrawn => "withdrawn",
            ConsentState::Expired => "expired",
        }
    }

    fn parse(text: &str) -> Result<Self, StoreError> {
        match text {
            "active" => Ok(ConsentState::Active),
            "withdrawn" => Ok(ConsentState::Withdrawn),
            "expired" => Ok(ConsentState::Expired),
            other => Err(StoreError::Corrupt(format!("consent state {other:?}"))),
        }
    }
}

/// A consent as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConsentRow {
    /// The terms granted.
    pub terms: ConsentGranted,
    /// Where it stands.
    pub state: ConsentState,
    /// Index of its `ConsentGranted` entry.
    pub granted_index: u64,
    /// Index of the entry that ended it.
    pub ended_index: Option<u64>,
}

/// Records a granted consent; a reused id fails with `consents_pkey`.
pub async fn insert_consent(
    conn: impl PgExecutor<'_>,
    terms: &ConsentGranted,
    granted_index: u64,
) -> Result<(), StoreError> {
    let purposes: Vec<&str> = terms.purposes.iter().map(Purpose::as_str).collect();
    let expires = terms
        .expires_at
        .map(|t| to_i64(t.0, "expiry"))
        .transpose()?;
    sqlx::query(
        r"INSERT INTO consents (consent_id, contributor_id, expert_digest, purposes, expires_at,
                                data_description, licence, jurisdiction, granted_idx)
          VALUES ($1, $2, $3, $4, to_timestamp($5), $6, $7, $8, $9)",
    )
    .bind(terms.consent.as_str())
    .bind(terms.contributor.as_str())
    .bind(terms.expert.0.0.as_slice())
    .bind(&purposes)
    .bind(expires.map(|e| e as f64))
    .bind(&terms.data_description)
    .bind(&terms.licence)
    .bind(&terms.jurisdiction)
    .bind(to_i64(granted_index, "ledger index")?)
    .execute(conn)
    .await
    .map_err(StoreError::from_sqlx)?;
    Ok(())
}

const CONSENT_COLUMNS: &str = r"consent_id, contributor_id, expert_digest, purposes,
    extract(epoch FROM expires_at)::bigint AS expires_unix, data_description, licence,
    jurisdiction, granted_idx, state, ended_idx";

fn consent_from_row(row: &sqlx::postgres::PgRow) -> Result<ConsentRow, StoreError> {
    let corrupt = |what: &str, e: String| StoreError::Corrupt(format!("{what}: {e}"));
    let digest: Vec<u8> = row.try_get("expert_digest")?;
    let digest: [u8; 32] = digest
        .as_slice()
        .try_into()
        .map_err(|_| corrupt("consent digest", "not 32 bytes".into()))?;
    let purposes: Vec<String> = row.try_get("purposes")?;
    let expires: Option<i64> = row.try_get("expires_unix")?;
    let ended: Option<i64> = row.try_get("ended_idx")?;
    let state: String = row.try_get("state")?;
    Ok(ConsentRow {
        terms: ConsentGranted {
            consent: ConsentId::new(row.try_get::<String, _>("consent_id")?)
                .map_err(|e| corrupt("consent id", e.to_string()))?,
            contributor: ContributorId::new(row.try_get::<String, _>("contributor_id")?)
                .map_err(|e| corrupt("contributor id", e.to_string()))?,
            expert: ExpertDigest(Sha256Digest(digest)),
            purposes: purposes
                .into_iter()
                .map(|p| Purpose::new(p).map_err(|e| corrupt("purpose", e.to_string())))
                .collect::<Result<_, _>>()?,
            expires_at: expires
                .map(|e| to_u64(e, "expiry").map(Timestamp))
                .transpose()?,
            data_description: row.try_get("data_description")?,
            licence: row.try_get("licence")?,
            jurisdiction: row.try_get("jurisdiction")?,
        },
        state: ConsentState::parse(&state)?,
        granted_index: to_u64(row.try_get("granted_idx")?, "ledger index")?,
        ended_index: ended.map(|e| to_u64(e, "ledger index")).transpose()?,
    })
}

/// Reads one consent, locking its row for the rest of the transaction.
pub async fn consent_for_update(
    conn: impl PgExecutor<'_>,
    id: &ConsentId,
) -> Result<Option<ConsentRow>, StoreError> {
    let sql = format!("SELECT {CONSENT_COLUMNS} FROM consents WHERE consent_id = $1 FOR UPDATE");
    let row = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(id.as_str())
        .fetch_optional(conn)
        .await?;
    row.as_ref().map(consent_from_row).transpose()
}

/// Consents of one contributor (all when `None`), optionally for one expert,
/// oldest first, starting after granted index `after`.
pub async fn list_consents(
    conn: impl PgExecutor<'_>,
    contributor: Option<&ContributorId>,
    expert: Option<&ExpertDigest>,
    after: Option<u64>,
    limit: u32,
) -> Result<Vec<ConsentRow>, StoreError> {
    let sql = format!(
        "SELECT {CONSENT_COLUMNS} FROM consents
         WHERE ($1::text IS NULL OR contributor_id = $1)
           AND ($2::bytea IS NULL OR expert_digest = $2)
           AND ($3::bigint IS NULL OR granted_idx > $3)
         ORDER BY granted_idx LIMIT $4"
    );
    let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(contributor.map(ContributorId::as_str))
        .bind(expert.map(|e| e.0.0.to_vec()))
        .bind(after.map(|a| to_i64(a, "page token")).transpose()?)
        .bind(i64::from(limit))
        .fetch_all(conn)
        .await?;
    rows.iter().map(consent_from_row).collect()
}

/// Ends an active consent at ledger index `ended_index`.
pub async fn end_consent(
    conn: impl PgExecutor<'_>,
    id: &ConsentId,
    state: ConsentState,
    ended_index: u64,
) -> Result<bool, StoreError> {
    let result = sqlx::query(
        r"UPDATE consents SET state = $2, ended_idx = $3 WHERE consent_id = $1 AND state = 'active'",
    )
    .bind(id.as_str())
    .bind(state.as_str())
    .bind(to_i64(ended_index, "ledger index")?)
    .execute(conn)
    .await
    .map_err(StoreError::from_sqlx)?;
    Ok(result.rows_affected() == 1)
}

/// An accepted expert as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExpertRow {
    /// Its digest.
    pub digest: ExpertDigest,
    /// The submission it was accepted from.
    pub submission: SubmissionId,
    /// Its owner.
    pub contributor: ContributorId,
    /// The blob holding its weights.
    pub blob: Sha256Digest,
    /// Where its weights were erased, if they were.
    pub erased_index: Option<u64>,
}

/// Reads an accepted expert.
pub async fn expert(
    conn: impl PgExecutor<'_>,
    digest: &ExpertDigest,
) -> Result<Option<ExpertRow>, StoreError> {
    let row = sqlx::query(
        r"SELECT submission_id, contributor_id, blob_sha256, erased_idx FROM experts
          WHERE expert_digest = $1",
    )
    .bind(digest.0.0.as_slice())
    .fetch_optional(conn)
    .await?;
    let Some(row) = row else { return Ok(None) };
    let blob: Vec<u8> = row.try_get("blob_sha256")?;
    let erased: Option<i64> = row.try_get("erased_idx")?;
    Ok(Some(ExpertRow {
        digest: *digest,
        submission: SubmissionId::new(row.try_get::<String, _>("submission_id")?)
            .map_err(|e| StoreError::Corrupt(e.to_string()))?,
        contributor: ContributorId::new(row.try_get::<String, _>("contributor_id")?)
            .map_err(|e| StoreError::Corrupt(e.to_string()))?,
        blob: Sha256Digest(
            blob.as_slice()
                .try_into()
                .map_err(|_| StoreError::Corrupt("blob digest length".into()))?,
        ),
        erased_index: erased.map(|e| to_u64(e, "ledger index")).transpose()?,
    }))
}

/// Marks an expert erased at `index`, and its submission `erased`.
pub async fn mark_expert_erased(
    conn: &mut sqlx::PgConnection,
    expert: &ExpertRow,
    index: u64,
) -> Result<(), StoreError> {
    sqlx::query(
        r"UPDATE experts SET erased_idx = $2 WHERE expert_digest = $1 AND erased_idx IS NULL",
    )
    .bind(expert.digest.0.0.as_slice())
    .bind(to_i64(index, "ledger index")?)
    .execute(&mut *conn)
    .await
    .map_err(StoreError::from_sqlx)?;
    sqlx::query(r"UPDATE submissions SET state = 'erased' WHERE submission_id = $1")
        .bind(expert.submission.as_str())
        .execute(&mut *conn)
        .await
        .map_err(StoreError::from_sqlx)?;
    Ok(())
}

/// A published version as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VersionRow {
    /// Its number.
    pub version: VersionNumber,
    /// The version it replaced.
    pub parent: Option<VersionNumber>,
    /// Its purpose.
    pub purpose: Purpose,
    /// Experts per token.
    pub top_k: u32,
    /// The anchor it is built on.
    pub anchor: Sha256Digest,
    /// Digest of the assembled checkpoint manifest.
    pub checkpoint: Sha256Digest,
    /// Its `ModelVersionPublished` entry.
    pub ledger_index: u64,
    /// Milliseconds since the epoch.
    pub published_unix_ms: i64,
    /// Where it was revoked, if it was.
    pub revoked_index: Option<u64>,
    /// Its experts 1..n with their owners.
    pub experts: Vec<(VersionExpert, ContributorId)>,
}

fn digest32(bytes: Vec<u8>, what: &str) -> Result<Sha256Digest, StoreError> {
    Ok(Sha256Digest(bytes.as_slice().try_into().map_err(|_| {
        StoreError::Corrupt(format!("{what} is not 32 bytes"))
    })?))
}

/// Versions, newest first, optionally one purpose, optionally without revoked
/// ones, below version `before` (paging), at most `limit`.
pub async fn list_versions(
    conn: &mut sqlx::PgConnection,
    purpose: Option<&Purpose>,
    include_revoked: bool,
    before: Option<u64>,
    limit: u32,
) -> Result<Vec<VersionRow>, StoreError> {
    let numbers: Vec<i64> = sqlx::query_scalar(
        r"SELECT version FROM versions
          WHERE ($1::text IS NULL OR purpose = $1)
            AND ($2 OR revoked_idx IS NULL)
            AND ($3::bigint IS NULL OR version < $3)
          ORDER BY version DESC LIMIT $4",
    )
    .bind(purpose.map(Purpose::as_str))
    .bind(include_revoked)
    .bind(before.map(|b| to_i64(b, "page token")).transpose()?)
    .bind(i64::from(limit))
    .fetch_all(&mut *conn)
    .await?;
    let mut out = Vec::with_capacity(numbers.len());
    for n in numbers {
        if let Some(v) = version(&mut *conn, VersionNumber(to_u64(n, "version")?)).await? {
            out.push(v);
        }
    }
    Ok(out)
}

/// One version with its experts.
pub async fn version(
    conn: &mut sqlx::PgConnection,
    number: VersionNumber,
) -> Result<Option<VersionRow>, StoreError> {
    let row = sqlx::query(
        r"SELECT parent, purpose, top_k, anchor_digest, checkpoint_digest, ledger_idx,
                 (extract(epoch FROM published_at) * 1000)::bigint AS published_ms, revoked_idx
          FROM versions WHERE version = $1",
    )
    .bind(to_i64(number.0, "version")?)
    .fetch_optional(&mut *conn)
    .await?;
    let Some(row) = row else { return Ok(None) };
    let experts = sqlx::query(
        r"SELECT ve.expert_digest, ve.consent_id, e.submission_id, e.contributor_id
          FROM version_experts ve JOIN experts e ON e.expert_digest = ve.expert_digest
          WHERE ve.version = $1 ORDER BY ve.position",
    )
    .bind(to_i64(number.0, "version")?)
    .fetch_all(&mut *conn)
    .await?;
    let corrupt = |e: tributary_ledger::ids::IdError| StoreError::Corrupt(e.to_string());
    let experts = experts
        .iter()
        .map(|r| {
            Ok((
                VersionExpert {
                    submission: SubmissionId::new(r.try_get::<String, _>("submission_id")?)
                        .map_err(corrupt)?,
                    expert: ExpertDigest(digest32(r.try_get("expert_digest")?, "expert digest")?),
                    consent: ConsentId::new(r.try_get::<String, _>("consent_id")?)
                        .map_err(corrupt)?,
                },
                ContributorId::new(r.try_get::<String, _>("contributor_id")?).map_err(corrupt)?,
            ))
        })
        .collect::<Result<Vec<_>, StoreError>>()?;
    let parent: Option<i64> = row.try_get("parent")?;
    let revoked: Option<i64> = row.try_get("revoked_idx")?;
    let top_k: i32 = row.try_get("top_k")?;
    Ok(Some(VersionRow {
        version: number,
        parent: parent
            .map(|p| to_u64(p, "version").map(VersionNumber))
            .transpose()?,
        purpose: Purpose::new(row.try_get::<String, _>("purpose")?).map_err(corrupt)?,
        top_k: u32::try_from(top_k).map_err(|_| StoreError::Corrupt("top_k".into()))?,
        anchor: digest32(row.try_get("anchor_digest")?, "anchor digest")?,
        checkpoint: digest32(row.try_get("checkpoint_digest")?, "checkpoint digest")?,
        ledger_index: to_u64(row.try_get("ledger_idx")?, "ledger index")?,
        published_unix_ms: row.try_get("published_ms")?,
        revoked_index: revoked.map(|r| to_u64(r, "ledger index")).transpose()?,
        experts,
    }))
}

/// The latest version of each purpose that lists `consent` and is neither
/// revoked nor superseded: the heads a withdrawal must replace.
pub async fn head_versions_listing(
    conn: impl PgExecutor<'_>,
    consent: &ConsentId,
) -> Result<Vec<VersionNumber>, StoreError> {
    let numbers: Vec<i64> = sqlx::query_scalar(
        r"SELECT v.version FROM versions v
          WHERE EXISTS (SELECT 1 FROM version_experts ve
                        WHERE ve.version = v.version AND ve.consent_id = $1)
            AND NOT EXISTS (SELECT 1 FROM versions child WHERE child.parent = v.version)
          ORDER BY v.version",
    )
    .bind(consent.as_str())
    .fetch_all(conn)
    .await?;
    numbers
        .into_iter()
        .map(|n| to_u64(n, "version").map(VersionNumber))
        .collect()
}

/// Marks every unrevoked version listing `consent` revoked at `index`; returns them.
pub async fn revoke_versions_listing(
    conn: impl PgExecutor<'_>,
    consent: &ConsentId,
    index: u64,
) -> Result<Vec<VersionNumber>, StoreError> {
    let numbers: Vec<i64> = sqlx::query_scalar(
        r"UPDATE versions SET revoked_idx = $2
          WHERE revoked_idx IS NULL AND version IN
                (SELECT version FROM version_experts WHERE consent_id = $1)
          RETURNING version",
    )
    .bind(consent.as_str())
    .bind(to_i64(index, "ledger index")?)
    .fetch_all(conn)
    .await
    .map_err(StoreError::from_sqlx)?;
    let mut out: Vec<VersionNumber> = numbers
        .into_iter()
        .map(|n| to_u64(n, "version").map(VersionNumber))
        .collect::<Result<_, _>>()?;
    out.sort();
    Ok(out)
}

/// The next version number.
pub async fn next_version(conn: impl PgExecutor<'_>) -> Result<VersionNumber, StoreError> {
    let max: Option<i64> = sqlx::query_scalar(r"SELECT max(version) FROM versions")
        .fetch_one(conn)
        .await?;
    Ok(VersionNumber(to_u64(max.unwrap_or(0), "version")? + 1))
}

/// Records a published version and its experts.
pub async fn insert_version(
    conn: &mut sqlx::PgConnection,
    row: &VersionRow,
) -> Result<(), StoreError> {
    sqlx::query(
        r"INSERT INTO versions (version, parent, purpose, top_k, anchor_digest, checkpoint_digest, ledger_idx)
          VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(to_i64(row.version.0, "version")?)
    .bind(row.parent.map(|p| to_i64(p.0, "version")).transpose()?)
    .bind(row.purpose.as_str())
    .bind(i32::try_from(row.top_k).map_err(|_| StoreError::Corrupt("top_k".into()))?)
    .bind(row.anchor.0.as_slice())
    .bind(row.checkpoint.0.as_slice())
    .bind(to_i64(row.ledger_index, "ledger index")?)
    .execute(&mut *conn)
    .await
    .map_err(StoreError::from_sqlx)?;
    for (position, (expert, _)) in row.experts.iter().enumerate() {
        sqlx::query(
            r"INSERT INTO version_experts (version, position, expert_digest, consent_id)
              VALUES ($1, $2, $3, $4)",
        )
        .bind(to_i64(row.version.0, "version")?)
        .bind(i32::try_from(position + 1).map_err(|_| StoreError::Corrupt("position".into()))?)
        .bind(expert.expert.0.0.as_slice())
        .bind(expert.consent.as_str())
        .execute(&mut *conn)
        .await
        .map_err(StoreError::from_sqlx)?;
    }
    Ok(())
}

/// What a ledger lookup is about.
#[derive(Clone, Debug)]
pub enum LookupKey {
    /// Entries naming a contributor.
    Contributor(ContributorId),
    /// Entries naming an expert digest.
    Expert(ExpertDigest),
    /// Entries naming a version number.
    Version(VersionNumber),
}

/// Indices of the entries about `key`, increasing, at most `limit`.
pub async fn lookup(
    conn: impl PgExecutor<'_>,
    key: &LookupKey,
    limit: u32,
) -> Result<Vec<u64>, StoreError> {
    // Entries are canonical JSON; the event's fields name what it is about.
    let (sql, text) = match key {
        LookupKey::Contributor(c) => (
            r"SELECT idx FROM ledger_entries
              WHERE convert_from(bytes, 'UTF8')::jsonb -> 'event' ->> 'contributor' = $1
              ORDER BY idx LIMIT $2",
            c.as_str().to_string(),
        ),
        LookupKey::Expert(e) => (
            r"SELECT idx FROM ledger_entries, LATERAL (SELECT convert_from(bytes, 'UTF8')::jsonb -> 'event' AS ev) x
              WHERE ev ->> 'expert' = $1 OR ev -> 'manifest' ->> 'total' = $1
                 OR ev -> 'experts' @> jsonb_build_array(jsonb_build_object('expert', $1::text))
              ORDER BY idx LIMIT $2",
            e.to_string(),
        ),
        LookupKey::Version(v) => (
            r"SELECT idx FROM ledger_entries
              WHERE (convert_from(bytes, 'UTF8')::jsonb -> 'event' ->> 'version') = $1
                 OR (convert_from(bytes, 'UTF8')::jsonb -> 'event' ->> 'parent') = $1
              ORDER BY idx LIMIT $2",
            v.0.to_string(),
        ),
    };
    let rows: Vec<i64> = sqlx::query_scalar(sql)
        .bind(text)
        .bind(i64::from(limit))
        .fetch_all(conn)
        .await?;
    rows.into_iter()
        .map(|i| to_u64(i, "ledger index"))
        .collect()
}
