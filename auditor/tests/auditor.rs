//! The `auditor` binary against the real tiles server over real Postgres:
//! an honest log passes, a row edited behind the triggers fails naming its
//! index, a rewritten history is caught through `--state`, a wrong key is
//! refused, and lookups answer from the replayed state.
//!
//! The database helpers are the coordinator's own test support, included by path.

#![allow(clippy::expect_used, clippy::unwrap_used)]

#[allow(dead_code)]
#[path = "../../coordinator/tests/coordinator/support.rs"]
mod support;
#[path = "../../coordinator/tests/coordinator/tlog_support.rs"]
mod tlog_support;

use serde_json::Value;
use sqlx::PgPool;
use tributary_ledger::note::NoteSigner;

use support::{TestDb, registration};
use tlog_support::{
    Served, append_all, expert, lifecycle, publish_checkpoint, verifier_key, version,
};

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Run {
    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}\n{}", self.stdout, self.stderr))
    }
}

async fn auditor(args: &[&str]) -> Run {
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_auditor"))
            .args(&args)
            .env_remove("AUDITOR_URL")
            .env_remove("AUDITOR_KEY")
            .env_remove("AUDITOR_STATE")
            .env_remove("AUDITOR_CA")
            .output()
            .expect("run the auditor");
        Run {
            code: output.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    })
    .await
    .unwrap()
}

async fn verify(url: &str, state: Option<&std::path::Path>, json: bool) -> Run {
    let key = verifier_key();
    let mut args = vec!["verify", "--url", url, "--key", key.as_str()];
    let state_text;
    if let Some(path) = state {
        state_text = path.display().to_string();
        args.extend(["--state", state_text.as_str()]);
    }
    if json {
        args.push("--json");
    }
    auditor(&args).await
}

fn check<'a>(report: &'a Value, name: &str) -> &'a Value {
    report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no check {name}: {report}"))
}

fn invariant(report: &Value, number: u64) -> bool {
    report["invariants"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["number"] == number)
        .unwrap()["passed"]
        .as_bool()
        .unwrap()
}

async fn sql(pool: &PgPool, statements: &[&str]) {
    let mut conn = pool.acquire().await.unwrap();
    for statement in statements {
        sqlx::query(sqlx::AssertSqlSafe(statement.to_string()))
            .execute(&mut *conn)
            .await
            .unwrap_or_else(|e| panic!("{statement}: {e}"));
    }
}

#[tokio::test]
async fn an_honest_log_passes_and_lookups_answer_from_it() {
    let db = TestDb::new().await;
    append_all(&db.pool, lifecycle()).await;
    publish_checkpoint(&db.pool).await;
    let served = Served::start(db.pool.clone()).await;
    let url = served.url();

    let run = verify(&url, None, true).await;
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    let report = run.json();
    assert_eq!(report["passed"], true);
    assert_eq!(report["tree_size"], 13);
    assert_eq!(report["origin"], "test.example.org/tributary");
    assert_eq!(report["invariants"].as_array().unwrap().len(), 7);
    for n in 0..=6 {
        assert!(invariant(&report, n), "invariant {n}: {report}");
    }
    assert!(report["violations"].as_array().unwrap().is_empty());

    let text = verify(&url, None, false).await;
    assert_eq!(text.code, 0);
    assert!(
        text.stdout.contains("PASS  6 erasure recorded"),
        "{}",
        text.stdout
    );
    assert!(text.stdout.contains("PASS: 13 entries"), "{}", text.stdout);

    // Lookups.
    let key = verifier_key();
    let digest = expert(1).to_string();
    let base = [
        "lookup",
        "--url",
        url.as_str(),
        "--key",
        key.as_str(),
        "--json",
    ];
    let run = auditor(&[&base[..], &["--expert", digest.as_str()][..]].concat()).await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    let answer = run.json();
    assert_eq!(answer["owner"], "org-1");
    assert_eq!(answer["versions"], serde_json::json!([1]));
    assert_eq!(answer["erased_at_entry"], 12);
    assert_eq!(answer["consents"][0]["status"]["state"], "withdrawn");
    assert_eq!(answer["consents"][0]["withdrawal"]["honoured"], true);
    assert_eq!(
        answer["consents"][0]["withdrawal"]["replaced_by"],
        serde_json::json!([2])
    );
    let run = auditor(&[&base[..], &["--version", "1"][..]].concat()).await;
    let answer = run.json();
    assert_eq!(answer["revoked"], true);
    assert_eq!(answer["superseded_by"], 2);
    assert_eq!(answer["experts"].as_array().unwrap().len(), 2);
    let run = auditor(&[&base[..], &["--contributor", "org-2"][..]].concat()).await;
    let answer = run.json();
    assert_eq!(answer["organisation"], "Organisation 2");
    assert_eq!(answer["consents"][0]["status"]["state"], "active");
    let text = auditor(&[
        "lookup",
        "--url",
        url.as_str(),
        "--key",
        key.as_str(),
        "--version",
        "2",
    ])
    .await;
    assert_eq!(text.code, 0);
    assert!(text.stdout.contains("purpose: research"), "{}", text.stdout);
    let unknown = auditor(&[&base[..], &["--contributor", "org-9"][..]].concat()).await;
    assert_eq!(unknown.code, 1);
    assert!(unknown.stderr.contains("does not mention"));

    // A key other than the operator's is refused at the checkpoint.
    let other = NoteSigner::new(
        "test.example.org/tributary",
        ed25519_dalek::SigningKey::from_bytes(&[9; 32]),
    )
    .unwrap()
    .verifier()
    .to_key_string();
    let run = auditor(&[
        "verify",
        "--url",
        url.as_str(),
        "--key",
        other.as_str(),
        "--json",
    ])
    .await;
    assert_eq!(run.code, 1);
    let report = run.json();
    assert_eq!(report["passed"], false);
    assert_eq!(check(&report, "checkpoint signature")["passed"], false);
    // A malformed key or an unreachable server cannot run the audit at all.
    let run = auditor(&["verify", "--url", url.as_str(), "--key", "not-a-key"]).await;
    assert_eq!(run.code, 2);
    assert!(run.stderr.contains("--key"), "{}", run.stderr);

    served.stop().await;
    db.drop_db().await;
}

#[tokio::test]
async fn a_row_edited_in_postgres_fails_the_audit_at_its_index() {
    let db = TestDb::new().await;
    append_all(&db.pool, lifecycle()).await;
    publish_checkpoint(&db.pool).await;
    let served = Served::start(db.pool.clone()).await;
    let url = served.url();
    assert_eq!(verify(&url, None, true).await.code, 0);

    // Entry 3 is organisation 1's consent: a superuser rewrites its terms.
    sql(
        &db.pool,
        &[
            "ALTER TABLE ledger_entries DISABLE TRIGGER USER",
            "UPDATE ledger_entries SET bytes = convert_to(replace(convert_from(bytes, 'UTF8'), \
             'CC-BY-4.0', 'CC0-1.0'), 'UTF8') WHERE idx = 3",
            "ALTER TABLE ledger_entries ENABLE TRIGGER USER",
        ],
    )
    .await;

    let run = verify(&url, None, true).await;
    assert_eq!(run.code, 1, "{}", run.stdout);
    let report = run.json();
    assert_eq!(report["passed"], false);
    let at_3: Vec<&Value> = report["violations"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|v| v["index"] == 3)
        .collect();
    assert!(
        at_3.iter().any(|v| v["invariant"] == 2),
        "the seal of entry 3 breaks: {report}"
    );
    assert!(
        at_3.iter().any(|v| v["invariant"] == 1),
        "entry 3 no longer hashes to its tile: {report}"
    );
    assert!(!invariant(&report, 1));
    assert!(!invariant(&report, 2));
    assert_eq!(
        check(&report, "tiles agree with entries and root")["passed"],
        false
    );
    let text = verify(&url, None, false).await;
    assert_eq!(text.code, 1);
    assert!(
        text.stdout.contains("entry 3: invariant 2"),
        "{}",
        text.stdout
    );
    assert!(text.stdout.contains("FAIL:"), "{}", text.stdout);
    served.stop().await;
    db.drop_db().await;
}

#[tokio::test]
async fn a_rewritten_history_is_caught_through_the_state_file() {
    let db = TestDb::new().await;
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("auditor-state.json");
    let mut events = lifecycle();
    let tail = events.split_off(10); // up to and including version 1
    append_all(&db.pool, events).await;
    publish_checkpoint(&db.pool).await;
    let served = Served::start(db.pool.clone()).await;
    let url = served.url();

    // First run: nothing saved yet; the checkpoint of 10 is saved.
    let run = verify(&url, Some(state.as_path()), true).await;
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    assert!(state.exists());
    // The log grows honestly: the next run accepts the extension.
    append_all(&db.pool, tail).await;
    publish_checkpoint(&db.pool).await;
    let run = verify(&url, Some(state.as_path()), true).await;
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    let report = run.json();
    assert!(
        check(&report, "consistent with saved checkpoint")["detail"]
            .as_str()
            .unwrap()
            .contains("size 10"),
        "{report}"
    );
    let saved = std::fs::read_to_string(&state).unwrap();
    assert!(
        saved.contains("\\n13\\n"),
        "the checkpoint of 13 is saved: {saved}"
    );

    // The operator rewrites history from entry 6 on (as if organisation 2
    // never contributed), re-appends a longer log and signs a new checkpoint.
    sql(
        &db.pool,
        &[
            "ALTER TABLE ledger_entries DISABLE TRIGGER USER",
            "ALTER TABLE ledger_tree_hashes DISABLE TRIGGER USER",
            "ALTER TABLE ledger_checkpoints DISABLE TRIGGER USER",
            "DELETE FROM ledger_entries WHERE idx >= 6",
            "DELETE FROM ledger_tree_hashes WHERE (idx + 1) * (1::bigint << level) > 6",
            "DELETE FROM ledger_checkpoints",
            "ALTER TABLE ledger_entries ENABLE TRIGGER USER",
            "ALTER TABLE ledger_tree_hashes ENABLE TRIGGER USER",
            "ALTER TABLE ledger_checkpoints ENABLE TRIGGER USER",
        ],
    )
    .await;
    let mut rewritten = vec![version(1, None, &[1])];
    rewritten.extend((3..12).map(registration));
    append_all(&db.pool, rewritten).await;
    publish_checkpoint(&db.pool).await;

    // Taken on its own, the rewritten log is a valid log…
    let fresh = verify(&url, None, true).await;
    assert_eq!(fresh.code, 0, "{}", fresh.stdout);
    assert_eq!(fresh.json()["tree_size"], 16);
    // …but not an extension of what this auditor saw before.
    let run = verify(&url, Some(state.as_path()), true).await;
    assert_eq!(run.code, 1, "{}", run.stdout);
    let report = run.json();
    let consistency = check(&report, "consistent with saved checkpoint");
    assert_eq!(consistency["passed"], false);
    assert!(
        consistency["detail"]
            .as_str()
            .unwrap()
            .contains("history was rewritten"),
        "{report}"
    );
    assert!(!invariant(&report, 1));
    // The saved checkpoint is kept, so every later run fails too.
    assert_eq!(std::fs::read_to_string(&state).unwrap(), saved);
    let text = verify(&url, Some(state.as_path()), false).await;
    assert_eq!(text.code, 1);
    assert!(text.stdout.contains("not consistent"), "{}", text.stdout);
    served.stop().await;
    db.drop_db().await;
}
