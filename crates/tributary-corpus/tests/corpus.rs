//! Integration tests over the committed data: the corpus slices in
//! `data/slices/` and the tokenizer in `data/tokenizer/`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashSet;
use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use tributary_corpus::{Document, TextTokenizer, read_documents, token_stream, windows};

const DOMAINS: [&str; 5] = ["code", "legal", "manual", "literature", "math"];
const KB: usize = 1000;

fn data_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../data")
}

fn slice(name: &str, split: &str) -> Vec<Document> {
    read_documents(&[data_dir()
        .join("slices")
        .join(name)
        .join(format!("{split}.jsonl"))])
    .unwrap_or_else(|error| panic!("{name}/{split}: {error}"))
}

fn bytes(docs: &[Document]) -> usize {
    docs.iter().map(|doc| doc.text.len()).sum()
}

fn text_hash(doc: &Document) -> [u8; 32] {
    Sha256::digest(doc.text.as_bytes()).into()
}

fn committed_tokenizer() -> TextTokenizer {
    TextTokenizer::load(data_dir().join("tokenizer")).unwrap()
}

#[test]
fn slices_have_the_documented_sizes() {
    let domain = ((200 * KB, 400 * KB), (40 * KB, 60 * KB));
    let public = ((1000 * KB, 2000 * KB), (80 * KB, 120 * KB));
    let expected = DOMAINS.iter().map(|name| (*name, domain));
    for (name, ((train_min, train_max), (heldout_min, heldout_max))) in
        expected.chain([("public", public)])
    {
        let train = bytes(&slice(name, "train"));
        let heldout = bytes(&slice(name, "heldout"));
        assert!(
            (train_min..=train_max).contains(&train),
            "{name} train {train}"
        );
        assert!(
            (heldout_min..=heldout_max).contains(&heldout),
            "{name} held-out {heldout}"
        );
    }
}

#[test]
fn train_and_heldout_never_share_a_document() {
    for name in DOMAINS.iter().chain(&["public"]) {
        let train = slice(name, "train");
        let heldout = slice(name, "heldout");
        let ids: HashSet<&str> = train.iter().map(|doc| doc.id.as_str()).collect();
        let hashes: HashSet<[u8; 32]> = train.iter().map(text_hash).collect();
        assert_eq!(ids.len(), train.len(), "{name}: duplicate ids in train");
        for doc in &heldout {
            assert!(
                !ids.contains(doc.id.as_str()),
                "{name}: {} in both splits",
                doc.id
            );
            assert!(
                !hashes.contains(&text_hash(doc)),
                "{name}: text of {} in both splits",
                doc.id
            );
            // A piece `<path>#<k>` must not share its source document with train,
            // except in `math`, whose only document is split by piece.
            if *name != "math" {
                let source = doc.id.split('#').next().unwrap_or_default();
                assert!(
                    train.iter().all(|t| t.id.split('#').next() != Some(source)),
                    "{name}: source {source} in both splits"
                );
            }
        }
    }
}

#[test]
fn splits_json_lists_exactly_the_slice_documents() {
    for name in DOMAINS.iter().chain(&["public"]) {
        let path = data_dir().join("slices").join(name).join("splits.json");
        let record: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        for split in ["train", "heldout"] {
            let listed: Vec<&str> = record["slice"][split]
                .as_array()
                .unwrap()
                .iter()
                .map(|id| id.as_str().unwrap())
                .collect();
            let docs = slice(name, split);
            let ids: Vec<&str> = docs.iter().map(|doc| doc.id.as_str()).collect();
            assert_eq!(listed, ids, "{name}/{split}");
        }
        assert_eq!(record["source"]["sha256"].as_str().unwrap().len(), 64);
    }
}

#[test]
fn committed_tokenizer_matches_its_recipe() {
    let dir = data_dir().join("tokenizer");
    let digest = hex::encode(Sha256::digest(
        std::fs::read(dir.join("tokenizer.json")).unwrap(),
    ));
    let recipe = std::fs::read_to_string(dir.join("RECIPE.md")).unwrap();
    assert!(
        recipe.contains(&digest),
        "RECIPE.md does not record sha256 {digest}"
    );
    let tokenizer = committed_tokenizer();
    assert_eq!(tokenizer.vocab_size(), 4096);
    assert_eq!(tokenizer.eos_id(), 0);
}

#[test]
fn committed_tokenizer_round_trips_every_heldout_slice() {
    let tokenizer = committed_tokenizer();
    for name in DOMAINS.iter().chain(&["public"]) {
        for doc in slice(name, "heldout") {
            let ids = tokenizer.encode(&doc.text).unwrap();
            assert_eq!(
                tokenizer.decode(&ids).unwrap(),
                doc.text,
                "{name}: {}",
                doc.id
            );
        }
    }
}

#[test]
fn token_stream_puts_eos_between_documents() {
    let tokenizer = committed_tokenizer();
    let docs: Vec<Document> = ["first document", "", "second one", "third"]
        .iter()
        .map(|text| Document {
            id: (*text).to_owned(),
            text: (*text).to_owned(),
        })
        .collect();
    let stream = token_stream(&docs, &tokenizer).unwrap();
    let eos = tokenizer.eos_id();
    assert_eq!(stream.iter().filter(|&&id| id == eos).count(), 2);
    assert_ne!(stream.first(), Some(&eos));
    assert_ne!(stream.last(), Some(&eos));
    assert_eq!(
        tokenizer.decode(&stream).unwrap(),
        "first document<|endoftext|>second one<|endoftext|>third"
    );
    let seq_len = NonZeroUsize::new(2).unwrap();
    assert_eq!(windows(&stream, seq_len).len(), (stream.len() - 1) / 2);
}
