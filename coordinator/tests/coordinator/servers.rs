//! Real coordinators for the tests (and the service benchmark, which
//! includes this file): `coordinator::server::serve` on `127.0.0.1:0` with
//! TLS from `dev-ca` and a fresh database, replicas of one on the same
//! database, and contributors enrolled through the client library.

use std::path::{Path, PathBuf};
use std::time::Duration;

use coordinator::config::{GateSettings, ServeConfig, ServerTls};
use coordinator::devca::{self, DevCa, DevCaArgs};
use coordinator::server::{self, Running};
use coordinator::service::Limits;
use coordinator::validate::QualityGateConfig;
use ed25519_dalek::SigningKey;
use sqlx::PgPool;
use tributary_client::{Client, ClientTls, RequestSigner, verify_receipt};
use tributary_ledger::event::ConsentGranted;
use tributary_ledger::{
    ConsentId, ContributorId, Event, ExpertDigest, Hash, NoteVerifier, PublicKey, Purpose,
    Sha256Digest,
};

use crate::support::TestDb;

/// The shipped anchor checkpoint directory.
pub fn anchor_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../models/anchor")
}

/// How a test coordinator is started.
#[derive(Clone, Debug)]
pub struct Options {
    /// Require client certificates.
    pub mtls: bool,
    /// The largest gRPC message the server decodes.
    pub max_message_bytes: usize,
    /// The anchor checkpoint directory uploads are validated against.
    pub anchor: PathBuf,
    /// Where the server's temporary directory (dev CA, blobs) is made
    /// (default: the system temporary directory).
    pub base: Option<PathBuf>,
    /// The largest expert (or anchor) payload accepted.
    pub max_upload_bytes: u64,
    /// Uploads validated at once.
    pub max_concurrent_uploads: usize,
    /// Turns the quality gate on, scoring the committed public held-out slice.
    pub gate: bool,
    /// Batched publishing interval (`None`: immediate).
    pub publish_every: Option<Duration>,
    /// Interval of the consent expiry check.
    pub expiry_check: Duration,
    /// A blob store URL instead of the server directory's `blobs/`.
    pub blob_url: Option<String>,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            mtls: false,
            max_message_bytes: 64 * 1024,
            anchor: anchor_dir(),
            base: None,
            max_upload_bytes: Limits::default().max_upload_bytes,
            max_concurrent_uploads: 4,
            gate: false,
            publish_every: None,
            expiry_check: Duration::from_secs(30),
            blob_url: None,
        }
    }
}

impl Options {
    /// Room for upload chunks (256 KiB) in one message.
    pub fn for_uploads() -> Self {
        Self {
            max_message_bytes: 1 << 20,
            ..Self::default()
        }
    }
}

/// The committed public held-out slice (the quality gate's text in tests).
pub fn public_heldout() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../data/slices/public/heldout.jsonl")
}

/// The quality gate's thresholds and window of a test coordinator.
pub fn gate_config() -> QualityGateConfig {
    QualityGateConfig {
        seq_len: 128,
        batch_size: 8,
        ..QualityGateConfig::default()
    }
}

/// The configuration of a test coordinator.
pub fn config_for(db: &TestDb, dir: &Path, ca: &DevCa, options: &Options) -> ServeConfig {
    ServeConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        http_listen: Some("127.0.0.1:0".parse().unwrap()),
        database_url: db.url(),
        blob_dir: dir.join("blobs"),
        blob_url: options.blob_url.clone(),
        anchor: Some(options.anchor.clone()),
        tls: Some(ServerTls {
            cert: ca.server_cert.clone(),
            key: ca.server_key.clone(),
            client_ca: options.mtls.then(|| ca.ca_cert.clone()),
        }),
        operator_key: ca.operator_key.clone(),
        max_message_bytes: options.max_message_bytes,
        limits: Limits {
            request_window_ms: 60_000,
            max_upload_bytes: options.max_upload_bytes,
            max_concurrent_uploads: options.max_concurrent_uploads,
            ..Limits::default()
        },
        gate: options.gate.then(|| GateSettings {
            texts: vec![public_heldout()],
            max_tokens: 1025,
            config: gate_config(),
        }),
        publish_every: options.publish_every,
        expiry_check: options.expiry_check,
    }
}

/// The gRPC URL of a running coordinator (the dev CA's certificate names
/// `localhost`).
fn url_of(running: &Running) -> String {
    format!("https://localhost:{}", running.grpc_addr.port())
}

/// A started `coordinator::server::serve` and the switch that stops it.
pub struct Node {
    /// The running servers.
    pub running: Running,
    stop: tokio::sync::oneshot::Sender<()>,
}

impl Node {
    async fn launch(config: ServeConfig) -> Node {
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let running = server::serve(config, async move {
            let _ = stopped.await;
        })
        .await
        .unwrap();
        Node { running, stop }
    }

    /// The gRPC URL.
    pub fn url(&self) -> String {
        url_of(&self.running)
    }

    /// Stops the servers and waits for them.
    pub async fn stop(self) {
        let _ = self.stop.send(());
        tokio::time::timeout(Duration::from_secs(20), self.running.wait())
            .await
            .expect("the server stops within 20 s")
            .expect("the server stops cleanly");
    }
}

/// A coordinator started for one test: its own database, files and dev CA.
pub struct TestServer {
    /// Its database.
    pub db: TestDb,
    /// Its files: `pki/` (the dev CA) and `blobs/`.
    pub dir: tempfile::TempDir,
    /// The dev CA's files (TLS and the operator key).
    pub ca: DevCa,
    /// The running servers.
    pub running: Running,
    /// Resolving it asks the coordinator to shut down.
    pub stop: tokio::sync::oneshot::Sender<()>,
    options: Options,
}

impl TestServer {
    /// Creates a database, a dev CA and starts a coordinator on them.
    pub async fn start(options: Options) -> TestServer {
        let db = TestDb::new().await;
        let dir = match &options.base {
            Some(base) => tempfile::tempdir_in(base),
            None => tempfile::tempdir(),
        }
        .unwrap();
        let ca = devca::create(&DevCaArgs {
            out: dir.path().join("pki"),
            origin: "test.example.org/tributary".into(),
            extra_names: Vec::new(),
        })
        .unwrap();
        let node = Node::launch(config_for(&db, dir.path(), &ca, &options)).await;
        TestServer {
            db,
            dir,
            ca,
            running: node.running,
            stop: node.stop,
            options,
        }
    }

    /// Starts another coordinator on the same database, keys and blob store
    /// (a second replica of the same deployment).
    pub async fn replica(&self) -> Node {
        Node::launch(config_for(
            &self.db,
            self.dir.path(),
            &self.ca,
            &self.options,
        ))
        .await
    }

    /// The gRPC URL.
    pub fn url(&self) -> String {
        url_of(&self.running)
    }

    /// The client TLS settings trusting the dev CA.
    pub fn tls(&self) -> ClientTls {
        ClientTls::new(&self.ca.ca_cert)
    }

    /// A client of this coordinator.
    pub async fn client(&self) -> Client {
        self.connect(&self.url()).await
    }

    /// A client of `url` (this coordinator or one of its replicas).
    pub async fn connect(&self, url: &str) -> Client {
        Client::connect(url, Some(&self.tls())).await.unwrap()
    }

    /// The operator's request signer.
    pub fn operator(&self) -> RequestSigner {
        RequestSigner::operator(devca::operator_signing_key(&self.ca.operator_key).unwrap())
    }

    /// The operator's checkpoint verifier.
    pub fn verifiers(&self) -> Vec<NoteVerifier> {
        let text = std::fs::read_to_string(&self.ca.operator_pub).unwrap();
        vec![NoteVerifier::from_key_string(text.trim()).unwrap()]
    }

    /// The database pool.
    pub fn pool(&self) -> &PgPool {
        &self.db.pool
    }

    /// Stops the coordinator, removes its files and drops its database.
    pub async fn stop(self) {
        let node = Node {
            running: self.running,
            stop: self.stop,
        };
        node.stop().await;
        drop(self.dir);
        self.db.drop_db().await;
    }
}

/// The key of service-test contributor `n`.
pub fn key(n: u8) -> SigningKey {
    SigningKey::from_bytes(&[n; 32])
}

/// Invites and registers contributor `name` with key `n` through `base`;
/// returns its client.
pub async fn enrol(server: &TestServer, base: &Client, name: &str, n: u8) -> Client {
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

/// Research-only terms of consent `consent` by `contributor` for the expert
/// whose digest is the SHA-256 of `expert`.
pub fn terms(consent: &str, contributor: &str, expert: &[u8]) -> ConsentGranted {
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

/// The consistency proof `client` serves from `old_size` to `new_size` (0:
/// the latest checkpoint).
pub async fn consistency_proof(client: &Client, old_size: u64, new_size: u64) -> Vec<Hash> {
    client
        .ledger()
        .get_consistency_proof(tributary_protos::v1::GetConsistencyProofRequest {
            old_size,
            new_size,
        })
        .await
        .unwrap()
        .into_inner()
        .hashes
        .iter()
        .map(|h| Hash::from_slice(h).unwrap())
        .collect()
}
