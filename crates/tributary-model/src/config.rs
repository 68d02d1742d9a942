//! The `config.json` of a Hugging Face `flex_olmo` checkpoint.
//!
//! Field names and meanings follow transformers' `FlexOlmoConfig`; keys this crate
//! does not interpret are kept in `extra` and written back unchanged.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::error::ModelError;

/// Hyper-parameters of a FlexOlmo model, as stored in `config.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FlexOlmoConfig {
    /// Always `"flex_olmo"`.
    #[serde(default = "default_model_type")]
    pub model_type: String,
    /// Size of the token vocabulary (rows of the embedding and of the LM head).
    pub vocab_size: usize,
    /// Width of the residual stream.
    pub hidden_size: usize,
    /// Width of each SwiGLU expert.
    pub intermediate_size: usize,
    /// Number of decoder layers.
    pub num_hidden_layers: usize,
    /// Number of query heads.
    pub num_attention_heads: usize,
    /// Number of key/value heads (grouped-query attention when smaller than the query heads).
    #[serde(default)]
    pub num_key_value_heads: Option<usize>,
    /// Activation of the experts; only `silu` is supported.
    #[serde(default = "default_act")]
    pub hidden_act: String,
    /// Longest sequence the rotary embedding is meant for.
    #[serde(default = "default_max_pos")]
    pub max_position_embeddings: usize,
    /// Epsilon of every RMSNorm.
    #[serde(default = "default_eps")]
    pub rms_norm_eps: f64,
    /// Base of the rotary embedding.
    #[serde(default = "default_theta")]
    pub rope_theta: f64,
    /// Number of experts in every MoE layer.
    pub num_experts: usize,
    /// Experts each token is routed to.
    pub num_experts_per_tok: usize,
    /// Whether the top-k probabilities are renormalised; FlexOlmo uses `false`.
    #[serde(default)]
    pub norm_topk_prob: bool,
    /// Whether embedding and LM head share weights; FlexOlmo uses `false`.
    #[serde(default)]
    pub tie_word_embeddings: bool,
    /// Whether attention projections carry a bias; only `false` is supported.
    #[serde(default)]
    pub attention_bias: bool,
    /// Token id that starts a sequence, if any.
    #[serde(default)]
    pub bos_token_id: Option<u32>,
    /// Token id that ends a document.
    #[serde(default)]
    pub eos_token_id: Option<u32>,
    /// Token id used for padding.
    #[serde(default)]
    pub pad_token_id: Option<u32>,
    /// Every other key of `config.json`, preserved verbatim.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

fn default_model_type() -> String {
    "flex_olmo".to_owned()
}
fn default_act() -> String {
    "silu".to_owned()
}
fn default_max_pos() -> usize {
    4096
}
fn default_eps() -> f64 {
    1e-6
}
fn default_theta() -> f64 {
    500_000.0
}

impl FlexOlmoConfig {
    /// A small configuration with the given shape, every other field at its FlexOlmo default.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        vocab_size: usize,
        hidden_size: usize,
        intermediate_size: usize,
        num_hidden_layers: usize,
        num_attention_heads: usize,
        num_experts: usize,
        num_experts_per_tok: usize,
        max_position_embeddings: usize,
    ) -> Self {
        let mut extra = Map::new();
        extra.insert(
            "architectures".into(),
            Value::from(vec!["FlexOlmoForCausalLM"]),
        );
        extra.insert("torch_dtype".into(), Value::from("float32"));
        extra.insert("dtype".into(), Value::from("float32"));
        extra.insert("attention_dropout".into(), Value::from(0.0));
        extra.insert("initializer_range".into(), Value::from(0.02));
        extra.insert("use_cache".into(), Value::from(true));
        let mut config = Self {
            model_type: default_model_type(),
            vocab_size,
            hidden_size,
            intermediate_size,
            num_hidden_layers,
            num_attention_heads,
            num_key_value_heads: Some(num_attention_heads),
            hidden_act: default_act(),
            max_position_embeddings,
            rms_norm_eps: default_eps(),
            rope_theta: 10_000.0,
            num_experts,
            num_experts_per_tok,
            norm_topk_prob: false,
            tie_word_embeddings: false,
            attention_bias: false,
            bos_token_id: None,
            eos_token_id: None,
            pad_token_id: None,
            extra,
        };
        config.set_rope_theta(10_000.0);
        config
    }

    /// Sets the RoPE base (`rope_theta` and `rope_parameters.rope_theta`).
    pub fn set_rope_theta(&mut self, theta: f64) {
        self.rope_theta = theta;
        let mut params = Map::new();
        params.insert("rope_theta".into(), Value::from(theta));
        params.insert("rope_type".into(), Value::from("default"));
        self.extra
            .insert("rope_parameters".into(), Value::Object(params));
    }

    /// Number of key/value heads, defaulting to the number of query heads.
    pub fn kv_heads(&self) -> usize {
        self.num_key_value_heads.unwrap_or(self.num_attention_heads)
    }

    /// Width of one attention head.
    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads
    }

    /// Checks that this crate can run the configuration.
    pub fn validate(&self) -> Result<(), ModelError> {
        let bad = |why: String| Err(ModelError::Config(why));
        if self.model_type != "flex_olmo" {
            return bad(format!(
                "model_type is {:?}, expected \"flex_olmo\"",
                self.model_type
            ));
        }
        if self.hidden_act != "silu" {
            return bad(format!(
                "hidden_act {:?} is not supported (only silu)",
                self.hidden_act
            ));
        }
        if self.attention_bias {
            return bad("attention_bias = true is not supported".into());
        }
        if self.tie_word_embeddings {
            return bad(
                "tie_word_embeddings = true is not supported (FlexOlmo unties them)".into(),
            );
        }
        if self.num_attention_heads == 0
            || !self.hidden_size.is_multiple_of(self.num_attention_heads)
        {
            return bad(format!(
                "hidden_size {} is not a multiple of num_attention_heads {}",
                self.hidden_size, self.num_attention_heads
            ));
        }
        if !self.head_dim().is_multiple_of(2) {
            return bad(format!(
                "head dimension {} must be even for RoPE",
                self.head_dim()
            ));
        }
        let kv = self.kv_heads();
        if kv == 0 || !self.num_attention_heads.is_multiple_of(kv) {
            return bad(format!(
                "num_attention_heads {} is not a multiple of num_key_value_heads {kv}",
                self.num_attention_heads
            ));
        }
        if self.num_experts == 0 {
            return bad("num_experts must be at least 1".into());
        }
        if self.num_experts_per_tok == 0 || self.num_experts_per_tok > self.num_experts {
            return bad(format!(
                "num_experts_per_tok {} must be between 1 and num_experts {}",
                self.num_experts_per_tok, self.num_experts
            ));
        }
        if self.vocab_size == 0 || self.intermediate_size == 0 || self.num_hidden_layers == 0 {
            return bad(
                "vocab_size, intermediate_size and num_hidden_layers must be positive".into(),
            );
        }
        Ok(())
    }

    /// Parses and validates `config.json` text.
    ///
    /// transformers 5 writes the RoPE base inside `rope_parameters`; it is read
    /// from there when the top-level `rope_theta` is absent.
    pub fn from_json(text: &str) -> Result<Self, ModelError> {
        let mut value: Value = serde_json::from_str(text)
            .map_err(|e| ModelError::Config(format!("config.json: {e}")))?;
        if let Some(obj) = value.as_object_mut()
            && !obj.contains_key("rope_theta")
            && let Some(theta) = obj
                .get("rope_parameters")
                .and_then(|p| p.get("rope_theta"))
                .cloned()
        {
            obj.insert("rope_theta".into(), theta);
        }
        let config: Self = serde_json::from_value(value)
            .map_err(|e| ModelError::Config(format!("config.json: {e}")))?;
        config.validate()?;
        Ok(config)
    }

    /// Pretty JSON for `config.json`.
    ///
    /// `rope_parameters` (the transformers 5 spelling) is written too, with the
    /// same base as `rope_theta`, so both generations of transformers agree.
    pub fn to_json(&self) -> String {
        let mut c = self.clone();
        let params = c
            .extra
            .entry("rope_parameters")
            .or_insert_with(|| Value::Object(Map::new()));
        if let Some(p) = params.as_object_mut() {
            p.insert("rope_theta".into(), Value::from(self.rope_theta));
            p.entry("rope_type")
                .or_insert_with(|| Value::from("default"));
        }
        // Serialising a struct of plain fields and a JSON map cannot fail.
        serde_json::to_string_pretty(&c).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_keeps_unknown_keys() {
        let mut c = FlexOlmoConfig::new(256, 64, 96, 2, 4, 4, 2, 128);
        c.extra.insert("something_new".into(), Value::from(7));
        let back = FlexOlmoConfig::from_json(&c.to_json()).unwrap();
        assert_eq!(back, c);
        assert_eq!(back.extra["something_new"], Value::from(7));
    }

    #[test]
    fn reads_the_rope_base_from_rope_parameters() {
        let mut c = FlexOlmoConfig::new(256, 64, 96, 2, 4, 4, 2, 128);
        c.set_rope_theta(1234.0);
        let mut v: Value = serde_json::from_str(&c.to_json()).unwrap();
        v.as_object_mut().unwrap().remove("rope_theta");
        let back = FlexOlmoConfig::from_json(&v.to_string()).unwrap();
        assert_eq!(back.rope_theta, 1234.0);
    }

    #[test]
    fn rejects_unsupported_settings() {
        let mut c = FlexOlmoConfig::new(256, 64, 96, 2, 4, 4, 2, 128);
        c.num_experts_per_tok = 5;
        assert!(c.validate().is_err());
        let mut c = FlexOlmoConfig::new(256, 64, 96, 2, 4, 4, 2, 128);
        c.model_type = "llama".into();
        assert!(c.validate().is_err());
        let mut c = FlexOlmoConfig::new(256, 60, 96, 2, 8, 4, 2, 128);
        c.num_attention_heads = 8;
        assert!(c.validate().is_err());
    }
}
