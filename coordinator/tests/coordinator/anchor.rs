//! The anchor service end to end, over real TLS against a real Postgres:
//! the shipped anchor installed at start-up and published again (a no-op),
//! fetched by a contributor byte for byte, a new anchor published and made
//! current, a restart on the same directory a no-op, version downloads that carry the anchor's tokenizer files (also
//! once their anchor is no longer current), and bad publishes refused with
//! their reason code, leaving no blob and no row behind.

use std::path::Path;

use coordinator::blobs::BlobStore;
use tonic::Code;
use tributary_client::{Client, ClientError};
use tributary_ledger::Sha256Digest;
use tributary_model::checkpoint::Checkpoint;
use tributary_protos::v1;

use crate::servers::{Options, TestServer, config_for, enrol, gate_config, public_heldout};
use crate::service::{
    CHECKPOINT_FILES, assert_refused, consent_for, file_names, upload, upload_accepted,
};
use crate::validate::{anchor, anchor_dir};

/// Every regular file of `dir` with its bytes, sorted by name.
fn read_files(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out: Vec<(String, Vec<u8>)> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap())
        .filter(|e| e.file_type().unwrap().is_file())
        .map(|e| {
            let name = e.file_name().into_string().unwrap();
            (name, std::fs::read(e.path()).unwrap())
        })
        .collect();
    out.sort();
    out
}

/// The wire listing of `files` and their bytes back to back.
fn wire(files: &[(String, Vec<u8>)]) -> (Vec<v1::AnchorFile>, Vec<u8>) {
    let listing = files
        .iter()
        .map(|(name, bytes)| v1::AnchorFile {
            name: name.clone(),
            size: bytes.len() as u64,
            sha256: Some(v1::Digest {
                sha256: Sha256Digest::of(bytes).0.to_vec(),
            }),
        })
        .collect();
    (listing, files.iter().flat_map(|(_, b)| b.clone()).collect())
}

/// Writes a variant of the shipped anchor (its final norm scaled by
/// `scale`, so another digest) with the shipped tokenizer files.
pub(crate) fn write_variant(dir: &Path, scale: f32) {
    let mut checkpoint: Checkpoint = anchor().0.clone();
    let mut norm = checkpoint.tensors.take("model.norm.weight").unwrap();
    norm.data.iter_mut().for_each(|v| *v *= scale);
    checkpoint.tensors.insert("model.norm.weight", norm);
    checkpoint.save(dir, Some(anchor_dir().as_path())).unwrap();
}

/// Publishes a hand-made stream: the signed header, then `body` in chunks.
async fn publish_raw(
    operator: &Client,
    files: Vec<v1::AnchorFile>,
    body: &[u8],
) -> Result<v1::AnchorInfo, ClientError> {
    let mut header = v1::PublishAnchorHeader {
        auth: None,
        files,
        make_current: true,
    };
    operator.signer().unwrap().sign(&mut header).unwrap();
    let mut messages = vec![v1::PublishAnchorRequest {
        message: Some(v1::publish_anchor_request::Message::Header(header)),
    }];
    messages.extend(body.chunks(60_000).map(|c| v1::PublishAnchorRequest {
        message: Some(v1::publish_anchor_request::Message::Chunk(v1::Chunk {
            data: c.to_vec(),
        })),
    }));
    Ok(operator
        .anchors()
        .publish_anchor(tokio_stream::iter(messages))
        .await?
        .into_inner())
}

async fn current(client: &Client) -> v1::AnchorInfo {
    client
        .anchors()
        .get_anchor(v1::GetAnchorRequest { digest: None })
        .await
        .unwrap()
        .into_inner()
}

/// The committed blobs (sorted), the staging objects and the anchor rows.
async fn at_rest(server: &TestServer, store: &BlobStore) -> (Vec<Sha256Digest>, usize, i64) {
    let mut blobs = store.list().await.unwrap();
    blobs.sort();
    let staging = store.staging_objects().await.unwrap().len();
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM anchors")
        .fetch_one(server.pool())
        .await
        .unwrap();
    (blobs, staging, rows)
}

async fn start() -> (TestServer, BlobStore) {
    let server = TestServer::start(Options {
        max_message_bytes: 1 << 20,
        ..Options::default()
    })
    .await;
    let store = BlobStore::open_local(&server.dir.path().join("blobs")).unwrap();
    (server, store)
}

#[tokio::test]
async fn anchors_are_published_fetched_and_complete_version_downloads() {
    let (server, store) = start().await;
    let base = server.client().await;
    let operator = base.with_signer(server.operator());
    let alice = enrol(&server, &base, "alice", 31).await;
    let shipped = read_files(&anchor_dir());
    let (shipped_listing, _) = wire(&shipped);
    let model = &shipped
        .iter()
        .find(|(n, _)| n == "model.safetensors")
        .unwrap()
        .1;
    let digest = Sha256Digest::of(model);

    // Installed at start-up: every file listed, identity = model.safetensors.
    let info = current(&base).await;
    assert_eq!(info.digest.as_ref().unwrap().sha256, digest.0.to_vec());
    assert!(info.current);
    assert_eq!(info.files, shipped_listing);

    // Publishing the same anchor again changes nothing.
    let before = at_rest(&server, &store).await;
    let again = operator.publish_anchor(&anchor_dir(), true).await.unwrap();
    assert_eq!(
        (again.digest.clone(), again.files.clone()),
        (info.digest.clone(), info.files.clone())
    );
    assert!(again.current);
    assert_eq!(at_rest(&server, &store).await, before);

    // A contributor fetches it: the same files, byte for byte, nothing else.
    let out = server.dir.path().join("fetched");
    let fetched = alice.fetch_anchor(None, &out).await.unwrap();
    assert_eq!(fetched.len(), shipped.len());
    assert_eq!(read_files(&out), shipped);
    let by_digest = server.dir.path().join("fetched-by-digest");
    alice.fetch_anchor(Some(&digest), &by_digest).await.unwrap();
    assert_eq!(read_files(&by_digest), shipped);
    let unknown = Sha256Digest::of(b"no such anchor");
    let refused = alice
        .fetch_anchor(Some(&unknown), &server.dir.path().join("none"))
        .await;
    assert_refused(refused, Code::NotFound, "NO_ANCHOR");

    // A version downloads as a complete checkpoint: the anchor's tokenizer files too.
    upload_accepted(&server, &alice, 7).await;
    let version = alice.list_versions("research", false).await.unwrap()[0].version;
    let download = server.dir.path().join("download");
    let files = alice.download_version(version, &download).await.unwrap();
    assert_eq!(file_names(&files), CHECKPOINT_FILES);
    for name in &CHECKPOINT_FILES[2..] {
        assert_eq!(
            std::fs::read(download.join(name)).unwrap(),
            std::fs::read(anchor_dir().join(name)).unwrap(),
            "{name}"
        );
    }
    assert_eq!(Checkpoint::load(&download).unwrap().config.num_experts, 2);

    // A new anchor: stored without becoming current, then made current.
    let fresh = server.dir.path().join("fresh");
    write_variant(&fresh, 1.5);
    let fresh_digest = Sha256Digest::of(&std::fs::read(fresh.join("model.safetensors")).unwrap());
    let stored = operator.publish_anchor(&fresh, false).await.unwrap();
    assert!(!stored.current);
    assert_eq!(
        stored.digest.as_ref().unwrap().sha256,
        fresh_digest.0.to_vec()
    );
    assert_eq!(current(&base).await.digest, info.digest);
    let made = operator.publish_anchor(&fresh, true).await.unwrap();
    assert!(made.current);
    assert_eq!(current(&base).await.digest, made.digest);
    let loaded = server.running.state.current_anchor().unwrap();
    assert_eq!(loaded.digest, fresh_digest);

    // The version still downloads, its anchor now stored but not current.
    let later = server.dir.path().join("download-later");
    let files_later = alice.download_version(version, &later).await.unwrap();
    assert_eq!(files_later, {
        let mut moved = files.clone();
        for f in &mut moved {
            f.path = later.join(f.path.file_name().unwrap());
        }
        moved
    });
    // And the old anchor is still fetched by its digest.
    let old = server.dir.path().join("old-anchor");
    alice.fetch_anchor(Some(&digest), &old).await.unwrap();
    assert_eq!(read_files(&old), shipped);
    server.stop().await;
}

#[tokio::test]
async fn bad_anchor_publishes_are_refused_and_leave_nothing_behind() {
    let (server, store) = start().await;
    let base = server.client().await;
    let operator = base.with_signer(server.operator());
    let fresh = server.dir.path().join("fresh");
    write_variant(&fresh, 0.5);
    let files = read_files(&fresh);
    let (listing, body) = wire(&files);
    let before = at_rest(&server, &store).await;

    // The last file's digest is wrong: the earlier files were stored, and removed.
    let mut wrong_digest = listing.clone();
    wrong_digest.last_mut().unwrap().sha256 = Some(v1::Digest {
        sha256: vec![7; 32],
    });
    // The stream ends early, or goes on after the last file.
    let truncated = &body[..body.len() - 10];
    let mut extra = body.clone();
    extra.extend_from_slice(b"trailing");
    // No tokenizer.
    let without: Vec<_> = files
        .iter()
        .filter(|(n, _)| n != "tokenizer.json")
        .cloned()
        .collect();
    let (no_tokenizer, no_tokenizer_body) = wire(&without);
    // A name that escapes the directory, and a name given twice.
    let mut escaping = listing.clone();
    escaping[0].name = "../x".into();
    let mut twice = listing.clone();
    twice[1].name = twice[0].name.clone();
    // Weights that are not a safetensors file (listed with their true digest).
    let garbage: Vec<_> = files
        .iter()
        .map(|(n, b)| {
            let bytes = if n == "model.safetensors" {
                b"not a safetensors file".to_vec()
            } else {
                b.clone()
            };
            (n.clone(), bytes)
        })
        .collect();
    let (garbage_listing, garbage_body) = wire(&garbage);
    // A tokenizer.json that is JSON but no tokenizer.
    let not_tokenizer: Vec<_> = files
        .iter()
        .map(|(n, b)| {
            let bytes = if n == "tokenizer.json" {
                b"{\"version\": \"1.0\"}".to_vec()
            } else {
                b.clone()
            };
            (n.clone(), bytes)
        })
        .collect();
    let (not_tokenizer_listing, not_tokenizer_body) = wire(&not_tokenizer);
    // A tokenizer with an id past the model's embeddings.
    let too_wide = server.dir.path().join("too-wide");
    write_variant(&too_wide, 0.5);
    let vocab = anchor().0.config.vocab_size;
    edit_tokenizer(&too_wide, |json| {
        json["model"]["vocab"]["zzqzz"] = serde_json::json!(vocab);
    });
    let (too_wide_listing, too_wide_body) = wire(&read_files(&too_wide));

    let cases: Vec<(&str, Vec<v1::AnchorFile>, &[u8], &str)> = vec![
        (
            "wrong digest",
            wrong_digest,
            body.as_slice(),
            "ANCHOR_FILE_MISMATCH",
        ),
        ("truncated", listing.clone(), truncated, "ANCHOR_INCOMPLETE"),
        (
            "extra bytes",
            listing.clone(),
            extra.as_slice(),
            "ANCHOR_EXTRA_BYTES",
        ),
        (
            "no tokenizer",
            no_tokenizer,
            no_tokenizer_body.as_slice(),
            "ANCHOR_MISSING_FILE",
        ),
        ("../x", escaping, body.as_slice(), "BAD_FILE_NAME"),
        ("a name twice", twice, body.as_slice(), "BAD_FILE_NAME"),
        (
            "garbage weights",
            garbage_listing,
            garbage_body.as_slice(),
            "BAD_ANCHOR",
        ),
        (
            "not a tokenizer",
            not_tokenizer_listing,
            not_tokenizer_body.as_slice(),
            "BAD_ANCHOR",
        ),
        (
            "an id past the embeddings",
            too_wide_listing,
            too_wide_body.as_slice(),
            "BAD_ANCHOR",
        ),
    ];
    for (what, listing, body, reason) in cases {
        let result = publish_raw(&operator, listing, body).await;
        let error = result.expect_err(what);
        assert_eq!(error.code(), Some(Code::InvalidArgument), "{what}: {error}");
        assert_eq!(error.reason_code(), Some(reason), "{what}: {error}");
        assert_eq!(
            at_rest(&server, &store).await,
            before,
            "{what} left something"
        );
    }

    // The shipped weights with other files: that anchor exists already.
    let shipped: Vec<_> = read_files(&anchor_dir())
        .into_iter()
        .filter(|(n, _)| n != "recipe.json")
        .collect();
    let (other_files, other_body) = wire(&shipped);
    let refused = publish_raw(&operator, other_files, &other_body).await;
    assert_refused(refused, Code::AlreadyExists, "ANCHOR_EXISTS");
    assert_eq!(at_rest(&server, &store).await, before);

    // Only the operator publishes anchors.
    let alice = enrol(&server, &base, "alice", 41).await;
    let refused = alice.publish_anchor(&fresh, true).await;
    assert_refused(refused, Code::PermissionDenied, "OPERATOR_ONLY");
    assert_eq!(at_rest(&server, &store).await, before);

    // The same files, sent whole, are accepted: the refusals were the faults'.
    let info = publish_raw(&operator, listing, &body).await.unwrap();
    assert!(info.current);
    let (blobs, staging, rows) = at_rest(&server, &store).await;
    assert_eq!((staging, rows), (0, before.2 + 1));
    assert!(blobs.len() > before.0.len());
    server.stop().await;
}

#[tokio::test]
async fn restarting_on_the_same_anchor_directory_changes_nothing() {
    let (server, store) = start().await;
    let base = server.client().await;
    let installed = current(&base).await;
    let before = at_rest(&server, &store).await;
    // A row in the old form (only the weights, as an object) is rewritten.
    sqlx::query(r#"UPDATE anchors SET files = '{"model.safetensors": "00"}'::jsonb"#)
        .execute(server.pool())
        .await
        .unwrap();

    // A second coordinator on the same database and blob store.
    let options = Options {
        max_message_bytes: 1 << 20,
        ..Options::default()
    };
    let config = config_for(&server.db, server.dir.path(), &server.ca, &options);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let second = coordinator::server::serve(config, async move {
        let _ = stopped.await;
    })
    .await
    .unwrap();
    assert_eq!(at_rest(&server, &store).await, before);
    assert_eq!(current(&base).await, installed);
    let _ = stop.send(());
    second.wait().await.unwrap();
    server.stop().await;
}

#[tokio::test]
async fn an_anchor_over_the_size_limit_is_refused_before_its_bytes() {
    let server = TestServer::start(Options {
        max_message_bytes: 1 << 20,
        max_upload_bytes: 1 << 20,
        ..Options::default()
    })
    .await;
    let store = BlobStore::open_local(&server.dir.path().join("blobs")).unwrap();
    let operator = server.client().await.with_signer(server.operator());
    let before = at_rest(&server, &store).await;
    let fresh = server.dir.path().join("fresh");
    write_variant(&fresh, 2.0);
    let refused = operator.publish_anchor(&fresh, true).await;
    assert_refused(refused, Code::InvalidArgument, "ANCHOR_TOO_LARGE");
    assert_eq!(at_rest(&server, &store).await, before);
    server.stop().await;
}

/// Rewrites the `tokenizer.json` of `dir` with `edit`.
fn edit_tokenizer(dir: &Path, edit: impl FnOnce(&mut serde_json::Value)) {
    let path = dir.join("tokenizer.json");
    let mut json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    edit(&mut json);
    std::fs::write(&path, serde_json::to_vec(&json).unwrap()).unwrap();
}

/// Writes to `dir` an anchor (a variant of the shipped one) whose tokenizer
/// reads every text as nothing.
fn write_blank_anchor(dir: &Path) {
    write_variant(dir, 2.0);
    edit_tokenizer(dir, |json| {
        json["normalizer"] = serde_json::json!({
            "type": "Replace",
            "pattern": {"Regex": "[\\s\\S]+"},
            "content": ""
        });
    });
}

/// The quality gate's text (as `servers::config_for` sets it up) read with
/// the tokenizer of the checkpoint directory `dir`.
fn gate_tokens(dir: &Path) -> Vec<u32> {
    let tokenizer = tributary_corpus::TextTokenizer::load(dir).unwrap();
    let documents = tributary_corpus::read_documents(&[public_heldout()]).unwrap();
    let mut tokens = tributary_corpus::token_stream(&documents, &tokenizer).unwrap();
    tokens.truncate(1025);
    tokens
}

#[tokio::test]
async fn the_quality_gate_reads_its_text_with_the_current_anchors_tokenizer() {
    use crate::validate::{scaled_tensors, upload_of};

    let server = TestServer::start(Options {
        gate: true,
        ..Options::for_uploads()
    })
    .await;
    let store = BlobStore::open_local(&server.dir.path().join("blobs")).unwrap();
    let base = server.client().await;
    let operator = base.with_signer(server.operator());
    let alice = enrol(&server, &base, "alice", 43).await;
    let gate = server.running.state.gate.as_ref().unwrap();
    let shipped = server.running.state.current_anchor().unwrap();
    let shipped_tokens = gate_tokens(&anchor_dir());
    assert_eq!(
        *gate.public_tokens(&store, &shipped).await.unwrap(),
        shipped_tokens
    );

    // A new anchor whose tokenizer has no merges reads text byte by byte.
    let bytewise = server.dir.path().join("bytewise");
    write_variant(&bytewise, 1.5);
    edit_tokenizer(&bytewise, |json| {
        json["model"]["merges"] = serde_json::json!([])
    });
    let expected = gate_tokens(&bytewise);
    assert_ne!(expected, shipped_tokens);
    operator.publish_anchor(&bytewise, true).await.unwrap();
    let current = server.running.state.current_anchor().unwrap();
    assert_ne!(current.digest, shipped.digest);
    assert_eq!(
        *gate.public_tokens(&store, &current).await.unwrap(),
        expected
    );

    // An upload against it is judged on those tokens. This candidate, a copy
    // of the public FFN routed by -r_pub, passes the gate on the text as the
    // shipped tokenizer reads it but is the first choice of most byte-level
    // tokens; the server's figures and decision are those of the gate run
    // here on the byte-level tokens.
    let (payload, mut candidate) = upload_of(&scaled_tensors(1.0, -1.0));
    candidate.anchor = current.digest;
    let reference = coordinator::validate::AnchorReference::load(&bytewise).unwrap();
    let checkpoint = Checkpoint::load(&bytewise).unwrap();
    let expert = coordinator::validate::load_expert(&payload, &reference).unwrap();
    let gate_on = |tokens: &[u32]| {
        coordinator::validate::quality_gate(&checkpoint, &[], &expert, tokens, &gate_config())
            .unwrap()
    };
    assert!(gate_on(&shipped_tokens).rejection.is_none());
    let local = gate_on(&expected);
    assert!(local.rejection.is_some());
    consent_for(&alice, "c-bytewise", &candidate, None).await;
    let status = upload(&server, &alice, "s-bytewise", &payload, &candidate).await;
    assert_eq!(
        status.state,
        v1::SubmissionState::Rejected as i32,
        "{status:?}"
    );
    assert_eq!(status.reason_code, "QUALITY_GATE_ROUTING");
    let gate_results = &status.results[status.results.len() - 2..];
    let steps: Vec<&str> = gate_results.iter().map(|r| r.step.as_str()).collect();
    assert_eq!(steps, ["public_perplexity", "public_routing_share"]);
    let reported = &gate_results[0].detail;
    let (before, after) = reported
        .strip_prefix("public perplexity ")
        .and_then(|r| r.split_once(" ("))
        .and_then(|(pair, _)| pair.split_once(" -> "))
        .map(|(b, a)| (b.parse::<f64>().unwrap(), a.parse::<f64>().unwrap()))
        .unwrap_or_else(|| panic!("unexpected detail {reported:?}"));
    let share: f64 = gate_results[1].figure.parse().unwrap();
    for (got, want) in [
        (before, local.perplexity_before),
        (after, local.perplexity_after),
        (share, local.routing_share),
    ] {
        assert!(
            (got / want - 1.0).abs() < 1e-9,
            "{got} vs {want} ({reported})"
        );
    }

    // A tokenizer that reads the text as nothing: the gate could not score
    // it, so the anchor is refused as current and nothing of it is kept.
    let blank = server.dir.path().join("blank");
    write_blank_anchor(&blank);
    assert!(gate_tokens(&blank).len() <= 128);
    let before = at_rest(&server, &store).await;
    let refused = operator.publish_anchor(&blank, true).await;
    assert_refused(refused, Code::FailedPrecondition, "GATE_TEXT_TOO_SHORT");
    assert_eq!(at_rest(&server, &store).await, before);
    assert_eq!(
        server.running.state.current_anchor().unwrap().digest,
        current.digest
    );
    server.stop().await;
}

#[tokio::test]
async fn a_start_on_an_anchor_that_cannot_read_the_gate_text_changes_nothing() {
    let (server, store) = start().await;
    let base = server.client().await;
    let installed = current(&base).await;
    // A new anchor whose tokenizer reads the gate's text as nothing.
    let blank = server.dir.path().join("blank");
    write_blank_anchor(&blank);
    let before = at_rest(&server, &store).await;

    // A second coordinator on the same database, with the gate on, started
    // from that directory: it refuses to start and writes nothing, so the
    // running one (and any other replica) keeps the anchor it had.
    let options = Options {
        gate: true,
        anchor: blank.clone(),
        max_message_bytes: 1 << 20,
        ..Options::default()
    };
    let config = config_for(&server.db, server.dir.path(), &server.ca, &options);
    let refused = coordinator::server::serve(config, std::future::pending())
        .await
        .map(|_| ())
        .unwrap_err();
    let message = format!("{refused:#}");
    assert!(
        message.contains("quality gate") && message.contains("one scoring window"),
        "{message}"
    );
    assert_eq!(at_rest(&server, &store).await, before);
    assert_eq!(current(&base).await, installed);

    // The same directory without the gate starts, and makes it current.
    let config = config_for(
        &server.db,
        server.dir.path(),
        &server.ca,
        &Options {
            gate: false,
            ..options
        },
    );
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let second = coordinator::server::serve(config, async move {
        let _ = stopped.await;
    })
    .await
    .unwrap();
    assert_ne!(current(&base).await, installed);
    let _ = stop.send(());
    second.wait().await.unwrap();
    server.stop().await;
}
