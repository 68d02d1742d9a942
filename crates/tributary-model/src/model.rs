//! The FlexOlmo forward pass on a burn device.
//!
//! Matches transformers' `FlexOlmoForCausalLM`: QK-norm over the full q and k
//! projections, RoPE (rotate-half), causal attention, RMSNorm on the *output* of
//! attention and of the MoE block before each residual add, a bias-free router
//! whose softmax runs over all experts, top-k of those probabilities without
//! renormalisation, SwiGLU experts, a final norm and an untied LM head.
//!
//! Weights are kept in the layout the maths wants (`x · W` with `W` of shape
//! `[in, out]`, q/k/v fused into one matrix, gate/up fused into one matrix), so a
//! layer costs three matrix products for attention and two per active expert.

use burn::tensor::activation::softmax;
use burn::tensor::{Device, IndexingUpdateOp, Int, Tensor, TensorData};

use crate::config::FlexOlmoConfig;
use crate::error::ModelError;
use crate::matmul::matmul;
use crate::names;
use crate::weights::{HostTensor, TensorMap};

/// One SwiGLU expert: `down(silu(gate(x)) * up(x))`.
#[derive(Clone, Debug)]
pub struct Ffn {
    /// `[hidden, 2 * intermediate]`: gate columns first, then up.
    pub gate_up: Tensor<2>,
    /// `[intermediate, hidden]`.
    pub down: Tensor<2>,
}

impl Ffn {
    /// Applies the expert to rows of `x` (`[n, hidden]`).
    pub fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        let h = crate::fused::swiglu(matmul(x, self.gate_up.clone()));
        matmul(h, self.down.clone())
    }
}

/// Self-attention with QK-norm.
#[derive(Clone, Debug)]
pub struct Attention {
    /// `[hidden, (heads + 2 * kv_heads) * head_dim]`: q, k, v columns.
    pub qkv: Tensor<2>,
    /// RMSNorm weight over the whole q projection.
    pub q_norm: Tensor<1>,
    /// RMSNorm weight over the whole k projection.
    pub k_norm: Tensor<1>,
    /// `[heads * head_dim, hidden]`.
    pub out: Tensor<2>,
}

/// One decoder layer.
#[derive(Clone, Debug)]
pub struct Layer {
    /// Attention block.
    pub attn: Attention,
    /// Norm applied to the attention output before the residual add.
    pub post_attention_norm: Tensor<1>,
    /// Norm applied to the MoE output before the residual add.
    pub post_feedforward_norm: Tensor<1>,
    /// Router, `[hidden, experts]` (the transpose of `mlp.gate.weight`).
    pub router: Tensor<2>,
    /// Optional additive router bias `[experts]` (used only while training an expert).
    pub router_bias: Option<Tensor<1>>,
    /// The experts, in router order.
    pub experts: Vec<Ffn>,
}

pub use crate::attention::Rope;

/// RMSNorm over the last dimension of `[n, d]` rows.
pub fn rms_norm(x: Tensor<2>, weight: &Tensor<1>, eps: f64) -> Tensor<2> {
    crate::fused::rms_norm(x, weight, eps)
}

/// What a forward pass should record besides its output.
#[derive(Debug, Default)]
pub struct Trace {
    /// Keep every layer's router logits (`[tokens, experts]`), for the z-loss.
    pub keep_router_logits: bool,
    /// Router logits per layer, when asked for.
    pub router_logits: Vec<Tensor<2>>,
    /// Count, per layer and expert, of the tokens routed to it, when `Some`.
    pub route_counts: Option<Vec<Vec<u64>>>,
    /// Sum over tokens of each layer's router input, when `Some` (for router initialisation).
    pub router_input_sums: Option<Vec<Vec<f64>>>,
    /// Every router input row per layer (`tokens × hidden`, row-major), when `Some`
    /// (for router calibration).
    pub router_inputs: Option<Vec<Vec<f32>>>,
    /// Per layer, when `Some` and every expert is active: how far the experts
    /// after the first stray from it, the mean over experts `e ≥ 1` of
    /// `Σ_t ‖E_e(x_t) − E_0(x_t)‖² / Σ_t ‖E_0(x_t)‖²` over the layer's tokens
    /// (expert 0's output held constant; the input `x` is not). An expert
    /// trained to keep this small on public text does much what the public
    /// expert does there, whichever router row sends public tokens to it.
    pub expert_gaps: Option<Vec<Tensor<1>>>,
}

/// A FlexOlmo causal language model on one device.
#[derive(Clone, Debug)]
pub struct FlexOlmo {
    /// The configuration it was built from.
    pub config: FlexOlmoConfig,
    /// Token embeddings `[vocab, hidden]`.
    pub embed: Tensor<2>,
    /// Decoder layers.
    pub layers: Vec<Layer>,
    /// Final norm.
    pub norm: Tensor<1>,
    /// LM head `[hidden, vocab]` (the transpose of `lm_head.weight`).
    pub lm_head: Tensor<2>,
    /// Rotary tables.
    pub rope: Rope,
    /// Experts each token is routed to.
    pub top_k: usize,
}

pub(crate) fn to_device<const D: usize>(t: &HostTensor, device: &Device) -> Tensor<D> {
    Tensor::from_data(TensorData::new(t.data.clone(), t.shape.clone()), device)
}

pub(crate) fn transposed(t: &HostTensor, device: &Device) -> Result<Tensor<2>, ModelError> {
    let [r, c] = t.dims2()?;
    let mut out = vec![0f32; r * c];
    for i in 0..r {
        for j in 0..c {
            out[j * r + i] = t.data[i * c + j];
        }
    }
    Ok(Tensor::from_data(TensorData::new(out, [c, r]), device))
}

/// Reads a device tensor back to the host.
pub fn to_host<const D: usize>(t: Tensor<D>) -> HostTensor {
    let shape = t.dims().to_vec();
    let data = t.into_data().try_into_vec_as::<f32>().unwrap_or_default();
    HostTensor { shape, data }
}

/// Reads a device tensor `[r, c]` back to the host as `[c, r]`.
pub fn to_host_transposed(t: Tensor<2>) -> HostTensor {
    to_host(t.transpose())
}

impl FlexOlmo {
    /// Builds the model from named tensors in the transformers layout.
    pub fn from_tensors(
        config: &FlexOlmoConfig,
        tensors: &TensorMap,
        device: &Device,
    ) -> Result<Self, ModelError> {
        config.validate()?;
        let h = config.hidden_size;
        let hd = config.head_dim();
        let (nh, nkv) = (config.num_attention_heads, config.kv_heads());
        let inter = config.intermediate_size;
        let e = config.num_experts;
        let mut layers = Vec::with_capacity(config.num_hidden_layers);
        for l in 0..config.num_hidden_layers {
            let q = tensors.get_shaped(&names::attn(l, "q_proj"), &[nh * hd, h])?;
            let k = tensors.get_shaped(&names::attn(l, "k_proj"), &[nkv * hd, h])?;
            let v = tensors.get_shaped(&names::attn(l, "v_proj"), &[nkv * hd, h])?;
            let o = tensors.get_shaped(&names::attn(l, "o_proj"), &[h, nh * hd])?;
            let qkv = HostTensor::vstack(&[q, k, v])?;
            let attn = Attention {
                qkv: transposed(&qkv, device)?,
                q_norm: to_device(tensors.get_shaped(&names::q_norm(l), &[nh * hd])?, device),
                k_norm: to_device(tensors.get_shaped(&names::k_norm(l), &[nkv * hd])?, device),
                out: transposed(o, device)?,
            };
            let mut experts = Vec::with_capacity(e);
            for x in 0..e {
                let gate = tensors.get_shaped(&names::expert(l, x, "gate_proj"), &[inter, h])?;
                let up = tensors.get_shaped(&names::expert(l, x, "up_proj"), &[inter, h])?;
                let down = tensors.get_shaped(&names::expert(l, x, "down_proj"), &[h, inter])?;
                experts.push(Ffn {
                    gate_up: transposed(&HostTensor::vstack(&[gate, up])?, device)?,
                    down: transposed(down, device)?,
                });
            }
            layers.push(Layer {
                attn,
                post_attention_norm: to_device(
                    tensors.get_shaped(&names::post_attention_norm(l), &[h])?,
                    device,
                ),
                post_feedforward_norm: to_device(
                    tensors.get_shaped(&names::post_feedforward_norm(l), &[h])?,
                    device,
                ),
                router: transposed(tensors.get_shaped(&names::router(l), &[e, h])?, device)?,
                router_bias: None,
                experts,
            });
        }
        let v = config.vocab_size;
        Ok(Self {
            config: config.clone(),
            embed: to_device(tensors.get_shaped(names::EMBED, &[v, h])?, device),
            layers,
            norm: to_device(tensors.get_shaped(names::NORM, &[h])?, device),
            lm_head: transposed(tensors.get_shaped(names::LM_HEAD, &[v, h])?, device)?,
            rope: Rope::new(hd, config.max_position_embeddings.max(1), config.rope_theta),
            top_k: config.num_experts_per_tok,
        })
    }

    /// Device the weights live on.
    pub fn device(&self) -> Device {
        self.embed.device()
    }

    /// Hidden states after the final norm for `batch` rows of `seq` tokens each
    /// (`tokens.len() == batch * seq`), as `[batch * seq, hidden]`.
    pub fn hidden(
        &self,
        tokens: &[u32],
        batch: usize,
        trace: &mut Trace,
    ) -> Result<Tensor<2>, ModelError> {
        if batch == 0 || tokens.is_empty() || !tokens.len().is_multiple_of(batch) {
            return Err(ModelError::Argument(format!(
                "{} tokens cannot form {batch} equal rows",
                tokens.len()
            )));
        }
        let seq = tokens.len() / batch;
        if seq > self.rope.positions() {
            return Err(ModelError::Argument(format!(
                "sequence of {seq} tokens exceeds max_position_embeddings {}",
                self.config.max_position_embeddings
            )));
        }
        self.check_tokens(tokens)?;
        let device = self.device();
        let ids: Vec<i64> = tokens.iter().map(|&t| i64::from(t)).collect();
        let ids = Tensor::<1, Int>::from_data(TensorData::new(ids, [tokens.len()]), &device);
        // On rayon's pool, so that each operation's parallel work starts
        // without waking the pool from outside (`on_pool`).
        Ok(crate::device::on_pool(|| {
            let mut x = self.embed.clone().select(0, ids);
            for (l, layer) in self.layers.iter().enumerate() {
                x = self.layer_forward(l, layer, x, batch, seq, trace);
            }
            rms_norm(x, &self.norm, self.config.rms_norm_eps)
        }))
    }

    /// Refuses token ids outside the vocabulary (inputs, and targets before
    /// they reach the loss or the scorer).
    pub fn check_tokens(&self, tokens: &[u32]) -> Result<(), ModelError> {
        let vocab = self.config.vocab_size;
        match tokens.iter().find(|&&t| t as usize >= vocab) {
            Some(bad) => Err(ModelError::Argument(format!(
                "token id {bad} is outside the vocabulary of {vocab}"
            ))),
            None => Ok(()),
        }
    }

    /// Logits `[batch * seq, vocab]`.
    pub fn logits(
        &self,
        tokens: &[u32],
        batch: usize,
        trace: &mut Trace,
    ) -> Result<Tensor<2>, ModelError> {
        Ok(matmul(
            self.hidden(tokens, batch, trace)?,
            self.lm_head.clone(),
        ))
    }

    fn layer_forward(
        &self,
        l: usize,
        layer: &Layer,
        x: Tensor<2>,
        batch: usize,
        seq: usize,
        trace: &mut Trace,
    ) -> Tensor<2> {
        let eps = self.config.rms_norm_eps;
        let a = self.attention(&layer.attn, x.clone(), batch, seq);
        let x = x + rms_norm(a, &layer.post_attention_norm, eps);
        if let Some(sums) = trace.router_input_sums.as_mut() {
            let s = to_host(x.clone().sum_dim(0));
            if sums.len() <= l {
                sums.resize(l + 1, vec![0.0; s.data.len()]);
            }
            for (acc, v) in sums[l].iter_mut().zip(&s.data) {
                *acc += f64::from(*v);
            }
        }
        if let Some(rows) = trace.router_inputs.as_mut() {
            let h = to_host(x.clone());
            if rows.len() <= l {
                rows.resize(l + 1, Vec::new());
            }
            rows[l].extend_from_slice(&h.data);
        }
        let m = self.moe(l, layer, x.clone(), trace);
        x + rms_norm(m, &layer.post_feedforward_norm, eps)
    }

    fn attention(&self, attn: &Attention, x: Tensor<2>, batch: usize, seq: usize) -> Tensor<2> {
        let c = &self.config;
        let eps = c.rms_norm_eps;
        let (nh, nkv, hd) = (c.num_attention_heads, c.kv_heads(), c.head_dim());
        let qkv = matmul(x, attn.qkv.clone());
        let q = rms_norm(qkv.clone().narrow(1, 0, nh * hd), &attn.q_norm, eps);
        let k = rms_norm(qkv.clone().narrow(1, nh * hd, nkv * hd), &attn.k_norm, eps);
        let v = qkv.narrow(1, (nh + nkv) * hd, nkv * hd);
        let shape = crate::attention::Shape {
            batch,
            seq,
            heads: nh,
            kv_heads: nkv,
            head_dim: hd,
        };
        // RoPE, causal softmax(q·kᵀ / sqrt(head_dim)) · v: one fused operation
        // (see `crate::attention`).
        matmul(
            crate::attention::causal_attention(q, k, v, shape, &self.rope),
            attn.out.clone(),
        )
    }

    fn moe(&self, l: usize, layer: &Layer, x: Tensor<2>, trace: &mut Trace) -> Tensor<2> {
        let n_exp = layer.experts.len();
        let mut logits = matmul(x.clone(), layer.router.clone());
        if let Some(bias) = &layer.router_bias {
            logits = logits + bias.clone().reshape([1, n_exp]);
        }
        if trace.keep_router_logits {
            trace.router_logits.push(logits.clone());
        }
        let probs = softmax(logits, 1);
        let k = self.top_k.min(n_exp);
        if k == n_exp {
            // Every expert is active: a dense weighted sum, differentiable throughout.
            if let Some(counts) = trace.route_counts.as_mut() {
                let tokens = x.dims()[0] as u64;
                ensure_layer(counts, l, n_exp);
                for c in counts[l].iter_mut() {
                    *c += tokens;
                }
            }
            let ys: Vec<Tensor<2>> = layer
                .experts
                .iter()
                .map(|ffn| ffn.forward(x.clone()))
                .collect();
            if let Some(gaps) = trace.expert_gaps.as_mut()
                && let Some((first, rest)) = ys.split_first()
            {
                let base = first.clone().detach();
                let gap = rest
                    .iter()
                    .map(|y| (y.clone() - base.clone()).square().sum())
                    .reduce(|a, b| a + b);
                if let Some(g) = gap {
                    let scale = base.square().sum().add_scalar(1e-12);
                    gaps.push(g / scale.mul_scalar(rest.len() as f64));
                }
            }
            let mut out: Option<Tensor<2>> = None;
            for (e, y) in ys.into_iter().enumerate() {
                let y = y * probs.clone().narrow(1, e, 1);
                out = Some(match out {
                    Some(acc) => acc + y,
                    None => y,
                });
            }
            return out.unwrap_or_else(|| x.zeros_like());
        }
        // Sparse routing: pick the top-k per token on the host, run each expert on
        // the rows routed to it only, and scatter-add the weighted results back.
        let host = to_host(probs);
        let [n, _] = [host.shape[0], host.shape[1]];
        let mut rows: Vec<Vec<i64>> = vec![Vec::new(); n_exp];
        let mut weights: Vec<Vec<f32>> = vec![Vec::new(); n_exp];
        let mut order: Vec<usize> = (0..n_exp).collect();
        for t in 0..n {
            let p = &host.data[t * n_exp..(t + 1) * n_exp];
            order.sort_by(|&a, &b| p[b].total_cmp(&p[a]).then(a.cmp(&b)));
            for &e in &order[..k] {
                rows[e].push(t as i64);
                weights[e].push(p[e]);
            }
        }
        if let Some(counts) = trace.route_counts.as_mut() {
            ensure_layer(counts, l, n_exp);
            for (e, r) in rows.iter().enumerate() {
                counts[l][e] += r.len() as u64;
            }
        }
        let device = x.device();
        let mut out = x.zeros_like();
        for (e, ffn) in layer.experts.iter().enumerate() {
            let r = std::mem::take(&mut rows[e]);
            if r.is_empty() {
                continue;
            }
            let m = r.len();
            let idx = Tensor::<1, Int>::from_data(TensorData::new(r, [m]), &device);
            let w = Tensor::<2>::from_data(
                TensorData::new(std::mem::take(&mut weights[e]), [m, 1]),
                &device,
            );
            let y = ffn.forward(x.clone().select(0, idx.clone())) * w;
            out = out.select_assign(0, idx, y, IndexingUpdateOp::Add);
        }
        out
    }
}

fn ensure_layer(counts: &mut Vec<Vec<u64>>, l: usize, n_exp: usize) {
    if counts.len() <= l {
        counts.resize(l + 1, vec![0; n_exp]);
    }
}
