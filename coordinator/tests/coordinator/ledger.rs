//! `PgLedger` against real Postgres: proofs, append-only enforcement,
//! concurrent appenders and tamper detection.

use coordinator::store::{PgLedger, StoreError};
use tributary_ledger::{
    Checkpoint, MemoryStore, ReplayOptions, Rule, replay, root_hash, verify_consistency,
    verify_inclusion,
};

use crate::support::{TestDb, all_entries, append, log_created, registration};

#[tokio::test]
async fn appended_entries_prove_inclusion_and_consistency() {
    let db = TestDb::new().await;
    let mut memory = MemoryStore::new();
    assert_eq!(PgLedger::size(&db.pool).await.unwrap(), 0);
    let mut events = vec![log_created()];
    events.extend((0..20).map(registration));
    for (i, signed) in events.into_iter().enumerate() {
        let index = append(&db.pool, signed).await;
        assert_eq!(index, i as u64);
    }
    let entries = all_entries(&db.pool).await;
    for bytes in &entries {
        memory.append_entry(bytes);
    }
    let size = entries.len() as u64;
    assert_eq!(size, 21);

    let mut roots = Vec::new();
    for n in 1..=size {
        let root = PgLedger::root(&db.pool, n).await.unwrap();
        assert_eq!(root, root_hash(&memory, n).unwrap(), "root of size {n}");
        roots.push(root);
    }
    for n in 1..=size {
        let root = roots[(n - 1) as usize];
        for index in 0..n {
            let proof = PgLedger::inclusion_proof(&db.pool, index, n).await.unwrap();
            let leaf = tributary_ledger::leaf_hash(&entries[index as usize]);
            verify_inclusion(&leaf, index, n, &proof, &root)
                .unwrap_or_else(|e| panic!("inclusion of {index} in {n}: {e}"));
            // A proof for another leaf must not verify.
            let other = tributary_ledger::leaf_hash(b"not an entry");
            assert!(verify_inclusion(&other, index, n, &proof, &root).is_err());
        }
        for old in 1..=n {
            let proof = PgLedger::consistency_proof(&db.pool, old, n).await.unwrap();
            verify_consistency(old, n, &proof, &roots[(old - 1) as usize], &root)
                .unwrap_or_else(|e| panic!("consistency {old} -> {n}: {e}"));
        }
    }

    // Out-of-range requests are errors, not panics or empty proofs.
    assert!(
        PgLedger::inclusion_proof(&db.pool, size, size)
            .await
            .is_err()
    );
    assert!(
        PgLedger::consistency_proof(&db.pool, 0, size)
            .await
            .is_err()
    );
    assert!(matches!(
        PgLedger::root(&db.pool, size + 1).await,
        Err(StoreError::Proof(_))
    ));
    // Reading past the end returns what exists.
    let tail = PgLedger::entries(&db.pool, size - 2, size + 10)
        .await
        .unwrap();
    assert_eq!(tail.len(), 2);
    assert!(PgLedger::entries(&db.pool, 5, 5).await.unwrap().is_empty());
    db.drop_db().await;
}

#[tokio::test]
async fn tree_hashes_match_the_memory_tree_row_for_row() {
    let db = TestDb::new().await;
    for n in 0..13u32 {
        append(
            &db.pool,
            if n == 0 {
                log_created()
            } else {
                registration(n)
            },
        )
        .await;
    }
    let mut memory = MemoryStore::new();
    for bytes in all_entries(&db.pool).await {
        memory.append_entry(&bytes);
    }
    let rows: Vec<(i16, i64, Vec<u8>)> =
        sqlx::query_as("SELECT level, idx, hash FROM ledger_tree_hashes ORDER BY level, idx")
            .fetch_all(&db.pool)
            .await
            .unwrap();
    // 13 leaves: 13 + 6 + 3 + 1 complete subtrees.
    assert_eq!(rows.len(), 23);
    for (level, idx, hash) in rows {
        let id = tributary_ledger::NodeId::new(level as u8, idx as u64);
        let expected = tributary_ledger::HashStore::read_hashes(&memory, &[id]).unwrap();
        assert_eq!(hash, expected[0].as_bytes().to_vec(), "node {id:?}");
    }
    db.drop_db().await;
}

#[tokio::test]
async fn a_rolled_back_append_leaves_nothing() {
    let db = TestDb::new().await;
    append(&db.pool, log_created()).await;
    let mut tx = db.pool.begin().await.unwrap();
    let appended = PgLedger::append(
        &mut tx,
        registration(1),
        tributary_ledger::Timestamp(1),
        &crate::support::operator(),
    )
    .await
    .unwrap();
    assert_eq!(appended.index(), 1);
    assert_eq!(PgLedger::size(&mut *tx).await.unwrap(), 2);
    tx.rollback().await.unwrap();
    assert_eq!(PgLedger::size(&db.pool).await.unwrap(), 1);
    let hashes: i64 = sqlx::query_scalar("SELECT count(*) FROM ledger_tree_hashes")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(hashes, 1);
    // The next append takes the freed index.
    assert_eq!(append(&db.pool, registration(2)).await, 1);
    db.drop_db().await;
}

#[tokio::test]
async fn the_database_refuses_to_change_ledger_rows() {
    let db = TestDb::new().await;
    append(&db.pool, log_created()).await;
    append(&db.pool, registration(1)).await;
    let statements = [
        "UPDATE ledger_entries SET bytes = '\\x00' WHERE idx = 1",
        "UPDATE ledger_entries SET appended_at = now()",
        "DELETE FROM ledger_entries WHERE idx = 1",
        "TRUNCATE ledger_entries CASCADE",
        "UPDATE ledger_tree_hashes SET hash = hash WHERE level = 0",
        "DELETE FROM ledger_tree_hashes",
        "TRUNCATE ledger_tree_hashes",
    ];
    for statement in statements {
        let error = sqlx::query(statement)
            .execute(&db.pool)
            .await
            .expect_err(statement);
        let message = error.to_string();
        assert!(message.contains("append-only"), "{statement}: {message}");
    }
    assert_eq!(all_entries(&db.pool).await.len(), 2);
    let hashes: i64 = sqlx::query_scalar("SELECT count(*) FROM ledger_tree_hashes")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(hashes, 3);
    // Inserting at a taken index is refused by the named primary key.
    let error = sqlx::query(
        "INSERT INTO ledger_entries (idx, bytes, leaf_hash, kind) VALUES (1, '\\x01', $1, 'x')",
    )
    .bind(vec![0u8; 32])
    .execute(&db.pool)
    .await
    .unwrap_err();
    assert!(matches!(
        StoreError::from_sqlx(error),
        StoreError::Constraint { constraint } if constraint == "ledger_entries_pkey"
    ));
    db.drop_db().await;
}

#[tokio::test]
async fn concurrent_appenders_on_two_pools_keep_one_log() {
    const TASKS_PER_POOL: u32 = 6;
    const APPENDS_PER_TASK: u32 = 5;
    let db = TestDb::new().await;
    append(&db.pool, log_created()).await;
    let second = TestDb::pool_on(&db.options).await;
    let mut tasks = Vec::new();
    for (p, pool) in [db.pool.clone(), second.clone()].into_iter().enumerate() {
        for t in 0..TASKS_PER_POOL {
            let pool = pool.clone();
            tasks.push(tokio::spawn(async move {
                let mut indices = Vec::new();
                for a in 0..APPENDS_PER_TASK {
                    let n = ((p as u32) * TASKS_PER_POOL + t) * APPENDS_PER_TASK + a + 1;
                    indices.push(append(&pool, registration(n)).await);
                }
                indices
            }));
        }
    }
    let mut indices = Vec::new();
    for task in tasks {
        indices.extend(task.await.unwrap());
    }
    second.close().await;
    indices.sort_unstable();
    let expected: Vec<u64> = (1..=u64::from(2 * TASKS_PER_POOL * APPENDS_PER_TASK)).collect();
    assert_eq!(
        indices, expected,
        "every append got its own index, none skipped"
    );

    let entries = all_entries(&db.pool).await;
    let size = entries.len() as u64;
    assert_eq!(size, expected.len() as u64 + 1);
    let stored_root = PgLedger::root(&db.pool, size).await.unwrap();
    let audit = replay(
        &entries,
        &ReplayOptions {
            operator_key: None,
            checkpoints: vec![Checkpoint::new(
                "test.example.org/tributary",
                size,
                stored_root,
            )],
        },
    );
    assert_eq!(audit.root, stored_root);
    assert!(audit.is_clean(), "{:?}", audit.violations);
    assert_eq!(audit.state.contributors.len(), expected.len());
    db.drop_db().await;
}

#[tokio::test]
async fn an_entry_edited_behind_the_triggers_is_detected_by_replay() {
    let db = TestDb::new().await;
    for n in 0..6u32 {
        append(
            &db.pool,
            if n == 0 {
                log_created()
            } else {
                registration(n)
            },
        )
        .await;
    }
    let size = PgLedger::size(&db.pool).await.unwrap();
    let checkpoint = Checkpoint::new(
        "test.example.org/tributary",
        size,
        PgLedger::root(&db.pool, size).await.unwrap(),
    );
    let options = ReplayOptions {
        operator_key: None,
        checkpoints: vec![checkpoint],
    };
    assert!(replay(&all_entries(&db.pool).await, &options).is_clean());

    // A superuser disables the triggers and rewrites an organisation's name.
    let mut conn = db.pool.acquire().await.unwrap();
    sqlx::query("ALTER TABLE ledger_entries DISABLE TRIGGER USER")
        .execute(&mut *conn)
        .await
        .unwrap();
    let edited = sqlx::query(
        "UPDATE ledger_entries
         SET bytes = convert_to(replace(convert_from(bytes, 'UTF8'), 'Organisation 3', 'Organisation X'), 'UTF8')
         WHERE idx = 3",
    )
    .execute(&mut *conn)
    .await
    .unwrap();
    assert_eq!(edited.rows_affected(), 1);
    sqlx::query("ALTER TABLE ledger_entries ENABLE TRIGGER USER")
        .execute(&mut *conn)
        .await
        .unwrap();
    drop(conn);

    let audit = replay(&all_entries(&db.pool).await, &options);
    assert!(!audit.is_clean());
    assert!(
        audit.violations_at(3).next().is_some(),
        "the edited entry itself is reported: {:?}",
        audit.violations
    );
    assert!(
        audit.violations.iter().any(|v| v.rule == Rule::TreeHead),
        "the recomputed root no longer matches the checkpoint: {:?}",
        audit.violations
    );
    db.drop_db().await;
}
