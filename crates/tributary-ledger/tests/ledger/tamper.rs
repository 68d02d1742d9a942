//! The tamper suite: a realistic generated log replays clean, and each kind
//! of tampering — by a database edit without keys, or by a dishonest operator
//! who re-seals the log — is reported at the entry where it happened.

use tributary_ledger::event::{ConsentGranted, ModelVersionPublished, VersionExpert};
use tributary_ledger::{
    Auditor, Checkpoint, ConsentId, Event, ExpertDigest, PublicKey, Replay, ReplayOptions, Rule,
    Sha256Digest, SignedEvent, SubmissionId, Timestamp, replay,
};

use crate::support::{ORIGIN, Step, World, accepted, key, root_of, seal_steps, submitted};

const SEED: u64 = 0x7172_6962;
const SIZE: usize = 320;

fn honest() -> World {
    World::generate(SEED, SIZE)
}

/// Replays entries against a checkpoint over `signed_entries` (what the operator signed).
fn audit(world: &World, entries: &[Vec<u8>], signed_entries: &[Vec<u8>]) -> Replay {
    let checkpoint = Checkpoint::new(ORIGIN, signed_entries.len() as u64, root_of(signed_entries));
    let options = ReplayOptions {
        operator_key: Some(PublicKey::of(&world.operator)),
        checkpoints: vec![checkpoint],
    };
    replay(entries, &options)
}

/// A database edit without keys: the checkpoint still covers the honest entries.
fn audit_db_edit(world: &World, edit: impl FnOnce(&mut Vec<Vec<u8>>)) -> Replay {
    let honest_entries = world.seal();
    let mut entries = honest_entries.clone();
    edit(&mut entries);
    audit(world, &entries, &honest_entries)
}

/// A dishonest operator re-seals a changed script and signs a checkpoint over it.
fn audit_script(world: &World, script: &[Step]) -> Replay {
    let entries = seal_steps(script, &world.operator);
    audit(world, &entries, &entries)
}

/// Asserts that `rule` is reported at `index` and that nothing is reported before it.
fn assert_caught(result: &Replay, index: usize, rule: Rule) {
    let found = result.violations_at(index as u64).any(|v| v.rule == rule);
    let listing: Vec<String> = result
        .violations
        .iter()
        .take(8)
        .map(|v| v.to_string())
        .collect();
    assert!(
        found,
        "expected {rule:?} at {index}; got:\n{}",
        listing.join("\n")
    );
    let first = result.violations.first().map(|v| v.index.0);
    assert_eq!(
        first,
        Some(index as u64),
        "earliest violation is elsewhere:\n{}",
        listing.join("\n")
    );
}

fn is_withdrawal(e: &Event) -> bool {
    matches!(e, Event::ConsentWithdrawn(_))
}

/// A withdrawal that was followed by at least one replacement version.
fn withdrawal_with_replacement(world: &World) -> (usize, ConsentId) {
    for w in world.positions(is_withdrawal) {
        if matches!(
            world.script[w + 1].signed.event,
            Event::ModelVersionPublished(_)
        ) && let Event::ConsentWithdrawn(e) = &world.script[w].signed.event
        {
            return (w, e.consent.clone());
        }
    }
    panic!("the generated log has no withdrawal followed by a version");
}

#[test]
fn the_generated_log_is_realistic_and_clean() {
    let world = honest();
    let entries = world.seal();
    assert!(entries.len() >= SIZE);
    let result = audit(&world, &entries, &entries);
    let listing: Vec<String> = result.violations.iter().map(|v| v.to_string()).collect();
    assert!(result.is_clean(), "{}", listing.join("\n"));
    let count = |pick: fn(&Event) -> bool| world.positions(pick).len();
    assert!(world.contributors.len() >= 5);
    assert!(count(|e| matches!(e, Event::ConsentGranted(_))) > 20);
    assert!(count(|e| matches!(e, Event::ExpertAccepted(_))) > 15);
    assert!(count(|e| matches!(e, Event::ExpertRejected(_))) > 0);
    assert!(count(|e| matches!(e, Event::ModelVersionPublished(_))) > 20);
    assert!(count(is_withdrawal) > 3);
    assert!(count(|e| matches!(e, Event::ConsentExpired(_))) > 0);
    assert!(count(|e| matches!(e, Event::ExpertErased(_))) > 3);
    assert_eq!(
        result.state.operator_key,
        Some(PublicKey::of(&world.operator))
    );
    assert_eq!(result.state.origin.as_deref(), Some(ORIGIN));
}

#[test]
fn an_edited_entry_is_caught_by_its_seal() {
    let world = honest();
    let target = world.positions(|e| matches!(e, Event::ConsentGranted(_)))[5];
    let result = audit_db_edit(&world, |entries| {
        let text = String::from_utf8(entries[target].clone()).unwrap();
        let edited = text.replace("\"licence\":\"CC-BY-4.0\"", "\"licence\":\"CC0-1.0\"");
        assert_ne!(text, edited);
        entries[target] = edited.into_bytes();
    });
    assert_caught(&result, target, Rule::Signatures);
    // The signed checkpoint no longer matches either.
    assert!(result.violations.iter().any(|v| v.rule == Rule::TreeHead));
}

#[test]
fn a_dropped_entry_is_caught_where_it_was() {
    let world = honest();
    let target = 137;
    let result = audit_db_edit(&world, |entries| {
        entries.remove(target);
    });
    assert_caught(&result, target, Rule::WellFormed);
    assert!(result.violations.iter().any(|v| v.rule == Rule::TreeHead));
}

#[test]
fn two_swapped_entries_are_caught_at_both_positions() {
    let world = honest();
    let target = 200;
    let result = audit_db_edit(&world, |entries| entries.swap(target, target + 1));
    assert_caught(&result, target, Rule::WellFormed);
    assert!(
        result
            .violations_at(target as u64 + 1)
            .any(|v| v.rule == Rule::WellFormed)
    );
    // Numbering is back in step after the pair.
    assert_eq!(result.violations_at(target as u64 + 2).count(), 0);
}

#[test]
fn a_forged_contributor_signature_is_caught() {
    let world = honest();
    let mut script = world.script.clone();
    let (target, _) = withdrawal_with_replacement(&world);
    // The operator "withdraws" on the contributor's behalf with a key of its own.
    let forged = SignedEvent::contributor(script[target].signed.event.clone(), &key("mallory"));
    script[target].signed = forged.unwrap();
    let result = audit_script(&world, &script);
    assert_caught(&result, target, Rule::Signatures);
}

#[test]
fn a_consent_reattributed_to_another_contributor_is_caught() {
    let world = honest();
    let mut script = world.script.clone();
    let target = world.positions(|e| matches!(e, Event::ConsentGranted(_)))[7];
    let other = world.contributors[0].0.clone();
    let mut signed = script[target].signed.clone();
    let Event::ConsentGranted(grant) = &mut signed.event else {
        unreachable!()
    };
    let other = if grant.contributor == other {
        world.contributors[1].0.clone()
    } else {
        other
    };
    grant.contributor = other;
    script[target].signed = signed;
    let result = audit_script(&world, &script);
    assert_caught(&result, target, Rule::Signatures);
}

#[test]
fn a_consent_granted_by_someone_else_for_an_uploaded_expert_is_caught() {
    let world = honest();
    let mut script = world.script.clone();
    // Find an upload, then let a different, genuinely signing contributor "consent" to it.
    let upload = world.positions(|e| matches!(e, Event::ExpertSubmitted(_)))[4];
    let Event::ExpertSubmitted(s) = &script[upload].signed.event else {
        unreachable!()
    };
    let (owner, expert) = (s.contributor.clone(), s.manifest.total);
    let (intruder, intruder_key) = world
        .contributors
        .iter()
        .find(|(c, _)| *c != owner)
        .cloned()
        .unwrap();
    let grant = Event::ConsentGranted(ConsentGranted {
        consent: ConsentId::new("intruder-consent").unwrap(),
        contributor: intruder,
        expert,
        purposes: vec![crate::support::purpose("commercial")],
        expires_at: None,
        data_description: "not mine".into(),
        licence: "CC0-1.0".into(),
        jurisdiction: "EU".into(),
    });
    let target = upload + 1;
    let at = script[upload].at;
    script.insert(
        target,
        Step {
            at,
            signed: SignedEvent::contributor(grant, &intruder_key).unwrap(),
        },
    );
    let result = audit_script(&world, &script);
    assert_caught(&result, target, Rule::AcceptedWithConsent);
}

#[test]
fn a_version_listing_a_withdrawn_expert_is_caught() {
    let world = honest();
    let mut script = world.script.clone();
    let (withdrawal, consent) = withdrawal_with_replacement(&world);
    // The withdrawn expert as it was listed before.
    let listed: VersionExpert = world.script[..withdrawal]
        .iter()
        .rev()
        .find_map(|s| match &s.signed.event {
            Event::ModelVersionPublished(v) => {
                v.experts.iter().find(|x| x.consent == consent).cloned()
            }
            _ => None,
        })
        .unwrap();
    // A later version (after the replacement run) puts it back.
    let target = (withdrawal + 3..script.len())
        .find(|&i| matches!(script[i].signed.event, Event::ModelVersionPublished(_)))
        .unwrap();
    let Event::ModelVersionPublished(v) = &mut script[target].signed.event else {
        unreachable!()
    };
    v.experts.push(listed);
    let result = audit_script(&world, &script);
    assert_caught(&result, target, Rule::WithdrawalHonoured);
    let reason = &result.violations_at(target as u64).next().unwrap().reason;
    assert!(reason.contains("was withdrawn at entry"), "{reason}");
}

#[test]
fn a_version_published_after_expiry_with_the_expert_is_caught() {
    let world = honest();
    let mut script = world.script.clone();
    // The first version that lists an expert accepted at least a minute earlier.
    let (target, grant_at, consent) = script
        .iter()
        .enumerate()
        .find_map(|(i, step)| {
            let Event::ModelVersionPublished(v) = &step.signed.event else { return None };
            v.experts.iter().find_map(|x| {
                let accept = script[..i].iter().position(|s| {
                    matches!(&s.signed.event, Event::ExpertAccepted(a) if a.submission == x.submission)
                })?;
                (step.at.0 > script[accept].at.0 + 60).then(|| (i, accept, x.consent.clone()))
            })
        })
        .unwrap();
    let expiry = Timestamp(script[grant_at].at.0 + 30);
    // The contributor had in fact granted the consent only until `expiry`.
    let grant = script
        .iter()
        .position(|s| matches!(&s.signed.event, Event::ConsentGranted(g) if g.consent == consent))
        .unwrap();
    let Event::ConsentGranted(mut g) = script[grant].signed.event.clone() else {
        unreachable!()
    };
    g.expires_at = Some(expiry);
    let signer = world.key_of(&g.contributor).clone();
    script[grant].signed = SignedEvent::contributor(Event::ConsentGranted(g), &signer).unwrap();
    let result = audit_script(&world, &script);
    assert_caught(&result, target, Rule::VersionContents);
}

#[test]
fn a_withdrawal_without_a_replacement_version_is_caught() {
    let world = honest();
    let mut script = world.script.clone();
    let (withdrawal, _) = withdrawal_with_replacement(&world);
    // Drop the replacement versions of the run that follows the withdrawal.
    let i = withdrawal + 1;
    while matches!(script[i].signed.event, Event::ModelVersionPublished(_)) {
        script.remove(i);
    }
    assert!(matches!(script[i].signed.event, Event::ExpertErased(_)));
    let result = audit_script(&world, &script);
    assert_caught(&result, withdrawal, Rule::WithdrawalHonoured);
}

#[test]
fn a_withdrawal_at_the_end_of_the_log_without_its_version_is_caught() {
    let world = honest();
    let (withdrawal, _) = withdrawal_with_replacement(&world);
    let script = world.script[..=withdrawal].to_vec();
    let result = audit_script(&world, &script);
    assert_caught(&result, withdrawal, Rule::WithdrawalHonoured);
    assert!(
        result
            .violations_at(withdrawal as u64)
            .any(|v| v.rule == Rule::ErasureRecorded)
    );
}

#[test]
fn an_expert_accepted_without_consent_is_caught() {
    let world = honest();
    let mut script = world.script.clone();
    let position = 150;
    let at = script[position - 1].at;
    let (who, who_key) = world.contributors[2].clone();
    let submission = SubmissionId::new("unconsented-upload").unwrap();
    let expert = ExpertDigest(Sha256Digest::of(b"weights nobody consented to"));
    let upload = SignedEvent::contributor(submitted(&submission, &who, expert), &who_key).unwrap();
    let accept = SignedEvent::coordinator(accepted(&submission, expert));
    script.insert(position, Step { at, signed: accept });
    script.insert(position, Step { at, signed: upload });
    let result = audit_script(&world, &script);
    assert_caught(&result, position + 1, Rule::AcceptedWithConsent);
}

#[test]
fn a_missing_erasure_is_caught() {
    let world = honest();
    let mut script = world.script.clone();
    let (withdrawal, _) = withdrawal_with_replacement(&world);
    let erasure = (withdrawal + 1..script.len())
        .find(|&i| matches!(script[i].signed.event, Event::ExpertErased(_)))
        .unwrap();
    script.remove(erasure);
    let result = audit_script(&world, &script);
    assert_caught(&result, withdrawal, Rule::ErasureRecorded);
}

#[test]
fn an_untrusted_operator_key_is_caught() {
    let world = honest();
    let entries = world.seal();
    let options = ReplayOptions {
        operator_key: Some(PublicKey::of(&key("someone else"))),
        checkpoints: vec![],
    };
    let result = replay(&entries, &options);
    assert_caught(&result, 0, Rule::Signatures);
}

#[test]
fn a_version_for_a_purpose_the_consent_does_not_allow_is_caught() {
    let world = honest();
    let mut script = world.script.clone();
    let research_only: Vec<ConsentId> = script
        .iter()
        .filter_map(|s| match &s.signed.event {
            Event::ConsentGranted(g) if g.purposes == [crate::support::purpose("research")] => {
                Some(g.consent.clone())
            }
            _ => None,
        })
        .collect();
    // The first research version that includes an expert consented for research only.
    let target = script
        .iter()
        .position(|s| match &s.signed.event {
            Event::ModelVersionPublished(v) => {
                v.experts.iter().any(|x| research_only.contains(&x.consent))
            }
            _ => false,
        })
        .unwrap();
    let Event::ModelVersionPublished(ModelVersionPublished { purpose, .. }) =
        &mut script[target].signed.event
    else {
        unreachable!()
    };
    // Relabelled as commercial, the version misuses that expert.
    *purpose = crate::support::purpose("commercial");
    let result = audit_script(&world, &script);
    assert_caught(&result, target, Rule::VersionContents);
}

#[test]
fn queries_answer_what_users_ask() {
    let world = honest();
    let entries = world.seal();
    let result = audit(&world, &entries, &entries);
    let state = &result.state;
    // Every withdrawal in the honest log is honoured.
    let mut withdrawn = 0;
    for position in world.positions(is_withdrawal) {
        let Event::ConsentWithdrawn(w) = &world.script[position].signed.event else {
            unreachable!()
        };
        let status = state.withdrawal_status(&w.consent).unwrap();
        assert!(status.is_honoured(), "{status:?}");
        assert_eq!(status.ended_at.map(|i| i.0), Some(position as u64));
        assert_eq!(status.revoked_versions.len(), status.replacements.len());
        // No version published after the withdrawal contains the expert.
        for version in state.versions_containing(&status.expert) {
            assert!(state.versions[&version].published.0 < position as u64);
            assert!(state.versions[&version].is_revoked());
        }
        withdrawn += 1;
    }
    assert!(withdrawn > 3);
    // What the latest version contains, and under which consents.
    let latest = *state.versions.keys().last().unwrap();
    let contents = state.version_contents(latest).unwrap();
    for listed in &contents.experts {
        let consent = listed.consent.unwrap();
        assert!(consent.purposes.contains(&contents.record.purpose));
        assert_eq!(Some(&consent.contributor), listed.contributor);
    }
    assert!(state.current_versions().contains(&latest));
    // The same questions on a log where the operator skipped a replacement.
    let mut script = world.script.clone();
    let (withdrawal, consent) = withdrawal_with_replacement(&world);
    while matches!(
        script[withdrawal + 1].signed.event,
        Event::ModelVersionPublished(_)
    ) {
        script.remove(withdrawal + 1);
    }
    let bad = audit_script(&world, &script);
    let status = bad.state.withdrawal_status(&consent).unwrap();
    assert!(!status.is_honoured());
    assert!(!status.unreplaced.is_empty());
}

#[test]
fn the_incremental_auditor_agrees_with_parallel_replay() {
    let world = honest();
    let honest_entries = world.seal();
    // An honest log, one with an edited registration, one with a dropped entry,
    // and one where the operator skipped an erasure.
    let mut edited = honest_entries.clone();
    let registration = world.positions(|e| matches!(e, Event::ContributorRegistered(_)))[2];
    let text = String::from_utf8(edited[registration].clone()).unwrap();
    edited[registration] = text
        .replace(" organisation\"", " organisation!\"")
        .into_bytes();
    let mut dropped = honest_entries.clone();
    dropped.remove(90);
    let mut script = world.script.clone();
    let erasure = world.positions(|e| matches!(e, Event::ExpertErased(_)))[3];
    script.remove(erasure);
    let skipped = seal_steps(&script, &world.operator);
    let options = ReplayOptions {
        operator_key: Some(PublicKey::of(&world.operator)),
        checkpoints: vec![Checkpoint::new(
            ORIGIN,
            100,
            root_of(&honest_entries[..100]),
        )],
    };
    for (name, entries) in [
        ("honest", &honest_entries),
        ("edited", &edited),
        ("dropped", &dropped),
        ("skipped", &skipped),
    ] {
        let batch = replay(entries, &options);
        let mut auditor = Auditor::new(&options);
        let mut reported = 0;
        for entry in entries.iter() {
            reported += auditor.append(entry).len();
        }
        let incremental = auditor.finish();
        assert_eq!(incremental.violations, batch.violations, "{name}");
        assert_eq!(incremental.state, batch.state, "{name}");
        assert_eq!(incremental.root, batch.root, "{name}");
        assert!(reported <= batch.violations.len(), "{name}");
        assert_eq!(
            batch.is_clean(),
            name == "honest",
            "{name}: {:?}",
            batch.violations.first()
        );
    }
}
