//! The contributor agent's remote commands against the real coordinator
//! (in process, on `127.0.0.1:0`, TLS from `dev-ca`, a fresh database):
//! keygen → `coordinator invite` → register → consent → upload → status →
//! versions → download → withdraw → versions → receipts, through the same
//! functions the command line runs.

use std::path::Path;

use contributor_agent::remote::calls::{self, Terms};
use contributor_agent::remote::{
    IdentityArgs, OperatorKeyArgs, Session, SignedArgs, keys, report, session,
};
use coordinator::devca::{self, DevCaArgs};
use coordinator::invite::{InviteArgs, issue};
use tributary_client::{Client, ConnectArgs};
use tributary_ledger::Event;
use tributary_model::ExpertPackage;
use tributary_model::checkpoint::Checkpoint;
use tributary_model::expert::TrainingMetadata;
use tributary_protos::v1;

use crate::servers::{Options, TestServer};
use crate::validate::{anchor, anchor_dir, expert_tensors};

/// Writes an expert package for the shipped anchor into `dir`, as `train`
/// writes one (the tensors are the anchor's public FFN, slightly perturbed).
fn write_expert(dir: &Path, seed: u64) -> ExpertPackage {
    let training = TrainingMetadata {
        tokens: 4096,
        steps: 2,
        heldout_loss: Some(5.25),
        ..TrainingMetadata::default()
    };
    let (ckpt, reference) = anchor();
    let package = ExpertPackage::new(
        &ckpt.config,
        reference.digest.to_string(),
        expert_tensors(seed),
        training,
    )
    .unwrap();
    package.save(dir).unwrap();
    package
}

fn connect_args(server: &TestServer) -> ConnectArgs {
    ConnectArgs::new(server.url(), Some(server.ca.ca_cert.clone()))
}

/// `keygen`, then the operator's `coordinator invite`; returns the key and invite files.
async fn keygen_and_invite(server: &TestServer, id: &str) -> (std::path::PathBuf, String) {
    let key = server.dir.path().join(format!("{id}.key"));
    let public = keys::keygen(&key, id).unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&key).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }
    assert!(keys::keygen(&key, id).is_err(), "keygen never overwrites");
    let out = server.dir.path().join(format!("{id}.invite"));
    let invite = issue(&InviteArgs {
        connect: connect_args(server),
        operator_key: server.ca.operator_key.clone(),
        id: id.into(),
        organisation: format!("{id} clinic"),
        public_key: keys::public_hex(&public),
        out: out.clone(),
    })
    .await
    .unwrap();
    assert_eq!(invite.public_key, public);
    (key, out.to_string_lossy().to_string())
}

async fn session_for(server: &TestServer, key: &Path, operator_pub: &Path) -> Session {
    session(&SignedArgs {
        connect: connect_args(server),
        identity: IdentityArgs {
            key: key.to_path_buf(),
            id: None,
        },
        operator: OperatorKeyArgs {
            operator_key: Some(operator_pub.to_string_lossy().to_string()),
        },
    })
    .await
    .unwrap()
}

fn research_terms(expert: &Path) -> Terms {
    Terms {
        expert: expert.to_string_lossy().to_string(),
        purposes: vec!["research".into()],
        expires: None,
        days: Some(30),
        licence: "CC-BY-4.0".into(),
        jurisdiction: "EU".into(),
        description: "discharge letters".into(),
        consent_id: None,
    }
}

async fn register(s: &Session, invite_file: &str) {
    let invite = calls::read_invite(invite_file).unwrap();
    let wrong = calls::register(s, &invite, Some("another org")).await;
    assert!(wrong.unwrap_err().to_string().contains("organisation"));
    let registered = calls::register(s, &invite, None).await.unwrap();
    let entry = s.check(registered.receipt.as_ref()).unwrap().unwrap();
    assert!(matches!(entry.event, Event::ContributorRegistered(_)));
    let text = report::registered(&registered, true);
    assert!(text.contains("registered alice (alice clinic)"), "{text}");
    assert!(text.contains("(verified)"), "{text}");
}

/// Consent, upload and follow the expert into version 1; returns the consent id.
async fn contribute(s: &Session, client: &Client, expert: &Path) -> String {
    let granted = calls::grant(s, &research_terms(expert)).await.unwrap();
    let consent = granted.consent.unwrap().terms.unwrap().consent_id;
    assert!(consent.starts_with("consent-"), "{consent}");
    let listed = calls::list_consents(s).await.unwrap();
    assert!(report::consents(&listed).contains(&format!("{consent}  active")));

    let status = calls::upload(s, expert, None).await.unwrap();
    assert_eq!(
        status.state,
        v1::SubmissionState::Accepted as i32,
        "{status:?}"
    );
    let text = report::submission(&status, true);
    for needle in [
        "accepted",
        "manifest_signature",
        "norm_ratio",
        "submitted #",
        "decided #",
    ] {
        assert!(text.contains(needle), "{needle:?} missing from {text}");
    }
    assert!(s.check(status.decided.as_ref()).unwrap().is_some());
    let again = calls::status(client, &status.submission_id).await.unwrap();
    assert_eq!(again.state, v1::SubmissionState::Accepted as i32);

    let versions = calls::versions(client, "research", false).await.unwrap();
    assert_eq!(versions.len(), 1, "{versions:?}");
    assert_eq!(versions[0].experts.len(), 1);
    assert_eq!(versions[0].experts[0].submission_id, status.submission_id);
    assert!(report::versions(&versions).contains("version 1  purpose research"));
    consent
}

#[tokio::test]
async fn the_agent_registers_consents_uploads_downloads_withdraws_and_verifies_receipts() {
    let server = TestServer::start(Options::for_uploads()).await;
    let client = calls_client(&server).await;
    let (key, invite_file) = keygen_and_invite(&server, "alice").await;
    let s = session_for(&server, &key, &server.ca.operator_pub).await;
    register(&s, &invite_file).await;

    // An error names the gRPC status and the coordinator's reason code.
    let refused = calls::withdraw(&s, "no-such-consent")
        .await
        .unwrap_err()
        .to_string();
    assert!(refused.contains("gRPC status NotFound"), "{refused}");
    assert!(!refused.contains("reason code (none)"), "{refused}");

    let expert = server.dir.path().join("expert");
    let package = write_expert(&expert, 7);
    let consent = contribute(&s, &client, &expert).await;

    // The newest version downloads as a checkpoint that loads, with the anchor's tokenizer.
    let latest = calls::latest_version(&client, "research").await.unwrap();
    let out = server.dir.path().join("download");
    let files = calls::download(&client, latest, &out, Some(&anchor_dir()))
        .await
        .unwrap();
    assert!(report::downloaded(latest, &files).contains("model.safetensors"));
    assert_eq!(Checkpoint::load(&out).unwrap().config.num_experts, 2);
    assert!(out.join("tokenizer.json").is_file());

    // Withdrawal: a new version without the expert, the old one revoked, weights erased.
    let withdrawn = calls::withdraw(&s, &consent).await.unwrap();
    assert_eq!(withdrawn.revoked_versions, vec![latest]);
    assert!(withdrawn.erasure.is_some());
    assert!(report::withdrawn(&withdrawn, true).contains(&format!("versions revoked: {latest}")));
    let now = calls::versions(&client, "research", false).await.unwrap();
    assert!(now.iter().all(|v| v.experts.is_empty()), "{now:?}");
    let all = calls::versions(&client, "", true).await.unwrap();
    assert!(all.iter().any(|v| v.version == latest && v.revoked));

    // Every entry about alice comes with a receipt that verifies.
    let entries = calls::receipts(&s).await.unwrap();
    let kinds: Vec<&str> = entries.iter().map(|e| e.event.kind()).collect();
    for kind in [
        "ContributorRegistered",
        "ConsentGranted",
        "ExpertSubmitted",
        "ExpertAccepted",
        "ConsentWithdrawn",
        "ExpertErased",
    ] {
        assert!(kinds.contains(&kind), "{kind} missing from {kinds:?}");
    }
    assert!(entries.windows(2).all(|w| w[0].index < w[1].index));
    let text = report::receipts(&entries);
    assert!(text.contains(&package.digest()[..16]), "{text}");

    // Receipts checked against another operator's key do not verify.
    let other = devca::create(&DevCaArgs {
        out: server.dir.path().join("other-pki"),
        origin: "test.example.org/tributary".into(),
        extra_names: Vec::new(),
    })
    .unwrap();
    let stranger = session_for(&server, &key, &other.operator_pub).await;
    assert!(calls::receipts(&stranger).await.is_err());

    server.stop().await;
}

async fn calls_client(server: &TestServer) -> Client {
    contributor_agent::remote::connect(&connect_args(server))
        .await
        .unwrap()
}
