//! `auditor lookup`: what the replayed ledger says about one contributor,
//! expert or version — consents and their status, submissions, the versions
//! that list an expert, revocations and erasures — as JSON or indented text.

use serde_json::{Value, json};
use tributary_ledger::state::{ConsentRecord, ConsentStatus, SubmissionOutcome};
use tributary_ledger::{
    ConsentId, ContributorId, ExpertDigest, LedgerState, Sha256Digest, VersionNumber,
};

/// What to look up.
#[derive(Clone, Debug)]
pub enum Subject {
    /// A contributor by id.
    Contributor(String),
    /// An expert by its hex digest.
    Expert(String),
    /// A version by number.
    Version(u64),
}

fn consent_json(id: &ConsentId, record: &ConsentRecord, state: &LedgerState) -> Value {
    let status = match record.status {
        ConsentStatus::Active => json!({ "state": "active" }),
        ConsentStatus::Ended { how, index, at } => json!({
            "state": format!("{how:?}").to_lowercase(),
            "entry": index.0,
            "at": at.0,
        }),
    };
    let withdrawal = state.withdrawal_status(id).filter(|w| w.ended_at.is_some());
    json!({
        "consent": id.as_str(),
        "expert": record.expert.to_string(),
        "purposes": record.purposes.iter().map(|p| p.as_str()).collect::<Vec<_>>(),
        "expires_at": record.expires_at.map(|t| t.0),
        "data_description": record.data_description,
        "licence": record.licence,
        "jurisdiction": record.jurisdiction,
        "granted_at_entry": record.granted.0,
        "status": status,
        "withdrawal": withdrawal.map(|w| json!({
            "honoured": w.is_honoured(),
            "revoked_versions": w.revoked_versions.iter().map(|v| v.0).collect::<Vec<_>>(),
            "replaced_by": w.replacements.iter().map(|v| v.0).collect::<Vec<_>>(),
            "listed_after_end": w.listed_after_end.iter().map(|v| v.0).collect::<Vec<_>>(),
            "erased_at_entry": w.erased_at.map(|i| i.0),
        })),
    })
}

fn expert_json(digest: &ExpertDigest, state: &LedgerState) -> Option<Value> {
    let record = state.experts.get(digest);
    let consents: Vec<Value> = state
        .consents
        .iter()
        .filter(|(_, c)| &c.expert == digest)
        .map(|(id, c)| consent_json(id, c, state))
        .collect();
    if record.is_none() && consents.is_empty() {
        return None;
    }
    let submissions: Vec<Value> = state
        .submissions
        .iter()
        .filter(|(_, s)| &s.manifest.total == digest)
        .map(|(id, s)| {
            let outcome = match &s.outcome {
                SubmissionOutcome::Pending => json!({ "state": "pending" }),
                SubmissionOutcome::Accepted(i) => json!({ "state": "accepted", "entry": i.0 }),
                SubmissionOutcome::Rejected(i, reason) => {
                    json!({ "state": "rejected", "entry": i.0, "reason": reason.as_str() })
                }
            };
            json!({
                "submission": id.as_str(),
                "contributor": s.contributor.as_str(),
                "submitted_at_entry": s.submitted.0,
                "outcome": outcome,
            })
        })
        .collect();
    Some(json!({
        "expert": digest.to_string(),
        "owner": record.map(|r| r.contributor.as_str()),
        "erased_at_entry": record.and_then(|r| r.erased).map(|i| i.0),
        "submissions": submissions,
        "consents": consents,
        "versions": state.versions_containing(digest).iter().map(|v| v.0).collect::<Vec<_>>(),
    }))
}

/// The answer about a subject, or `None` when the ledger does not mention it.
pub fn lookup(state: &LedgerState, subject: &Subject) -> anyhow::Result<Option<Value>> {
    Ok(match subject {
        Subject::Contributor(id) => {
            let id = ContributorId::new(id.clone())?;
            state.contributors.get(&id).map(|record| {
                let consents: Vec<Value> = state
                    .consents_of(&id)
                    .into_iter()
                    .map(|(cid, c)| consent_json(cid, c, state))
                    .collect();
                let experts: Vec<Value> = state
                    .experts
                    .iter()
                    .filter(|(_, e)| e.contributor == id)
                    .filter_map(|(digest, _)| expert_json(digest, state))
                    .collect();
                json!({
                    "contributor": id.as_str(),
                    "organisation": record.organisation,
                    "registered_at_entry": record.registered.0,
                    "consents": consents,
                    "experts": experts,
                })
            })
        }
        Subject::Expert(hex) => {
            let digest = ExpertDigest(Sha256Digest::from_hex(hex.trim_start_matches("sha256:"))?);
            expert_json(&digest, state)
        }
        Subject::Version(number) => {
            state
                .version_contents(VersionNumber(*number))
                .map(|contents| {
                    let record = contents.record;
                    let experts: Vec<Value> = contents
                    .experts
                    .iter()
                    .map(|e| {
                        json!({
                            "slot": e.slot,
                            "expert": e.listing.expert.to_string(),
                            "submission": e.listing.submission.as_str(),
                            "consent": e.listing.consent.as_str(),
                            "contributor": e.contributor.map(|c| c.as_str()),
                            "consent_active": e.consent.map(|c| c.status == ConsentStatus::Active),
                        })
                    })
                    .collect();
                    json!({
                        "version": number,
                        "published_at_entry": record.published.0,
                        "at": record.at.0,
                        "parent": record.parent.map(|v| v.0),
                        "purpose": record.purpose.as_str(),
                        "top_k": record.top_k,
                        "checkpoint": record.checkpoint.to_string(),
                        "superseded_by": record.superseded_by.map(|v| v.0),
                        "revoked": record.is_revoked(),
                        "revocations": record.revocations.iter().map(|r| json!({
                            "entry": r.index.0,
                            "consent": r.consent.as_str(),
                            "expert": r.expert.to_string(),
                        })).collect::<Vec<_>>(),
                        "experts": experts,
                    })
                })
        }
    })
}

/// Renders a JSON value as indented `key: value` text.
pub fn to_text(value: &Value) -> String {
    let mut out = String::new();
    write_value(&mut out, value, 0);
    out
}

fn scalar(value: &Value) -> Option<String> {
    match value {
        Value::Null => Some("-".into()),
        Value::Bool(b) => Some(b.to_string()),
        Value::Number(n) => Some(n.to_string()),
        Value::String(s) => Some(s.clone()),
        Value::Array(items) if items.is_empty() => Some("none".into()),
        Value::Array(items) if items.iter().all(|i| !i.is_object() && !i.is_array()) => Some(
            items
                .iter()
                .filter_map(scalar)
                .collect::<Vec<_>>()
                .join(", "),
        ),
        _ => None,
    }
}

fn write_value(out: &mut String, value: &Value, depth: usize) {
    let pad = "  ".repeat(depth);
    match value {
        Value::Object(map) => {
            for (key, item) in map {
                match scalar(item) {
                    Some(text) => out.push_str(&format!("{pad}{key}: {text}\n")),
                    None => {
                        out.push_str(&format!("{pad}{key}:\n"));
                        write_value(out, item, depth + 1);
                    }
                }
            }
        }
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                out.push_str(&format!("{pad}- [{i}]\n"));
                write_value(out, item, depth + 1);
            }
        }
        other => {
            if let Some(text) = scalar(other) {
                out.push_str(&format!("{pad}{text}\n"));
            }
        }
    }
}
