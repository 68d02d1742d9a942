//! [`PgLedger`]: the consent ledger's Merkle log in Postgres.
//!
//! `ledger_entries` holds each entry's canonical bytes and leaf hash;
//! `ledger_tree_hashes` holds the hash of every complete subtree, keyed by
//! `(level, idx)`. Both are append-only (triggers in `migrations/0001_ledger.sql`).
//!
//! **Appending** takes a transaction-scoped advisory lock, so appends from any
//! number of coordinator processes sharing the database are serialised and the
//! log never forks; it reads the size, seals the entry at that index, computes
//! the new subtree hashes with [`hashes_to_append`] from at most `log2(n)`
//! stored siblings (one query), and inserts the entry and its hashes — all in
//! the caller's transaction, so the entry commits or vanishes with the rows of
//! the state change it records.
//!
//! **Proofs** cost one indexed query of O(log n) rows: the ledger's proof
//! functions are first run against a store that only records the ids they
//! ask for, those ids are fetched in one `= ANY` query, and the functions run
//! again against the fetched hashes held in memory.

use std::cell::RefCell;
use std::collections::HashMap;

use ed25519_dalek::SigningKey;
use sqlx::{PgConnection, PgExecutor, Row as _};
use tributary_ledger::{
    Entry, Hash, HashStore, LedgerIndex, NodeId, SignedEvent, Timestamp, consistency_proof,
    hashes_to_append, inclusion_proof, leaf_hash, root_hash,
};

use super::{StoreError, to_i64, to_u64};

/// The key of the advisory lock that serialises appends (ASCII "tribledg").
pub const APPEND_LOCK_KEY: i64 = 0x7472_6962_6c65_6467;

/// The most entries one [`PgLedger::entries`] call returns.
pub const MAX_ENTRIES_PER_READ: u64 = 1000;

/// What an append wrote.
#[derive(Clone, Debug)]
pub struct AppendedEntry {
    /// The sealed entry.
    pub entry: Entry,
    /// Its canonical bytes, as stored and hashed.
    pub bytes: Vec<u8>,
    /// Its leaf hash.
    pub leaf: Hash,
    /// The size of the log once it is in (its index + 1).
    pub size: u64,
}

impl AppendedEntry {
    /// The entry's index.
    pub fn index(&self) -> u64 {
        self.entry.index.get()
    }
}

/// The Merkle log stored in Postgres. Stateless: every call names its executor.
#[derive(Clone, Copy, Debug, Default)]
pub struct PgLedger;

/// The hashes a proof reads, in two passes: first a pass that answers nothing
/// and records the ids asked for, then a pass over those ids fetched in one query.
#[derive(Debug)]
enum ProofStore {
    /// Records the ids asked for and fails.
    Recording(RefCell<Vec<NodeId>>),
    /// Serves hashes fetched from the database.
    Fetched(HashMap<NodeId, Hash>),
}

impl HashStore for ProofStore {
    fn read_hashes(&self, ids: &[NodeId]) -> Result<Vec<Hash>, tributary_ledger::StoreError> {
        match self {
            ProofStore::Recording(asked) => {
                asked.borrow_mut().extend_from_slice(ids);
                Err(tributary_ledger::StoreError::Backend(
                    "recording pass".into(),
                ))
            }
            ProofStore::Fetched(map) => ids
                .iter()
                .map(|id| {
                    map.get(id)
                        .copied()
                        .ok_or(tributary_ledger::StoreError::Missing(*id))
                })
                .collect(),
        }
    }
}

impl PgLedger {
    /// Seals `signed` at the end of the log with the operator's key and time
    /// `at`, and writes the entry and its tree hashes, inside the caller's
    /// transaction. The advisory lock is held until that transaction ends, so
    /// commit promptly.
    pub async fn append(
        conn: &mut PgConnection,
        signed: SignedEvent,
        at: Timestamp,
        operator: &SigningKey,
    ) -> Result<AppendedEntry, StoreError> {
        Self::lock(&mut *conn).await?;
        let size = Self::size(&mut *conn).await?;
        let entry = Entry::seal(signed, LedgerIndex(size), at, operator)?;
        let bytes = entry.to_bytes()?;
        let leaf = leaf_hash(&bytes);

        let siblings: Vec<NodeId> = (0..size.trailing_ones() as u8)
            .map(|level| NodeId::new(level, (size >> level) - 1))
            .collect();
        let fetched = Self::fetch(&mut *conn, &siblings).await?;
        let rows = hashes_to_append(&fetched, size, leaf)?;

        sqlx::query(
            r"INSERT INTO ledger_entries (idx, bytes, leaf_hash, kind) VALUES ($1, $2, $3, $4)",
        )
        .bind(to_i64(size, "ledger index")?)
        .bind(&bytes)
        .bind(leaf.as_bytes().as_slice())
        .bind(entry.event.kind())
        .execute(&mut *conn)
        .await
        .map_err(StoreError::from_sqlx)?;

        let levels: Vec<i16> = rows.iter().map(|(id, _)| i16::from(id.level)).collect();
        let indices = rows
            .iter()
            .map(|(id, _)| to_i64(id.index, "tree index"))
            .collect::<Result<Vec<i64>, _>>()?;
        let hashes: Vec<Vec<u8>> = rows.iter().map(|(_, h)| h.as_bytes().to_vec()).collect();
        sqlx::query(
            r"INSERT INTO ledger_tree_hashes (level, idx, hash)
              SELECT * FROM UNNEST($1::smallint[], $2::bigint[], $3::bytea[])",
        )
        .bind(&levels)
        .bind(&indices)
        .bind(&hashes)
        .execute(&mut *conn)
        .await
        .map_err(StoreError::from_sqlx)?;

        Ok(AppendedEntry {
            entry,
            bytes,
            leaf,
            size: size + 1,
        })
    }

    /// Takes the append lock for the rest of the caller's transaction.
    pub async fn lock(conn: impl PgExecutor<'_>) -> Result<(), StoreError> {
        sqlx::query(r"SELECT pg_advisory_xact_lock($1)")
            .bind(APPEND_LOCK_KEY)
            .execute(conn)
            .await?;
        Ok(())
    }

    /// The number of entries in the log (read through the primary key index).
    pub async fn size(conn: impl PgExecutor<'_>) -> Result<u64, StoreError> {
        let next: Option<i64> = sqlx::query_scalar(r"SELECT max(idx) + 1 FROM ledger_entries")
            .fetch_one(conn)
            .await?;
        to_u64(next.unwrap_or(0), "ledger size")
    }

    /// The entries with index in `[start, end)`, at most [`MAX_ENTRIES_PER_READ`],
    /// as `(index, bytes)` by increasing index.
    pub async fn entries(
        conn: impl PgExecutor<'_>,
        start: u64,
        end: u64,
    ) -> Result<Vec<(u64, Vec<u8>)>, StoreError> {
        let end = end.min(start.saturating_add(MAX_ENTRIES_PER_READ));
        if end <= start {
            return Ok(Vec::new());
        }
        let rows = sqlx::query(
            r"SELECT idx, bytes FROM ledger_entries WHERE idx >= $1 AND idx < $2 ORDER BY idx",
        )
        .bind(to_i64(start, "start")?)
        .bind(to_i64(end, "end")?)
        .fetch_all(conn)
        .await?;
        rows.iter()
            .map(|row| {
                let idx: i64 = row.try_get("idx")?;
                let bytes: Vec<u8> = row.try_get("bytes")?;
                Ok((to_u64(idx, "ledger index")?, bytes))
            })
            .collect()
    }

    /// The hashes of the given complete subtrees, in order, in one query.
    pub async fn read_hashes(
        conn: impl PgExecutor<'_>,
        ids: &[NodeId],
    ) -> Result<Vec<Hash>, StoreError> {
        let fetched = Self::fetch(conn, ids).await?;
        Ok(fetched.read_hashes(ids)?)
    }

    /// The RFC 6962 root of the first `size` entries.
    pub async fn root(conn: impl PgExecutor<'_>, size: u64) -> Result<Hash, StoreError> {
        Self::prove(conn, |store| root_hash(store, size)).await
    }

    /// The inclusion proof of entry `index` in the tree of `size` entries.
    pub async fn inclusion_proof(
        conn: impl PgExecutor<'_>,
        index: u64,
        size: u64,
    ) -> Result<Vec<Hash>, StoreError> {
        Self::prove(conn, |store| inclusion_proof(store, index, size)).await
    }

    /// The consistency proof between the trees of `old` and `new` entries.
    pub async fn consistency_proof(
        conn: impl PgExecutor<'_>,
        old: u64,
        new: u64,
    ) -> Result<Vec<Hash>, StoreError> {
        Self::prove(conn, |store| consistency_proof(store, old, new)).await
    }

    /// Runs a proof function twice: once to learn the ids it reads, then on
    /// those ids fetched in one query. Argument errors (an index beyond the
    /// size, bad sizes) surface from the first pass without a query.
    async fn prove<T>(
        conn: impl PgExecutor<'_>,
        run: impl Fn(&ProofStore) -> Result<T, tributary_ledger::ProofError>,
    ) -> Result<T, StoreError> {
        let recorder = ProofStore::Recording(RefCell::default());
        match run(&recorder) {
            Ok(value) => return Ok(value),
            Err(tributary_ledger::ProofError::Store(_)) => {}
            Err(other) => return Err(other.into()),
        }
        let ProofStore::Recording(asked) = recorder else {
            return Err(StoreError::Corrupt("proof store changed kind".into()));
        };
        let ids = asked.into_inner();
        let fetched = Self::fetch(conn, &ids).await?;
        Ok(run(&fetched)?)
    }

    /// Fetches the stored hashes among `ids` (absent ones are simply missing).
    async fn fetch(conn: impl PgExecutor<'_>, ids: &[NodeId]) -> Result<ProofStore, StoreError> {
        if ids.is_empty() {
            return Ok(ProofStore::Fetched(HashMap::new()));
        }
        let levels: Vec<i16> = ids.iter().map(|id| i16::from(id.level)).collect();
        let indices = ids
            .iter()
            .map(|id| to_i64(id.index, "tree index"))
            .collect::<Result<Vec<i64>, _>>()?;
        let rows = sqlx::query(
            r"SELECT h.level, h.idx, h.hash
              FROM UNNEST($1::smallint[], $2::bigint[]) AS wanted (level, idx)
              JOIN ledger_tree_hashes h ON h.level = wanted.level AND h.idx = wanted.idx",
        )
        .bind(&levels)
        .bind(&indices)
        .fetch_all(conn)
        .await?;
        let mut map = HashMap::with_capacity(rows.len());
        for row in &rows {
            let level: i16 = row.try_get("level")?;
            let idx: i64 = row.try_get("idx")?;
            let hash: Vec<u8> = row.try_get("hash")?;
            let level = u8::try_from(level)
                .map_err(|_| StoreError::Corrupt(format!("tree level {level}")))?;
            let hash = Hash::from_slice(&hash)
                .map_err(|e| StoreError::Corrupt(format!("tree hash: {e}")))?;
            map.insert(NodeId::new(level, to_u64(idx, "tree index")?), hash);
        }
        Ok(ProofStore::Fetched(map))
    }
}
