//! Perplexity and routing statistics of a model on a token stream.
//!
//! Convention (shared with `tools/reference/eval_checkpoint.py`): the stream is
//! cut into windows of `seq_len + 1` tokens with stride `seq_len`; each window
//! predicts its tokens 1.. from the tokens before them, with positions starting
//! at 0, so every token but the first is scored exactly once. A final shorter
//! window (at least two tokens) is scored too.

use serde::Serialize;

use crate::error::ModelError;
use crate::model::{FlexOlmo, Trace};
use crate::objective::inputs_and_targets;

/// Result of an evaluation.
#[derive(Clone, Debug, Serialize)]
pub struct EvalReport {
    /// Tokens scored.
    pub tokens: u64,
    /// Mean negative log-likelihood, nats per token.
    pub nll: f64,
    /// `exp(nll)`.
    pub perplexity: f64,
    /// Per layer, per expert: share of routing slots (token × top-k) sent to it;
    /// each layer's shares sum to 1.
    pub routing: Vec<Vec<f64>>,
}

/// The windows `evaluate` scores, as `(start, len)` pairs into the stream.
pub fn windows(stream_len: usize, seq_len: usize) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut start = 0;
    while start + 1 < stream_len {
        let len = (seq_len + 1).min(stream_len - start);
        out.push((start, len));
        start += seq_len;
    }
    out
}

/// Log-probability of each next token for `batch` equal rows of `tokens`:
/// row-major `[batch, seq - 1]`. Each row's last token is only a target, so a
/// row may be one token longer than the model's context.
pub fn next_token_logprobs(
    model: &FlexOlmo,
    tokens: &[u32],
    batch: usize,
    trace: &mut Trace,
) -> Result<Vec<f64>, ModelError> {
    if batch == 0 || !tokens.len().is_multiple_of(batch) || tokens.len() / batch < 2 {
        return Err(ModelError::Argument(
            "need equal rows of at least two tokens".into(),
        ));
    }
    // A row's last token is only a target, so the forward pass never sees it.
    model.check_tokens(tokens)?;
    let (inputs, targets) = inputs_and_targets(tokens, batch);
    let logits = model.logits(&inputs, batch, trace)?;
    let picked = crate::fused::target_log_probs(logits, &targets);
    Ok(picked.into_iter().map(f64::from).collect())
}

/// Evaluates `model` on `stream`, batching `batch_size` windows at a time;
/// `progress(done, total)` is called after each batch.
pub fn evaluate(
    model: &FlexOlmo,
    stream: &[u32],
    seq_len: usize,
    batch_size: usize,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<EvalReport, ModelError> {
    if seq_len == 0 || batch_size == 0 {
        return Err(ModelError::Argument(
            "seq_len and batch_size must be positive".into(),
        ));
    }
    let wins = windows(stream.len(), seq_len);
    if wins.is_empty() {
        return Err(ModelError::Argument(
            "the text has fewer than two tokens".into(),
        ));
    }
    let mut trace = Trace {
        route_counts: Some(Vec::new()),
        ..Trace::default()
    };
    let mut sum = 0f64;
    let mut count = 0u64;
    let mut done = 0;
    let full: Vec<&(usize, usize)> = wins.iter().filter(|w| w.1 == seq_len + 1).collect();
    let partial: Vec<&(usize, usize)> = wins.iter().filter(|w| w.1 != seq_len + 1).collect();
    for group in full.chunks(batch_size).chain(partial.chunks(1)) {
        let mut toks = Vec::with_capacity(group.len() * (seq_len + 1));
        for &&(s, l) in group {
            toks.extend_from_slice(&stream[s..s + l]);
        }
        let rows = group.len();
        let lps = crate::device::on_pool(|| next_token_logprobs(model, &toks, rows, &mut trace))?;
        sum -= lps.iter().sum::<f64>();
        count += lps.len() as u64;
        done += rows;
        progress(done, wins.len());
    }
    let nll = sum / count as f64;
    let routing = trace
        .route_counts
        .unwrap_or_default()
        .into_iter()
        .map(|layer| {
            let total: u64 = layer.iter().sum();
            layer
                .iter()
                .map(|&c| c as f64 / total.max(1) as f64)
                .collect()
        })
        .collect();
    Ok(EvalReport {
        tokens: count,
        nll,
        perplexity: nll.exp(),
        routing,
    })
}
