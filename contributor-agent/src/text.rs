//! Turning the files a data owner points at into token streams.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use tributary_corpus::{Document, TextTokenizer, read_documents, token_stream};

/// Loads the tokenizer stored in a checkpoint directory.
pub fn tokenizer(model_dir: &Path) -> Result<TextTokenizer> {
    TextTokenizer::load(model_dir)
        .with_context(|| format!("loading the tokenizer of {}", model_dir.display()))
}

/// Reads every document under `paths` (`.txt`, `.jsonl` with a `text` field, or directories).
pub fn documents(paths: &[PathBuf]) -> Result<Vec<Document>> {
    let docs = read_documents(paths).context("reading the text files")?;
    if docs.is_empty() {
        bail!("no documents found in {}", display_paths(paths));
    }
    Ok(docs)
}

/// Documents concatenated with the end-of-text token between them.
pub fn stream(docs: &[Document], tok: &TextTokenizer) -> Result<Vec<u32>> {
    token_stream(docs, tok).context("tokenizing the text")
}

/// Splits documents into training and held-out sets: every `every`-th document
/// (by position) is held out, so the split is by document and deterministic.
pub fn split_heldout(docs: Vec<Document>, every: usize) -> (Vec<Document>, Vec<Document>) {
    if docs.len() < 2 || every < 2 {
        return (docs, Vec::new());
    }
    let mut train = Vec::new();
    let mut held = Vec::new();
    for (i, d) in docs.into_iter().enumerate() {
        if i % every == every - 1 {
            held.push(d);
        } else {
            train.push(d);
        }
    }
    (train, held)
}

/// Paths joined for messages.
pub fn display_paths(paths: &[PathBuf]) -> String {
    paths
        .iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}
