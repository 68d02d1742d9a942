//! Helpers for the tlog-tiles tests, shared with the auditor's tests (which
//! include this file and `support.rs` by path): signed checkpoints in
//! `ledger_checkpoints`, a consent lifecycle of signed events, and the
//! tiles server running in-process on `127.0.0.1:0`.

// Each test binary uses a different part of these helpers.
#![allow(dead_code)]

use std::net::SocketAddr;

use coordinator::store::PgLedger;
use coordinator::tiles::serve_tiles;
use sqlx::PgPool;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tributary_ledger::event::{
    ConsentGranted, ConsentWithdrawn, ExpertAccepted, ExpertErased, ExpertManifest,
    ExpertSubmitted, Figure, ModelVersionPublished, TensorDigest, TrainingMetadata,
    ValidationResult, VersionExpert,
};
use tributary_ledger::note::{NoteSigner, NoteVerifier};
use tributary_ledger::{
    Checkpoint, ConsentId, ContributorId, Event, ExpertDigest, Purpose, Sha256Digest, SignedEvent,
    SubmissionId, Timestamp, VersionNumber,
};

use crate::support::{contributor_key, operator};

/// The origin of every test log (as in `support::log_created`).
pub const ORIGIN: &str = "test.example.org/tributary";

/// The operator's checkpoint signer.
pub fn note_signer() -> NoteSigner {
    NoteSigner::new(ORIGIN, operator()).expect("valid signer name")
}

/// The operator's verifier key string, as an auditor receives it.
pub fn verifier_key() -> String {
    note_signer().verifier().to_key_string()
}

/// The verifier of [`verifier_key`].
pub fn verifier() -> NoteVerifier {
    note_signer().verifier()
}

/// Signs a checkpoint of the whole stored log and records it, as the
/// coordinator does after a commit; returns the note.
pub async fn publish_checkpoint(pool: &PgPool) -> String {
    let size = PgLedger::size(pool).await.expect("size");
    let root = PgLedger::root(pool, size).await.expect("root");
    let note = Checkpoint::new(ORIGIN, size, root)
        .sign(&note_signer())
        .expect("sign the checkpoint");
    sqlx::query("INSERT INTO ledger_checkpoints (size, root_hash, note) VALUES ($1, $2, $3)")
        .bind(i64::try_from(size).expect("size fits"))
        .bind(root.as_bytes().as_slice())
        .bind(&note)
        .execute(pool)
        .await
        .expect("insert the checkpoint");
    note
}

fn id(n: u32) -> ContributorId {
    ContributorId::new(format!("org-{n}")).expect("valid id")
}

/// The digest of test expert `n`.
pub fn expert(n: u32) -> ExpertDigest {
    ExpertDigest(Sha256Digest::of(format!("expert weights {n}").as_bytes()))
}

fn research() -> Purpose {
    Purpose::new("research").expect("valid purpose")
}

fn listing(n: u32) -> VersionExpert {
    VersionExpert {
        submission: SubmissionId::new(format!("upload-{n}")).expect("valid id"),
        expert: expert(n),
        consent: ConsentId::new(format!("consent-{n}")).expect("valid id"),
    }
}

fn signed_by(n: u32, event: Event) -> SignedEvent {
    SignedEvent::contributor(event, &contributor_key(n)).expect("sign")
}

/// Contributor `n` grants consent `consent-n` for its expert, uploads it and
/// the coordinator accepts it (contributor `n` must be registered).
pub fn contribution(n: u32) -> Vec<SignedEvent> {
    let submission = SubmissionId::new(format!("upload-{n}")).expect("valid id");
    vec![
        signed_by(
            n,
            Event::ConsentGranted(ConsentGranted {
                consent: ConsentId::new(format!("consent-{n}")).expect("valid id"),
                contributor: id(n),
                expert: expert(n),
                purposes: vec![research()],
                expires_at: None,
                data_description: format!("letters of organisation {n}"),
                licence: "CC-BY-4.0".into(),
                jurisdiction: "EU".into(),
            }),
        ),
        signed_by(
            n,
            Event::ExpertSubmitted(ExpertSubmitted {
                submission: submission.clone(),
                contributor: id(n),
                manifest: ExpertManifest {
                    anchor: Sha256Digest::of(b"anchor v1"),
                    tensors: vec![TensorDigest {
                        name: "model.layers.0.mlp.experts.1.up_proj.weight".into(),
                        sha256: Sha256Digest::of(format!("tensor {n}").as_bytes()),
                    }],
                    total: expert(n),
                    training: TrainingMetadata {
                        tokens: 1000,
                        steps: 10,
                        held_out_loss: Figure::from_f64(2.5).expect("finite"),
                    },
                },
            }),
        ),
        SignedEvent::coordinator(Event::ExpertAccepted(ExpertAccepted {
            submission,
            expert: expert(n),
            results: vec![ValidationResult {
                check: "sha256".into(),
                passed: true,
                figure: None,
            }],
        })),
    ]
}

/// A research version listing the experts of the given contributors.
pub fn version(number: u64, parent: Option<u64>, contributors: &[u32]) -> SignedEvent {
    SignedEvent::coordinator(Event::ModelVersionPublished(ModelVersionPublished {
        version: VersionNumber(number),
        parent: parent.map(VersionNumber),
        experts: contributors.iter().map(|&n| listing(n)).collect(),
        purpose: research(),
        top_k: 2,
        checkpoint: Sha256Digest::of(format!("assembled {number}").as_bytes()),
    }))
}

/// Contributor `n` withdraws `consent-n`.
pub fn withdrawal(n: u32) -> SignedEvent {
    signed_by(
        n,
        Event::ConsentWithdrawn(ConsentWithdrawn {
            consent: ConsentId::new(format!("consent-{n}")).expect("valid id"),
            contributor: id(n),
            withdrawn_at: Timestamp(1_750_000_000),
        }),
    )
}

/// The coordinator erased contributor `n`'s expert.
pub fn erasure(n: u32) -> SignedEvent {
    SignedEvent::coordinator(Event::ExpertErased(ExpertErased { expert: expert(n) }))
}

/// A whole honest lifecycle: two contributors registered and accepted, a
/// version with both, contributor 1 withdraws, a version without it, its
/// weights erased. Thirteen events, starting with `LogCreated`.
pub fn lifecycle() -> Vec<SignedEvent> {
    let mut events = vec![
        crate::support::log_created(),
        crate::support::registration(1),
        crate::support::registration(2),
    ];
    events.extend(contribution(1));
    events.extend(contribution(2));
    events.push(version(1, None, &[1, 2]));
    events.push(withdrawal(1));
    events.push(version(2, Some(1), &[2]));
    events.push(erasure(1));
    events
}

/// Appends events one transaction each.
pub async fn append_all(pool: &PgPool, events: Vec<SignedEvent>) {
    for signed in events {
        crate::support::append(pool, signed).await;
    }
}

/// The tiles server running in-process.
pub struct Served {
    /// Where it listens.
    pub addr: SocketAddr,
    stop: oneshot::Sender<()>,
    task: JoinHandle<std::io::Result<()>>,
}

impl Served {
    /// Starts the server on `127.0.0.1:0` over `pool`.
    pub async fn start(pool: PgPool) -> Served {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("local address");
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(serve_tiles(listener, pool, async move {
            let _ = stopped.await;
        }));
        Served { addr, stop, task }
    }

    /// The URL prefix of the log.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Shuts the server down and checks it exited cleanly.
    pub async fn stop(self) {
        let _ = self.stop.send(());
        self.task
            .await
            .expect("server task")
            .expect("server exits cleanly");
    }
}
