//! What the remote commands print: one function per answer, each returning
//! the text (so that tests read what a user reads).

use std::fmt::Write as _;

use tributary_client::DownloadedFile;
use tributary_ledger::{Entry, Event};
use tributary_protos::v1;

/// The first 16 hex digits of a wire digest.
fn short(digest: Option<&v1::Digest>) -> String {
    digest.map_or_else(
        || "-".into(),
        |d| hex::encode(d.sha256.iter().take(8).copied().collect::<Vec<_>>()),
    )
}

/// `#index` of a receipt, `-` without one; ` (verified)` when it was.
fn receipt(label: &str, r: Option<&v1::Receipt>, verified: bool) -> String {
    let index = r.map_or_else(|| "-".into(), |r| format!("#{}", r.index));
    let mark = if verified && r.is_some() {
        " (verified)"
    } else {
        ""
    };
    format!("{label} {index}{mark}")
}

/// After `register`.
pub fn registered(r: &v1::RegisterResponse, verified: bool) -> String {
    let who = r.contributor.as_ref();
    format!(
        "registered {} ({}); {}\n",
        who.map_or("?", |c| c.contributor_id.as_str()),
        who.map_or("?", |c| c.organisation.as_str()),
        receipt("ledger entry", r.receipt.as_ref(), verified)
    )
}

fn state_name(state: i32) -> &'static str {
    match v1::ConsentState::try_from(state) {
        Ok(v1::ConsentState::Active) => "active",
        Ok(v1::ConsentState::Withdrawn) => "withdrawn",
        Ok(v1::ConsentState::Expired) => "expired",
        _ => "unknown",
    }
}

/// One consent per line.
pub fn consents(list: &[v1::Consent]) -> String {
    let mut out = String::new();
    for c in list {
        let Some(t) = c.terms.as_ref() else { continue };
        let expires = match u64::try_from(t.expires_at_unix) {
            Ok(secs) if secs > 0 => humantime::format_rfc3339_seconds(
                std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs),
            )
            .to_string(),
            _ => "never".into(),
        };
        let ended = c
            .ended_index
            .map_or_else(String::new, |i| format!(", ended #{i}"));
        let _ = writeln!(
            out,
            "{}  {}  expert {}  purposes {}  licence {}  jurisdiction {}  expires {}  granted #{}{}",
            t.consent_id,
            state_name(c.state),
            short(t.expert.as_ref()),
            t.purposes.join(","),
            t.licence,
            t.jurisdiction,
            expires,
            c.granted_index,
            ended
        );
    }
    if out.is_empty() {
        out.push_str("no consents\n");
    }
    out
}

/// After `consent grant`.
pub fn granted(r: &v1::ConsentResponse, verified: bool) -> String {
    let list = r
        .consent
        .as_ref()
        .map(|c| consents(std::slice::from_ref(c)));
    format!(
        "{}{}\n",
        list.unwrap_or_default(),
        receipt("ledger entry", r.receipt.as_ref(), verified)
    )
}

fn numbers(list: &[u64]) -> String {
    if list.is_empty() {
        return "none".into();
    }
    list.iter()
        .map(u64::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// After `consent withdraw`.
pub fn withdrawn(r: &v1::WithdrawConsentResponse, verified: bool) -> String {
    format!(
        "withdrawn: {}\nversions published without the expert: {}\nversions revoked: {}\nweights erased: {}\n",
        receipt("ledger entry", r.withdrawal.as_ref(), verified),
        numbers(&r.published_versions),
        numbers(&r.revoked_versions),
        match r.erasure.as_ref() {
            Some(_) => receipt("yes, ledger entry", r.erasure.as_ref(), verified),
            None => "no (no stored weights)".into(),
        }
    )
}

fn submission_state(state: i32) -> &'static str {
    match v1::SubmissionState::try_from(state) {
        Ok(v1::SubmissionState::Validating) => "validating",
        Ok(v1::SubmissionState::Accepted) => "accepted",
        Ok(v1::SubmissionState::Rejected) => "rejected",
        Ok(v1::SubmissionState::Erased) => "erased",
        _ => "unknown",
    }
}

/// After `upload` and `status`: the state, every validation step with its
/// figure, and the receipts.
pub fn submission(s: &v1::SubmissionStatus, verified: bool) -> String {
    let mut out = format!(
        "submission {} by {}: expert {} {}",
        s.submission_id,
        s.contributor_id,
        short(s.expert.as_ref()),
        submission_state(s.state)
    );
    if !s.reason_code.is_empty() {
        let _ = write!(out, " ({})", s.reason_code);
    }
    out.push('\n');
    let _ = writeln!(
        out,
        "  {:<22} {:<6} {:<22} detail",
        "step", "result", "figure"
    );
    for r in &s.results {
        let result = if r.passed { "pass" } else { "FAIL" };
        let figure = if r.figure.is_empty() { "-" } else { &r.figure };
        let detail = if r.reason_code.is_empty() {
            r.detail.clone()
        } else {
            format!("{}: {}", r.reason_code, r.detail)
        };
        let _ = writeln!(out, "  {:<22} {result:<6} {figure:<22} {detail}", r.step);
    }
    let _ = writeln!(
        out,
        "receipts: {}, {}",
        receipt("submitted", s.submitted.as_ref(), verified),
        receipt("decided", s.decided.as_ref(), verified)
    );
    out
}

/// One version per line, with its experts.
pub fn versions(list: &[v1::ModelVersion]) -> String {
    let mut out = String::new();
    for v in list {
        let parent = v.parent.map_or_else(|| "-".into(), |p| p.to_string());
        let revoked = if v.revoked { "  REVOKED" } else { "" };
        let _ = writeln!(
            out,
            "version {}  purpose {}  parent {}  top-k {}  {} expert(s)  ledger #{}{}",
            v.version,
            v.purpose,
            parent,
            v.top_k,
            v.experts.len(),
            v.ledger_index,
            revoked
        );
        for e in &v.experts {
            let _ = writeln!(
                out,
                "  expert {}: {}  submission {}  consent {}",
                e.position,
                short(e.expert.as_ref()),
                e.submission_id,
                e.consent_id
            );
        }
    }
    if out.is_empty() {
        out.push_str("no versions\n");
    }
    out
}

/// After `download`.
pub fn downloaded(version: u64, files: &[DownloadedFile]) -> String {
    let mut out = format!("version {version}:\n");
    for f in files {
        let _ = writeln!(
            out,
            "  {}  {} bytes  sha256 {} (checked)",
            f.path.display(),
            f.size,
            hex::encode(f.sha256)
        );
    }
    out
}

/// What an event says, in a few words.
pub fn event_summary(event: &Event) -> String {
    match event {
        Event::LogCreated(e) => format!("log {}", e.origin),
        Event::ContributorRegistered(e) => format!("{} ({})", e.contributor, e.organisation),
        Event::ConsentGranted(e) => format!(
            "consent {} for expert {}",
            e.consent,
            &e.expert.to_string()[..16]
        ),
        Event::ExpertSubmitted(e) => format!(
            "submission {} of expert {}",
            e.submission,
            &e.manifest.total.to_string()[..16]
        ),
        Event::ExpertAccepted(e) => format!(
            "submission {} ({} checks passed)",
            e.submission,
            e.results.len()
        ),
        Event::ExpertRejected(e) => format!("submission {}: {}", e.submission, e.reason),
        Event::ModelVersionPublished(e) => format!(
            "version {} ({}, {} experts)",
            e.version,
            e.purpose,
            e.experts.len()
        ),
        Event::ConsentWithdrawn(e) => format!("consent {}", e.consent),
        Event::ConsentExpired(e) => format!("consent {}", e.consent),
        Event::ExpertErased(e) => format!("expert {}", &e.expert.to_string()[..16]),
    }
}

/// After `receipts`: one verified entry per line.
pub fn receipts(entries: &[Entry]) -> String {
    let mut out = String::new();
    for e in entries {
        let _ = writeln!(
            out,
            "#{:<5} {:<22} {}  receipt verified",
            e.index.0,
            e.event.kind(),
            event_summary(&e.event)
        );
    }
    let _ = writeln!(
        out,
        "{} entries, each included in the operator-signed checkpoint",
        entries.len()
    );
    out
}
