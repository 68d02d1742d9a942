//! Signed notes and checkpoints against published examples.
//!
//! - The Ed25519 key pair and signed note published with Go's reference
//!   implementation (`golang.org/x/mod/sumdb/note`, the "PeterNeumann" example):
//!   Ed25519 is deterministic, so signing the same text must reproduce the
//!   published note byte for byte, which is what makes our checkpoints readable
//!   by Go verifiers.
//! - The example note of C2SP `signed-note.md` and the example checkpoint of
//!   C2SP `tlog-checkpoint.md`. The specs do not publish the public keys of
//!   those examples, so we check that they parse as the specs describe and are
//!   refused, not accepted, when no trusted key signed them.

use tributary_ledger::{
    Checkpoint, Hash, NoteError, NoteSigner, NoteVerifier, open_note, sign_note,
};

const GO_VERIFIER: &str = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW";
const GO_SIGNER: &str =
    "PRIVATE+KEY+PeterNeumann+c74f20a3+AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz";
const GO_TEXT: &str = "If you think cryptography is the answer to your problem,\n\
                       then you don't know what your problem is.\n";
const GO_NOTE: &str = "If you think cryptography is the answer to your problem,\n\
                       then you don't know what your problem is.\n\
                       \n\
                       \u{2014} PeterNeumann x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM=\n";

const C2SP_NOTE: &str = "Ognuno sta solo sul cuor della terra\n\
                         trafitto da un raggio di sole:\n\
                         \n\
                         ed \u{e8} subito sera.\n\
                         \n\
                         \u{2014} quasimodo.example/salvatore NnugSzTjtVAewIS+Z/iJhUPeFDkO/5QQ2i5ddnGITLlC+EhfLW9oJKONrMouFSQU0xMcXxj99ihAQwaqP3ZekRwNtIc=\n";

const C2SP_CHECKPOINT: &str = "example.com/behind-the-sofa\n\
                               20852163\n\
                               CsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\n\
                               \n\
                               \u{2014} example.com/behind-the-sofa Az3grlgtzPICa5OS8npVmf1Myq/5IZniMp+ZJurmRDeOoRDe4URYN7u5/Zhcyv2q1gGzGku9nTo+zyWE+xeMcTOAYQ8=\n";

#[test]
fn go_reference_keys_parse_and_match() {
    let verifier = NoteVerifier::from_key_string(GO_VERIFIER).unwrap();
    assert_eq!(verifier.name(), "PeterNeumann");
    assert_eq!(verifier.key_id(), 0xc74f20a3);
    assert_eq!(verifier.to_key_string(), GO_VERIFIER);
    let signer = NoteSigner::from_key_string(GO_SIGNER).unwrap();
    assert_eq!(signer.to_key_string(), GO_SIGNER);
    assert_eq!(signer.verifier(), verifier);
}

#[test]
fn go_reference_note_is_reproduced_and_verifies() {
    let signer = NoteSigner::from_key_string(GO_SIGNER).unwrap();
    assert_eq!(sign_note(GO_TEXT, &[&signer]).unwrap(), GO_NOTE);
    let verifier = NoteVerifier::from_key_string(GO_VERIFIER).unwrap();
    let opened = open_note(GO_NOTE, std::slice::from_ref(&verifier)).unwrap();
    assert_eq!(opened.text, GO_TEXT);
    assert_eq!(opened.verified_by, vec!["PeterNeumann".to_string()]);
    // One changed letter breaks the signature.
    let edited = GO_NOTE.replace("cryptography", "cryptographY");
    assert_eq!(
        open_note(&edited, std::slice::from_ref(&verifier)),
        Err(NoteError::InvalidSignature("PeterNeumann".into()))
    );
}

#[test]
fn mangled_verifier_keys_are_refused() {
    // Every strict substring and every single-byte change of the key string is refused.
    let bytes = GO_VERIFIER.as_bytes();
    for start in 0..bytes.len() {
        for end in start + 1..=bytes.len() {
            if start == 0 && end == bytes.len() {
                continue;
            }
            let piece = std::str::from_utf8(&bytes[start..end]).unwrap();
            assert!(NoteVerifier::from_key_string(piece).is_err(), "{piece}");
        }
    }
    for i in 0..bytes.len() {
        let mut changed = bytes.to_vec();
        changed[i] = changed[i].wrapping_add(1);
        if let Ok(text) = std::str::from_utf8(&changed) {
            assert!(NoteVerifier::from_key_string(text).is_err(), "{text}");
        }
    }
}

#[test]
fn unknown_keys_are_ignored_and_unsigned_notes_refused() {
    let go = NoteVerifier::from_key_string(GO_VERIFIER).unwrap();
    // The C2SP example parses (its text has an inner blank line) but no trusted key signed it.
    assert_eq!(
        open_note(C2SP_NOTE, std::slice::from_ref(&go)),
        Err(NoteError::Unverified)
    );
    // A note signed by two keys opens with either.
    let other = NoteSigner::new(
        "example.org/other",
        ed25519_dalek::SigningKey::from_bytes(&[3; 32]),
    )
    .unwrap();
    let go_signer = NoteSigner::from_key_string(GO_SIGNER).unwrap();
    let both = sign_note(GO_TEXT, &[&go_signer, &other]).unwrap();
    assert!(open_note(&both, std::slice::from_ref(&go)).is_ok());
    assert!(open_note(&both, &[other.verifier()]).is_ok());
    // Malformed notes.
    for bad in [
        "no signatures\n",
        "text\n\n",
        "text\n\n- PeterNeumann AAAA\n",
        "te\u{1}xt\n\n\u{2014} PeterNeumann x08go/ZJ\n",
    ] {
        assert!(
            open_note(bad, std::slice::from_ref(&go)).is_err(),
            "{bad:?}"
        );
    }
    assert!(sign_note("no final newline", &[&go_signer]).is_err());
}

#[test]
fn c2sp_example_checkpoint_parses() {
    let text = C2SP_CHECKPOINT.split("\n\n").next().unwrap().to_string() + "\n";
    let checkpoint = Checkpoint::from_text(&text).unwrap();
    assert_eq!(checkpoint.origin, "example.com/behind-the-sofa");
    assert_eq!(checkpoint.size, 20852163);
    assert_eq!(checkpoint.to_text().unwrap(), text);
    let go = NoteVerifier::from_key_string(GO_VERIFIER).unwrap();
    assert!(Checkpoint::open(C2SP_CHECKPOINT, &[go]).is_err());
}

#[test]
fn our_checkpoints_sign_and_open() {
    let key = ed25519_dalek::SigningKey::from_bytes(&[9; 32]);
    let signer = NoteSigner::new("ledger.example.org/tributary", key).unwrap();
    let checkpoint = Checkpoint::new("ledger.example.org/tributary", 42, Hash([5; 32]));
    let note = checkpoint.sign(&signer).unwrap();
    assert!(note.starts_with("ledger.example.org/tributary\n42\nBQUF"));
    let opened = Checkpoint::open(&note, &[signer.verifier()]).unwrap();
    assert_eq!(opened, checkpoint);
    // Malformed bodies.
    for bad in [
        "origin\n042\nBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQU=\n",
        "origin\n-1\nBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQU=\n",
        "origin\n1\nBQUF\n",
        "\n1\nBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQU=\n",
        "origin\n1\n",
        "origin\n1\nBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQU=\n\n",
    ] {
        assert!(Checkpoint::from_text(bad).is_err(), "{bad:?}");
    }
}
