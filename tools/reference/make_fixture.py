#!/usr/bin/env python3
"""Build the tiny FlexOlmo reference fixtures for the Rust forward-pass tests.

Writes, for each of "tiny-moe" (4 experts, top-2) and "tiny-dense" (1 expert,
top-1), a checkpoint directory

    crates/tributary-model/tests/fixtures/<name>/
        config.json        (model_type flex_olmo, as transformers writes it)
        model.safetensors  (float32, per-expert tensor names, see below)
        expected.json      (token sequences, per-token log-probs, NLL, ...)

Tensor names written (the layout `FlexOlmoForCausalLM.save_pretrained` uses and
`from_pretrained` accepts; transformers fuses the experts on load):

    model.embed_tokens.weight                              [vocab, hidden]
    model.layers.{l}.self_attn.{q,k,v,o}_proj.weight        [out, in]
    model.layers.{l}.self_attn.{q,k}_norm.weight            [heads*head_dim] / [kv_heads*head_dim]
    model.layers.{l}.post_attention_layernorm.weight        [hidden]
    model.layers.{l}.post_feedforward_layernorm.weight      [hidden]
    model.layers.{l}.mlp.gate.weight                        [num_experts, hidden]
    model.layers.{l}.mlp.experts.{e}.gate_proj.weight       [intermediate, hidden]
    model.layers.{l}.mlp.experts.{e}.up_proj.weight         [intermediate, hidden]
    model.layers.{l}.mlp.experts.{e}.down_proj.weight       [hidden, intermediate]
    model.norm.weight                                       [hidden]
    lm_head.weight                                          [vocab, hidden]

The safetensors file is written by this script (not by save_pretrained) so the
layout does not depend on the transformers version; the script then checks that
(a) save_pretrained writes exactly the same names, shapes and bytes,
(b) from_pretrained loads it with no missing/unexpected/mismatched keys and
    gives bit-identical logits to the in-memory model, and
(c) an independent float64 re-implementation of the forward pass written from
    tools/reference/NOTES.md (`reference_forward` below) agrees with the
    transformers logits.

Everything is seeded; running the script twice gives byte-identical files
(except that config.json records the transformers version).

Usage: python3 tools/reference/make_fixture.py [--out DIR] [--seed N]
"""

import argparse
import json
import math
import os
import shutil
import sys
import tempfile

import torch
import torch.nn.functional as F
import transformers
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from transformers import FlexOlmoConfig, FlexOlmoForCausalLM

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
DEFAULT_OUT = os.path.join(REPO, "crates", "tributary-model", "tests", "fixtures")

BASE = dict(
    vocab_size=256,
    hidden_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=4,
    intermediate_size=96,
    max_position_embeddings=128,
    rms_norm_eps=1e-6,
    rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
    norm_topk_prob=False,
    tie_word_embeddings=False,
    # The class defaults (pad 100277, eos 100257) are outside a 256 vocab and
    # make nn.Embedding(padding_idx=...) fail, so they must be set explicitly.
    pad_token_id=None,
    bos_token_id=None,
    eos_token_id=None,
)
FIXTURES = {
    "tiny-moe": dict(BASE, num_experts=4, num_experts_per_tok=2),
    "tiny-dense": dict(BASE, num_experts=1, num_experts_per_tok=1),
}
SEQ_LENS = (37, 64)

# Init scales: large enough that attention, norms and routing all matter.
STD_EMBED = 1.0
STD_LINEAR = 0.2
STD_NORM = 0.2  # norm weights ~ 1 + N(0, STD_NORM)
STD_ROUTER = 0.3
STD_LM_HEAD = 0.2


def per_expert_state_dict(model, cfg):
    """State dict with the fused experts split into per-expert 2-D tensors."""
    out = {}
    inter = cfg.intermediate_size
    for name, t in model.state_dict().items():
        t = t.detach().to(torch.float32).contiguous()
        if name.endswith("mlp.experts.gate_up_proj"):
            prefix = name[: -len("gate_up_proj")]
            # fused [E, 2*I, H]: rows 0..I are gate_proj, rows I..2I are up_proj
            for e in range(t.shape[0]):
                out[f"{prefix}{e}.gate_proj.weight"] = t[e, :inter].clone().contiguous()
                out[f"{prefix}{e}.up_proj.weight"] = t[e, inter:].clone().contiguous()
        elif name.endswith("mlp.experts.down_proj"):
            prefix = name[: -len("down_proj")]
            for e in range(t.shape[0]):  # fused [E, H, I]
                out[f"{prefix}{e}.down_proj.weight"] = t[e].clone().contiguous()
        else:
            out[name] = t.clone()
    return dict(sorted(out.items()))


def randomise(model, cfg, gen):
    def normal(shape, std, mean=0.0):
        return torch.randn(shape, generator=gen, dtype=torch.float32) * std + mean

    with torch.no_grad():
        for name, p in sorted(model.named_parameters()):
            if name.endswith("norm.weight") or name.endswith("layernorm.weight"):
                p.copy_(normal(p.shape, STD_NORM, 1.0))
            elif name == "model.embed_tokens.weight":
                p.copy_(normal(p.shape, STD_EMBED))
            elif name == "lm_head.weight":
                p.copy_(normal(p.shape, STD_LM_HEAD))
            elif name.endswith("mlp.gate.weight"):
                p.copy_(normal(p.shape, STD_ROUTER))
            else:
                p.copy_(normal(p.shape, STD_LINEAR))


# ----------------------------------------------------------------------------
# Independent float64 forward pass, written from NOTES.md, reading only the
# on-disk (per-expert) tensors and config.json.
# ----------------------------------------------------------------------------
def rms_norm(x, w, eps):
    return w * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps))


def reference_forward(sd, c, ids):
    """ids: list[int]. Returns (logits [T, V] float64, routing list per layer)."""
    sd = {k: v.to(torch.float64) for k, v in sd.items()}
    H, nh, nkv = c["hidden_size"], c["num_attention_heads"], c["num_key_value_heads"]
    d = H // nh
    E, k_top, eps = c["num_experts"], c["num_experts_per_tok"], c["rms_norm_eps"]
    theta = c["rope_parameters"]["rope_theta"]
    T = len(ids)
    x = sd["model.embed_tokens.weight"][torch.tensor(ids)]
    pos = torch.arange(T, dtype=torch.float64)
    inv_freq = 1.0 / theta ** (torch.arange(0, d, 2, dtype=torch.float64) / d)  # [d/2]
    ang = torch.cat([pos[:, None] * inv_freq, pos[:, None] * inv_freq], -1)  # [T, d]
    cos, sin = ang.cos(), ang.sin()

    def rope(t):  # t: [heads, T, d]; rotate_half (non-interleaved) convention
        t1, t2 = t[..., : d // 2], t[..., d // 2 :]
        return t * cos + torch.cat([-t2, t1], -1) * sin

    causal = torch.full((T, T), float("-inf"), dtype=torch.float64).triu(1)
    routing = []
    for l in range(c["num_hidden_layers"]):
        p = f"model.layers.{l}."
        q = rms_norm(x @ sd[p + "self_attn.q_proj.weight"].T, sd[p + "self_attn.q_norm.weight"], eps)
        kk = rms_norm(x @ sd[p + "self_attn.k_proj.weight"].T, sd[p + "self_attn.k_norm.weight"], eps)
        v = x @ sd[p + "self_attn.v_proj.weight"].T
        q = rope(q.view(T, nh, d).transpose(0, 1))
        kk = rope(kk.view(T, nkv, d).transpose(0, 1)).repeat_interleave(nh // nkv, 0)
        v = v.view(T, nkv, d).transpose(0, 1).repeat_interleave(nh // nkv, 0)
        att = torch.softmax(q @ kk.transpose(1, 2) * d**-0.5 + causal, -1) @ v  # [nh, T, d]
        o = att.transpose(0, 1).reshape(T, nh * d) @ sd[p + "self_attn.o_proj.weight"].T
        x = x + rms_norm(o, sd[p + "post_attention_layernorm.weight"], eps)

        r_logits = x @ sd[p + "mlp.gate.weight"].T  # [T, E]
        probs = torch.softmax(r_logits, -1)  # over ALL experts
        top_v, top_i = torch.topk(probs, k_top, -1)
        if c.get("norm_topk_prob", False):
            top_v = top_v / top_v.sum(-1, keepdim=True)
        y = torch.zeros_like(x)
        for e in range(E):
            ep = p + f"mlp.experts.{e}."
            h = F.silu(x @ sd[ep + "gate_proj.weight"].T) * (x @ sd[ep + "up_proj.weight"].T)
            out_e = h @ sd[ep + "down_proj.weight"].T
            w_e = (top_v * (top_i == e)).sum(-1, keepdim=True)  # 0 if e not selected
            y = y + w_e * out_e
        x = x + rms_norm(y, sd[p + "post_feedforward_layernorm.weight"], eps)
        srt = torch.sort(r_logits, -1, descending=True).values
        margin = (srt[:, k_top - 1] - srt[:, k_top]).min().item() if E > k_top else None
        routing.append({"top_k": top_i.tolist(), "min_logit_margin": margin})
    x = rms_norm(x, sd["model.norm.weight"], eps)
    return x @ sd["lm_head.weight"].T, routing


def score(logits, ids):
    """logits: [T, V] (any float dtype). log-probs of ids[1:] in float64."""
    lp = torch.log_softmax(logits.to(torch.float64), -1)
    tgt = torch.tensor(ids[1:])
    token_lp = lp[:-1].gather(-1, tgt[:, None])[:, 0]
    nll = -token_lp.mean().item()
    return token_lp.tolist(), nll, math.exp(nll)


def check_loading(path, ref_model, seqs):
    loaded, info = FlexOlmoForCausalLM.from_pretrained(path, output_loading_info=True)
    bad = {k: v for k, v in info.items() if v}
    assert not bad, f"from_pretrained reported problems: {bad}"
    loaded.eval()
    with torch.no_grad():
        for ids in seqs:
            a = ref_model(torch.tensor([ids])).logits
            b = loaded(torch.tensor([ids])).logits
            assert torch.equal(a, b), "reloaded logits differ"
    return loaded


def build(name, overrides, out_root, seed):
    gen = torch.Generator().manual_seed(seed)
    cfg = FlexOlmoConfig(**overrides)
    torch.manual_seed(seed)
    model = FlexOlmoForCausalLM(cfg).to(torch.float32).eval()
    randomise(model, cfg, gen)
    seqs = [torch.randint(0, cfg.vocab_size, (n,), generator=gen).tolist() for n in SEQ_LENS]

    out = os.path.join(out_root, name)
    shutil.rmtree(out, ignore_errors=True)
    os.makedirs(out)
    cfg.save_pretrained(out)
    sd = per_expert_state_dict(model, cfg)
    save_file(sd, os.path.join(out, "model.safetensors"), metadata={"format": "pt"})

    # (a) save_pretrained writes the same names/shapes/bytes
    with tempfile.TemporaryDirectory() as tmp:
        model.save_pretrained(tmp)
        theirs = load_file(os.path.join(tmp, "model.safetensors"))
        assert sorted(theirs) == sorted(sd), (
            "save_pretrained names differ: "
            f"{sorted(set(theirs) ^ set(sd))[:10]}"
        )
        for k in sd:
            assert torch.equal(theirs[k], sd[k]), k

    # (b) from_pretrained round trip, no key warnings, identical logits
    check_loading(out, model, seqs)

    # (c) independent float64 forward from the on-disk tensors
    disk = load_file(os.path.join(out, "model.safetensors"))
    with open(os.path.join(out, "config.json")) as f:
        cjson = json.load(f)

    sequences = []
    worst = 0.0
    for ids in seqs:
        with torch.no_grad():
            logits = model(torch.tensor([ids])).logits[0]  # float32, default attn/experts impl
        lps, nll, ppl = score(logits, ids)
        ref_logits, routing = reference_forward(disk, cjson, ids)
        ref_lps, ref_nll, _ = score(ref_logits, ids)
        diff = max(abs(a - b) for a, b in zip(lps, ref_lps))
        worst = max(worst, diff)
        assert diff < 1e-4, f"{name}: float64 reference disagrees by {diff}"
        assert abs(nll - ref_nll) / nll < 1e-5
        sequences.append(
            {
                "tokens": ids,
                "logprobs": lps,
                "mean_nll": nll,
                "perplexity": ppl,
                "last_logits": [float(v) for v in logits[-1].tolist()],
                "routing_top_k": [r["top_k"] for r in routing],
                "min_router_logit_margin": [r["min_logit_margin"] for r in routing],
            }
        )

    # Other transformers implementations give the same numbers within float32 noise.
    alt = {}
    for attn, experts in (("eager", "eager"), ("sdpa", "batched_mm")):
        m2 = FlexOlmoForCausalLM.from_pretrained(out, attn_implementation=attn, experts_implementation=experts).eval()
        with torch.no_grad():
            d = max(
                (m2(torch.tensor([s["tokens"]])).logits[0] - model(torch.tensor([s["tokens"]])).logits[0]).abs().max().item()
                for s in sequences
            )
        alt[f"{attn}+{experts}"] = d

    expected = {
        "description": (
            "Reference values from transformers FlexOlmoForCausalLM (float32, default "
            f"attn={model.config._attn_implementation}, experts={model.config._experts_implementation}). "
            "logprobs[i] = log_softmax(float64(logits[i]))[tokens[i+1]], i = 0..len-2; "
            "mean_nll = -mean(logprobs); perplexity = exp(mean_nll); last_logits = float32 logits "
            "at the last position. routing_top_k[layer][pos] = experts chosen (descending prob)."
        ),
        "model": name,
        "transformers": transformers.__version__,
        "torch": torch.__version__,
        "seed": seed,
        "float64_reference_max_abs_logprob_diff": worst,
        "max_abs_logit_diff_other_impls": alt,
        "sequences": sequences,
    }
    with open(os.path.join(out, "expected.json"), "w") as f:
        json.dump(expected, f, indent=1)
        f.write("\n")
    sizes = {fn: os.path.getsize(os.path.join(out, fn)) for fn in sorted(os.listdir(out))}
    print(
        f"{name}: nll={[round(s['mean_nll'], 6) for s in sequences]} "
        f"ppl={[round(s['perplexity'], 4) for s in sequences]} "
        f"f64-ref max|dlogprob|={worst:.2e} other-impls={alt} "
        f"min router margin={[s['min_router_logit_margin'] for s in sequences]} sizes={sizes}"
    )


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=DEFAULT_OUT)
    ap.add_argument("--seed", type=int, default=20250707)
    args = ap.parse_args()
    torch.use_deterministic_algorithms(True)
    print(f"transformers {transformers.__version__}, torch {torch.__version__}", file=sys.stderr)
    for i, (name, overrides) in enumerate(FIXTURES.items()):
        build(name, overrides, args.out, args.seed + i)


if __name__ == "__main__":
    main()
