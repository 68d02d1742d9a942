//! The project's byte-level BPE tokenizer: training, loading, saving in the
//! Hugging Face layout, encoding and decoding.
//!
//! Byte-level means the GPT-2 scheme: text is split with GPT-2's pattern,
//! every byte is mapped to one of 256 printable characters, and BPE merges
//! work on those.  All 256 byte characters are in the vocabulary, so any
//! UTF-8 text encodes without an unknown token and decodes back to itself.
//! The one special token, `<|endoftext|>`, serves as BOS, EOS and padding;
//! encoding never adds it by itself (see [`crate::token_stream`]).
//!
//! A saved tokenizer is a directory with `tokenizer.json`,
//! `tokenizer_config.json` and `special_tokens_map.json`, which is what
//! `transformers.AutoTokenizer.from_pretrained` reads beside a `config.json`.

use std::fs;
use std::path::{Path, PathBuf};

use serde_json::json;
use tokenizers::decoders::DecoderWrapper;
use tokenizers::models::TrainerWrapper;
use tokenizers::models::bpe::{BPE, BpeTrainerBuilder};
use tokenizers::normalizers::NormalizerWrapper;
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::processors::PostProcessorWrapper;
use tokenizers::{AddedToken, Tokenizer};

use crate::Document;

/// The special token used as beginning-of-sequence, end-of-sequence and padding.
pub const EOS_TOKEN: &str = "<|endoftext|>";

/// File name of the tokenizer proper inside a tokenizer directory.
pub const TOKENIZER_FILE: &str = "tokenizer.json";

/// The 256 byte characters plus the special token: the smallest vocabulary.
const MIN_VOCAB_SIZE: usize = 257;

/// Why a tokenizer could not be trained, loaded, saved or applied.
#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    /// `tokenizer.json` could not be read or parsed.
    #[error("cannot load tokenizer from {path}: {message}")]
    Load {
        /// The file that failed.
        path: PathBuf,
        /// What the `tokenizers` crate reported.
        message: String,
    },
    /// The tokenizer has no `<|endoftext|>` token.
    #[error("tokenizer at {path} has no {EOS_TOKEN} token")]
    NoEos {
        /// The file loaded.
        path: PathBuf,
    },
    /// A tokenizer file could not be written.
    #[error("cannot write {path}: {message}")]
    Save {
        /// The file that failed.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
    /// The requested vocabulary cannot hold the byte alphabet and the special token.
    #[error("vocabulary size {0} is below the minimum of {MIN_VOCAB_SIZE}")]
    VocabTooSmall(usize),
    /// Training failed inside the `tokenizers` crate.
    #[error("tokenizer training failed: {0}")]
    Train(String),
    /// Encoding failed inside the `tokenizers` crate.
    #[error("encoding failed: {0}")]
    Encode(String),
    /// Decoding failed inside the `tokenizers` crate.
    #[error("decoding failed: {0}")]
    Decode(String),
    /// A token id is outside the vocabulary.
    #[error("token id {id} is outside the vocabulary of {vocab_size}")]
    UnknownId {
        /// The offending id.
        id: u32,
        /// The vocabulary size.
        vocab_size: usize,
    },
}

/// A byte-level BPE tokenizer with its end-of-text token.
#[derive(Debug, Clone)]
pub struct TextTokenizer {
    inner: Tokenizer,
    eos_id: u32,
    vocab_size: usize,
}

impl TextTokenizer {
    /// Load a tokenizer from a `tokenizer.json` file or a directory holding one.
    pub fn load(path: impl AsRef<Path>) -> Result<Self, TokenizerError> {
        let path = path.as_ref();
        let file = if path.is_dir() {
            path.join(TOKENIZER_FILE)
        } else {
            path.to_path_buf()
        };
        let inner = Tokenizer::from_file(&file).map_err(|error| TokenizerError::Load {
            path: file.clone(),
            message: error.to_string(),
        })?;
        Self::from_inner(inner).map_err(|()| TokenizerError::NoEos { path: file })
    }

    /// Load a tokenizer from the bytes of a `tokenizer.json` file; `name`
    /// says in errors where the bytes came from.
    pub fn from_bytes(bytes: &[u8], name: impl Into<PathBuf>) -> Result<Self, TokenizerError> {
        let path = name.into();
        let inner = Tokenizer::from_bytes(bytes).map_err(|error| TokenizerError::Load {
            path: path.clone(),
            message: error.to_string(),
        })?;
        Self::from_inner(inner).map_err(|()| TokenizerError::NoEos { path })
    }

    fn from_inner(inner: Tokenizer) -> Result<Self, ()> {
        let eos_id = inner.token_to_id(EOS_TOKEN).ok_or(())?;
        let vocab_size = inner.get_vocab_size(true);
        Ok(Self {
            inner,
            eos_id,
            vocab_size,
        })
    }

    /// The largest token id it can produce (its vocabulary and added tokens).
    pub fn largest_id(&self) -> u32 {
        self.inner
            .get_vocab(true)
            .into_values()
            .max()
            .unwrap_or(self.eos_id)
    }

    /// Train a byte-level BPE tokenizer on `docs` with `vocab_size` entries in
    /// all (the 256 byte characters, the merges and `<|endoftext|>`, which gets
    /// id 0).  The result is smaller only if the text runs out of pairs to merge.
    /// Training is deterministic: the same documents give the same tokenizer.
    pub fn train(docs: &[Document], vocab_size: usize) -> Result<Self, TokenizerError> {
        if vocab_size < MIN_VOCAB_SIZE {
            return Err(TokenizerError::VocabTooSmall(vocab_size));
        }
        let trainer = BpeTrainerBuilder::new()
            .vocab_size(vocab_size)
            .show_progress(false)
            .special_tokens(vec![AddedToken::from(EOS_TOKEN, true)])
            .initial_alphabet(ByteLevel::alphabet().into_iter().collect())
            .build();
        let mut inner = Tokenizer::new(BPE::default());
        // No prefix space (so decoding gives back the text exactly), offsets
        // trimmed of spaces, GPT-2's split pattern.
        let byte_level = ByteLevel::new(false, true, true);
        inner
            .with_normalizer(None::<NormalizerWrapper>)
            .with_pre_tokenizer(Some(PreTokenizerWrapper::from(byte_level)))
            .with_post_processor(Some(PostProcessorWrapper::from(byte_level)))
            .with_decoder(Some(DecoderWrapper::from(byte_level)));
        inner
            .train(
                &mut TrainerWrapper::BpeTrainer(trainer),
                docs.iter().map(|doc| doc.text.as_str()),
            )
            .map_err(|error| TokenizerError::Train(error.to_string()))?;
        Self::from_inner(inner)
            .map_err(|()| TokenizerError::Train(format!("{EOS_TOKEN} missing after training")))
    }

    /// Save as a Hugging Face tokenizer directory (created if missing):
    /// `tokenizer.json`, `tokenizer_config.json`, `special_tokens_map.json`.
    pub fn save(&self, dir: impl AsRef<Path>) -> Result<(), TokenizerError> {
        let dir = dir.as_ref();
        let save_error = |path: &Path, message: String| TokenizerError::Save {
            path: path.to_path_buf(),
            message,
        };
        fs::create_dir_all(dir).map_err(|error| save_error(dir, error.to_string()))?;
        let tokenizer_file = dir.join(TOKENIZER_FILE);
        self.inner
            .save(&tokenizer_file, true)
            .map_err(|error| save_error(&tokenizer_file, error.to_string()))?;
        for (name, value) in [
            ("tokenizer_config.json", self.tokenizer_config()),
            ("special_tokens_map.json", special_tokens_map()),
        ] {
            let path = dir.join(name);
            let mut text = serde_json::to_string_pretty(&value)
                .map_err(|error| save_error(&path, error.to_string()))?;
            text.push('\n');
            fs::write(&path, text).map_err(|error| save_error(&path, error.to_string()))?;
        }
        Ok(())
    }

    /// `tokenizer_config.json`: the generic fast tokenizer over
    /// `tokenizer.json`, adding no special tokens itself and leaving spaces
    /// alone when decoding, so Python sees the same ids and text as Rust.
    fn tokenizer_config(&self) -> serde_json::Value {
        let mut config = special_tokens_map();
        let extra = json!({
            "tokenizer_class": "PreTrainedTokenizerFast",
            "add_bos_token": false,
            "add_eos_token": false,
            "clean_up_tokenization_spaces": false,
            "added_tokens_decoder": {
                self.eos_id.to_string(): {
                    "content": EOS_TOKEN,
                    "lstrip": false,
                    "normalized": false,
                    "rstrip": false,
                    "single_word": false,
                    "special": true
                }
            }
        });
        if let (Some(config), serde_json::Value::Object(extra)) = (config.as_object_mut(), extra) {
            config.extend(extra);
        }
        config
    }

    /// Token ids of `text`; no special token is added.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, TokenizerError> {
        let encoding = self
            .inner
            .encode_fast(text, false)
            .map_err(|error| TokenizerError::Encode(error.to_string()))?;
        Ok(encoding.get_ids().to_vec())
    }

    /// Token ids of many texts at once (in parallel), in order.
    pub fn encode_batch(&self, texts: &[&str]) -> Result<Vec<Vec<u32>>, TokenizerError> {
        let encodings = self
            .inner
            .encode_batch_fast(texts.to_vec(), false)
            .map_err(|error| TokenizerError::Encode(error.to_string()))?;
        Ok(encodings
            .into_iter()
            .map(|encoding| encoding.get_ids().to_vec())
            .collect())
    }

    /// The text of `ids`, special tokens included, so that
    /// `decode(encode(text)) == text`.  A sequence that ends (or starts) inside
    /// a multi-byte character decodes that character as U+FFFD.
    pub fn decode(&self, ids: &[u32]) -> Result<String, TokenizerError> {
        if let Some(&id) = ids.iter().find(|&&id| id as usize >= self.vocab_size) {
            return Err(TokenizerError::UnknownId {
                id,
                vocab_size: self.vocab_size,
            });
        }
        self.inner
            .decode(ids, false)
            .map_err(|error| TokenizerError::Decode(error.to_string()))
    }

    /// Id of `<|endoftext|>`.
    pub fn eos_id(&self) -> u32 {
        self.eos_id
    }

    /// Number of token ids, special token included.
    pub fn vocab_size(&self) -> usize {
        self.vocab_size
    }
}

fn special_tokens_map() -> serde_json::Value {
    json!({
        "bos_token": EOS_TOKEN,
        "eos_token": EOS_TOKEN,
        "pad_token": EOS_TOKEN,
        "unk_token": EOS_TOKEN
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::sync::OnceLock;

    fn docs(texts: &[&str]) -> Vec<Document> {
        texts
            .iter()
            .enumerate()
            .map(|(index, text)| Document {
                id: index.to_string(),
                text: (*text).to_owned(),
            })
            .collect()
    }

    /// A small tokenizer trained on a few lines, shared by the tests.
    fn small() -> &'static TextTokenizer {
        static SMALL: OnceLock<TextTokenizer> = OnceLock::new();
        SMALL.get_or_init(|| {
            let texts = [
                "The quick brown fox jumps over the lazy dog.",
                "fn main() { println!(\"hello, world\"); }",
                "Shall I compare thee to a summer's day? Thou art more lovely.",
                "敏捷的棕色狐狸跳过了懒狗。 🦊🐶",
            ];
            TextTokenizer::train(&docs(&texts), 320).unwrap()
        })
    }

    #[test]
    fn training_gives_the_requested_vocabulary_with_eos_first() {
        let tokenizer = small();
        assert_eq!(tokenizer.vocab_size(), 320);
        assert_eq!(tokenizer.eos_id(), 0);
    }

    #[test]
    fn training_is_deterministic() {
        let texts = ["a b c ab ab abc abc abc", "the the then them there"];
        let first = TextTokenizer::train(&docs(&texts), 270).unwrap();
        let second = TextTokenizer::train(&docs(&texts), 270).unwrap();
        assert_eq!(
            first.inner.to_string(false).unwrap(),
            second.inner.to_string(false).unwrap()
        );
    }

    #[test]
    fn too_small_vocabulary_is_rejected() {
        assert!(matches!(
            TextTokenizer::train(&docs(&["x"]), 100),
            Err(TokenizerError::VocabTooSmall(100))
        ));
    }

    #[test]
    fn special_cases_round_trip() {
        let tokenizer = small();
        for text in [
            "",
            " ",
            "  leading and trailing  ",
            "tabs\tand\r\nnewlines\n\n",
            "\u{0}\u{1}\u{7f}\u{85}",
            "emoji 👩‍👩‍👧‍👦 and flags 🇫🇷",
            "漢字かなカナ한국어",
            "the end <|endoftext|> next",
        ] {
            let ids = tokenizer.encode(text).unwrap();
            assert_eq!(tokenizer.decode(&ids).unwrap(), text);
        }
        assert!(tokenizer.encode("").unwrap().is_empty());
    }

    #[test]
    fn encode_adds_no_special_token_but_recognises_a_written_one() {
        let tokenizer = small();
        assert!(!tokenizer.encode("hello").unwrap().contains(&0));
        assert!(tokenizer.encode("a<|endoftext|>b").unwrap().contains(&0));
    }

    #[test]
    fn unknown_ids_are_an_error() {
        let tokenizer = small();
        assert!(matches!(
            tokenizer.decode(&[1, 320]),
            Err(TokenizerError::UnknownId { id: 320, .. })
        ));
    }

    #[test]
    fn saved_tokenizer_loads_back_identically() {
        let dir = tempfile::tempdir().unwrap();
        small().save(dir.path()).unwrap();
        for name in [
            TOKENIZER_FILE,
            "tokenizer_config.json",
            "special_tokens_map.json",
        ] {
            assert!(dir.path().join(name).is_file(), "{name}");
        }
        let loaded = TextTokenizer::load(dir.path()).unwrap();
        let file = TextTokenizer::load(dir.path().join(TOKENIZER_FILE)).unwrap();
        let text = "Round trip through disk: ✓";
        assert_eq!(loaded.encode(text).unwrap(), small().encode(text).unwrap());
        assert_eq!(file.vocab_size(), 320);
        let config: serde_json::Value = serde_json::from_str(
            &fs::read_to_string(dir.path().join("tokenizer_config.json")).unwrap(),
        )
        .unwrap();
        assert_eq!(config["eos_token"], EOS_TOKEN);
        assert_eq!(config["added_tokens_decoder"]["0"]["special"], true);
    }

    #[test]
    fn bytes_load_like_the_file_and_bad_bytes_name_their_origin() {
        let dir = tempfile::tempdir().unwrap();
        small().save(dir.path()).unwrap();
        let bytes = fs::read(dir.path().join(TOKENIZER_FILE)).unwrap();
        let loaded = TextTokenizer::from_bytes(&bytes, "stored tokenizer").unwrap();
        let text = "From bytes: ✓ 123";
        assert_eq!(loaded.encode(text).unwrap(), small().encode(text).unwrap());
        assert_eq!(loaded.vocab_size(), small().vocab_size());
        assert_eq!(loaded.largest_id() as usize, small().vocab_size() - 1);

        let error = TextTokenizer::from_bytes(b"{}", "blob abc").unwrap_err();
        assert!(matches!(error, TokenizerError::Load { .. }), "{error}");
        assert!(error.to_string().contains("blob abc"), "{error}");
        // A tokenizer without the end-of-text token is refused too.
        let text = String::from_utf8(bytes)
            .unwrap()
            .replace(EOS_TOKEN, "<|other|>");
        let error = TextTokenizer::from_bytes(text.as_bytes(), "renamed").unwrap_err();
        assert!(matches!(error, TokenizerError::NoEos { .. }), "{error}");
    }

    #[test]
    fn loading_a_missing_file_names_it() {
        let error = TextTokenizer::load("/nonexistent/tokenizer.json").unwrap_err();
        assert!(
            error.to_string().contains("/nonexistent/tokenizer.json"),
            "{error}"
        );
    }

    #[test]
    fn batch_encoding_matches_single_encoding() {
        let tokenizer = small();
        let texts = ["one", "two words", ""];
        let batch = tokenizer.encode_batch(&texts).unwrap();
        for (text, ids) in texts.iter().zip(batch) {
            assert_eq!(tokenizer.encode(text).unwrap(), ids);
        }
    }

    proptest! {
        #[test]
        fn any_utf8_round_trips(text in any::<String>()) {
            let tokenizer = small();
            let ids = tokenizer.encode(&text).unwrap();
            prop_assert_eq!(tokenizer.decode(&ids).unwrap(), text);
        }

        #[test]
        fn mixed_scripts_round_trip(text in "[a-zA-Z0-9 \\t\\n.,'!?]{0,40}[\\p{Han}\\p{Hiragana}\\p{Cyrillic}\\p{Emoji}\\p{Cc}]{0,20}[ a-z\\n]{0,20}") {
            let tokenizer = small();
            let ids = tokenizer.encode(&text).unwrap();
            prop_assert_eq!(tokenizer.decode(&ids).unwrap(), text);
        }
    }
}
