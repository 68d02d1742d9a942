//! The state replay derives from the log: contributors, consents and their
//! status over time, submissions, experts, versions and their revocations.

use std::collections::{BTreeMap, BTreeSet};

use crate::event::{ExpertManifest, VersionExpert};
use crate::ids::{
    ConsentId, ContributorId, ExpertDigest, LedgerIndex, Purpose, ReasonCode, Sha256Digest,
    SubmissionId, Timestamp, VersionNumber,
};
use crate::keys::PublicKey;

/// A registered contributor.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContributorRecord {
    /// Organisation name.
    pub organisation: String,
    /// The key its statements verify against.
    pub public_key: PublicKey,
    /// Where it was registered.
    pub registered: LedgerIndex,
}

/// How a consent ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConsentEnd {
    /// The contributor withdrew it.
    Withdrawn,
    /// The coordinator recorded its expiry.
    Expired,
}

/// The status of a consent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConsentStatus {
    /// In force (subject to its expiry time).
    Active,
    /// Ended by a `ConsentWithdrawn` or `ConsentExpired` entry.
    Ended {
        /// Withdrawn or expired.
        how: ConsentEnd,
        /// The entry that ended it.
        index: LedgerIndex,
        /// When.
        at: Timestamp,
    },
}

/// A consent and its history.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConsentRecord {
    /// Who granted it.
    pub contributor: ContributorId,
    /// The expert it covers.
    pub expert: ExpertDigest,
    /// Allowed purposes.
    pub purposes: BTreeSet<Purpose>,
    /// Expiry time, if any.
    pub expires_at: Option<Timestamp>,
    /// Data description.
    pub data_description: String,
    /// SPDX licence id.
    pub licence: String,
    /// Jurisdiction.
    pub jurisdiction: String,
    /// Where it was granted.
    pub granted: LedgerIndex,
    /// Current status.
    pub status: ConsentStatus,
}

impl ConsentRecord {
    /// Whether the consent is in force at time `at`: not ended and not past its expiry.
    pub fn is_active_at(&self, at: Timestamp) -> bool {
        self.status == ConsentStatus::Active && self.expires_at.is_none_or(|e| at < e)
    }
}

/// What became of an upload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SubmissionOutcome {
    /// Not yet decided.
    Pending,
    /// Accepted at this entry.
    Accepted(LedgerIndex),
    /// Rejected at this entry, for this reason.
    Rejected(LedgerIndex, ReasonCode),
}

/// An upload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SubmissionRecord {
    /// Uploader.
    pub contributor: ContributorId,
    /// The signed manifest.
    pub manifest: ExpertManifest,
    /// Where it was submitted.
    pub submitted: LedgerIndex,
    /// What became of it.
    pub outcome: SubmissionOutcome,
}

/// An expert (a weight payload identified by its digest).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExpertRecord {
    /// Its owner (first submitter).
    pub contributor: ContributorId,
    /// Uploads of this digest.
    pub submissions: Vec<SubmissionId>,
    /// Where its weights were erased, if they were.
    pub erased: Option<LedgerIndex>,
}

/// A revocation of a version, derived when a consent it lists ends.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Revocation {
    /// The entry that ended the consent.
    pub index: LedgerIndex,
    /// The consent that ended.
    pub consent: ConsentId,
    /// The expert it covered.
    pub expert: ExpertDigest,
}

/// A published model version.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VersionRecord {
    /// Where it was published.
    pub published: LedgerIndex,
    /// When.
    pub at: Timestamp,
    /// The version it replaced.
    pub parent: Option<VersionNumber>,
    /// Its experts, in merge order.
    pub experts: Vec<VersionExpert>,
    /// Its purpose.
    pub purpose: Purpose,
    /// Experts per token.
    pub top_k: u32,
    /// Digest of the assembled checkpoint.
    pub checkpoint: Sha256Digest,
    /// The first later version that names it as parent.
    pub superseded_by: Option<VersionNumber>,
    /// Consents it lists that have since ended.
    pub revocations: Vec<Revocation>,
}

impl VersionRecord {
    /// Whether any consent it lists has ended.
    pub fn is_revoked(&self) -> bool {
        !self.revocations.is_empty()
    }

    /// Whether it lists this consent.
    pub fn lists_consent(&self, consent: &ConsentId) -> bool {
        self.experts.iter().any(|e| &e.consent == consent)
    }
}

/// Everything replay derives from the log.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LedgerState {
    /// The log's origin, from `LogCreated`.
    pub origin: Option<String>,
    /// The operator key that sealed the log.
    pub operator_key: Option<PublicKey>,
    /// Contributors by id.
    pub contributors: BTreeMap<ContributorId, ContributorRecord>,
    /// Consents by id.
    pub consents: BTreeMap<ConsentId, ConsentRecord>,
    /// Uploads by id.
    pub submissions: BTreeMap<SubmissionId, SubmissionRecord>,
    /// Experts by digest.
    pub experts: BTreeMap<ExpertDigest, ExpertRecord>,
    /// Versions by number.
    pub versions: BTreeMap<VersionNumber, VersionRecord>,
}
