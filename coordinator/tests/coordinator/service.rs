//! End-to-end tests of the gRPC service: the real coordinator on
//! `127.0.0.1:0` over real TLS (certificates from `dev-ca`), against a real
//! Postgres, driven through the `tributary-client` library.

use std::path::Path;
use std::time::Duration;

use coordinator::config::{ServeConfig, ServerTls};
use coordinator::devca::{self, DevCa, DevCaArgs};
use coordinator::server::{self, Running};
use coordinator::service::Limits;
use ed25519_dalek::SigningKey;
use sqlx::PgPool;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tonic::Code;
use tributary_client::convert::consent_to_proto;
use tributary_client::{Client, ClientError, ClientTls, RequestSigner, verify_receipt};
use tributary_ledger::event::ConsentGranted;
use tributary_ledger::{
    Checkpoint, ConsentId, ContributorId, Event, ExpertDigest, NoteVerifier, PublicKey, Purpose,
    ReplayOptions, Sha256Digest, replay,
};
use tributary_protos::v1;

use crate::support::TestDb;

/// A coordinator started for one test (also used by the agent's tests).
pub(crate) struct TestServer {
    db: TestDb,
    pub(crate) dir: tempfile::TempDir,
    pub(crate) ca: DevCa,
    running: Running,
    stop: tokio::sync::oneshot::Sender<()>,
}

pub(crate) struct Options {
    pub(crate) mtls: bool,
    pub(crate) max_message_bytes: usize,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            mtls: false,
            max_message_bytes: 64 * 1024,
        }
    }
}

impl Options {
    /// Room for upload chunks (256 KiB) in one message.
    pub(crate) fn for_uploads() -> Self {
        Self {
            max_message_bytes: 1 << 20,
            ..Self::default()
        }
    }
}

fn config_for(db: &TestDb, dir: &Path, ca: &DevCa, options: &Options) -> ServeConfig {
    ServeConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        http_listen: Some("127.0.0.1:0".parse().unwrap()),
        database_url: db.url(),
        blob_dir: dir.join("blobs"),
        anchor: Some(crate::validate::anchor_dir()),
        tls: Some(ServerTls {
            cert: ca.server_cert.clone(),
            key: ca.server_key.clone(),
            client_ca: options.mtls.then(|| ca.ca_cert.clone()),
        }),
        operator_key: ca.operator_key.clone(),
        max_message_bytes: options.max_message_bytes,
        limits: Limits {
            request_window_ms: 60_000,
            ..Limits::default()
        },
    }
}

impl TestServer {
    pub(crate) async fn start(options: Options) -> TestServer {
        let db = TestDb::new().await;
        let dir = tempfile::tempdir().unwrap();
        let ca = devca::create(&DevCaArgs {
            out: dir.path().join("pki"),
            origin: "test.example.org/tributary".into(),
            extra_names: Vec::new(),
        })
        .unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let running = server::serve(config_for(&db, dir.path(), &ca, &options), async move {
            let _ = stopped.await;
        })
        .await
        .unwrap();
        TestServer {
            db,
            dir,
            ca,
            running,
            stop,
        }
    }

    pub(crate) fn url(&self) -> String {
        format!("https://localhost:{}", self.running.grpc_addr.port())
    }

    fn tls(&self) -> ClientTls {
        ClientTls::new(&self.ca.ca_cert)
    }

    async fn client(&self) -> Client {
        Client::connect(&self.url(), Some(&self.tls()))
            .await
            .unwrap()
    }

    fn operator(&self) -> RequestSigner {
        RequestSigner::operator(devca::operator_signing_key(&self.ca.operator_key).unwrap())
    }

    fn verifiers(&self) -> Vec<NoteVerifier> {
        let text = std::fs::read_to_string(&self.ca.operator_pub).unwrap();
        vec![NoteVerifier::from_key_string(text.trim()).unwrap()]
    }

    fn pool(&self) -> &PgPool {
        &self.db.pool
    }

    pub(crate) async fn stop(self) {
        let _ = self.stop.send(());
        tokio::time::timeout(Duration::from_secs(20), self.running.wait())
            .await
            .expect("the server stops within 20 s")
            .expect("the server stops cleanly");
        drop(self.dir);
        self.db.drop_db().await;
    }
}

fn key(n: u8) -> SigningKey {
    SigningKey::from_bytes(&[n; 32])
}

/// Invites and registers contributor `name` with key `n`; returns its client.
async fn enrol(server: &TestServer, base: &Client, name: &str, n: u8) -> Client {
    let operator = base.with_signer(server.operator());
    let id = ContributorId::new(name).unwrap();
    let invite = operator
        .create_invite(&id, &format!("{name} org"), &PublicKey::of(&key(n)))
        .await
        .unwrap();
    let me = base.with_signer(RequestSigner::new(name, key(n)));
    let registered = me.register(&format!("{name} org"), &invite).await.unwrap();
    let entry = verify_receipt(registered.receipt.as_ref(), &server.verifiers()).unwrap();
    assert!(matches!(entry.event, Event::ContributorRegistered(_)));
    me
}

fn terms(consent: &str, contributor: &str, expert: &[u8]) -> ConsentGranted {
    ConsentGranted {
        consent: ConsentId::new(consent).unwrap(),
        contributor: ContributorId::new(contributor).unwrap(),
        expert: ExpertDigest(Sha256Digest::of(expert)),
        purposes: vec![Purpose::new("research").unwrap()],
        expires_at: None,
        data_description: "discharge letters".into(),
        licence: "CC-BY-4.0".into(),
        jurisdiction: "EU".into(),
    }
}

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

fn assert_refused(result: Result<impl std::fmt::Debug, ClientError>, code: Code, reason: &str) {
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
    let proof = alice
        .ledger()
        .get_consistency_proof(v1::GetConsistencyProofRequest {
            old_size: older.size,
            new_size: 0,
        })
        .await
        .unwrap()
        .into_inner();
    let hashes: Vec<_> = proof
        .hashes
        .iter()
        .map(|h| tributary_ledger::Hash::from_slice(h).unwrap())
        .collect();
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
async fn upload(
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

#[tokio::test]
async fn uploads_are_validated_recorded_and_published_as_versions() {
    use crate::validate::{craft, expert_tensors, good_upload, manifest, raw_entries};
    use coordinator::blobs::BlobStore;

    let server = TestServer::start(Options::for_uploads()).await;
    let base = server.client().await;
    let alice = enrol(&server, &base, "alice", 31).await;
    let store = BlobStore::open_local(&server.dir.path().join("blobs")).unwrap();

    // A valid expert with an active consent: accepted, stored, published.
    let (payload, good) = good_upload(7);
    let mut consent = terms("c-good", "alice", b"");
    consent.expert = good.total;
    alice.grant_consent(consent).await.unwrap();
    let status = upload(&server, &alice, "s-good", &payload, &good).await;
    assert_eq!(
        status.state,
        v1::SubmissionState::Accepted as i32,
        "{status:?}"
    );
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
    let names: Vec<_> = files
        .iter()
        .map(|f| f.path.file_name().unwrap().to_string_lossy().to_string())
        .collect();
    assert_eq!(names, ["config.json", "model.safetensors"]);
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
    let entries: Vec<Vec<u8>> = alice
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
    server.stop().await;
}
