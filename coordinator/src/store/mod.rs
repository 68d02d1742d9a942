//! Postgres storage through sqlx: connecting, applying the embedded migrations
//! (`migrations/` at the repository root), the error type of the storage
//! boundary, and the modules holding the SQL of each concern.
//!
//! Every function takes `impl PgExecutor<'_>` (a pool, a connection or a
//! transaction) or `&mut PgConnection` when it issues several statements, so a
//! caller composes them into one transaction: a state change writes its ledger
//! entry ([`PgLedger::append`]) and its rows, then commits once.
//!
//! - [`ledger`]: [`PgLedger`], the Merkle log in `ledger_entries` and `ledger_tree_hashes`.
//! - [`records`]: contributors, request nonces and blobs.

use sqlx::postgres::{PgPool, PgPoolOptions};

pub mod ledger;
pub mod records;
pub mod state;

pub use ledger::{AppendedEntry, PgLedger};

/// The migrations of `migrations/`, embedded at build time.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations");

/// A failure at the storage boundary.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database refused or failed a statement.
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    /// A migration could not be applied.
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// A named constraint refused a write (e.g. a duplicate id).
    #[error("constraint {constraint} refused the write")]
    Constraint {
        /// The constraint's name, as in `migrations/`.
        constraint: String,
    },
    /// A ledger entry could not be sealed or encoded.
    #[error("ledger entry: {0}")]
    Entry(#[from] tributary_ledger::EntryError),
    /// The stored tree lacks a hash it should hold.
    #[error("ledger tree: {0}")]
    Tree(#[from] tributary_ledger::StoreError),
    /// A proof or tree head could not be produced.
    #[error("ledger proof: {0}")]
    Proof(#[from] tributary_ledger::ProofError),
    /// A stored value is malformed (wrong hash length, negative index, …).
    #[error("corrupt stored data: {0}")]
    Corrupt(String),
}

impl StoreError {
    /// Turns a unique/foreign-key/check violation into [`StoreError::Constraint`]
    /// with the constraint's name; other errors pass through.
    pub fn from_sqlx(error: sqlx::Error) -> Self {
        if let sqlx::Error::Database(db) = &error
            && let Some(name) = db.constraint()
        {
            return StoreError::Constraint {
                constraint: name.to_string(),
            };
        }
        StoreError::Database(error)
    }
}

/// Opens a connection pool to `url` (e.g. the `DATABASE_URL` environment variable).
pub async fn connect(url: &str) -> Result<PgPool, StoreError> {
    Ok(PgPoolOptions::new()
        .max_connections(16)
        .connect(url)
        .await?)
}

/// Applies every pending migration.
pub async fn migrate(pool: &PgPool) -> Result<(), StoreError> {
    MIGRATOR.run(pool).await?;
    Ok(())
}

/// Converts a database `BIGINT` that must be a non-negative index.
pub(crate) fn to_u64(value: i64, what: &str) -> Result<u64, StoreError> {
    u64::try_from(value).map_err(|_| StoreError::Corrupt(format!("negative {what}: {value}")))
}

/// Converts an index for a database `BIGINT`.
pub(crate) fn to_i64(value: u64, what: &str) -> Result<i64, StoreError> {
    i64::try_from(value).map_err(|_| StoreError::Corrupt(format!("{what} {value} exceeds BIGINT")))
}
