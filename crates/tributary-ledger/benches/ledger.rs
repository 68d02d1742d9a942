//! Ledger benchmark: Merkle appends and roots, proofs, and a full replay of a
//! generated log, printed as plain figures.
//!
//! Run from the repository root (release mode):
//!
//! ```text
//! CARGO_TARGET_DIR=/work/target-ledger cargo bench -p tributary-ledger --bench ledger
//! ```
//!
//! `LEDGER_BENCH_SIZE` changes the number of entries (default 1,000,000).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use ed25519_dalek::SigningKey;
use rayon::prelude::*;
use sha2::{Digest as _, Sha256};
use tributary_ledger::event::{
    ConsentGranted, ConsentWithdrawn, ContributorRegistered, ExpertAccepted, ExpertErased,
    ExpertManifest, ExpertSubmitted, Figure, LogCreated, ModelVersionPublished, TensorDigest,
    TrainingMetadata, ValidationResult, VersionExpert,
};
use tributary_ledger::{
    ConsentId, ContributorId, Entry, Event, ExpertDigest, LedgerIndex, MemoryStore, PublicKey,
    Purpose, ReplayOptions, Sha256Digest, SignedEvent, SubmissionId, Timestamp, VersionNumber,
    consistency_proof, inclusion_proof, leaf_hash, replay, root_hash, verify_consistency,
    verify_inclusion,
};

const CONTRIBUTORS: usize = 1000;
const LIVE_EXPERTS: usize = 8;

fn key(label: &str) -> SigningKey {
    SigningKey::from_bytes(&Sha256Digest::of(label.as_bytes()).0)
}

/// An event to be signed: the event and the contributor who signs it, if any.
struct Pending {
    event: Event,
    signer: Option<usize>,
    invite: bool,
}

/// Builds a clean log of `size` entries: registrations, then cycles of
/// consent, upload, acceptance, publication, and withdrawal of the oldest
/// expert with its replacement version and erasure.
fn generate(size: usize) -> (SigningKey, Vec<Vec<u8>>) {
    let operator = key("operator");
    let contributors: Vec<(ContributorId, SigningKey)> = (0..CONTRIBUTORS)
        .map(|i| {
            (
                ContributorId::new(format!("org-{i}")).unwrap(),
                key(&format!("org {i}")),
            )
        })
        .collect();
    let mut plan = vec![Pending {
        event: Event::LogCreated(LogCreated {
            origin: "bench.example/ledger".into(),
            operator_key: PublicKey::of(&operator),
        }),
        signer: None,
        invite: false,
    }];
    for (i, (id, signing)) in contributors.iter().enumerate() {
        plan.push(Pending {
            event: Event::ContributorRegistered(ContributorRegistered {
                contributor: id.clone(),
                organisation: format!("Organisation {i}"),
                public_key: PublicKey::of(signing),
            }),
            signer: Some(i),
            invite: true,
        });
    }
    let purposes = vec![
        Purpose::new("commercial").unwrap(),
        Purpose::new("research").unwrap(),
    ];
    let mut live: Vec<(usize, VersionExpert)> = Vec::new();
    let mut version = 0u64;
    let mut cycle = 0usize;
    let coordinator = |event| Pending {
        event,
        signer: None,
        invite: false,
    };
    let publish = |version: &mut u64, live: &[(usize, VersionExpert)]| {
        *version += 1;
        Event::ModelVersionPublished(ModelVersionPublished {
            version: VersionNumber(*version),
            parent: (*version > 1).then(|| VersionNumber(*version - 1)),
            experts: live.iter().map(|(_, x)| x.clone()).collect(),
            purpose: Purpose::new("research").unwrap(),
            top_k: 2,
            checkpoint: Sha256Digest::of(&version.to_be_bytes()),
        })
    };
    while plan.len() < size {
        let who = cycle % CONTRIBUTORS;
        let contributor = contributors[who].0.clone();
        let expert = ExpertDigest(Sha256Digest::of(format!("weights {cycle}").as_bytes()));
        let consent = ConsentId::new(format!("consent-{cycle}")).unwrap();
        let submission = SubmissionId::new(format!("upload-{cycle}")).unwrap();
        plan.push(Pending {
            event: Event::ConsentGranted(ConsentGranted {
                consent: consent.clone(),
                contributor: contributor.clone(),
                expert,
                purposes: purposes.clone(),
                expires_at: None,
                data_description: "customer support transcripts, 2019-2024".into(),
                licence: "CC-BY-4.0".into(),
                jurisdiction: "EU".into(),
            }),
            signer: Some(who),
            invite: false,
        });
        plan.push(Pending {
            event: Event::ExpertSubmitted(ExpertSubmitted {
                submission: submission.clone(),
                contributor: contributor.clone(),
                manifest: ExpertManifest {
                    anchor: Sha256Digest::of(b"anchor"),
                    tensors: ["gate", "up", "down"]
                        .iter()
                        .map(|t| TensorDigest {
                            name: format!("model.layers.0.mlp.experts.1.{t}_proj.weight"),
                            sha256: Sha256Digest::of(format!("{cycle} {t}").as_bytes()),
                        })
                        .collect(),
                    total: expert,
                    training: TrainingMetadata {
                        tokens: 2_000_000,
                        steps: 1000,
                        held_out_loss: Figure::from_f64(2.5).unwrap(),
                    },
                },
            }),
            signer: Some(who),
            invite: false,
        });
        plan.push(coordinator(Event::ExpertAccepted(ExpertAccepted {
            submission: submission.clone(),
            expert,
            results: vec![ValidationResult {
                check: "norm_ratio".into(),
                passed: true,
                figure: Figure::from_f64(1.02),
            }],
        })));
        live.push((
            who,
            VersionExpert {
                submission,
                expert,
                consent,
            },
        ));
        plan.push(coordinator(publish(&mut version, &live)));
        if live.len() > LIVE_EXPERTS {
            let (owner, gone) = live.remove(0);
            plan.push(Pending {
                event: Event::ConsentWithdrawn(ConsentWithdrawn {
                    consent: gone.consent.clone(),
                    contributor: contributors[owner].0.clone(),
                    withdrawn_at: Timestamp(1),
                }),
                signer: Some(owner),
                invite: false,
            });
            plan.push(coordinator(publish(&mut version, &live)));
            plan.push(coordinator(Event::ExpertErased(ExpertErased {
                expert: gone.expert,
            })));
        }
        cycle += 1;
    }
    plan.truncate(size);
    let entries = plan
        .into_par_iter()
        .enumerate()
        .map(|(i, pending)| {
            let mut signed = match pending.signer {
                Some(who) => SignedEvent::contributor(pending.event, &contributors[who].1).unwrap(),
                None => SignedEvent::coordinator(pending.event),
            };
            if pending.invite {
                signed = signed.invited_by(&operator).unwrap();
            }
            let at = Timestamp(1_750_000_000 + i as u64);
            Entry::seal(signed, LedgerIndex(i as u64), at, &operator)
                .unwrap()
                .to_bytes()
                .unwrap()
        })
        .collect();
    (operator, entries)
}

fn per(d: Duration, n: usize) -> String {
    let ns = d.as_nanos() as f64 / n as f64;
    if ns >= 1000.0 {
        format!("{:.2} µs", ns / 1000.0)
    } else {
        format!("{ns:.0} ns")
    }
}

fn main() {
    let size: usize = std::env::var("LEDGER_BENCH_SIZE")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1_000_000);
    println!(
        "ledger benchmark: {size} entries, {} rayon threads",
        rayon::current_num_threads()
    );

    let start = Instant::now();
    let (operator, entries) = generate(size);
    let bytes: usize = entries.iter().map(Vec::len).sum();
    println!(
        "generate + sign log: {:.2} s ({} MB of entries, mean {} B per entry)",
        start.elapsed().as_secs_f64(),
        bytes / 1_000_000,
        bytes / size
    );

    // Merkle appends and root, against raw SHA-256 over the same bytes.
    let start = Instant::now();
    let mut store = MemoryStore::new();
    for entry in &entries {
        store.append_entry(entry);
    }
    let root = root_hash(&store, size as u64).unwrap();
    let merkle = start.elapsed();
    let hashed_bytes = bytes + size + (size - 1) * 65;
    let stream: Vec<u8> = {
        let mut s = Vec::with_capacity(hashed_bytes);
        for entry in &entries {
            s.push(0);
            s.extend_from_slice(entry);
        }
        s.resize(hashed_bytes, 1);
        s
    };
    let start = Instant::now();
    let digest = Sha256::digest(&stream);
    let raw = start.elapsed();
    std::hint::black_box(digest);
    // Same count of SHA-256 calls on the same messages: the per-call ceiling.
    let start = Instant::now();
    let mut acc = [0u8; 32];
    for entry in &entries {
        acc[0] ^= leaf_hash(entry).0[0];
    }
    let node = [1u8; 65];
    for _ in 0..size - 1 {
        acc[1] ^= Sha256::digest(node)[0];
    }
    let calls = start.elapsed();
    std::hint::black_box(acc);
    let rate = |d: Duration| hashed_bytes as f64 / d.as_secs_f64() / 1e6;
    println!(
        "append {size} leaves + root: {:.3} s ({} per leaf), root {root}",
        merkle.as_secs_f64(),
        per(merkle, size)
    );
    println!(
        "  Merkle hashing {:.0} MB/s over {} MB; raw SHA-256 one stream {:.0} MB/s (ratio {:.2}); \
         same {} SHA-256 calls without a tree {:.0} MB/s (ratio {:.2})",
        rate(merkle),
        hashed_bytes / 1_000_000,
        rate(raw),
        rate(merkle) / rate(raw),
        2 * size - 1,
        rate(calls),
        rate(merkle) / rate(calls)
    );

    // Proofs at full size.
    let n = size as u64;
    let rounds = 10_000u64;
    let mut gen_time = Duration::ZERO;
    let mut verify_time = Duration::ZERO;
    for r in 0..rounds {
        let index = (r * 7_919 + 13) % n;
        let t = Instant::now();
        let proof = inclusion_proof(&store, index, n).unwrap();
        gen_time += t.elapsed();
        let leaf = leaf_hash(&entries[index as usize]);
        let t = Instant::now();
        verify_inclusion(&leaf, index, n, &proof, &root).unwrap();
        verify_time += t.elapsed();
    }
    println!(
        "inclusion proof at {n}: generate {}, verify {} (mean of {rounds})",
        per(gen_time, rounds as usize),
        per(verify_time, rounds as usize)
    );
    let mut gen_time = Duration::ZERO;
    let mut verify_time = Duration::ZERO;
    for r in 0..rounds {
        let old = 1 + (r * 104_729) % (n - 1);
        let old_root = root_hash(&store, old).unwrap();
        let t = Instant::now();
        let proof = consistency_proof(&store, old, n).unwrap();
        gen_time += t.elapsed();
        let t = Instant::now();
        verify_consistency(old, n, &proof, &old_root, &root).unwrap();
        verify_time += t.elapsed();
    }
    println!(
        "consistency proof to {n}: generate {}, verify {} (mean of {rounds})",
        per(gen_time, rounds as usize),
        per(verify_time, rounds as usize)
    );
    drop(store);

    // The signature share of replay.
    let sample = 20_000.min(size);
    let decoded: Vec<Entry> = entries[..sample]
        .iter()
        .map(|e| Entry::from_bytes(e).unwrap())
        .collect();
    let operator_key = PublicKey::of(&operator);
    let t = Instant::now();
    for entry in &decoded {
        entry.verify_seal(&operator_key).unwrap();
    }
    let one_sig = t.elapsed() / sample as u32;
    let statements = entries
        .iter()
        .filter(|e| e.windows(23).any(|w| w == b"\"contributor_signature\""))
        .count();
    let invites = CONTRIBUTORS.min(size);
    let signatures = size + statements + invites;
    println!(
        "Ed25519 verify_strict: {} per signature, {signatures} signatures in the log \
         ({size} seals, {statements} contributor statements, {invites} invitations): {:.1} s on one core",
        per(one_sig, 1),
        (one_sig * signatures as u32).as_secs_f64()
    );
    let t = Instant::now();
    for entry in &entries[..sample] {
        std::hint::black_box(Entry::from_bytes(entry).unwrap());
    }
    let decode = t.elapsed() / sample as u32;
    println!("decode + canonical check: {} per entry", per(decode, 1));

    // Full replay, on one thread and on all.
    let options = ReplayOptions {
        operator_key: Some(operator_key),
        checkpoints: vec![tributary_ledger::Checkpoint::new(
            "bench.example/ledger",
            n,
            root,
        )],
    };
    for threads in [1, rayon::current_num_threads()] {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        let t = Instant::now();
        let result = pool.install(|| replay(&entries, &options));
        let elapsed = t.elapsed();
        assert!(result.is_clean(), "{:?}", result.violations.first());
        assert_eq!(result.root, root);
        println!(
            "full replay + audit of {n} entries on {threads} thread(s): {:.2} s ({} per entry), {} versions, clean",
            elapsed.as_secs_f64(),
            per(elapsed, size),
            result.state.versions.len()
        );
    }
}
