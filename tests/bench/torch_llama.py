#!/usr/bin/env python3
"""The PyTorch-eager peer of keel's training-throughput bench (tests/bench/bench_train.sh).

A LLaMA as Hugging Face's LlamaForCausalLM builds it (RMSNorm, rotate-half RoPE, causal GQA
attention, SwiGLU MLP, untied lm_head), trained in fp32 with AdamW on random tokens. It runs eager
PyTorch at its best: explicit thread count, fused scaled-dot-product attention, fused (or foreach)
AdamW, foreach gradient clipping, gradients set to None. Prints one JSON line with tokens/s.
"""

import argparse
import inspect
import json
import math
import platform
import statistics
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--hidden", type=int, default=288)
    p.add_argument("--layers", type=int, default=6)
    p.add_argument("--heads", type=int, default=6)
    p.add_argument("--kv-heads", type=int, default=0, help="0: same as --heads")
    p.add_argument("--intermediate", type=int, default=768)
    p.add_argument("--vocab", type=int, default=32000)
    p.add_argument("--seq", type=int, default=256)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--steps", type=int, default=5, help="timed steps, after the warm-up ones")
    p.add_argument("--warmup-steps", type=int, default=1)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--weight-decay", type=float, default=0.0)
    p.add_argument("--max-grad-norm", type=float, default=1.0, help="0 disables clipping")
    p.add_argument("--rope-theta", type=float, default=10000.0)
    p.add_argument("--eps", type=float, default=1e-5)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--fuse-projections", action="store_true",
                   help="one GEMM for q/k/v and one for gate/up (same math, larger GEMMs)")
    return p.parse_args()


HAS_SDPA = hasattr(F, "scaled_dot_product_attention")


def _sdpa_takes_gqa():
    # A builtin has no inspectable signature, so ask it directly (enable_gqa came in torch 2.5).
    if not HAS_SDPA:
        return False
    q, kv = torch.zeros(1, 2, 1, 2), torch.zeros(1, 1, 1, 2)
    try:
        F.scaled_dot_product_attention(q, kv, kv, enable_gqa=True)
        return True
    except TypeError:
        return False


SDPA_GQA = _sdpa_takes_gqa()
HAS_RMS_NORM = hasattr(F, "rms_norm")


class RMSNorm(nn.Module):
    def __init__(self, dim, eps):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x):
        if HAS_RMS_NORM:
            return F.rms_norm(x, (x.shape[-1],), self.weight, self.eps)
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


def rope_tables(seq, head_dim, theta):
    # (T, D) cos and sin, the two halves repeated as HF's LlamaRotaryEmbedding lays them out.
    inv_freq = 1.0 / theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
    freqs = torch.outer(torch.arange(seq, dtype=torch.float32), inv_freq)
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos(), emb.sin()


def rotate_half(x):
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


class Attention(nn.Module):
    def __init__(self, a):
        super().__init__()
        self.heads, self.kv_heads = a.heads, a.kv_heads
        self.head_dim = a.hidden // a.heads
        q, kv = a.heads * self.head_dim, a.kv_heads * self.head_dim
        self.fused = a.fuse_projections
        if self.fused:
            self.qkv_proj = nn.Linear(a.hidden, q + 2 * kv, bias=False)
        else:
            self.q_proj = nn.Linear(a.hidden, q, bias=False)
            self.k_proj = nn.Linear(a.hidden, kv, bias=False)
            self.v_proj = nn.Linear(a.hidden, kv, bias=False)
        self.o_proj = nn.Linear(q, a.hidden, bias=False)
        self.splits = (q, kv, kv)

    def forward(self, x, cos, sin, causal_mask):
        B, T, _ = x.shape
        if self.fused:
            q, k, v = self.qkv_proj(x).split(self.splits, dim=-1)
        else:
            q, k, v = self.q_proj(x), self.k_proj(x), self.v_proj(x)
        q = q.view(B, T, self.heads, self.head_dim).transpose(1, 2)  # (B, H, T, D)
        k = k.view(B, T, self.kv_heads, self.head_dim).transpose(1, 2)  # (B, KV, T, D)
        v = v.view(B, T, self.kv_heads, self.head_dim).transpose(1, 2)
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        group = self.heads // self.kv_heads
        if HAS_SDPA:
            if group > 1 and SDPA_GQA:
                y = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
            else:
                if group > 1:
                    k, v = k.repeat_interleave(group, 1), v.repeat_interleave(group, 1)
                y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:
            if group > 1:
                k, v = k.repeat_interleave(group, 1), v.repeat_interleave(group, 1)
            att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(self.head_dim))  # (B, H, T, T)
            att = att.masked_fill(causal_mask, float("-inf")).softmax(dim=-1)
            y = att @ v
        return self.o_proj(y.transpose(1, 2).reshape(B, T, -1))


class MLP(nn.Module):
    def __init__(self, a):
        super().__init__()
        self.fused = a.fuse_projections
        if self.fused:
            self.gate_up_proj = nn.Linear(a.hidden, 2 * a.intermediate, bias=False)
        else:
            self.gate_proj = nn.Linear(a.hidden, a.intermediate, bias=False)
            self.up_proj = nn.Linear(a.hidden, a.intermediate, bias=False)
        self.down_proj = nn.Linear(a.intermediate, a.hidden, bias=False)

    def forward(self, x):
        if self.fused:
            gate, up = self.gate_up_proj(x).chunk(2, dim=-1)
        else:
            gate, up = self.gate_proj(x), self.up_proj(x)
        return self.down_proj(F.silu(gate) * up)


class Block(nn.Module):
    def __init__(self, a):
        super().__init__()
        self.input_layernorm = RMSNorm(a.hidden, a.eps)
        self.self_attn = Attention(a)
        self.post_attention_layernorm = RMSNorm(a.hidden, a.eps)
        self.mlp = MLP(a)

    def forward(self, x, cos, sin, causal_mask):
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, causal_mask)
        return x + self.mlp(self.post_attention_layernorm(x))


class Llama(nn.Module):
    def __init__(self, a):
        super().__init__()
        self.embed_tokens = nn.Embedding(a.vocab, a.hidden)
        self.layers = nn.ModuleList(Block(a) for _ in range(a.layers))
        self.norm = RMSNorm(a.hidden, a.eps)
        self.lm_head = nn.Linear(a.hidden, a.vocab, bias=False)
        cos, sin = rope_tables(a.seq, a.hidden // a.heads, a.rope_theta)
        self.register_buffer("cos", cos, persistent=False)
        self.register_buffer("sin", sin, persistent=False)
        mask = torch.ones(a.seq, a.seq, dtype=torch.bool).triu(1)  # True above the diagonal
        self.register_buffer("causal_mask", mask, persistent=False)
        for m in self.modules():  # HF's _init_weights with initializer_range 0.02
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.normal_(m.weight, mean=0.0, std=0.02)

    def forward(self, idx, targets):
        x = self.embed_tokens(idx)  # (B, T, C)
        for block in self.layers:
            x = block(x, self.cos, self.sin, self.causal_mask)
        logits = self.lm_head(self.norm(x))  # (B, T, V)
        return F.cross_entropy(logits.view(-1, logits.size(-1)), targets.reshape(-1))


def make_optimizer(model, a):
    # Fused AdamW on the CPU where this torch has it, else the multi-tensor (foreach) one.
    params = list(model.parameters())
    kwargs = dict(lr=a.lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=a.weight_decay)
    sig = inspect.signature(torch.optim.AdamW).parameters
    if "fused" in sig:
        try:
            opt = torch.optim.AdamW(params, fused=True, **kwargs)
            # Older versions may reject fused CPU tensors only when stepping: probe one step.
            probe = [torch.zeros(1, requires_grad=True)]
            probe[0].grad = torch.zeros(1)
            torch.optim.AdamW(probe, fused=True, **kwargs).step()
            return opt, "fused"
        except (RuntimeError, ValueError, TypeError):
            pass
    if "foreach" in sig:
        return torch.optim.AdamW(params, foreach=True, **kwargs), "foreach"
    return torch.optim.AdamW(params, **kwargs), "for-loop"


def main():
    a = parse_args()
    a.kv_heads = a.kv_heads or a.heads
    assert a.hidden % a.heads == 0 and a.heads % a.kv_heads == 0, "bad head counts"
    torch.set_num_threads(a.threads)
    try:
        torch.set_num_interop_threads(1)  # eager runs one op at a time; no second pool
    except RuntimeError:
        pass
    torch.manual_seed(a.seed)

    model = Llama(a)
    model.train()
    opt, opt_kind = make_optimizer(model, a)
    clip_kwargs = {"foreach": True} if "foreach" in inspect.signature(
        torch.nn.utils.clip_grad_norm_).parameters else {}

    n_params = sum(p.numel() for p in model.parameters())
    n_embed = model.embed_tokens.weight.numel()
    gen = torch.Generator().manual_seed(a.seed)
    batches = [torch.randint(a.vocab, (a.batch, a.seq + 1), generator=gen) for _ in range(4)]

    step_seconds, losses = [], []
    for step in range(a.warmup_steps + a.steps):
        tokens = batches[step % len(batches)]
        t0 = time.perf_counter()
        loss = model(tokens[:, :-1], tokens[:, 1:])
        loss.backward()
        if a.max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), a.max_grad_norm, **clip_kwargs)
        opt.step()
        opt.zero_grad(set_to_none=True)
        loss_value = loss.item()  # syncs nothing on the CPU, but keeps the loss honest
        dt = time.perf_counter() - t0
        losses.append(loss_value)
        if step >= a.warmup_steps:
            step_seconds.append(dt)
        print(f"step {step}{' (warm-up)' if step < a.warmup_steps else ''}: loss {loss_value:.4f}"
              f" {dt:.3f} s {a.batch * a.seq / dt:.1f} tok/s", file=sys.stderr, flush=True)

    tokens_per_step = a.batch * a.seq
    result = {
        "peer": "torch-eager",
        "torch": torch.__version__,
        "python": platform.python_version(),
        "threads": torch.get_num_threads(),
        "attention": "sdpa" if HAS_SDPA else "math",
        "rms_norm": "F.rms_norm" if HAS_RMS_NORM else "composite",
        "optimizer": f"adamw-{opt_kind}",
        "fused_projections": a.fuse_projections,
        "params": n_params,
        "embedding_params": n_embed,
        "tokens_per_step": tokens_per_step,
        "timed_steps": len(step_seconds),
        # Median over timed steps, as bench_train.sh takes keel's; mean and best for reference.
        "tokens_per_second": tokens_per_step / statistics.median(step_seconds) if step_seconds else 0,
        "tokens_per_second_mean": tokens_per_step * len(step_seconds) / sum(step_seconds)
        if step_seconds else 0,
        "tokens_per_second_best": tokens_per_step / min(step_seconds) if step_seconds else 0,
        "step_seconds": [round(s, 4) for s in step_seconds],
        "loss_first": losses[0],
        "loss_last": losses[-1],
    }
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
