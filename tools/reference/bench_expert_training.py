#!/usr/bin/env python3
"""PyTorch side of the expert-training speed benchmark (CPU, float32).

Builds a FlexOlmoForCausalLM with num_experts=2, num_experts_per_tok=2 (both
experts always active, as in FlexOlmo expert training, paper section 3.3) and
trains only what a contributor trains:

  * expert 1's FFN in every layer (gate/up/down).  transformers stores the
    experts fused (mlp.experts.gate_up_proj [2, 2I, H], mlp.experts.down_proj
    [2, H, I]), so the fused parameters require grad and a gradient hook zeroes
    the expert-0 slice.  Deviation: autograd still computes expert 0's weight
    gradient before it is zeroed (a per-expert implementation can skip it).
  * router row 1 of every layer (mlp.gate.weight [2, H]); a hook zeroes row 0's
    gradient.
  * one learnable scalar b_l per layer, added as min(b_l, 0) to router logit 1
    (the router forward is replaced per instance by a copy of transformers'
    FlexOlmoTopKRouter.forward with this bias added; the bias is also inside the
    logits used by the z-loss).

Everything else (embeddings, attention, norms, lm_head) has requires_grad=False.
AdamW with weight_decay=0 so the zero-gradient slices (expert 0, router row 0)
stay bit-identical; this is checked at the end.

Loss = mean token cross-entropy (labels = inputs, shifted inside transformers)
     + 1e-3 * sum over layers of mean over tokens of logsumexp(router_logits)^2.
No load-balancing loss (output_router_logits stays False).

Data: uniformly random token ids from a seeded torch.Generator, a fresh batch
[batch, seq_len] per step, generated before timing.  tokens_per_s counts
batch*seq_len tokens per optimiser step over the timed steps.

Prints one JSON line:
  {"impl":"pytorch","tokens_per_s":...,"step_ms":...,"torch":...,"threads":...,...}
"""

import argparse
import json
import sys
import time
import types

import torch
import torch.nn.functional as F
import transformers
from transformers import FlexOlmoConfig, FlexOlmoForCausalLM

Z_LOSS_WEIGHT = 1e-3


def biased_router_forward(self, hidden_states):
    # Same as FlexOlmoTopKRouter.forward, plus min(b, 0) on the last expert's logit.
    hidden_states = hidden_states.reshape(-1, self.hidden_dim)
    router_logits = F.linear(hidden_states, self.weight)
    bias = torch.cat([router_logits.new_zeros(self.num_experts - 1), torch.clamp(self.own_bias, max=0.0).reshape(1)])
    router_logits = router_logits + bias
    self.z_sink.append(router_logits)
    router_probs = torch.nn.functional.softmax(router_logits, dtype=torch.float, dim=-1)
    router_top_value, router_indices = torch.topk(router_probs, self.top_k, dim=-1)
    if self.norm_topk_prob:
        router_top_value /= router_top_value.sum(dim=-1, keepdim=True)
    router_top_value = router_top_value.to(router_logits.dtype)
    return router_logits, router_top_value, router_indices


def zero_slice_hook(index):
    def hook(grad):
        grad = grad.clone()
        grad[index] = 0
        return grad

    return hook


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--vocab", type=int, default=4096)
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--intermediate", type=int, default=344)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--bias-init", type=float, default=0.0, help="initial b_l (applied as min(b_l, 0))")
    ap.add_argument("--experts-impl", default=None,
                    help="transformers experts implementation (eager, batched_mm, grouped_mm); default: transformers' default")
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    cfg = FlexOlmoConfig(
        vocab_size=args.vocab,
        hidden_size=args.hidden,
        num_hidden_layers=args.layers,
        num_attention_heads=args.heads,
        num_key_value_heads=args.heads,
        intermediate_size=args.intermediate,
        num_experts=2,
        num_experts_per_tok=2,
        max_position_embeddings=max(4096, args.seq_len),
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
        norm_topk_prob=False,
        tie_word_embeddings=False,
        pad_token_id=None,
        bos_token_id=None,
        eos_token_id=None,
    )
    kwargs = {} if args.experts_impl is None else {"experts_implementation": args.experts_impl}
    model = FlexOlmoForCausalLM._from_config(cfg, dtype=torch.float32, **kwargs)
    model.train()

    for p in model.parameters():
        p.requires_grad_(False)
    trainable = []
    z_sink = []
    with torch.no_grad():
        for layer in model.model.layers:
            moe = layer.mlp
            # own expert starts as a copy of the public expert 0
            moe.experts.gate_up_proj[1].copy_(moe.experts.gate_up_proj[0])
            moe.experts.down_proj[1].copy_(moe.experts.down_proj[0])
    for layer in model.model.layers:
        moe = layer.mlp
        for p in (moe.experts.gate_up_proj, moe.experts.down_proj, moe.gate.weight):
            p.requires_grad_(True)
            p.register_hook(zero_slice_hook(0))
            trainable.append(p)
        moe.gate.own_bias = torch.nn.Parameter(torch.tensor(args.bias_init))
        moe.gate.z_sink = z_sink
        moe.gate.forward = types.MethodType(biased_router_forward, moe.gate)
        trainable.append(moe.gate.own_bias)

    frozen_before = [
        (l.mlp.experts.gate_up_proj[0].detach().clone(), l.mlp.experts.down_proj[0].detach().clone(),
         l.mlp.gate.weight[0].detach().clone())
        for l in model.model.layers
    ]
    embed_before = model.model.embed_tokens.weight.detach().clone()

    opt = torch.optim.AdamW(trainable, lr=args.lr, weight_decay=0.0)
    gen = torch.Generator().manual_seed(args.seed)
    total = args.warmup + args.steps
    data = [torch.randint(0, args.vocab, (args.batch, args.seq_len), generator=gen) for _ in range(total)]

    losses = []

    def step(ids):
        z_sink.clear()
        out = model(input_ids=ids, labels=ids, use_cache=False)
        z = sum(torch.logsumexp(r.float(), dim=-1).pow(2).mean() for r in z_sink)
        loss = out.loss + Z_LOSS_WEIGHT * z
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())

    for i in range(args.warmup):
        step(data[i])
    t0 = time.perf_counter()
    for i in range(args.warmup, total):
        step(data[i])
    elapsed = time.perf_counter() - t0

    for l, (gu0, d0, r0) in zip(model.model.layers, frozen_before):
        assert torch.equal(l.mlp.experts.gate_up_proj[0], gu0), "expert 0 changed"
        assert torch.equal(l.mlp.experts.down_proj[0], d0), "expert 0 changed"
        assert torch.equal(l.mlp.gate.weight[0], r0), "router row 0 changed"
    assert torch.equal(model.model.embed_tokens.weight, embed_before), "embeddings changed"

    n_train = sum(p.numel() for p in trainable)
    n_effective = sum(p[1].numel() if p.dim() >= 2 else p.numel() for p in trainable)
    step_ms = 1000.0 * elapsed / args.steps
    print(json.dumps({
        "impl": "pytorch",
        "tokens_per_s": args.batch * args.seq_len * args.steps / elapsed,
        "step_ms": step_ms,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "threads": args.threads,
        "attn_impl": model.config._attn_implementation,
        "experts_impl": model.config._experts_implementation,
        "batch": args.batch,
        "seq_len": args.seq_len,
        "steps": args.steps,
        "warmup": args.warmup,
        "trainable_params": n_effective,
        "params_requiring_grad": n_train,
        "loss_first": losses[0],
        "loss_last": losses[-1],
    }))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
