//! Two coordinators on one database, appending concurrently, keep one
//! consistent log: the service-level counterpart of the store test
//! `ledger::concurrent_appenders_on_two_pools_keep_one_log`.

use futures::future::join_all;
use tributary_client::{Client, verify_receipt};
use tributary_ledger::{
    Checkpoint, ConsentId, Event, NoteVerifier, PublicKey, ReplayOptions, replay,
    verify_checkpoint_consistency,
};
use tributary_protos::v1;

use crate::servers::{Options, TestServer, consistency_proof, enrol, terms};

const CONTRIBUTORS: u8 = 8;
const GRANTS: usize = 3;

/// A receipt and the server (0: the first coordinator, 1: the replica) that
/// handed it out.
type Handed = (usize, v1::Receipt);

/// Contributor `i`: registers through its home server, grants `GRANTS`
/// consents alternately through both, then withdraws the first through the
/// other server (which did not record the grant). Returns its receipts.
async fn contributor(server: &TestServer, bases: &[Client; 2], i: u8) -> Vec<Handed> {
    let home = usize::from(i % 2);
    let name = format!("org-{i}");
    let registered = enrol(server, &bases[home], &name, 10 + i).await;
    let signer = registered.signer().unwrap().clone();
    let me = [
        bases[0].with_signer(signer.clone()),
        bases[1].with_signer(signer),
    ];
    let mut handed = Vec::new();
    for k in 0..GRANTS {
        let via = (home + k) % 2;
        let consent = format!("c-{i}-{k}");
        let granted = me[via]
            .grant_consent(terms(&consent, &name, consent.as_bytes()))
            .await
            .unwrap();
        handed.push((via, granted.receipt.unwrap()));
    }
    let other = 1 - home;
    let withdrawn = me[other]
        .withdraw_consent(&ConsentId::new(format!("c-{i}-0")).unwrap())
        .await
        .unwrap();
    assert!(withdrawn.published_versions.is_empty() && withdrawn.erasure.is_none());
    handed.push((other, withdrawn.withdrawal.unwrap()));
    handed
}

/// The checkpoint of the largest tree among the receipts `server` handed out.
fn latest_of(handed: &[Handed], server: usize, verifiers: &[NoteVerifier]) -> Checkpoint {
    handed
        .iter()
        .filter(|(s, _)| *s == server)
        .map(|(_, r)| Checkpoint::open(&r.checkpoint, verifiers).unwrap())
        .max_by_key(|c| c.size)
        .unwrap()
}

/// Asks `client` for a consistency proof from `older` to `newer` and checks it.
async fn assert_consistent(client: &Client, older: &Checkpoint, newer: &Checkpoint) {
    let hashes = consistency_proof(client, older.size, newer.size).await;
    verify_checkpoint_consistency(older, newer, &hashes).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_coordinators_on_one_database_append_concurrently_into_one_log() {
    let server = TestServer::start(Options::default()).await;
    let replica = server.replica().await;
    let bases = [server.client().await, server.connect(&replica.url()).await];
    let verifiers = server.verifiers();

    let handed: Vec<Handed> = join_all((0..CONTRIBUTORS).map(|i| contributor(&server, &bases, i)))
        .await
        .into_iter()
        .flatten()
        .collect();

    // LogCreated, then per contributor: registration, grants, one withdrawal.
    let expected = 1 + u64::from(CONTRIBUTORS) * (1 + GRANTS as u64 + 1);
    let (count, max): (i64, i64) = sqlx::query_as(r"SELECT count(*), max(idx) FROM ledger_entries")
        .fetch_one(server.pool())
        .await
        .unwrap();
    assert_eq!((count, max + 1), (expected as i64, expected as i64));

    // Every receipt verifies, and no two share an index.
    let mut indices: Vec<u64> = handed
        .iter()
        .map(|(_, r)| verify_receipt(Some(r), &verifiers).unwrap().index.0)
        .collect();
    indices.sort_unstable();
    indices.dedup();
    assert_eq!(indices.len(), handed.len());
    assert!(handed.iter().any(|(s, _)| *s == 0) && handed.iter().any(|(s, _)| *s == 1));

    // Both serve the same signed head; each one's latest checkpoint is a
    // prefix of the other's and of the head, proven by the other server.
    let heads = [
        bases[0].checkpoint().await.unwrap(),
        bases[1].checkpoint().await.unwrap(),
    ];
    assert_eq!(heads[0].note, heads[1].note);
    let head = Checkpoint::open(&heads[0].note, &verifiers).unwrap();
    assert_eq!(head.size, expected);
    let mut latest = [0, 1].map(|s| latest_of(&handed, s, &verifiers));
    assert_ne!(latest[0].size, latest[1].size);
    for s in 0..2 {
        assert_consistent(&bases[1 - s], &latest[s], &head).await;
    }
    latest.sort_by_key(|c| c.size);
    assert_consistent(&bases[0], &latest[0], &latest[1]).await;
    assert_consistent(&bases[1], &latest[0], &latest[1]).await;

    // The whole log replays clean against the operator's key and checkpoints.
    let entries: Vec<Vec<u8>> = bases[1]
        .entries(0, expected)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.data)
        .collect();
    assert_eq!(entries.len() as u64, expected);
    let operator = coordinator::devca::operator_signing_key(&server.ca.operator_key).unwrap();
    let mut checkpoints = latest.to_vec();
    checkpoints.push(head);
    let audit = replay(
        &entries,
        &ReplayOptions {
            operator_key: Some(PublicKey::of(&operator)),
            checkpoints,
        },
    );
    assert!(audit.is_clean(), "{:?}", audit.violations);
    let withdrawals = entries
        .iter()
        .map(|bytes| tributary_ledger::Entry::from_bytes(bytes).unwrap())
        .filter(|e| matches!(e.event, Event::ConsentWithdrawn(_)))
        .count();
    assert_eq!(withdrawals, usize::from(CONTRIBUTORS));

    replica.stop().await;
    server.stop().await;
}

#[tokio::test]
async fn replicas_validate_uploads_against_the_anchor_another_replica_published() {
    use crate::service::{consent_for, upload};
    use crate::validate::{scaled_tensors, upload_of};

    let server = TestServer::start(Options::for_uploads()).await;
    let replica = server.replica().await;
    let base = server.client().await;
    let operator = base.with_signer(server.operator());
    let registered = enrol(&server, &base, "alice", 61).await;
    let alice = server
        .connect(&replica.url())
        .await
        .with_signer(registered.signer().unwrap().clone());
    let shipped = replica.running.state.current_anchor().unwrap().digest;

    // The operator publishes a new anchor through the first coordinator.
    let fresh = server.dir.path().join("fresh");
    crate::anchor::write_variant(&fresh, 1.5);
    let published = operator.publish_anchor(&fresh, true).await.unwrap();
    let fresh_digest = tributary_ledger::Sha256Digest::of(
        &std::fs::read(fresh.join("model.safetensors")).unwrap(),
    );
    assert_eq!(published.digest.unwrap().sha256, fresh_digest.0.to_vec());
    assert_ne!(fresh_digest, shipped);

    // An expert for it, uploaded through the replica, is validated against it.
    let (payload, mut manifest) = upload_of(&scaled_tensors(1.0, -1.0));
    manifest.anchor = fresh_digest;
    consent_for(&alice, "c-fresh", &manifest, None).await;
    let status = upload(&server, &alice, "s-fresh", &payload, &manifest).await;
    assert_eq!(
        status.state,
        v1::SubmissionState::Accepted as i32,
        "{status:?}"
    );
    assert_eq!(
        replica.running.state.current_anchor().unwrap().digest,
        fresh_digest
    );
    // And one for the anchor it started with is now refused there.
    let (payload, stale) = upload_of(&scaled_tensors(1.0, -0.5));
    consent_for(&alice, "c-stale", &stale, None).await;
    let status = upload(&server, &alice, "s-stale", &payload, &stale).await;
    assert_eq!(status.reason_code, "WRONG_ANCHOR", "{status:?}");

    // A coordinator started later with the original directory keeps the
    // published anchor current instead of reverting to its own.
    let late = server.replica().await;
    assert_eq!(
        late.running.state.current_anchor().unwrap().digest,
        fresh_digest
    );
    let current = base
        .anchors()
        .get_anchor(v1::GetAnchorRequest { digest: None })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(current.digest.unwrap().sha256, fresh_digest.0.to_vec());
    late.stop().await;
    replica.stop().await;
    server.stop().await;
}
