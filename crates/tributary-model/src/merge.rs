//! Assembling models from an anchor and expert packages — no training involved.
//!
//! * [`merge`]: the FlexOlmo merge. Expert 0 is the anchor's public FFN, experts
//!   1..n the contributed ones in the given order; the router stacks
//!   `r_pub, r_1, …, r_n`. Everything else is the anchor's, bit for bit.
//! * [`select_experts`]: keep a subset of a merged model's experts (opt-out and
//!   purpose restriction without retraining).
//! * [`soup`]: the "model soup" baseline — a dense model whose FFN is the uniform
//!   average of the public FFN and every contributed FFN.

use crate::checkpoint::Checkpoint;
use crate::error::ModelError;
use crate::expert::ExpertPackage;
use crate::names::{self, FFN_PROJS};
use crate::weights::{HostTensor, TensorMap};

fn check_anchor(anchor: &Checkpoint) -> Result<(), ModelError> {
    if anchor.config.num_experts != 1 {
        return Err(ModelError::Argument(format!(
            "an anchor has exactly one expert; this checkpoint has {}",
            anchor.config.num_experts
        )));
    }
    Ok(())
}

fn shared_tensors(anchor: &Checkpoint) -> TensorMap {
    let mut out = TensorMap::new();
    for (name, t) in &anchor.tensors.0 {
        if names::is_shared(name) {
            out.insert(name.clone(), t.clone());
        }
    }
    out
}

/// Merges `experts` onto `anchor` with `top_k` experts per token.
///
/// `anchor_digest` is the sha256 of the anchor's `model.safetensors`; every expert
/// must have been trained against it.
pub fn merge(
    anchor: &Checkpoint,
    anchor_digest: &str,
    experts: &[ExpertPackage],
    top_k: usize,
) -> Result<Checkpoint, ModelError> {
    check_anchor(anchor)?;
    let mut config = anchor.config.clone();
    for e in experts {
        e.check_fits(&config, anchor_digest)?;
    }
    let mut seen = std::collections::HashSet::new();
    for e in experts {
        if !seen.insert(e.digest()) {
            return Err(ModelError::Argument(format!(
                "expert {} is listed twice",
                e.digest()
            )));
        }
    }
    let n = experts.len() + 1;
    config.num_experts = n;
    config.num_experts_per_tok = top_k.clamp(1, n);
    let mut tensors = shared_tensors(anchor);
    for l in 0..config.num_hidden_layers {
        let mut rows: Vec<HostTensor> = vec![anchor.tensors.get(&names::router(l))?.clone()];
        for proj in FFN_PROJS {
            let public = anchor.tensors.get(&names::expert(l, 0, proj))?;
            tensors.insert(names::expert(l, 0, proj), public.clone());
        }
        for (i, e) in experts.iter().enumerate() {
            for proj in FFN_PROJS {
                let t = e.tensors.get(&names::package_ffn(l, proj))?;
                tensors.insert(names::expert(l, i + 1, proj), t.clone());
            }
            let r = e.tensors.get(&names::package_router(l))?;
            rows.push(HostTensor::new(vec![1, r.data.len()], r.data.clone())?);
        }
        let refs: Vec<&HostTensor> = rows.iter().collect();
        tensors.insert(names::router(l), HostTensor::vstack(&refs)?);
    }
    let merged = Checkpoint {
        config,
        tensors,
        source_dir: anchor.source_dir.clone(),
    };
    merged.check_tensors()?;
    Ok(merged)
}

/// Keeps only the experts `keep` (indices into the model's experts, 0 = public),
/// in that order; `top_k` is capped at the number kept.
pub fn select_experts(
    model: &Checkpoint,
    keep: &[usize],
    top_k: usize,
) -> Result<Checkpoint, ModelError> {
    let n = model.config.num_experts;
    if keep.is_empty() {
        return Err(ModelError::Argument(
            "at least one expert must be kept".into(),
        ));
    }
    let mut seen = vec![false; n];
    for &k in keep {
        if k >= n {
            return Err(ModelError::Argument(format!(
                "expert {k} does not exist (the model has {n}: 0..{})",
                n - 1
            )));
        }
        if std::mem::replace(&mut seen[k], true) {
            return Err(ModelError::Argument(format!("expert {k} is listed twice")));
        }
    }
    let mut config = model.config.clone();
    config.num_experts = keep.len();
    config.num_experts_per_tok = top_k.clamp(1, keep.len());
    let mut tensors = TensorMap::new();
    for (name, t) in &model.tensors.0 {
        if names::is_shared(name) {
            tensors.insert(name.clone(), t.clone());
        }
    }
    for l in 0..config.num_hidden_layers {
        let router = model.tensors.get(&names::router(l))?;
        let rows: Vec<HostTensor> = keep
            .iter()
            .map(|&k| router.rows(k, 1))
            .collect::<Result<_, _>>()?;
        let refs: Vec<&HostTensor> = rows.iter().collect();
        tensors.insert(names::router(l), HostTensor::vstack(&refs)?);
        for (new, &old) in keep.iter().enumerate() {
            for proj in FFN_PROJS {
                tensors.insert(
                    names::expert(l, new, proj),
                    model.tensors.get(&names::expert(l, old, proj))?.clone(),
                );
            }
        }
    }
    let out = Checkpoint {
        config,
        tensors,
        source_dir: model.source_dir.clone(),
    };
    out.check_tensors()?;
    Ok(out)
}

/// The uniform FFN average of the public expert and `experts`, as a dense model.
pub fn soup(
    anchor: &Checkpoint,
    anchor_digest: &str,
    experts: &[ExpertPackage],
) -> Result<Checkpoint, ModelError> {
    check_anchor(anchor)?;
    for e in experts {
        e.check_fits(&anchor.config, anchor_digest)?;
    }
    let mut tensors = anchor.tensors.clone();
    let scale = 1.0 / (experts.len() + 1) as f32;
    for l in 0..anchor.config.num_hidden_layers {
        for proj in FFN_PROJS {
            let name = names::expert(l, 0, proj);
            let mut acc = anchor.tensors.get(&name)?.clone();
            for e in experts {
                let t = e.tensors.get(&names::package_ffn(l, proj))?;
                for (a, b) in acc.data.iter_mut().zip(&t.data) {
                    *a += *b;
                }
            }
            for a in &mut acc.data {
                *a *= scale;
            }
            tensors.insert(name, acc);
        }
    }
    Ok(Checkpoint {
        config: anchor.config.clone(),
        tensors,
        source_dir: anchor.source_dir.clone(),
    })
}
