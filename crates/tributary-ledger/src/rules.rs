//! The consent rules (invariants 3–6 and the referential part of rule 0),
//! applied one authenticated entry at a time to the derived state:
//! registrations, consents, uploads, decisions and versions. Consent endings
//! and the duties they create live in [`crate::withdrawal`].

use std::collections::HashMap;

use crate::entry::Entry;
use crate::event::{
    ConsentGranted, Event, ExpertAccepted, ExpertRejected, ExpertSubmitted, ModelVersionPublished,
};
use crate::ids::{ConsentId, ExpertDigest, LedgerIndex, Timestamp, VersionNumber};
use crate::state::{
    ConsentEnd, ConsentRecord, ConsentStatus, ContributorRecord, ExpertRecord, LedgerState,
    SubmissionOutcome, SubmissionRecord, VersionRecord,
};
use crate::violation::{Rule, Violation};
use crate::withdrawal::{Duty, DutyKind};

/// The rule engine: derived state, violations found so far, open duties, and
/// indexes that keep every step O(affected records) rather than O(log).
#[derive(Clone, Default)]
pub(crate) struct Rules {
    pub(crate) state: LedgerState,
    pub(crate) violations: Vec<Violation>,
    pub(crate) duties: Vec<Duty>,
    /// Consents by the expert they cover.
    pub(crate) consents_by_expert: HashMap<ExpertDigest, Vec<ConsentId>>,
    /// Versions by the consents they list.
    pub(crate) versions_by_consent: HashMap<ConsentId, Vec<VersionNumber>>,
}

impl Rules {
    pub(crate) fn flag(&mut self, index: LedgerIndex, rule: Rule, reason: String) {
        self.violations.push(Violation {
            index,
            rule,
            reason,
        });
    }

    /// Applies one authenticated entry.
    pub(crate) fn apply(&mut self, index: LedgerIndex, entry: &Entry) {
        let at = entry.at;
        match &entry.event {
            Event::LogCreated(e) => {
                self.state.origin = Some(e.origin.clone());
            }
            Event::ContributorRegistered(e) => {
                if self.state.contributors.contains_key(&e.contributor) {
                    let reason = format!("contributor {} is already registered", e.contributor);
                    self.flag(index, Rule::WellFormed, reason);
                    return;
                }
                let record = ContributorRecord {
                    organisation: e.organisation.clone(),
                    public_key: e.public_key,
                    registered: index,
                };
                self.state
                    .contributors
                    .insert(e.contributor.clone(), record);
            }
            Event::ConsentGranted(e) => self.consent_granted(index, e),
            Event::ExpertSubmitted(e) => self.expert_submitted(index, e),
            Event::ExpertAccepted(e) => self.expert_accepted(index, at, e),
            Event::ExpertRejected(e) => self.expert_rejected(index, e),
            Event::ModelVersionPublished(e) => self.version_published(index, at, e),
            Event::ConsentWithdrawn(e) => self.consent_withdrawn(index, at, e),
            Event::ConsentExpired(e) => self.consent_expired(index, at, e),
            Event::ExpertErased(e) => self.expert_erased(index, e),
        }
    }

    fn consent_granted(&mut self, index: LedgerIndex, e: &ConsentGranted) {
        if self.state.consents.contains_key(&e.consent) {
            self.flag(
                index,
                Rule::WellFormed,
                format!("consent id {} is reused", e.consent),
            );
            return;
        }
        if let Some(owner) = self.state.experts.get(&e.expert).map(|x| &x.contributor)
            && owner != &e.contributor
        {
            let reason = format!(
                "{} grants consent {} for expert {}, which was submitted by {owner}",
                e.contributor, e.consent, e.expert
            );
            self.flag(index, Rule::AcceptedWithConsent, reason);
        }
        let record = ConsentRecord {
            contributor: e.contributor.clone(),
            expert: e.expert,
            purposes: e.purposes.iter().cloned().collect(),
            expires_at: e.expires_at,
            data_description: e.data_description.clone(),
            licence: e.licence.clone(),
            jurisdiction: e.jurisdiction.clone(),
            granted: index,
            status: ConsentStatus::Active,
        };
        self.state.consents.insert(e.consent.clone(), record);
        self.consents_by_expert
            .entry(e.expert)
            .or_default()
            .push(e.consent.clone());
    }

    fn expert_submitted(&mut self, index: LedgerIndex, e: &ExpertSubmitted) {
        if self.state.submissions.contains_key(&e.submission) {
            let reason = format!("submission id {} is reused", e.submission);
            self.flag(index, Rule::WellFormed, reason);
            return;
        }
        let digest = e.manifest.total;
        match self.state.experts.get_mut(&digest) {
            Some(expert) if expert.contributor != e.contributor => {
                let reason = format!(
                    "expert {digest} was already submitted by {}, not {}",
                    expert.contributor, e.contributor
                );
                self.flag(index, Rule::WellFormed, reason);
                return;
            }
            Some(expert) => expert.submissions.push(e.submission.clone()),
            None => {
                let record = ExpertRecord {
                    contributor: e.contributor.clone(),
                    submissions: vec![e.submission.clone()],
                    erased: None,
                };
                self.state.experts.insert(digest, record);
            }
        }
        let record = SubmissionRecord {
            contributor: e.contributor.clone(),
            manifest: e.manifest.clone(),
            submitted: index,
            outcome: SubmissionOutcome::Pending,
        };
        self.state.submissions.insert(e.submission.clone(), record);
    }

    /// Why no consent of `owner` covers `expert` at `at`, or `None` if one does.
    fn missing_consent(&self, expert: &ExpertDigest, owner: &str, at: Timestamp) -> Option<String> {
        let mut reasons = Vec::new();
        let ids = self
            .consents_by_expert
            .get(expert)
            .map(Vec::as_slice)
            .unwrap_or_default();
        for (id, consent) in ids
            .iter()
            .filter_map(|id| Some((id, self.state.consents.get(id)?)))
        {
            if consent.contributor.as_str() != owner {
                reasons.push(format!(
                    "consent {id} was granted by {}, not {owner}",
                    consent.contributor
                ));
            } else if consent.is_active_at(at) {
                return None;
            } else {
                reasons.push(describe_inactive(id, consent, at));
            }
        }
        if reasons.is_empty() {
            reasons.push(format!("no consent covers expert {expert}"));
        }
        Some(reasons.join("; "))
    }

    fn expert_accepted(&mut self, index: LedgerIndex, at: Timestamp, e: &ExpertAccepted) {
        let Some(submission) = self.state.submissions.get(&e.submission) else {
            let reason = format!("accepts unknown submission {}", e.submission);
            self.flag(index, Rule::WellFormed, reason);
            return;
        };
        if submission.outcome != SubmissionOutcome::Pending {
            let reason = format!("submission {} was already decided", e.submission);
            self.flag(index, Rule::WellFormed, reason);
            return;
        }
        if submission.manifest.total != e.expert {
            let reason = format!(
                "accepts expert {} but submission {} uploaded {}",
                e.expert, e.submission, submission.manifest.total
            );
            self.flag(index, Rule::WellFormed, reason);
            return;
        }
        let owner = submission.contributor.clone();
        if let Some(why) = self.missing_consent(&e.expert, owner.as_str(), at) {
            let reason = format!(
                "expert {} accepted without an active consent of {owner}: {why}",
                e.expert
            );
            self.flag(index, Rule::AcceptedWithConsent, reason);
        }
        if let Some(submission) = self.state.submissions.get_mut(&e.submission) {
            submission.outcome = SubmissionOutcome::Accepted(index);
        }
    }

    fn expert_rejected(&mut self, index: LedgerIndex, e: &ExpertRejected) {
        match self.state.submissions.get_mut(&e.submission) {
            Some(s) if s.outcome == SubmissionOutcome::Pending => {
                s.outcome = SubmissionOutcome::Rejected(index, e.reason.clone());
            }
            Some(_) => {
                let reason = format!("submission {} was already decided", e.submission);
                self.flag(index, Rule::WellFormed, reason);
            }
            None => {
                let reason = format!("rejects unknown submission {}", e.submission);
                self.flag(index, Rule::WellFormed, reason);
            }
        }
    }

    fn version_published(&mut self, index: LedgerIndex, at: Timestamp, e: &ModelVersionPublished) {
        if let Some((last, _)) = self.state.versions.last_key_value()
            && *last >= e.version
        {
            let reason = format!(
                "version {} is not above the latest version {last}",
                e.version
            );
            self.flag(index, Rule::WellFormed, reason);
            return;
        }
        if let Some(parent) = e.parent
            && !self.state.versions.contains_key(&parent)
        {
            let reason = format!("version {} names unknown parent {parent}", e.version);
            self.flag(index, Rule::WellFormed, reason);
        }
        if e.top_k == 0 {
            self.flag(
                index,
                Rule::WellFormed,
                format!("version {} has top_k 0", e.version),
            );
        }
        for (position, listed) in e.experts.iter().enumerate() {
            if e.experts[..position]
                .iter()
                .any(|earlier| earlier.expert == listed.expert)
            {
                let reason = format!("version {} lists expert {} twice", e.version, listed.expert);
                self.flag(index, Rule::VersionContents, reason);
            }
            if let Some((rule, why)) = self.listing_problem(at, e, listed) {
                let reason = format!(
                    "version {} lists expert {} under consent {}: {why}",
                    e.version, listed.expert, listed.consent
                );
                self.flag(index, rule, reason);
            }
        }
        // Replacing a head discharges the duties of the consents it drops.
        if let Some(parent) = e.parent {
            self.duties.retain(|duty| {
                duty.what != DutyKind::Replace(parent)
                    || e.experts.iter().any(|x| x.consent == duty.consent)
            });
            if let Some(record) = self.state.versions.get_mut(&parent)
                && record.superseded_by.is_none()
            {
                record.superseded_by = Some(e.version);
            }
        }
        let record = VersionRecord {
            published: index,
            at,
            parent: e.parent,
            experts: e.experts.clone(),
            purpose: e.purpose.clone(),
            top_k: e.top_k,
            checkpoint: e.checkpoint,
            superseded_by: None,
            revocations: Vec::new(),
        };
        for listed in &e.experts {
            self.versions_by_consent
                .entry(listed.consent.clone())
                .or_default()
                .push(e.version);
        }
        self.state.versions.insert(e.version, record);
    }

    /// The first problem with listing one expert in a version, with the rule it breaks.
    fn listing_problem(
        &self,
        at: Timestamp,
        e: &ModelVersionPublished,
        listed: &crate::event::VersionExpert,
    ) -> Option<(Rule, String)> {
        let Some(submission) = self.state.submissions.get(&listed.submission) else {
            return Some((
                Rule::VersionContents,
                format!("submission {} is unknown", listed.submission),
            ));
        };
        if !matches!(submission.outcome, SubmissionOutcome::Accepted(_)) {
            return Some((
                Rule::VersionContents,
                format!("submission {} was not accepted", listed.submission),
            ));
        }
        if submission.manifest.total != listed.expert {
            let why = format!(
                "submission {} uploaded {}",
                listed.submission, submission.manifest.total
            );
            return Some((Rule::VersionContents, why));
        }
        let erased = self
            .state
            .experts
            .get(&listed.expert)
            .and_then(|x| x.erased);
        let Some(consent) = self.state.consents.get(&listed.consent) else {
            return Some((Rule::VersionContents, "the consent does not exist".into()));
        };
        if consent.expert != listed.expert || consent.contributor != submission.contributor {
            let why = format!(
                "the consent was granted by {} for expert {}",
                consent.contributor, consent.expert
            );
            return Some((Rule::VersionContents, why));
        }
        if let ConsentStatus::Ended { how, index, .. } = consent.status {
            let how = match how {
                ConsentEnd::Withdrawn => "withdrawn",
                ConsentEnd::Expired => "expired",
            };
            return Some((
                Rule::WithdrawalHonoured,
                format!("the consent was {how} at entry {index}"),
            ));
        }
        if let Some(erased) = erased {
            return Some((
                Rule::WithdrawalHonoured,
                format!("its weights were erased at entry {erased}"),
            ));
        }
        if !consent.is_active_at(at) {
            return Some((
                Rule::VersionContents,
                describe_inactive(&listed.consent, consent, at),
            ));
        }
        if !consent.purposes.contains(&e.purpose) {
            let allowed: Vec<&str> = consent.purposes.iter().map(|p| p.as_str()).collect();
            let why = format!(
                "purpose {} is not among the allowed [{}]",
                e.purpose,
                allowed.join(", ")
            );
            return Some((Rule::VersionContents, why));
        }
        None
    }
}

fn describe_inactive(id: &ConsentId, consent: &ConsentRecord, at: Timestamp) -> String {
    match consent.status {
        ConsentStatus::Ended {
            how: ConsentEnd::Withdrawn,
            index,
            ..
        } => {
            format!("consent {id} was withdrawn at entry {index}")
        }
        ConsentStatus::Ended {
            how: ConsentEnd::Expired,
            index,
            ..
        } => {
            format!("consent {id} was recorded as expired at entry {index}")
        }
        ConsentStatus::Active => match consent.expires_at {
            Some(expiry) => format!("consent {id} expired at time {expiry}, before time {at}"),
            None => format!("consent {id} is not active"),
        },
    }
}
