//! Tensor names of a transformers `flex_olmo` checkpoint and of an expert package.

/// Token embedding matrix `[vocab, hidden]`.
pub const EMBED: &str = "model.embed_tokens.weight";
/// Final RMSNorm weight `[hidden]`.
pub const NORM: &str = "model.norm.weight";
/// LM head `[vocab, hidden]`.
pub const LM_HEAD: &str = "lm_head.weight";

/// `model.layers.{l}.self_attn.{proj}.weight` for `proj` in q/k/v/o_proj.
pub fn attn(layer: usize, proj: &str) -> String {
    format!("model.layers.{layer}.self_attn.{proj}.weight")
}

/// QK-norm weight over the full q projection.
pub fn q_norm(layer: usize) -> String {
    format!("model.layers.{layer}.self_attn.q_norm.weight")
}

/// QK-norm weight over the full k projection.
pub fn k_norm(layer: usize) -> String {
    format!("model.layers.{layer}.self_attn.k_norm.weight")
}

/// Norm on the attention output.
pub fn post_attention_norm(layer: usize) -> String {
    format!("model.layers.{layer}.post_attention_layernorm.weight")
}

/// Norm on the MoE output.
pub fn post_feedforward_norm(layer: usize) -> String {
    format!("model.layers.{layer}.post_feedforward_layernorm.weight")
}

/// Router `[experts, hidden]`.
pub fn router(layer: usize) -> String {
    format!("model.layers.{layer}.mlp.gate.weight")
}

/// One expert projection (`gate_proj`, `up_proj` `[inter, hidden]`; `down_proj` `[hidden, inter]`).
pub fn expert(layer: usize, expert: usize, proj: &str) -> String {
    format!("model.layers.{layer}.mlp.experts.{expert}.{proj}.weight")
}

/// The three projections of a SwiGLU expert, in file order.
pub const FFN_PROJS: [&str; 3] = ["gate_proj", "up_proj", "down_proj"];

/// In an expert package: one projection of the contributed FFN of `layer`.
pub fn package_ffn(layer: usize, proj: &str) -> String {
    format!("model.layers.{layer}.mlp.expert.{proj}.weight")
}

/// In an expert package: the contributed router row `r_i` of `layer`, `[hidden]`.
pub fn package_router(layer: usize) -> String {
    format!("model.layers.{layer}.mlp.router.weight")
}

/// True for tensors shared by every expert of a merged model (attention, norms,
/// embeddings, head): everything that is neither a router nor an expert.
pub fn is_shared(name: &str) -> bool {
    !(name.contains(".mlp.gate.") || name.contains(".mlp.experts."))
}
