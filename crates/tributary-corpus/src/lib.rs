//! Text corpora for Tributary: reading the documents a data owner points at,
//! the project's byte-level BPE tokenizer, and the token stream and windows a
//! language model trains on.
//!
//! Modules:
//! - [`document`]: [`Document`] and [`read_documents`] over `.txt`, `.jsonl` and directories;
//! - [`tokenizer`]: [`TextTokenizer`], trained, saved and loaded in the Hugging Face layout;
//! - [`stream`]: [`token_stream`], [`windows`] and [`shuffled_windows`].

pub mod document;
pub mod stream;
pub mod tokenizer;

pub use document::{CorpusError, Document, document_files, read_documents, spread_sample};
pub use stream::{shuffled_windows, token_stream, windows};
pub use tokenizer::{EOS_TOKEN, TextTokenizer, TokenizerError};
