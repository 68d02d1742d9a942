//! End-to-end tests of the gRPC service: the real coordinator on
//! `127.0.0.1:0` over real TLS (certificates from `dev-ca`), against a real
//! Postgres, driven through the `tributary-client` library.

use std::time::Duration;

use coordinator::devca::{self, DevCaArgs};
use sqlx::PgPool;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tonic::Code;
use tributary_client::convert::consent_to_proto;
use tributary_client::{Client, ClientError, ClientTls, RequestSigner, verify_receipt};
use tributary_ledger::{
    Checkpoint, ConsentId, ContributorId, Event, ExpertDigest, PublicKey, ReplayOptions,
    Sha256Digest, replay,
};
use tributary_protos::v1;

use crate::servers::{Options, TestServer, consistency_proof, enrol, key, terms};

/// Row counts that a refused request must leave unchanged.
async fn counts(pool: &PgPool) -> (i64, i64, i64, i64, i64) {
    sqlx::query_as(
        r"SELECT (SELECT count(*) FROM ledger_entries), (SELECT count(*) FROM consents),
                 (SELECT count(*) FROM contributors), (SELECT count(*) FROM request_nonces),
                 (SELECT count(*) FROM ledger_checkpoints)",
    )
    .fetch_one(pool)
    .await
    .unwrap()
}

/// A plain HTTP/1.1 GET on the coordinator's HTTP side.
async fn http_get(addr: std::net::SocketAddr, path: &str) -> (u16, Vec<u8>) {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await.unwrap();
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    let head = String::from_utf8_lossy(&raw[..split]).to_string();
    let status: u16 = head.split(' ').nth(1).unwrap().parse().unwrap();
    let mut body = raw[split + 4..].to_vec();
    if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        let mut out = Vec::new();
        let mut rest = body.as_slice();
        loop {
            let line_end = rest.windows(2).position(|w| w == b"\r\n").unwrap();
            let size =
                usize::from_str_radix(std::str::from_utf8(&rest[..line_end]).unwrap().trim(), 16)
                    .unwrap();
            if size == 0 {
                break;
            }
            out.extend_from_slice(&rest[line_end + 2..line_end + 2 + size]);
            rest = &rest[line_end + 2 + size + 2..];
        }
        body = out;
    }
    (status, body)
}

pub(crate) fn assert_refused(
    result: Result<impl std::fmt::Debug, ClientError>,
    code: Code,
    reason: &str,
) {
    let error = result.expect_err("the call must be refused");
    assert_eq!(error.code(), Some(code), "{error}");
    assert_eq!(error.reason_code(), Some(reason), "{error}");
}

#[tokio::test]
async fn invite_register_consent_withdraw_over_tls_with_verified_receipts() {
    let server = TestServer::start(Options::default()).await;
    let base = server.client().await;

    // Standard health service answers for the API.
    let mut health = tonic_health::pb::health_client::HealthClient::new(
        tonic::transport::Endpoint::from_shared(server.url())
            .unwrap()
            .tls_config(server.tls().load().unwrap())
            .unwrap()
            .connect()
            .await
            .unwrap(),
    );
    let status = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: "tributary.v1.ConsentService".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        status.status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );

    let alice = enrol(&server, &base, "alice", 2).await;
    let record = alice
        .contributors()
        .get_contributor(v1::GetContributorRequest {
            contributor_id: "alice".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(record.public_key, PublicKey::of(&key(2)).0.to_vec());
    assert_eq!(record.ledger_index, 1, "entry 0 is LogCreated");

    // Registering again with the same invite is idempotent.
    let invite = base
        .with_signer(server.operator())
        .create_invite(
            &ContributorId::new("alice").unwrap(),
            "alice org",
            &PublicKey::of(&key(2)),
        )
        .await
        .unwrap();
    let again = alice.register("alice org", &invite).await.unwrap();
    assert_eq!(again.contributor.unwrap().ledger_index, 1);

    let granted = alice
        .grant_consent(terms("consent-a", "alice", b"expert a"))
        .await
        .unwrap();
    let entry = verify_receipt(granted.receipt.as_ref(), &server.verifiers()).unwrap();
    assert!(matches!(&entry.event, Event::ConsentGranted(g) if g.consent.as_str() == "consent-a"));
    let listed = alice.list_consents(10).await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].state, v1::ConsentState::Active as i32);
    let first_checkpoint = alice.checkpoint().await.unwrap();

    // No expert was accepted, so no version lists it: the withdrawal is the only entry.
    let withdrawn = alice
        .withdraw_consent(&ConsentId::new("consent-a").unwrap())
        .await
        .unwrap();
    let entry = verify_receipt(withdrawn.withdrawal.as_ref(), &server.verifiers()).unwrap();
    assert!(
        matches!(&entry.event, Event::ConsentWithdrawn(w) if w.consent.as_str() == "consent-a")
    );
    assert!(withdrawn.published_versions.is_empty() && withdrawn.erasure.is_none());
    let listed = alice.list_consents(10).await.unwrap();
    assert_eq!(listed[0].state, v1::ConsentState::Withdrawn as i32);
    assert_eq!(listed[0].ended_index, Some(entry.index.0));
    assert!(alice.list_versions("", true).await.unwrap().is_empty());

    // The ledger read side: checkpoint, entries, consistency, lookups.
    let latest = alice.checkpoint().await.unwrap();
    assert_eq!(latest.size, 4);
    let verifiers = server.verifiers();
    let newer = Checkpoint::open(&latest.note, &verifiers).unwrap();
    let older = Checkpoint::open(&first_checkpoint.note, &verifiers).unwrap();
    // New size 0: up to the latest checkpoint.
    let hashes = consistency_proof(&alice, older.size, 0).await;
    tributary_ledger::verify_checkpoint_consistency(&older, &newer, &hashes).unwrap();
    let entries: Vec<Vec<u8>> = alice
        .entries(0, 100)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.data)
        .collect();
    assert_eq!(entries.len(), 4);
    let audit = replay(
        &entries,
        &ReplayOptions {
            operator_key: Some(PublicKey::of(&key(42))),
            checkpoints: vec![],
        },
    );
    // The wrong trusted key is caught; the right one (from LogCreated) audits clean.
    assert!(!audit.is_clean());
    let audit = replay(
        &entries,
        &ReplayOptions {
            operator_key: None,
            checkpoints: vec![newer.clone()],
        },
    );
    assert!(audit.is_clean(), "{:?}", audit.violations);
    assert_eq!(
        alice
            .lookup_contributor(&ContributorId::new("alice").unwrap())
            .await
            .unwrap(),
        vec![1, 2, 3]
    );

    // The same log over HTTP as tlog-tiles.
    let http = server.running.http_addr.unwrap();
    let (status, body) = http_get(http, "/checkpoint").await;
    assert_eq!(status, 200);
    assert_eq!(String::from_utf8(body).unwrap(), latest.note);
    let (status, body) = http_get(http, "/tile/entries/000.p/4").await;
    assert_eq!(status, 200);
    assert_eq!(
        tributary_ledger::tiles::decode_entry_bundle(&body).unwrap(),
        entries
    );
    let (status, body) = http_get(http, "/tile/0/000.p/4").await;
    assert_eq!(status, 200);
    assert_eq!(body.len(), 4 * 32);
    assert_eq!(
        &body[..32],
        tributary_ledger::leaf_hash(&entries[0]).0.as_slice()
    );
    assert_eq!(
        http_get(http, "/tile/entries/000.p/5").await.0,
        404,
        "beyond the checkpoint"
    );
    let (status, body) = http_get(http, "/metrics").await;
    assert_eq!(status, 200);
    assert!(
        String::from_utf8(body)
            .unwrap()
            .contains("tributary_ledger_entries 4")
    );

    server.stop().await;
}

#[tokio::test]
async fn bad_requests_get_their_status_and_reason_and_leave_nothing_behind() {
    let server = TestServer::start(Options::default()).await;
    let base = server.client().await;
    let alice = enrol(&server, &base, "alice", 2).await;
    let bob = enrol(&server, &base, "bob", 3).await;
    alice
        .grant_consent(terms("consent-a", "alice", b"expert a"))
        .await
        .unwrap();
    let signer = alice.signer().unwrap().clone();

    let grant = |consent: &str| {
        let t = terms(consent, "alice", b"expert b");
        let signature = alice.statement(&Event::ConsentGranted(t.clone())).unwrap();
        v1::GrantConsentRequest {
            auth: None,
            terms: Some(consent_to_proto(&t)),
            signature: Some(tributary_client::convert::signature_to_proto(&signature)),
        }
    };
    let before = counts(server.pool()).await;

    // A request whose body was changed after signing.
    let mut tampered = grant("consent-b");
    signer.sign(&mut tampered).unwrap();
    tampered.terms.as_mut().unwrap().licence = "proprietary".into();
    assert_refused(
        alice
            .consents()
            .grant_consent(tampered)
            .await
            .map_err(ClientError::from),
        Code::Unauthenticated,
        "BAD_REQUEST_SIGNATURE",
    );
    assert_eq!(counts(server.pool()).await, before);

    // A request signed ten minutes ago.
    let mut stale = grant("consent-b");
    let ten_minutes_ago = tributary_client::signing::now_unix_ms() - 600_000;
    signer
        .sign_with(&mut stale, ten_minutes_ago, &[7; 16])
        .unwrap();
    assert_refused(
        alice
            .consents()
            .grant_consent(stale)
            .await
            .map_err(ClientError::from),
        Code::Unauthenticated,
        "STALE_TIMESTAMP",
    );
    assert_eq!(counts(server.pool()).await, before);

    // A contributor nobody registered.
    let mallory = base.with_signer(RequestSigner::new("mallory", key(9)));
    assert_refused(
        mallory
            .grant_consent(terms("consent-m", "mallory", b"m"))
            .await,
        Code::Unauthenticated,
        "UNKNOWN_CONTRIBUTOR",
    );
    assert_eq!(counts(server.pool()).await, before);

    // Bob acting on Alice's records.
    assert_refused(
        bob.withdraw_consent(&ConsentId::new("consent-a").unwrap())
            .await,
        Code::PermissionDenied,
        "NOT_OWNER",
    );
    let mut in_her_name = terms("consent-x", "alice", b"x");
    in_her_name.data_description = "bob pretends".into();
    assert_refused(
        bob.grant_consent(in_her_name).await,
        Code::PermissionDenied,
        "NOT_OWNER",
    );
    assert_eq!(counts(server.pool()).await, before);

    // An operator-only call by a contributor.
    assert_refused(
        alice
            .create_invite(
                &ContributorId::new("eve").unwrap(),
                "eve org",
                &PublicKey::of(&key(5)),
            )
            .await,
        Code::PermissionDenied,
        "OPERATOR_ONLY",
    );

    // A message over the server's limit (64 KiB here).
    let mut big = terms("consent-big", "alice", b"big");
    big.data_description = "x".repeat(100 * 1024);
    assert_refused(
        alice.grant_consent(big).await,
        Code::OutOfRange,
        "MESSAGE_TOO_LARGE",
    );
    assert_eq!(counts(server.pool()).await, before);

    // A replayed request: the first goes through, its copy is refused.
    let mut once = grant("consent-b");
    signer.sign(&mut once).unwrap();
    alice.consents().grant_consent(once.clone()).await.unwrap();
    let after_first = counts(server.pool()).await;
    assert_refused(
        alice
            .consents()
            .grant_consent(once)
            .await
            .map_err(ClientError::from),
        Code::Unauthenticated,
        "REPLAYED_NONCE",
    );
    assert_eq!(counts(server.pool()).await, after_first);

    // A missing signature and a malformed field.
    assert_refused(
        alice
            .consents()
            .grant_consent(grant("consent-c"))
            .await
            .map_err(ClientError::from),
        Code::InvalidArgument,
        "MISSING_REQUEST_SIGNATURE",
    );
    let mut malformed = grant("consent-c");
    malformed.terms.as_mut().unwrap().expert = Some(v1::Digest { sha256: vec![1; 5] });
    signer.sign(&mut malformed).unwrap();
    assert_refused(
        alice
            .consents()
            .grant_consent(malformed)
            .await
            .map_err(ClientError::from),
        Code::InvalidArgument,
        "MALFORMED_REQUEST",
    );

    // A payload that is no safetensors file: recorded as rejected (BAD_HEADER),
    // two entries (submitted, rejected) and one checkpoint, no blob.
    let payload = server.dir.path().join("expert.safetensors");
    std::fs::write(&payload, b"not an expert").unwrap();
    let manifest = tributary_ledger::event::ExpertManifest {
        anchor: Sha256Digest::of(b"anchor"),
        tensors: vec![],
        total: ExpertDigest(Sha256Digest::of(b"not an expert")),
        training: tributary_ledger::event::TrainingMetadata {
            tokens: 1,
            steps: 1,
            held_out_loss: tributary_ledger::event::Figure::from_f64(2.5).unwrap(),
        },
    };
    let before_upload = counts(server.pool()).await;
    let status = alice
        .upload_expert(
            &tributary_ledger::SubmissionId::new("s-1").unwrap(),
            &manifest,
            &payload,
        )
        .await
        .unwrap();
    assert_eq!(status.state, v1::SubmissionState::Rejected as i32);
    assert_eq!(status.reason_code, "BAD_HEADER");
    let (entries, consents, contributors, nonces, checkpoints) = before_upload;
    assert_eq!(
        counts(server.pool()).await,
        (
            entries + 2,
            consents,
            contributors,
            nonces + 1,
            checkpoints + 1
        )
    );
    let blobs =
        coordinator::blobs::BlobStore::open_local(&server.dir.path().join("blobs")).unwrap();
    assert!(!blobs.exists(&manifest.total.0).await.unwrap());

    // The service still serves, and the log still audits clean.
    let latest = alice.checkpoint().await.unwrap();
    let entries: Vec<Vec<u8>> = alice
        .entries(0, 100)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.data)
        .collect();
    let checkpoint = Checkpoint::open(&latest.note, &server.verifiers()).unwrap();
    let audit = replay(
        &entries,
        &ReplayOptions {
            operator_key: None,
            checkpoints: vec![checkpoint],
        },
    );
    assert!(audit.is_clean(), "{:?}", audit.violations);
    assert_eq!(alice.list_consents(10).await.unwrap().len(), 2);

    server.stop().await;
}

#[tokio::test]
async fn mtls_requires_a_client_certificate_signed_by_the_ca() {
    let server = TestServer::start(Options {
        mtls: true,
        ..Options::default()
    })
    .await;
    let without = match Client::connect(&server.url(), Some(&server.tls())).await {
        Ok(client) => client.checkpoint().await.err(),
        Err(e) => Some(e),
    };
    assert!(
        without.is_some(),
        "a client without a certificate is refused"
    );
    let tls = server
        .tls()
        .with_identity(&server.ca.client_cert, &server.ca.client_key);
    let client = Client::connect(&server.url(), Some(&tls)).await.unwrap();
    assert_eq!(client.checkpoint().await.unwrap().size, 1);
    server.stop().await;
}

#[tokio::test]
async fn dev_ca_keeps_secrets_private_and_a_wrong_ca_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let ca = devca::create(&DevCaArgs {
        out: dir.path().to_path_buf(),
        origin: "x.example/t".into(),
        extra_names: vec![],
    })
    .unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        for secret in [
            &ca.server_key,
            &ca.client_key,
            &ca.operator_key,
            &dir.path().join("ca.key"),
        ] {
            let mode = std::fs::metadata(secret).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{}", secret.display());
        }
    }
    // A server with another CA's certificate is not trusted.
    let server = TestServer::start(Options::default()).await;
    let wrong = Client::connect(&server.url(), Some(&ClientTls::new(&ca.ca_cert))).await;
    let refused = match wrong {
        Ok(client) => client.checkpoint().await.is_err(),
        Err(_) => true,
    };
    assert!(refused, "a server certificate from another CA is refused");
    server.stop().await;
}

/// Writes `payload` beside the server's files and uploads it as `id`.
pub(crate) async fn upload(
    server: &TestServer,
    client: &Client,
    id: &str,
    payload: &[u8],
    manifest: &tributary_ledger::event::ExpertManifest,
) -> v1::SubmissionStatus {
    let path = server.dir.path().join(format!("{id}.safetensors"));
    std::fs::write(&path, payload).unwrap();
    client
        .upload_expert(
            &tributary_ledger::SubmissionId::new(id).unwrap(),
            manifest,
            &path,
        )
        .await
        .unwrap()
}

/// The files of a downloaded version, in order: a complete Hugging Face
/// checkpoint directory (the shipped anchor has every tokenizer file).
pub(crate) const CHECKPOINT_FILES: [&str; 5] = [
    "config.json",
    "model.safetensors",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
];

/// The names of downloaded files, in order.
pub(crate) fn file_names(files: &[tributary_client::DownloadedFile]) -> Vec<String> {
    files
        .iter()
        .map(|f| f.path.file_name().unwrap().to_string_lossy().to_string())
        .collect()
}

/// Uploads the good expert of `seed` as submission `s-good` under consent
/// `c-good` of `alice` and checks that it is accepted.
pub(crate) async fn upload_accepted(
    server: &TestServer,
    alice: &Client,
    seed: u64,
) -> (
    Vec<u8>,
    tributary_ledger::event::ExpertManifest,
    v1::SubmissionStatus,
) {
    let (payload, good) = crate::validate::good_upload(seed);
    let mut consent = terms("c-good", "alice", b"");
    consent.expert = good.total;
    alice.grant_consent(consent).await.unwrap();
    let status = upload(server, alice, "s-good", &payload, &good).await;
    assert_eq!(
        status.state,
        v1::SubmissionState::Accepted as i32,
        "{status:?}"
    );
    (payload, good, status)
}

#[tokio::test]
async fn uploads_are_validated_recorded_and_published_as_versions() {
    use crate::validate::{craft, expert_tensors, good_upload, manifest, raw_entries};
    use coordinator::blobs::BlobStore;

    let server = TestServer::start(Options::for_uploads()).await;
    let base = server.client().await;
    let alice = enrol(&server, &base, "alice", 31).await;
    let store = BlobStore::open_local(&server.dir.path().join("blobs")).unwrap();

    // A valid expert with an active consent: accepted, stored, published.
    let (payload, good, status) = upload_accepted(&server, &alice, 7).await;
    assert_eq!(status.reason_code, "");
    assert!(status.results.iter().all(|r| r.passed), "{status:?}");
    let steps: Vec<&str> = status.results.iter().map(|r| r.step.as_str()).collect();
    assert_eq!(steps.first(), Some(&"manifest_signature"));
    assert_eq!(steps.last(), Some(&"consent"));
    assert!(steps.contains(&"finite") && steps.contains(&"norm_ratio"));
    let submitted = verify_receipt(status.submitted.as_ref(), &server.verifiers()).unwrap();
    assert!(matches!(submitted.event, Event::ExpertSubmitted(_)));
    let decided = verify_receipt(status.decided.as_ref(), &server.verifiers()).unwrap();
    let Event::ExpertAccepted(accepted) = decided.event else {
        panic!("not an acceptance: {decided:?}");
    };
    assert_eq!(accepted.expert, good.total);
    assert_eq!(accepted.results.len(), status.results.len());
    assert!(store.exists(&good.total.0).await.unwrap());
    assert!(store.staging_objects().await.unwrap().is_empty());

    let versions = alice.list_versions("research", false).await.unwrap();
    assert_eq!(versions.len(), 1, "{versions:?}");
    let first = &versions[0];
    assert_eq!(first.parent, None);
    assert_eq!(
        first.anchor.as_ref().unwrap().sha256,
        good.anchor.0.to_vec()
    );
    assert_eq!(first.experts.len(), 1);
    assert_eq!(first.experts[0].submission_id, "s-good");
    assert_eq!(first.experts[0].consent_id, "c-good");
    assert_eq!(
        first.experts[0].expert.as_ref().unwrap().sha256,
        good.total.0.0.to_vec()
    );

    // The same expert again, under another submission id: the existing one.
    let again = upload(&server, &alice, "s-good-again", &payload, &good).await;
    assert_eq!(again.submission_id, "s-good");
    assert_eq!(again.state, v1::SubmissionState::Accepted as i32);

    // A second expert is published on top of the first.
    let (payload2, second) = good_upload(8);
    let mut consent = terms("c-second", "alice", b"");
    consent.expert = second.total;
    alice.grant_consent(consent).await.unwrap();
    let status = upload(&server, &alice, "s-second", &payload2, &second).await;
    assert_eq!(
        status.state,
        v1::SubmissionState::Accepted as i32,
        "{status:?}"
    );
    let versions = alice.list_versions("research", false).await.unwrap();
    assert_eq!(versions.len(), 2);
    assert_eq!(versions[0].parent, Some(first.version));
    let listed: Vec<&str> = versions[0]
        .experts
        .iter()
        .map(|e| e.submission_id.as_str())
        .collect();
    assert_eq!(listed, ["s-good", "s-second"]);

    // The version downloads as a flex_olmo checkpoint assembled from the blobs.
    let out = server.dir.path().join("download");
    let files = alice
        .download_version(versions[0].version, &out)
        .await
        .unwrap();
    assert_eq!(file_names(&files), CHECKPOINT_FILES);
    // Again (the assembled digest now comes from the server's cache): the same bytes.
    let again = server.dir.path().join("download-again");
    alice
        .download_version(versions[0].version, &again)
        .await
        .unwrap();
    assert_eq!(
        std::fs::read(out.join("model.safetensors")).unwrap(),
        std::fs::read(again.join("model.safetensors")).unwrap()
    );
    let merged = tributary_model::checkpoint::Checkpoint::load(&out).unwrap();
    assert_eq!(merged.config.num_experts, 3);

    // NaN weights: rejected with NON_FINITE, recorded, no blob left.
    let mut tensors = expert_tensors(9);
    let name = tributary_model::names::package_ffn(1, "up_proj");
    let mut t = tensors.take(&name).unwrap();
    t.data[5] = f32::NAN;
    tensors.insert(name, t);
    let (bad, digests) = craft(&raw_entries(&tensors), &[]);
    let bad_manifest = manifest(&bad, digests);
    let mut consent = terms("c-nan", "alice", b"");
    consent.expert = bad_manifest.total;
    alice.grant_consent(consent).await.unwrap();
    let status = upload(&server, &alice, "s-nan", &bad, &bad_manifest).await;
    assert_eq!(
        status.state,
        v1::SubmissionState::Rejected as i32,
        "{status:?}"
    );
    assert_eq!(status.reason_code, "NON_FINITE");
    let last = status.results.last().unwrap();
    assert!(!last.passed && last.step == "finite" && last.reason_code == "NON_FINITE");
    let decided = verify_receipt(status.decided.as_ref(), &server.verifiers()).unwrap();
    let Event::ExpertRejected(rejected) = decided.event else {
        panic!("not a rejection: {decided:?}");
    };
    assert_eq!(rejected.reason.as_str(), "NON_FINITE");
    assert!(!store.exists(&bad_manifest.total.0).await.unwrap());
    assert!(store.staging_objects().await.unwrap().is_empty());

    // A valid expert without a consent: rejected with NO_CONSENT, no blob.
    let (payload3, unconsented) = good_upload(10);
    let status = upload(&server, &alice, "s-unconsented", &payload3, &unconsented).await;
    assert_eq!(
        status.state,
        v1::SubmissionState::Rejected as i32,
        "{status:?}"
    );
    assert_eq!(status.reason_code, "NO_CONSENT");
    assert!(!store.exists(&unconsented.total.0).await.unwrap());
    assert_eq!(
        alice
            .get_submission("s-unconsented")
            .await
            .unwrap()
            .reason_code,
        "NO_CONSENT"
    );
    assert_eq!(
        alice.list_versions("research", false).await.unwrap().len(),
        2
    );

    // The whole log still audits clean.
    audited_entries(&alice).await;
    server.stop().await;
}

/// Every ledger entry, after checking that the log replays without a violation.
async fn audited_entries(client: &Client) -> Vec<Vec<u8>> {
    let entries: Vec<Vec<u8>> = client
        .entries(0, 1000)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.data)
        .collect();
    let audit = replay(
        &entries,
        &ReplayOptions {
            operator_key: None,
            checkpoints: vec![],
        },
    );
    assert!(audit.is_clean(), "{:?}", audit.violations);
    entries
}

/// Grants `alice` a research consent `id` for `manifest`'s expert, expiring at `expires_at`.
pub(crate) async fn consent_for(
    client: &Client,
    id: &str,
    manifest: &tributary_ledger::event::ExpertManifest,
    expires_at: Option<u64>,
) {
    let mut consent = terms(id, "alice", b"");
    consent.expert = manifest.total;
    consent.expires_at = expires_at.map(tributary_ledger::Timestamp);
    client.grant_consent(consent).await.unwrap();
}

fn accepted(status: &v1::SubmissionStatus) -> bool {
    status.state == v1::SubmissionState::Accepted as i32
}

#[tokio::test]
async fn the_quality_gate_decides_uploads_and_metrics_count_them() {
    use crate::validate::{scaled_tensors, upload_of};
    use coordinator::blobs::BlobStore;

    let server = TestServer::start(Options {
        gate: true,
        ..Options::for_uploads()
    })
    .await;
    let base = server.client().await;
    let alice = enrol(&server, &base, "alice", 41).await;
    let store = BlobStore::open_local(&server.dir.path().join("blobs")).unwrap();

    // A copy of the public FFN routed away from public text: passes the gate.
    let (payload, harmless) = upload_of(&scaled_tensors(1.0, -1.0));
    consent_for(&alice, "c-harmless", &harmless, None).await;
    let status = upload(&server, &alice, "s-harmless", &payload, &harmless).await;
    assert!(accepted(&status), "{status:?}");
    let steps: Vec<&str> = status.results.iter().map(|r| r.step.as_str()).collect();
    assert_eq!(
        &steps[steps.len() - 3..],
        ["consent", "public_perplexity", "public_routing_share"]
    );
    let ratio: f64 = status.results[steps.len() - 2].figure.parse().unwrap();
    assert!((ratio - 1.0).abs() < 1e-3, "perplexity ratio {ratio}");

    // The same FFN with a router row that outbids r_pub captures the public
    // traffic: rejected after the consent check, its blob deleted.
    let (payload, captor) = upload_of(&scaled_tensors(1.0, 3.0));
    consent_for(&alice, "c-captor", &captor, None).await;
    let status = upload(&server, &alice, "s-captor", &payload, &captor).await;
    assert_eq!(status.reason_code, "QUALITY_GATE_ROUTING", "{status:?}");
    let last = status.results.last().unwrap();
    assert_eq!(last.step, "public_routing_share");
    assert!(!last.passed && last.figure.parse::<f64>().unwrap() > 0.5);
    assert!(!store.exists(&captor.total.0).await.unwrap());
    assert!(store.staging_objects().await.unwrap().is_empty());
    assert_eq!(
        alice.list_versions("research", false).await.unwrap().len(),
        1,
        "a rejected upload publishes nothing"
    );

    let http = server.running.http_addr.unwrap();
    let (_, body) = http_get(http, "/metrics").await;
    let text = String::from_utf8(body).unwrap();
    for line in [
        "tributary_uploads_total{outcome=\"accepted\"} 1",
        "tributary_uploads_total{outcome=\"QUALITY_GATE_ROUTING\"} 1",
        "tributary_quality_gate_duration_seconds_count 2",
        "tributary_upload_duration_seconds_count 2",
    ] {
        assert!(text.contains(line), "{line} missing from\n{text}");
    }
    assert!(text.contains(
        "tributary_grpc_request_duration_seconds_count{method=\"/tributary.v1.SubmissionService/UploadExpert\",code=\"0\"} 2"
    ));
    server.stop().await;
}

/// A signed upload header announcing `manifest`, whose manifest signature is
/// the contributor's statement over `signed` (the same manifest, normally).
fn signed_header(
    client: &Client,
    id: &str,
    manifest: &tributary_ledger::event::ExpertManifest,
    signed: &tributary_ledger::event::ExpertManifest,
    size: u64,
) -> v1::UploadHeader {
    let signer = client.signer().unwrap().clone();
    let event = Event::ExpertSubmitted(tributary_ledger::event::ExpertSubmitted {
        submission: tributary_ledger::SubmissionId::new(id).unwrap(),
        contributor: ContributorId::new(signer.key_id()).unwrap(),
        manifest: signed.clone(),
    });
    let statement = client.statement(&event).unwrap();
    let mut header = v1::UploadHeader {
        auth: None,
        submission_id: id.to_string(),
        contributor_id: signer.key_id().to_string(),
        manifest: Some(tributary_client::convert::manifest_to_proto(manifest)),
        manifest_signature: Some(tributary_client::convert::signature_to_proto(&statement)),
        payload_size: size,
    };
    signer.sign(&mut header).unwrap();
    header
}

/// Opens an upload of `manifest` and sends only its header; the returned
/// sender keeps the stream open.
async fn open_upload(
    client: &Client,
    id: &str,
    manifest: &tributary_ledger::event::ExpertManifest,
    size: u64,
) -> (
    tokio::sync::mpsc::Sender<v1::UploadExpertRequest>,
    tokio::task::JoinHandle<Result<tonic::Response<v1::SubmissionStatus>, tonic::Status>>,
) {
    let header = signed_header(client, id, manifest, manifest, size);
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tx.send(v1::UploadExpertRequest {
        message: Some(v1::upload_expert_request::Message::Header(header)),
    })
    .await
    .unwrap();
    let mut raw = client.submissions();
    let call = tokio::spawn(async move {
        raw.upload_expert(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
    });
    (tx, call)
}

/// Waits (up to 5 s) until `slots` has `free` upload slots.
async fn wait_for_free_slots(slots: &tokio::sync::Semaphore, free: usize) {
    for _ in 0..200 {
        if slots.available_permits() == free {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Sends `payload` in 64 KiB chunks on an upload opened by `open_upload`, and ends it.
async fn finish_upload(sender: tokio::sync::mpsc::Sender<v1::UploadExpertRequest>, payload: &[u8]) {
    for chunk in payload.chunks(64 * 1024) {
        sender.send(chunk_message(chunk)).await.unwrap();
    }
}

#[tokio::test]
async fn uploads_beyond_the_limit_are_refused_until_a_slot_frees() {
    use crate::validate::good_upload;

    let server = TestServer::start(Options {
        max_concurrent_uploads: 1,
        ..Options::for_uploads()
    })
    .await;
    let base = server.client().await;
    let alice = enrol(&server, &base, "alice", 42).await;
    let (payload, first) = good_upload(21);
    consent_for(&alice, "c-first", &first, None).await;
    let (payload2, second) = good_upload(22);
    consent_for(&alice, "c-second", &second, None).await;

    // The first upload holds the only slot once its header is in.
    let (sender, call) = open_upload(&alice, "s-first", &first, payload.len() as u64).await;
    let slots = &server.running.state.uploads;
    wait_for_free_slots(slots, 0).await;
    assert_eq!(
        slots.available_permits(),
        0,
        "the first upload holds the slot"
    );
    let path = server.dir.path().join("second.safetensors");
    std::fs::write(&path, &payload2).unwrap();
    let id = tributary_ledger::SubmissionId::new("s-second").unwrap();
    let refused = alice.upload_expert(&id, &second, &path).await.unwrap_err();
    assert_eq!(refused.code(), Some(Code::Unavailable), "{refused:?}");
    assert_eq!(refused.reason_code(), Some("TOO_MANY_UPLOADS"));

    // The first upload completes; the slot frees and the second goes through.
    finish_upload(sender, &payload).await;
    let status = call.await.unwrap().unwrap().into_inner();
    assert!(accepted(&status), "{status:?}");
    let status = upload(&server, &alice, "s-second", &payload2, &second).await;
    assert!(accepted(&status), "{status:?}");

    // A stream abandoned after its header frees its slot too, leaving nothing.
    let (payload3, third) = good_upload(23);
    consent_for(&alice, "c-third", &third, None).await;
    let before = counts(server.pool()).await;
    let (sender, call) = open_upload(&alice, "s-third", &third, payload3.len() as u64).await;
    call.abort();
    drop(sender);
    wait_for_free_slots(slots, 1).await;
    let status = upload(&server, &alice, "s-third", &payload3, &third).await;
    assert!(accepted(&status), "{status:?}");
    assert_eq!(
        counts(server.pool()).await.0,
        before.0 + 3,
        "one version and two decisions"
    );
    server.stop().await;
}

#[tokio::test]
async fn an_expired_consent_is_ended_by_the_coordinator_like_a_withdrawal() {
    use crate::validate::good_upload;
    use coordinator::blobs::BlobStore;

    let server = TestServer::start(Options {
        expiry_check: Duration::from_millis(200),
        ..Options::for_uploads()
    })
    .await;
    let base = server.client().await;
    let alice = enrol(&server, &base, "alice", 43).await;
    let store = BlobStore::open_local(&server.dir.path().join("blobs")).unwrap();
    let (payload, keep) = good_upload(31);
    consent_for(&alice, "c-keep", &keep, None).await;
    assert!(accepted(
        &upload(&server, &alice, "s-keep", &payload, &keep).await
    ));
    let (payload, brief) = good_upload(32);
    let now = u64::try_from(tributary_client::signing::now_unix_ms() / 1000).unwrap();
    consent_for(&alice, "c-brief", &brief, Some(now + 3)).await;
    assert!(accepted(
        &upload(&server, &alice, "s-brief", &payload, &brief).await
    ));
    assert!(store.exists(&brief.total.0).await.unwrap());

    // Within a few seconds of the expiry: a version without the expert.
    let mut versions = Vec::new();
    for _ in 0..100 {
        versions = alice.list_versions("research", true).await.unwrap();
        if versions.len() == 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(versions.len(), 3, "{versions:?}");
    let ids: Vec<&str> = versions[0]
        .experts
        .iter()
        .map(|e| e.consent_id.as_str())
        .collect();
    assert_eq!(ids, ["c-keep"]);
    assert!(versions[1].revoked, "the version listing it is revoked");
    let current = alice.list_versions("research", false).await.unwrap();
    assert_eq!(current.len(), 2, "{current:?}");
    assert!(!store.exists(&brief.total.0).await.unwrap(), "erased");
    let consents = alice.list_consents(10).await.unwrap();
    let brief_state = consents
        .iter()
        .find(|c| c.terms.as_ref().unwrap().consent_id == "c-brief")
        .unwrap()
        .state;
    assert_eq!(brief_state, v1::ConsentState::Expired as i32);

    let entries = audited_entries(&alice).await;
    let kinds: Vec<&str> = entries
        .iter()
        .map(|e| tributary_ledger::Entry::from_bytes(e).unwrap().event.kind())
        .collect();
    assert_eq!(
        &kinds[kinds.len() - 3..],
        ["ConsentExpired", "ModelVersionPublished", "ExpertErased"]
    );
    server.stop().await;
}

#[tokio::test]
async fn batched_publishing_gathers_accepted_experts_into_one_version() {
    use crate::validate::good_upload;
    use coordinator::service::tasks::publish_pending;

    let server = TestServer::start(Options {
        // The batch publisher's first pass runs at start; the next is far off,
        // so the test publishes by calling the pass itself.
        publish_every: Some(Duration::from_secs(3600)),
        ..Options::for_uploads()
    })
    .await;
    let base = server.client().await;
    let alice = enrol(&server, &base, "alice", 44).await;
    for (seed, name) in [(51, "one"), (52, "two")] {
        let (payload, m) = good_upload(seed);
        consent_for(&alice, &format!("c-{name}"), &m, None).await;
        let status = upload(&server, &alice, &format!("s-{name}"), &payload, &m).await;
        assert!(accepted(&status), "{status:?}");
    }
    assert!(
        alice
            .list_versions("research", false)
            .await
            .unwrap()
            .is_empty()
    );

    let state = &server.running.state;
    let published = publish_pending(state).await.unwrap();
    assert_eq!(published.len(), 1);
    let versions = alice.list_versions("research", false).await.unwrap();
    assert_eq!(versions.len(), 1);
    let listed: Vec<&str> = versions[0]
        .experts
        .iter()
        .map(|e| e.submission_id.as_str())
        .collect();
    assert_eq!(listed, ["s-one", "s-two"]);
    assert!(
        publish_pending(state).await.unwrap().is_empty(),
        "nothing pending"
    );

    // A third expert joins the next batch on top of the first.
    let (payload, m) = good_upload(53);
    consent_for(&alice, "c-three", &m, None).await;
    assert!(accepted(
        &upload(&server, &alice, "s-three", &payload, &m).await
    ));
    assert_eq!(publish_pending(state).await.unwrap().len(), 1);
    let versions = alice.list_versions("research", false).await.unwrap();
    assert_eq!(versions[0].parent, Some(versions[1].version));
    assert_eq!(versions[0].experts.len(), 3);
    server.stop().await;
}

#[tokio::test]
async fn shutdown_lets_an_upload_in_flight_finish() {
    use crate::validate::good_upload;

    let server = TestServer::start(Options {
        max_concurrent_uploads: 1,
        ..Options::for_uploads()
    })
    .await;
    let base = server.client().await;
    let alice = enrol(&server, &base, "alice", 45).await;
    let (payload, m) = good_upload(61);
    consent_for(&alice, "c-late", &m, None).await;
    let (sender, call) = open_upload(&alice, "s-late", &m, payload.len() as u64).await;
    let slots = &server.running.state.uploads;
    wait_for_free_slots(slots, 0).await;
    assert_eq!(slots.available_permits(), 0, "the upload is in flight");

    // Shutdown is requested mid-upload; the upload still completes and is recorded.
    let TestServer {
        db,
        dir,
        running,
        stop,
        ..
    } = server;
    stop.send(()).unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    finish_upload(sender, &payload).await;
    let status = call.await.unwrap().unwrap().into_inner();
    assert!(accepted(&status), "{status:?}");
    tokio::time::timeout(Duration::from_secs(20), running.wait())
        .await
        .expect("the server stops once the upload is done")
        .expect("the server stops cleanly");
    let published: i64 = sqlx::query_scalar("SELECT count(*) FROM versions")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(published, 1);
    drop(dir);
    db.drop_db().await;
}

fn chunk_message(data: &[u8]) -> v1::UploadExpertRequest {
    v1::UploadExpertRequest {
        message: Some(v1::upload_expert_request::Message::Chunk(v1::Chunk {
            data: data.to_vec(),
        })),
    }
}

#[tokio::test]
async fn bad_payloads_are_rejected_through_the_service_and_leave_no_blob() {
    use crate::validate::{craft, expert_tensors, good_upload, manifest, raw_entries};
    use coordinator::blobs::BlobStore;
    use tributary_model::names;
    use tributary_model::weights::HostTensor;

    let server = TestServer::start(Options::for_uploads()).await;
    let base = server.client().await;
    let alice = enrol(&server, &base, "alice", 46).await;
    let store = BlobStore::open_local(&server.dir.path().join("blobs")).unwrap();

    let mut extra = expert_tensors(71);
    extra.insert(
        "model.layers.0.mlp.secret.weight",
        HostTensor::new(vec![4], vec![1.0; 4]).unwrap(),
    );
    let mut reshaped = raw_entries(&expert_tensors(72));
    let down = names::package_ffn(1, "down_proj");
    reshaped
        .iter_mut()
        .find(|e| e.name == down)
        .unwrap()
        .shape
        .reverse();
    let mut loud = expert_tensors(73);
    let gate = names::package_ffn(2, "gate_proj");
    let t = loud.take(&gate).unwrap();
    let data = t.data.iter().map(|v| v * 1000.0).collect();
    loud.insert(gate, HostTensor::new(t.shape.clone(), data).unwrap());
    let crafted = |entries| {
        let (payload, digests) = craft(entries, &[]);
        let m = manifest(&payload, digests);
        (payload, m)
    };
    let cases = [
        ("extra", crafted(&raw_entries(&extra)), "UNEXPECTED_TENSOR"),
        ("shape", crafted(&reshaped), "WRONG_SHAPE"),
        ("norm", crafted(&raw_entries(&loud)), "NORM_OUT_OF_BOUNDS"),
        (
            "trailing",
            {
                let (payload, digests) = craft(&raw_entries(&expert_tensors(74)), b"junk");
                let m = manifest(&payload, digests);
                (payload, m)
            },
            "EXTRA_BYTES",
        ),
    ];
    for (name, (payload, m), reason) in &cases {
        consent_for(&alice, &format!("c-{name}"), m, None).await;
        let status = upload(&server, &alice, &format!("s-{name}"), payload, m).await;
        assert_eq!(status.state, v1::SubmissionState::Rejected as i32, "{name}");
        assert_eq!(&status.reason_code, reason, "{name}: {status:?}");
        let last = status.results.last().unwrap();
        assert!(!last.passed && last.reason_code == *reason, "{name}");
        assert!(!store.exists(&m.total.0).await.unwrap(), "{name}: no blob");
    }

    // A stream that ends before its declared size: TRUNCATED, recorded, no blob.
    let (payload, m) = good_upload(75);
    consent_for(&alice, "c-short", &m, None).await;
    let (sender, call) = open_upload(&alice, "s-short", &m, payload.len() as u64).await;
    for chunk in payload[..payload.len() / 2].chunks(64 * 1024) {
        sender.send(chunk_message(chunk)).await.unwrap();
    }
    drop(sender);
    let status = call.await.unwrap().unwrap().into_inner();
    assert_eq!(status.reason_code, "TRUNCATED", "{status:?}");
    assert!(!store.exists(&m.total.0).await.unwrap());

    // A chunk over the message limit: refused with its reason, nothing recorded.
    let before = counts(server.pool()).await;
    let (payload, m) = good_upload(76);
    let (sender, call) = open_upload(&alice, "s-huge", &m, payload.len() as u64).await;
    sender.send(chunk_message(&payload)).await.unwrap();
    drop(sender);
    let refused = call.await.unwrap().unwrap_err();
    assert_eq!(refused.code(), Code::OutOfRange, "{refused:?}");
    assert_eq!(
        tributary_client::reason_code(&refused),
        Some("MESSAGE_TOO_LARGE")
    );
    assert_eq!(counts(server.pool()).await.0, before.0, "no ledger entry");

    // A chunk before any header: refused, nothing recorded.
    let before = counts(server.pool()).await;
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    tx.send(chunk_message(&[0; 8])).await.unwrap();
    drop(tx);
    let refused = alice
        .submissions()
        .upload_expert(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::InvalidArgument);
    assert_eq!(
        tributary_client::reason_code(&refused),
        Some("MALFORMED_REQUEST")
    );
    assert_eq!(counts(server.pool()).await, before);

    assert!(store.staging_objects().await.unwrap().is_empty());
    assert!(
        alice
            .list_versions("research", true)
            .await
            .unwrap()
            .is_empty(),
        "no version lists a rejected expert"
    );
    audited_entries(&alice).await;
    server.stop().await;
}

#[tokio::test]
async fn a_blob_store_given_by_url_holds_the_uploads() {
    use crate::validate::good_upload;
    use coordinator::blobs::BlobStore;

    let elsewhere = tempfile::tempdir().unwrap();
    let server = TestServer::start(Options {
        blob_url: Some(format!("file://{}", elsewhere.path().display())),
        ..Options::for_uploads()
    })
    .await;
    let base = server.client().await;
    let alice = enrol(&server, &base, "alice", 47).await;
    let (payload, m) = good_upload(81);
    consent_for(&alice, "c-url", &m, None).await;
    assert!(accepted(
        &upload(&server, &alice, "s-url", &payload, &m).await
    ));
    let by_url = BlobStore::open_local(elsewhere.path()).unwrap();
    assert!(by_url.exists(&m.total.0).await.unwrap());
    let by_dir = BlobStore::open_local(&server.dir.path().join("blobs")).unwrap();
    assert!(
        !by_dir.exists(&m.total.0).await.unwrap(),
        "--blob-dir unused"
    );
    server.stop().await;
}

#[tokio::test]
async fn a_revoked_contributor_is_refused_and_changes_nothing() {
    let server = TestServer::start(Options::default()).await;
    let base = server.client().await;
    let alice = enrol(&server, &base, "alice", 48).await;
    // The operator revokes Alice's account (no API call does this yet; the
    // database flag is what the service checks).
    sqlx::query("UPDATE contributors SET revoked_at = now() WHERE contributor_id = 'alice'")
        .execute(server.pool())
        .await
        .unwrap();
    let before = counts(server.pool()).await;
    assert_refused(
        alice.grant_consent(terms("c-late", "alice", b"x")).await,
        Code::PermissionDenied,
        "CONTRIBUTOR_REVOKED",
    );
    assert_refused(
        alice.list_consents(10).await,
        Code::PermissionDenied,
        "CONTRIBUTOR_REVOKED",
    );
    assert_eq!(counts(server.pool()).await, before);
    server.stop().await;
}

#[tokio::test]
async fn a_manifest_signature_over_other_weights_is_refused_and_records_nothing() {
    use crate::validate::good_upload;

    let server = TestServer::start(Options::for_uploads()).await;
    let base = server.client().await;
    let alice = enrol(&server, &base, "alice", 49).await;
    let (payload, m) = good_upload(91);
    let (_, other) = good_upload(92);
    consent_for(&alice, "c-signed", &m, None).await;
    let before = counts(server.pool()).await;

    // The statement signs `other`'s manifest; the header carries `m`'s.
    let header = signed_header(&alice, "s-signed", &m, &other, payload.len() as u64);
    let mut messages = vec![v1::UploadExpertRequest {
        message: Some(v1::upload_expert_request::Message::Header(header)),
    }];
    messages.extend(payload.chunks(64 * 1024).map(chunk_message));
    let refused = alice
        .submissions()
        .upload_expert(tokio_stream::iter(messages))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied);
    assert_eq!(
        tributary_client::reason_code(&refused),
        Some("BAD_MANIFEST_SIGNATURE")
    );
    let after = counts(server.pool()).await;
    assert_eq!((after.0, after.1), (before.0, before.1), "no entry, no row");
    server.stop().await;
}
