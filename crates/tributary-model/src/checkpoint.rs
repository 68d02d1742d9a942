//! `flex_olmo` checkpoint directories: `config.json`, `model.safetensors` and the
//! tokenizer files, loadable unchanged by transformers' `from_pretrained`.

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::config::FlexOlmoConfig;
use crate::error::ModelError;
use crate::names;
use crate::weights::{TensorMap, write_atomic};

/// Tokenizer files copied alongside the weights when present.
pub const TOKENIZER_FILES: [&str; 3] = [
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
];

/// A checkpoint held in memory.
#[derive(Clone, Debug)]
pub struct Checkpoint {
    /// `config.json`.
    pub config: FlexOlmoConfig,
    /// Every tensor, by its transformers name.
    pub tensors: TensorMap,
    /// The directory it was read from, whose tokenizer files a save copies.
    pub source_dir: Option<PathBuf>,
}

impl Checkpoint {
    /// Reads `dir/config.json` and `dir/model.safetensors` and checks that every
    /// tensor the configuration implies is present with its shape, and no other.
    pub fn load(dir: &Path) -> Result<Self, ModelError> {
        let cfg_path = dir.join("config.json");
        let text = std::fs::read_to_string(&cfg_path).map_err(|e| ModelError::io(&cfg_path, e))?;
        let config = FlexOlmoConfig::from_json(&text)?;
        let tensors = TensorMap::load(&dir.join("model.safetensors"))?;
        let ckpt = Self {
            config,
            tensors,
            source_dir: Some(dir.to_path_buf()),
        };
        ckpt.check_tensors()?;
        Ok(ckpt)
    }

    /// The exact set of tensor names and shapes for `config`.
    pub fn expected_shapes(config: &FlexOlmoConfig) -> Vec<(String, Vec<usize>)> {
        let h = config.hidden_size;
        let (nh, nkv, hd) = (
            config.num_attention_heads,
            config.kv_heads(),
            config.head_dim(),
        );
        let i = config.intermediate_size;
        let mut out = vec![
            (names::EMBED.to_owned(), vec![config.vocab_size, h]),
            (names::NORM.to_owned(), vec![h]),
            (names::LM_HEAD.to_owned(), vec![config.vocab_size, h]),
        ];
        for l in 0..config.num_hidden_layers {
            out.push((names::attn(l, "q_proj"), vec![nh * hd, h]));
            out.push((names::attn(l, "k_proj"), vec![nkv * hd, h]));
            out.push((names::attn(l, "v_proj"), vec![nkv * hd, h]));
            out.push((names::attn(l, "o_proj"), vec![h, nh * hd]));
            out.push((names::q_norm(l), vec![nh * hd]));
            out.push((names::k_norm(l), vec![nkv * hd]));
            out.push((names::post_attention_norm(l), vec![h]));
            out.push((names::post_feedforward_norm(l), vec![h]));
            out.push((names::router(l), vec![config.num_experts, h]));
            for e in 0..config.num_experts {
                out.push((names::expert(l, e, "gate_proj"), vec![i, h]));
                out.push((names::expert(l, e, "up_proj"), vec![i, h]));
                out.push((names::expert(l, e, "down_proj"), vec![h, i]));
            }
        }
        out
    }

    /// Fails unless the tensors are exactly those of [`Self::expected_shapes`].
    pub fn check_tensors(&self) -> Result<(), ModelError> {
        let expected = Self::expected_shapes(&self.config);
        for (name, shape) in &expected {
            self.tensors.get_shaped(name, shape)?;
        }
        if self.tensors.0.len() != expected.len() {
            let known: std::collections::HashSet<&str> =
                expected.iter().map(|(n, _)| n.as_str()).collect();
            let extra: Vec<&str> = self
                .tensors
                .0
                .keys()
                .map(String::as_str)
                .filter(|n| !known.contains(n))
                .collect();
            return Err(ModelError::Tensor(format!(
                "unexpected tensors: {}",
                extra.join(", ")
            )));
        }
        Ok(())
    }

    /// Writes `config.json`, `model.safetensors` and the tokenizer files of
    /// `tokenizer_from` (or of the directory this checkpoint was read from).
    pub fn save(&self, dir: &Path, tokenizer_from: Option<&Path>) -> Result<(), ModelError> {
        self.check_tensors()?;
        std::fs::create_dir_all(dir).map_err(|e| ModelError::io(dir, e))?;
        write_atomic(&dir.join("config.json"), self.config.to_json().as_bytes())?;
        self.tensors.save(&dir.join("model.safetensors"))?;
        if let Some(src) = tokenizer_from.or(self.source_dir.as_deref()) {
            copy_tokenizer(src, dir)?;
        }
        Ok(())
    }

    /// SHA-256 (lowercase hex) of the `model.safetensors` this checkpoint encodes to.
    pub fn digest(&self) -> Result<String, ModelError> {
        Ok(hex::encode(Sha256::digest(self.tensors.to_safetensors()?)))
    }
}

/// Copies the tokenizer files present in `from` into `to`; `tokenizer.json` must exist.
pub fn copy_tokenizer(from: &Path, to: &Path) -> Result<(), ModelError> {
    if from == to {
        return Ok(());
    }
    let main = from.join("tokenizer.json");
    if !main.is_file() {
        return Err(ModelError::io(
            &main,
            std::io::Error::new(std::io::ErrorKind::NotFound, "no tokenizer.json to copy"),
        ));
    }
    for f in TOKENIZER_FILES {
        let src = from.join(f);
        if src.is_file() {
            let dst = to.join(f);
            std::fs::copy(&src, &dst).map_err(|e| ModelError::io(&dst, e))?;
        }
    }
    Ok(())
}

/// SHA-256 of a file's bytes, lowercase hex.
pub fn file_sha256(path: &Path) -> Result<String, ModelError> {
    use std::io::Read;
    let mut f = std::fs::File::open(path).map_err(|e| ModelError::io(path, e))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = f.read(&mut buf).map_err(|e| ModelError::io(path, e))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex::encode(h.finalize()))
}
