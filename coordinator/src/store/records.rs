//! The coordinator's own tables beside the ledger: contributors, request
//! nonces (replay protection) and blobs. Each function is one statement, so a
//! caller runs it inside the transaction that appends the matching ledger entry.

use sqlx::{PgExecutor, Row as _};
use tributary_ledger::{ContributorId, PublicKey, Sha256Digest};

use super::{StoreError, to_i64, to_u64};

/// A registered contributor as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContributorRecord {
    /// Its id.
    pub contributor: ContributorId,
    /// Its organisation's name.
    pub organisation: String,
    /// The key its statements verify against.
    pub public_key: PublicKey,
    /// The index of its `ContributorRegistered` entry.
    pub ledger_index: u64,
    /// Whether the operator revoked it.
    pub revoked: bool,
}

/// Inserts a contributor; a second registration of the same id or key fails
/// with [`StoreError::Constraint`] (`contributors_pkey`, `contributors_public_key_unique`).
pub async fn insert_contributor(
    conn: impl PgExecutor<'_>,
    record: &ContributorRecord,
) -> Result<(), StoreError> {
    sqlx::query(
        r"INSERT INTO contributors (contributor_id, organisation, public_key, ledger_idx)
          VALUES ($1, $2, $3, $4)",
    )
    .bind(record.contributor.as_str())
    .bind(&record.organisation)
    .bind(record.public_key.0.as_slice())
    .bind(to_i64(record.ledger_index, "ledger index")?)
    .execute(conn)
    .await
    .map_err(StoreError::from_sqlx)?;
    Ok(())
}

/// Reads a contributor, `None` when unknown.
pub async fn contributor(
    conn: impl PgExecutor<'_>,
    id: &ContributorId,
) -> Result<Option<ContributorRecord>, StoreError> {
    let row = sqlx::query(
        r"SELECT organisation, public_key, ledger_idx, revoked_at IS NOT NULL AS revoked
          FROM contributors WHERE contributor_id = $1",
    )
    .bind(id.as_str())
    .fetch_optional(conn)
    .await?;
    let Some(row) = row else {
        return Ok(None);
    };
    let key: Vec<u8> = row.try_get("public_key")?;
    let key: [u8; 32] = key
        .as_slice()
        .try_into()
        .map_err(|_| StoreError::Corrupt(format!("public key of {}", id.as_str())))?;
    Ok(Some(ContributorRecord {
        contributor: id.clone(),
        organisation: row.try_get("organisation")?,
        public_key: PublicKey(key),
        ledger_index: to_u64(row.try_get("ledger_idx")?, "ledger index")?,
        revoked: row.try_get("revoked")?,
    }))
}

/// Records the nonce of a signed request. Returns `false` when the same key
/// already used it: the request is a replay and must be refused.
pub async fn record_nonce(
    conn: impl PgExecutor<'_>,
    key_id: &str,
    nonce: &[u8],
) -> Result<bool, StoreError> {
    let result = sqlx::query(
        r"INSERT INTO request_nonces (key_id, nonce) VALUES ($1, $2)
          ON CONFLICT ON CONSTRAINT request_nonces_pkey DO NOTHING",
    )
    .bind(key_id)
    .bind(nonce)
    .execute(conn)
    .await
    .map_err(StoreError::from_sqlx)?;
    Ok(result.rows_affected() == 1)
}

/// Deletes nonces older than `window_secs` seconds; their replays are refused
/// by the timestamp window instead. Returns how many were deleted.
pub async fn prune_nonces(conn: impl PgExecutor<'_>, window_secs: u32) -> Result<u64, StoreError> {
    let result = sqlx::query(
        r"DELETE FROM request_nonces WHERE seen_at < now() - make_interval(secs => $1)",
    )
    .bind(f64::from(window_secs))
    .execute(conn)
    .await?;
    Ok(result.rows_affected())
}

/// Records a stored blob (idempotent: content addressing makes a second
/// insert of the same digest a no-op).
pub async fn insert_blob(
    conn: impl PgExecutor<'_>,
    sha256: &Sha256Digest,
    size: u64,
) -> Result<(), StoreError> {
    sqlx::query(
        r"INSERT INTO blobs (sha256, size) VALUES ($1, $2)
          ON CONFLICT ON CONSTRAINT blobs_pkey DO NOTHING",
    )
    .bind(sha256.0.as_slice())
    .bind(to_i64(size, "blob size")?)
    .execute(conn)
    .await
    .map_err(StoreError::from_sqlx)?;
    Ok(())
}

/// Marks a blob erased (its bytes deleted from blob storage). Returns `false`
/// when it was unknown or already erased.
pub async fn mark_blob_erased(
    conn: impl PgExecutor<'_>,
    sha256: &Sha256Digest,
) -> Result<bool, StoreError> {
    let result =
        sqlx::query(r"UPDATE blobs SET erased_at = now() WHERE sha256 = $1 AND erased_at IS NULL")
            .bind(sha256.0.as_slice())
            .execute(conn)
            .await?;
    Ok(result.rows_affected() == 1)
}
