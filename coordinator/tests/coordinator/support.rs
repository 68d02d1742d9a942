//! Shared test helpers: a fresh migrated database per test, and event builders.
//! (The auditor's tests and the service benchmark include this file too.)

use std::str::FromStr as _;

use coordinator::store::{self, PgLedger};
use ed25519_dalek::SigningKey;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::{AssertSqlSafe, ConnectOptions as _, Connection as _};
use tributary_ledger::event::{ContributorRegistered, LogCreated};
use tributary_ledger::{ContributorId, Event, PublicKey, SignedEvent, Timestamp};

/// The server tests run against when `DATABASE_URL` is not set.
pub const DEFAULT_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

/// A database created for one test.
pub struct TestDb {
    admin: PgConnectOptions,
    name: String,
    /// Options reaching the test database (to open more pools).
    pub options: PgConnectOptions,
    /// A pool on the test database, migrated.
    pub pool: PgPool,
}

impl TestDb {
    /// Creates and migrates a fresh database.
    pub async fn new() -> TestDb {
        let url = std::env::var("DATABASE_URL").unwrap_or_else(|_| DEFAULT_URL.to_string());
        let admin = PgConnectOptions::from_str(&url).expect("DATABASE_URL is a postgres URL");
        let name = format!("tributary_test_{:016x}", rand::random::<u64>());
        let mut conn = admin.connect().await.expect("connect to DATABASE_URL");
        // The name is ours (hex digits), not input: safe to splice.
        sqlx::query(AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut conn)
            .await
            .expect("create the test database");
        conn.close().await.expect("close the admin connection");
        let options = admin.clone().database(&name);
        let pool = Self::pool_on(&options).await;
        store::migrate(&pool).await.expect("migrations apply");
        TestDb {
            admin,
            name,
            options,
            pool,
        }
    }

    /// Opens another, independent pool on the same database (as a second
    /// coordinator process would).
    pub async fn pool_on(options: &PgConnectOptions) -> PgPool {
        PgPoolOptions::new()
            .max_connections(8)
            .connect_with(options.clone())
            .await
            .expect("connect to the test database")
    }

    /// The URL of the test database (for a coordinator's `DATABASE_URL`).
    pub fn url(&self) -> String {
        let base = std::env::var("DATABASE_URL").unwrap_or_else(|_| DEFAULT_URL.to_string());
        let (without_query, query) = match base.split_once('?') {
            Some((b, q)) => (b.to_string(), format!("?{q}")),
            None => (base.clone(), String::new()),
        };
        let (server, _) = without_query
            .rsplit_once('/')
            .expect("DATABASE_URL has a database path");
        format!("{server}/{}{query}", self.name)
    }

    /// Closes the pool and drops the database.
    pub async fn drop_db(self) {
        self.pool.close().await;
        let mut conn = self.admin.connect().await.expect("reconnect as admin");
        sqlx::query(AssertSqlSafe(format!(
            "DROP DATABASE IF EXISTS {} WITH (FORCE)",
            self.name
        )))
        .execute(&mut conn)
        .await
        .expect("drop the test database");
    }
}

/// The operator key of every test log.
pub fn operator() -> SigningKey {
    SigningKey::from_bytes(&[1; 32])
}

/// The key of test contributor `n`.
pub fn contributor_key(n: u32) -> SigningKey {
    let mut seed = [0u8; 32];
    seed[..4].copy_from_slice(&n.to_be_bytes());
    seed[31] = 0xc0;
    SigningKey::from_bytes(&seed)
}

/// The first entry of a log.
pub fn log_created() -> SignedEvent {
    SignedEvent::coordinator(Event::LogCreated(LogCreated {
        origin: "test.example.org/tributary".into(),
        operator_key: PublicKey::of(&operator()),
    }))
}

/// An invited registration of contributor `n`, signed by it and the operator.
pub fn registration(n: u32) -> SignedEvent {
    let key = contributor_key(n);
    let event = Event::ContributorRegistered(ContributorRegistered {
        contributor: ContributorId::new(format!("org-{n}")).expect("valid id"),
        organisation: format!("Organisation {n}"),
        public_key: PublicKey::of(&key),
    });
    SignedEvent::contributor(event, &key)
        .and_then(|s| s.invited_by(&operator()))
        .expect("sign the registration")
}

/// Appends one event in its own transaction and commits it.
pub async fn append(pool: &PgPool, signed: SignedEvent) -> u64 {
    let mut tx = pool.begin().await.expect("begin");
    let appended = PgLedger::append(&mut tx, signed, Timestamp(1_750_000_000), &operator())
        .await
        .expect("append");
    tx.commit().await.expect("commit");
    appended.index()
}

/// Every entry's bytes, in order.
pub async fn all_entries(pool: &PgPool) -> Vec<Vec<u8>> {
    let size = PgLedger::size(pool).await.expect("size");
    let mut out = Vec::new();
    while (out.len() as u64) < size {
        let page = PgLedger::entries(pool, out.len() as u64, size)
            .await
            .expect("entries");
        assert!(!page.is_empty(), "entries stopped short of the size");
        for (index, bytes) in page {
            assert_eq!(index, out.len() as u64, "entries out of order");
            out.push(bytes);
        }
    }
    out
}
