//! The coordinator's tables beside the ledger: contributors, nonces, blobs.

use coordinator::store::StoreError;
use coordinator::store::records::{
    ContributorRecord, contributor, insert_blob, insert_contributor, mark_blob_erased,
    prune_nonces, record_nonce,
};
use tributary_ledger::{ContributorId, PublicKey, Sha256Digest};

use crate::support::{TestDb, append, contributor_key, log_created, registration};

#[tokio::test]
async fn contributors_are_stored_once_per_id_and_key() {
    let db = TestDb::new().await;
    append(&db.pool, log_created()).await;
    let index = append(&db.pool, registration(1)).await;
    let record = ContributorRecord {
        contributor: ContributorId::new("org-1").unwrap(),
        organisation: "Organisation 1".into(),
        public_key: PublicKey::of(&contributor_key(1)),
        ledger_index: index,
        revoked: false,
    };
    insert_contributor(&db.pool, &record).await.unwrap();
    assert_eq!(
        contributor(&db.pool, &record.contributor).await.unwrap(),
        Some(record.clone())
    );
    assert_eq!(
        contributor(&db.pool, &ContributorId::new("nobody").unwrap())
            .await
            .unwrap(),
        None
    );
    let error = insert_contributor(&db.pool, &record).await.unwrap_err();
    assert!(
        matches!(&error, StoreError::Constraint { constraint } if constraint == "contributors_pkey"),
        "{error}"
    );
    let same_key = ContributorRecord {
        contributor: ContributorId::new("org-1b").unwrap(),
        ..record.clone()
    };
    let error = insert_contributor(&db.pool, &same_key).await.unwrap_err();
    assert!(
        matches!(&error, StoreError::Constraint { constraint } if constraint == "contributors_public_key_unique"),
        "{error}"
    );
    let dangling = ContributorRecord {
        contributor: ContributorId::new("org-2").unwrap(),
        public_key: PublicKey::of(&contributor_key(2)),
        ledger_index: 99,
        ..record
    };
    let error = insert_contributor(&db.pool, &dangling).await.unwrap_err();
    assert!(
        matches!(&error, StoreError::Constraint { constraint } if constraint == "contributors_ledger_idx_fkey"),
        "{error}"
    );
    db.drop_db().await;
}

#[tokio::test]
async fn a_nonce_is_accepted_once_per_key() {
    let db = TestDb::new().await;
    let nonce = [7u8; 16];
    assert!(record_nonce(&db.pool, "org-1", &nonce).await.unwrap());
    assert!(!record_nonce(&db.pool, "org-1", &nonce).await.unwrap());
    assert!(record_nonce(&db.pool, "org-2", &nonce).await.unwrap());
    // Too short a nonce is refused by its named constraint.
    let error = record_nonce(&db.pool, "org-1", &[1u8; 4])
        .await
        .unwrap_err();
    assert!(
        matches!(&error, StoreError::Constraint { constraint } if constraint == "request_nonces_nonce_length"),
        "{error}"
    );
    // Nothing is older than an hour yet; everything is older than zero seconds once time passes.
    assert_eq!(prune_nonces(&db.pool, 3600).await.unwrap(), 0);
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    assert_eq!(prune_nonces(&db.pool, 0).await.unwrap(), 2);
    db.drop_db().await;
}

#[tokio::test]
async fn blobs_are_content_addressed_and_erased_once() {
    let db = TestDb::new().await;
    let digest = Sha256Digest::of(b"weights");
    insert_blob(&db.pool, &digest, 7).await.unwrap();
    insert_blob(&db.pool, &digest, 7).await.unwrap();
    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM blobs")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(count, 1);
    assert!(mark_blob_erased(&db.pool, &digest).await.unwrap());
    assert!(!mark_blob_erased(&db.pool, &digest).await.unwrap());
    assert!(
        !mark_blob_erased(&db.pool, &Sha256Digest::of(b"other"))
            .await
            .unwrap()
    );
    db.drop_db().await;
}
