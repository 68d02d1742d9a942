//! A generator of realistic consent ledgers for the tests: several
//! contributors granting consents with purposes and expiry times, uploads that
//! are accepted or rejected, versions for two purposes, withdrawals and
//! expiries with their replacement versions and erasures.
//!
//! The generator writes a *script* of signed events with their times; tests
//! may change the script (as a dishonest operator would, re-sealing
//! everything) or the sealed bytes (as a database edit would, without keys).

use std::collections::BTreeMap;

use ed25519_dalek::SigningKey;
use tributary_ledger::event::{
    ConsentExpired, ConsentGranted, ConsentWithdrawn, ContributorRegistered, ExpertAccepted,
    ExpertErased, ExpertManifest, ExpertRejected, ExpertSubmitted, Figure, LogCreated,
    ModelVersionPublished, TensorDigest, TrainingMetadata, ValidationResult, VersionExpert,
};
use tributary_ledger::{
    CompactRange, ConsentId, ContributorId, Entry, Event, ExpertDigest, LedgerIndex, PublicKey,
    Purpose, ReasonCode, Sha256Digest, SignedEvent, SubmissionId, Timestamp, VersionNumber,
};

pub const ORIGIN: &str = "ledger.example.org/tributary";

/// One scripted event and the time the coordinator appends it.
#[derive(Clone, Debug)]
pub struct Step {
    pub at: Timestamp,
    pub signed: SignedEvent,
}

/// A deterministic key from a label.
pub fn key(label: &str) -> SigningKey {
    SigningKey::from_bytes(&Sha256Digest::of(label.as_bytes()).0)
}

/// A small deterministic pseudo-random generator (xorshift64*).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

#[derive(Clone, Debug)]
struct Live {
    consent: ConsentId,
    submission: SubmissionId,
    expert: ExpertDigest,
    purposes: Vec<Purpose>,
    expires_at: Option<Timestamp>,
    owner: usize,
}

/// Everything needed to write and re-sign a log.
pub struct World {
    pub operator: SigningKey,
    pub contributors: Vec<(ContributorId, SigningKey)>,
    pub script: Vec<Step>,
    rng: Rng,
    now: u64,
    counter: u64,
    /// Accepted experts whose consent is in force.
    live: Vec<Live>,
    /// Head version of each purpose line.
    heads: BTreeMap<Purpose, (VersionNumber, Vec<VersionExpert>)>,
    next_version: u64,
}

pub fn purpose(name: &str) -> Purpose {
    Purpose::new(name).unwrap()
}

impl World {
    pub fn new(seed: u64) -> Self {
        let operator = key("operator");
        let mut world = World {
            operator,
            contributors: Vec::new(),
            script: Vec::new(),
            rng: Rng(seed | 1),
            now: 1_750_000_000,
            counter: 0,
            live: Vec::new(),
            heads: BTreeMap::new(),
            next_version: 10,
        };
        let created = Event::LogCreated(LogCreated {
            origin: ORIGIN.into(),
            operator_key: PublicKey::of(&world.operator),
        });
        world.push(SignedEvent::coordinator(created));
        world
    }

    fn tick(&mut self) {
        self.now += 1 + self.rng.below(600);
    }

    fn fresh(&mut self, prefix: &str) -> String {
        self.counter += 1;
        format!("{prefix}-{}", self.counter)
    }

    pub fn push(&mut self, signed: SignedEvent) {
        self.script.push(Step {
            at: Timestamp(self.now),
            signed,
        });
    }

    pub fn contributor_event(&mut self, who: usize, event: Event) {
        let signed = SignedEvent::contributor(event, &self.contributors[who].1).unwrap();
        self.push(signed);
    }

    pub fn register(&mut self, name: &str) -> usize {
        self.tick();
        let id = ContributorId::new(name).unwrap();
        let signing = key(&format!("contributor {name}"));
        let event = Event::ContributorRegistered(ContributorRegistered {
            contributor: id.clone(),
            organisation: format!("{name} organisation"),
            public_key: PublicKey::of(&signing),
        });
        let signed = SignedEvent::contributor(event, &signing)
            .unwrap()
            .invited_by(&self.operator)
            .unwrap();
        self.push(signed);
        self.contributors.push((id, signing));
        self.contributors.len() - 1
    }

    /// Grants, submits and validates one expert; returns whether it was accepted.
    pub fn contribute(&mut self, who: usize) -> bool {
        self.tick();
        let contributor = self.contributors[who].0.clone();
        let expert = ExpertDigest(Sha256Digest::of(self.fresh("weights").as_bytes()));
        let consent = ConsentId::new(self.fresh("consent")).unwrap();
        let purposes = match self.rng.below(3) {
            0 => vec![purpose("research")],
            1 => vec![purpose("commercial")],
            _ => vec![purpose("commercial"), purpose("research")],
        };
        let expires_at = self
            .rng
            .chance(30)
            .then(|| Timestamp(self.now + 3_000 + self.rng.below(30_000)));
        let grant = Event::ConsentGranted(ConsentGranted {
            consent: consent.clone(),
            contributor: contributor.clone(),
            expert,
            purposes: purposes.clone(),
            expires_at,
            data_description: format!("case files of {contributor}"),
            licence: "CC-BY-4.0".into(),
            jurisdiction: "EU".into(),
        });
        self.contributor_event(who, grant);
        self.tick();
        let submission = SubmissionId::new(self.fresh("upload")).unwrap();
        self.contributor_event(who, submitted(&submission, &contributor, expert));
        self.tick();
        if self.rng.chance(20) {
            let rejected = Event::ExpertRejected(ExpertRejected {
                submission,
                reason: ReasonCode::new("norm_ratio_out_of_bounds").unwrap(),
                results: vec![
                    check("sha256", true, None),
                    check("norm_ratio", false, Some(41.5)),
                ],
            });
            self.push(SignedEvent::coordinator(rejected));
            // Rejected weights are deleted too; the consent stays on record.
            self.push(SignedEvent::coordinator(Event::ExpertErased(
                ExpertErased { expert },
            )));
            return false;
        }
        self.push(SignedEvent::coordinator(accepted(&submission, expert)));
        self.live.push(Live {
            consent,
            submission,
            expert,
            purposes: purposes.clone(),
            expires_at,
            owner: who,
        });
        for p in purposes {
            self.publish(&p, None);
        }
        true
    }

    /// Publishes a new head for a purpose line with every live expert allowed for it.
    fn publish(&mut self, purpose_line: &Purpose, without: Option<&ConsentId>) {
        let now = Timestamp(self.now);
        let experts: Vec<VersionExpert> = self
            .live
            .iter()
            .filter(|l| l.purposes.contains(purpose_line))
            .filter(|l| l.expires_at.is_none_or(|e| now < e))
            .filter(|l| Some(&l.consent) != without)
            .map(|l| VersionExpert {
                submission: l.submission.clone(),
                expert: l.expert,
                consent: l.consent.clone(),
            })
            .collect();
        let parent = self.heads.get(purpose_line).map(|(v, _)| *v);
        let version = VersionNumber(self.next_version);
        self.next_version += 10;
        let event = Event::ModelVersionPublished(ModelVersionPublished {
            version,
            parent,
            experts: experts.clone(),
            purpose: purpose_line.clone(),
            top_k: 2,
            checkpoint: Sha256Digest::of(format!("assembled {version}").as_bytes()),
        });
        self.push(SignedEvent::coordinator(event));
        self.heads.insert(purpose_line.clone(), (version, experts));
    }

    /// Ends a live consent (withdrawal or expiry) and performs the coordinator's duties.
    fn end(&mut self, position: usize, withdrawn: bool) {
        let live = self.live.remove(position);
        if withdrawn {
            let event = Event::ConsentWithdrawn(ConsentWithdrawn {
                consent: live.consent.clone(),
                contributor: self.contributors[live.owner].0.clone(),
                withdrawn_at: Timestamp(self.now),
            });
            self.contributor_event(live.owner, event);
        } else {
            let event = Event::ConsentExpired(ConsentExpired {
                consent: live.consent.clone(),
            });
            self.push(SignedEvent::coordinator(event));
        }
        let lines: Vec<Purpose> = self
            .heads
            .iter()
            .filter(|(_, (_, experts))| experts.iter().any(|e| e.consent == live.consent))
            .map(|(p, _)| p.clone())
            .collect();
        for line in lines {
            self.publish(&line, Some(&live.consent));
        }
        let erased = Event::ExpertErased(ExpertErased {
            expert: live.expert,
        });
        self.push(SignedEvent::coordinator(erased));
    }

    /// Records the expiry of every consent whose time has come.
    fn expire_due(&mut self) {
        while let Some(position) = self
            .live
            .iter()
            .position(|l| l.expires_at.is_some_and(|e| e.0 <= self.now))
        {
            self.end(position, false);
        }
    }

    /// Withdraws a random live consent; returns whether there was one.
    pub fn withdraw_random(&mut self) -> bool {
        if self.live.is_empty() {
            return false;
        }
        self.tick();
        self.expire_due();
        if self.live.is_empty() {
            return false;
        }
        let position = self.rng.below(self.live.len() as u64) as usize;
        self.end(position, true);
        true
    }

    /// Writes a log of roughly `target` entries.
    pub fn generate(seed: u64, target: usize) -> Self {
        let mut world = World::new(seed);
        for name in [
            "hospital-a",
            "lawfirm-b",
            "publisher-c",
            "archive-d",
            "clinic-e",
            "press-f",
        ] {
            world.register(name);
        }
        while world.script.len() < target {
            world.expire_due();
            let who = world.rng.below(world.contributors.len() as u64) as usize;
            if world.rng.chance(25) {
                world.withdraw_random();
            } else {
                world.contribute(who);
            }
        }
        world
    }

    /// Seals the script into entry bytes, indexed by position.
    pub fn seal(&self) -> Vec<Vec<u8>> {
        seal_steps(&self.script, &self.operator)
    }

    /// The signing key of a contributor.
    pub fn key_of(&self, id: &ContributorId) -> &SigningKey {
        &self.contributors.iter().find(|(c, _)| c == id).unwrap().1
    }

    /// Positions of the scripted events for which `pick` returns true.
    pub fn positions(&self, pick: impl Fn(&Event) -> bool) -> Vec<usize> {
        (0..self.script.len())
            .filter(|&i| pick(&self.script[i].signed.event))
            .collect()
    }
}

/// Seals steps into entry bytes, indexed by position.
pub fn seal_steps(steps: &[Step], operator: &SigningKey) -> Vec<Vec<u8>> {
    steps
        .iter()
        .enumerate()
        .map(|(i, step)| {
            Entry::seal(
                step.signed.clone(),
                LedgerIndex(i as u64),
                step.at,
                operator,
            )
            .unwrap()
            .to_bytes()
            .unwrap()
        })
        .collect()
}

/// The root over entry bytes.
pub fn root_of(entries: &[Vec<u8>]) -> tributary_ledger::Hash {
    let mut tree = CompactRange::new();
    for entry in entries {
        tree.append_entry(entry);
    }
    tree.root()
}

pub fn check(name: &str, passed: bool, figure: Option<f64>) -> ValidationResult {
    ValidationResult {
        check: name.into(),
        passed,
        figure: figure.and_then(Figure::from_f64),
    }
}

pub fn submitted(
    submission: &SubmissionId,
    contributor: &ContributorId,
    expert: ExpertDigest,
) -> Event {
    Event::ExpertSubmitted(ExpertSubmitted {
        submission: submission.clone(),
        contributor: contributor.clone(),
        manifest: ExpertManifest {
            anchor: Sha256Digest::of(b"anchor v1"),
            tensors: (0..3)
                .map(|l| TensorDigest {
                    name: format!("model.layers.{l}.mlp.experts.1.up_proj.weight"),
                    sha256: Sha256Digest::of(format!("{expert} {l}").as_bytes()),
                })
                .collect(),
            total: expert,
            training: TrainingMetadata {
                tokens: 1_000_000,
                steps: 500,
                held_out_loss: Figure::from_f64(2.75).unwrap(),
            },
        },
    })
}

pub fn accepted(submission: &SubmissionId, expert: ExpertDigest) -> Event {
    Event::ExpertAccepted(ExpertAccepted {
        submission: submission.clone(),
        expert,
        results: vec![
            check("sha256", true, None),
            check("norm_ratio", true, Some(1.04)),
            check("public_perplexity_delta", true, Some(0.0012)),
        ],
    })
}
