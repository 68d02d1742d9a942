//! Answers to the questions users ask of the derived state: which versions
//! contain an expert, is a withdrawal honoured, what did a version contain and
//! under which consents.

use crate::event::VersionExpert;
use crate::ids::{ConsentId, ContributorId, ExpertDigest, LedgerIndex, VersionNumber};
use crate::state::{ConsentRecord, ConsentStatus, LedgerState, VersionRecord};

/// One expert of a version with the consent it was included under.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListedExpert<'a> {
    /// Position among the contributed experts (expert 0 is the public FFN, so this starts at 1).
    pub slot: usize,
    /// The listing as published.
    pub listing: &'a VersionExpert,
    /// Owner of the expert, if known.
    pub contributor: Option<&'a ContributorId>,
    /// The consent's record, if it exists.
    pub consent: Option<&'a ConsentRecord>,
}

/// What a version contained.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VersionContents<'a> {
    /// The version number.
    pub version: VersionNumber,
    /// Its record (purpose, parent, revocations, …).
    pub record: &'a VersionRecord,
    /// Its experts in merge order, with their consents.
    pub experts: Vec<ListedExpert<'a>>,
}

/// Whether a withdrawal (or expiry) of a consent has been honoured.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WithdrawalStatus {
    /// The consent.
    pub consent: ConsentId,
    /// The expert it covered.
    pub expert: ExpertDigest,
    /// The entry that ended the consent, if it has ended.
    pub ended_at: Option<LedgerIndex>,
    /// Versions published before the end that list it (now revoked).
    pub revoked_versions: Vec<VersionNumber>,
    /// For each revoked version, the version that replaced it.
    pub replacements: Vec<VersionNumber>,
    /// Versions published after the end that still list it (must be empty).
    pub listed_after_end: Vec<VersionNumber>,
    /// Revoked versions that no later version replaced (must be empty).
    pub unreplaced: Vec<VersionNumber>,
    /// Where the expert's weights were erased.
    pub erased_at: Option<LedgerIndex>,
    /// Whether erasure is still owed (stored weights, no other consent of the owner in force).
    pub erasure_owed: bool,
}

impl WithdrawalStatus {
    /// Honoured: ended, nothing lists it since, every listing version replaced,
    /// and the weights erased where they had to be.
    pub fn is_honoured(&self) -> bool {
        self.ended_at.is_some()
            && self.listed_after_end.is_empty()
            && self.unreplaced.is_empty()
            && !self.erasure_owed
    }
}

impl LedgerState {
    /// Versions that list an expert, in order.
    pub fn versions_containing(&self, expert: &ExpertDigest) -> Vec<VersionNumber> {
        self.versions
            .iter()
            .filter(|(_, v)| v.experts.iter().any(|x| &x.expert == expert))
            .map(|(n, _)| *n)
            .collect()
    }

    /// Versions no later version replaced: what consumers should be using.
    pub fn current_versions(&self) -> Vec<VersionNumber> {
        self.versions
            .iter()
            .filter(|(_, v)| v.superseded_by.is_none())
            .map(|(n, _)| *n)
            .collect()
    }

    /// Consents granted by a contributor.
    pub fn consents_of(&self, contributor: &ContributorId) -> Vec<(&ConsentId, &ConsentRecord)> {
        self.consents
            .iter()
            .filter(|(_, c)| &c.contributor == contributor)
            .collect()
    }

    /// What a version contained and under which consents.
    pub fn version_contents(&self, version: VersionNumber) -> Option<VersionContents<'_>> {
        let record = self.versions.get(&version)?;
        let experts = record
            .experts
            .iter()
            .enumerate()
            .map(|(i, listing)| ListedExpert {
                slot: i + 1,
                listing,
                contributor: self.experts.get(&listing.expert).map(|x| &x.contributor),
                consent: self.consents.get(&listing.consent),
            })
            .collect();
        Some(VersionContents {
            version,
            record,
            experts,
        })
    }

    /// The status of a consent's withdrawal or expiry; `None` for an unknown consent.
    pub fn withdrawal_status(&self, consent: &ConsentId) -> Option<WithdrawalStatus> {
        let record = self.consents.get(consent)?;
        let ended_at = match record.status {
            ConsentStatus::Ended { index, .. } => Some(index),
            ConsentStatus::Active => None,
        };
        let mut status = WithdrawalStatus {
            consent: consent.clone(),
            expert: record.expert,
            ended_at,
            revoked_versions: Vec::new(),
            replacements: Vec::new(),
            listed_after_end: Vec::new(),
            unreplaced: Vec::new(),
            erased_at: self.experts.get(&record.expert).and_then(|x| x.erased),
            erasure_owed: false,
        };
        let Some(end) = ended_at else {
            return Some(status);
        };
        for (number, version) in &self.versions {
            let lists = version.lists_consent(consent);
            if version.published < end {
                if lists {
                    status.revoked_versions.push(*number);
                    match version.superseded_by {
                        Some(next) => status.replacements.push(next),
                        None => status.unreplaced.push(*number),
                    }
                }
            } else if lists {
                status.listed_after_end.push(*number);
            }
        }
        let stored = self.experts.contains_key(&record.expert) && status.erased_at.is_none();
        let other_consent = self.consents.iter().any(|(id, c)| {
            id != consent
                && c.expert == record.expert
                && c.contributor == record.contributor
                && c.status == ConsentStatus::Active
        });
        status.erasure_owed = stored && !other_consent;
        Some(status)
    }
}
