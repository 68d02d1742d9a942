//! Consent endings and the coordinator's duties: a withdrawal or expiry
//! revokes every version that lists the consent and obliges the coordinator to
//! replace each current one with a version without it and to erase the
//! expert's weights, in the run of coordinator entries that follows.
//!
//! DESIGN.md requires both in the same transaction as the withdrawal, and
//! appends are serialised, so the next contributor entry, or the end of the
//! log, is the deadline. An undischarged duty is reported at the index of the
//! withdrawal that created it.

use crate::event::{ConsentExpired, ConsentWithdrawn, ExpertErased};
use crate::ids::{ConsentId, ExpertDigest, LedgerIndex, Timestamp, VersionNumber};
use crate::rules::Rules;
use crate::state::{ConsentEnd, ConsentStatus, Revocation};
use crate::violation::Rule;

/// Something the coordinator owes after a consent ended.
#[derive(Clone, Debug)]
pub(crate) struct Duty {
    /// The withdrawal or expiry that created it.
    pub(crate) origin: LedgerIndex,
    pub(crate) consent: ConsentId,
    pub(crate) expert: ExpertDigest,
    pub(crate) what: DutyKind,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum DutyKind {
    /// Publish a version with this parent that does not list the consent.
    Replace(VersionNumber),
    /// Record `ExpertErased` for the expert.
    Erase,
}

impl Rules {
    /// Closes the coordinator's run: every open duty is now overdue.
    pub(crate) fn close_run(&mut self, deadline: &str) {
        for duty in std::mem::take(&mut self.duties) {
            let (rule, reason) = match duty.what {
                DutyKind::Replace(head) => (
                    Rule::WithdrawalHonoured,
                    format!(
                        "consent {} (expert {}) ended here, but version {head}, which lists it, \
                         was not replaced by a version without it before {deadline}",
                        duty.consent, duty.expert
                    ),
                ),
                DutyKind::Erase => (
                    Rule::ErasureRecorded,
                    format!(
                        "consent {} ended here, but the weights of expert {} were not erased \
                         before {deadline}",
                        duty.consent, duty.expert
                    ),
                ),
            };
            self.flag(duty.origin, rule, reason);
        }
    }

    pub(crate) fn consent_withdrawn(
        &mut self,
        index: LedgerIndex,
        at: Timestamp,
        e: &ConsentWithdrawn,
    ) {
        let Some(consent) = self.state.consents.get(&e.consent) else {
            self.flag(
                index,
                Rule::WellFormed,
                format!("withdraws unknown consent {}", e.consent),
            );
            return;
        };
        if consent.contributor != e.contributor {
            let reason = format!(
                "{} withdraws consent {}, which belongs to {}",
                e.contributor, e.consent, consent.contributor
            );
            self.flag(index, Rule::Signatures, reason);
            return;
        }
        self.end_consent(index, at, &e.consent, ConsentEnd::Withdrawn);
    }

    pub(crate) fn consent_expired(
        &mut self,
        index: LedgerIndex,
        at: Timestamp,
        e: &ConsentExpired,
    ) {
        let Some(consent) = self.state.consents.get(&e.consent) else {
            self.flag(
                index,
                Rule::WellFormed,
                format!("expires unknown consent {}", e.consent),
            );
            return;
        };
        if consent.expires_at.is_none_or(|expiry| at < expiry) {
            let reason = format!(
                "consent {} is recorded as expired before its expiry time",
                e.consent
            );
            self.flag(index, Rule::WellFormed, reason);
        }
        self.end_consent(index, at, &e.consent, ConsentEnd::Expired);
    }

    /// Ends a consent: revokes the versions that list it and opens the coordinator's duties.
    fn end_consent(&mut self, index: LedgerIndex, at: Timestamp, id: &ConsentId, how: ConsentEnd) {
        let Some(consent) = self.state.consents.get_mut(id) else {
            return;
        };
        if consent.status != ConsentStatus::Active {
            self.flag(
                index,
                Rule::WellFormed,
                format!("consent {id} had already ended"),
            );
            return;
        }
        consent.status = ConsentStatus::Ended { how, index, at };
        let expert = consent.expert;
        let owner = consent.contributor.clone();
        let listing = self
            .versions_by_consent
            .get(id)
            .cloned()
            .unwrap_or_default();
        for number in listing {
            let Some(version) = self.state.versions.get_mut(&number) else {
                continue;
            };
            version.revocations.push(Revocation {
                index,
                consent: id.clone(),
                expert,
            });
            if version.superseded_by.is_none() {
                self.duties.push(Duty {
                    origin: index,
                    consent: id.clone(),
                    expert,
                    what: DutyKind::Replace(number),
                });
            }
        }
        let still_consented = self
            .consents_by_expert
            .get(&expert)
            .into_iter()
            .flatten()
            .filter_map(|c| self.state.consents.get(c))
            .any(|c| c.contributor == owner && c.is_active_at(at));
        let stored = self
            .state
            .experts
            .get(&expert)
            .is_some_and(|x| x.erased.is_none());
        if stored && !still_consented {
            self.duties.push(Duty {
                origin: index,
                consent: id.clone(),
                expert,
                what: DutyKind::Erase,
            });
        }
    }

    pub(crate) fn expert_erased(&mut self, index: LedgerIndex, e: &ExpertErased) {
        match self.state.experts.get_mut(&e.expert) {
            None => {
                self.flag(
                    index,
                    Rule::WellFormed,
                    format!("erases unknown expert {}", e.expert),
                );
            }
            Some(expert) if expert.erased.is_some() => {
                self.flag(
                    index,
                    Rule::WellFormed,
                    format!("expert {} was already erased", e.expert),
                );
            }
            Some(expert) => {
                expert.erased = Some(index);
                self.duties
                    .retain(|d| !(d.what == DutyKind::Erase && d.expert == e.expert));
            }
        }
    }
}
