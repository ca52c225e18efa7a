#!/usr/bin/env python3
"""PyTorch reference for keel's Mixture-of-Experts MLP (Mixtral's sparse MoE block), in float64.

Run with torch and transformers from PyPI (see tests/reference/README.md):
  /tmp/moeref/bin/python tests/reference/moe_ref.py

Input x (N, C), N = B*T rows (B sequences of T tokens, row n = b*T + t); router ("gate") weight
Wg (E, C); experts e = 0..E-1, each a SwiGLU with w1 (I, C) gate, w3 (I, C) up, w2 (C, I) down:
  expert_e(x) = w2 (silu(w1 x) * (w3 x)).
  1. logits = x Wg^T (N, E); p = softmax(logits) over E; (w, sel) = torch.topk(p, k) (descending,
     torch's order); w /= sum_j w (renormalised over the k chosen experts: Mixtral's order,
     softmax -> topk -> renormalise).
  2. capacity, only when capacity_factor cf > 0 (cf = 0: dropless): per SEQUENCE (GShard's group =
     one sequence) capacity = ceil(cf * T * k / E). For each sequence and expert, the slots (t, j)
     routed to that expert are kept in order of token position t, earliest first (a token picks an
     expert at most once), up to capacity; later ones are dropped. kept(n, j) in {0, 1}. A dropped
     slot adds nothing; the weights are NOT renormalised after dropping.
  3. out[n] = sum_j kept(n, j) * w(n, j) * expert_{sel(n, j)}(x[n]).
  4. load-balancing loss, per sequence then averaged: aux_b = E * sum_i f_i * P_i over sequence b's
     T rows, f_i = (1/T) * #{(t, j): sel(t, j) = i} (top-k choices before any dropping; HF's
     tokens_per_expert), P_i = (1/T) * sum_t p_i(t); aux = mean over b of aux_b. This is
     transformers' load_balancing_loss_func applied to each sequence's logits alone.
  5. router z-loss (ST-MoE, Megatron): z = mean over all N rows of (logsumexp_i logits[n, i])^2.
  6. objective = sum(out * dout) + a * aux + zc * z (a = router_aux_loss_coef, zc =
     router_z_loss_coef, dout (N, C) a given upstream gradient); gradients by autograd w.r.t. x, Wg
     and every expert's w1, w2, w3. Selection and dropping are piecewise constant: the gradient
     reaches Wg through w (the renormalised weights), P (aux) and the logits (z) only.

The golden tests/reference/golden/moe_mixtral.safetensors (little-endian, written with json and
struct only) holds four cases, every tensor named "<case>.<name>":
  x                        F32 (N, C)  input rows
  gate.weight              F32 (E, C)  router
  experts.{e}.w1.weight    F32 (I, C)  gate projection of expert e
  experts.{e}.w3.weight    F32 (I, C)  up projection
  experts.{e}.w2.weight    F32 (C, I)  down projection
  dout                     F32 (N, C)  upstream gradient of out
  router_logits            F64 (N, E)
  selected                 I32 (N, k)  torch.topk's indices, in its (descending) order
  routing_weights          F64 (N, k)  renormalised weights, before dropping
  kept                     I32 (N, k)  1 = slot kept, 0 = dropped by capacity
  out                      F64 (N, C)
  aux_loss                 F64 (1)     without its coefficient
  z_loss                   F64 (1)     without its coefficient
  objective                F64 (1)
  tokens_per_expert        I32 (E)     kept slots per expert over the whole case
  grad.<input name>        F64         gradient of objective, for x, gate.weight, experts.*
  __metadata__             strings: per case <case>.num_local_experts, .num_experts_per_tok,
                           .hidden_size, .intermediate_size, .batch_size, .seq_length,
                           .capacity_factor, .expert_capacity (0 = dropless), .router_aux_loss_coef,
                           .router_z_loss_coef, .seed; and cases (comma-separated), torch_version,
                           transformers_version. Floats use Python's repr (round-trips via strtod).

Inputs are float32 from a fixed seed (Wg N(0, 0.5^2) so routing is decisive, expert matrices
N(0, 0.2^2), x and dout N(0, 1)); the reference upcasts them to float64. A draw is rejected (the
seed moves on by one, up to the seed written in the metadata) when any token's k-th and (k+1)-th
probabilities are closer than 1e-3 (a float32 implementation must choose the same experts), when
top2_capacity drops fewer than 3 slots or no (sequence, expert) keeps all of its slots, or when a
float32 run of this code (renormalising as a softmax over the chosen logits, see route()) differs
from the float64 one by a quarter of keel's per-tensor tolerance (1e-5) or more on any tensor.

Before writing, the script checks itself and stops on any failure: transformers' own router and
experts (MixtralSparseMoeBlock, float64) give the same logits (exactly), choices, weights (to
float32: its router's softmax is float32) and outputs given our weights (~1e-16), the whole block
the same output to float32's precision; a Mixtral checkpoint with per-expert names
(block_sparse_moe.experts.{e}.w1/w2/w3) loads into transformers' MixtralForCausalLM and
save_pretrained writes it back; each sequence's aux_b equals load_balancing_loss_func's (which
sums in float32); autograd gradients agree with central finite differences on the largest entry
of every gradient and along a random direction (every evaluation checked to route and drop as the
golden); the file reads back bit-exact.
"""

import math
import os
import sys
import tempfile
from dataclasses import dataclass

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # everything below is local

import torch
import torch.nn.functional as F
import transformers
from transformers import MixtralConfig, MixtralForCausalLM
from transformers.models.mixtral import modeling_mixtral

from llama_ref import read_safetensors, rel_err, write_safetensors

GOLDEN = os.path.join(os.path.dirname(os.path.abspath(__file__)), "golden",
                      "moe_mixtral.safetensors")
MARGIN = 1e-3  # least gap between a token's k-th and (k+1)-th probability
GATE_STD, EXPERT_STD = 0.5, 0.2
FLOAT32_TOLERANCE = 1e-5 / 4  # a quarter of keel's per-tensor L2 relative tolerance


@dataclass(frozen=True)
class Case:
    name: str
    num_local_experts: int  # E
    num_experts_per_tok: int  # k
    hidden_size: int  # C
    intermediate_size: int  # I
    batch_size: int  # B
    seq_length: int  # T
    capacity_factor: float  # 0 = dropless
    router_aux_loss_coef: float
    router_z_loss_coef: float
    seed: int  # first seed tried

    @property
    def expert_capacity(self):
        if self.capacity_factor == 0:
            return 0
        E, k, T = self.num_local_experts, self.num_experts_per_tok, self.seq_length
        return math.ceil(self.capacity_factor * T * k / E)


CASES = [
    Case("top2", 4, 2, 12, 10, 2, 6, 0.0, 0.02, 0.001, seed=1000),
    Case("top2_capacity", 4, 2, 12, 10, 2, 6, 0.75, 0.02, 0.001, seed=2000),
    Case("top1", 3, 1, 8, 6, 3, 4, 0.0, 0.01, 0.0, seed=3000),
    Case("top2_e8", 8, 2, 16, 12, 1, 9, 0.0, 0.01, 0.002, seed=4000),
]


def check(ok, what):
    if not ok:
        sys.exit(f"moe_ref.py: self-check failed: {what}")


# ---- inputs ----------------------------------------------------------------------------------

def input_shapes(case):
    E, C, I = case.num_local_experts, case.hidden_size, case.intermediate_size
    N = case.batch_size * case.seq_length
    shapes = {"x": (N, C), "gate.weight": (E, C)}
    for e in range(E):
        shapes[f"experts.{e}.w1.weight"] = (I, C)
        shapes[f"experts.{e}.w3.weight"] = (I, C)
        shapes[f"experts.{e}.w2.weight"] = (C, I)
    shapes["dout"] = (N, C)
    return shapes


def draw(case, seed):
    gen = torch.Generator().manual_seed(seed)
    values = {}
    for name, shape in input_shapes(case).items():
        v = torch.randn(shape, generator=gen, dtype=torch.float32)
        if name == "gate.weight":
            v = v * GATE_STD
        elif name.startswith("experts."):
            v = v * EXPERT_STD
        values[name] = v
    return values


def differentiable(name):
    return name != "dout"


# ---- the MoE (torch, any float dtype) --------------------------------------------------------

def route(logits, k, stable=False):
    """Mixtral's order: softmax, topk, renormalise. stable: the same weights as a softmax over the
    chosen logits, whose float32 backward is exact where the division's is not (for k = 1 the
    gradient through w is 0, but torch's backward of w / w.sum() leaves ~eps * |dL/dw| / w, which
    swamps top1's small router gradient): the float32 self-check's model of a careful kernel."""
    p = torch.softmax(logits, dim=-1)
    w, sel = torch.topk(p, k, dim=-1)
    if stable:
        return p, torch.softmax(logits.gather(-1, sel), dim=-1), sel
    return p, w / w.sum(dim=-1, keepdim=True), sel


def kept_slots(sel, case):
    """Per sequence and expert, the first `capacity` slots in token order; all when dropless."""
    B, T, k, cap = case.batch_size, case.seq_length, case.num_experts_per_tok, case.expert_capacity
    kept = torch.zeros(sel.shape, dtype=torch.int32)
    for b in range(B):
        used = [0] * case.num_local_experts
        for t in range(T):
            for j in range(k):
                e = int(sel[b * T + t, j])
                if cap == 0 or used[e] < cap:
                    kept[b * T + t, j] = 1
                    used[e] += 1
    return kept


def expert(x, p, e):
    pre = f"experts.{e}."
    h = F.silu(x @ p[pre + "w1.weight"].T) * (x @ p[pre + "w3.weight"].T)
    return h @ p[pre + "w2.weight"].T


def aux_of(logits, k):
    """E * sum_i f_i P_i of one sequence's logits (T, E), written independently of HF's function."""
    T, E = logits.shape
    p = torch.softmax(logits, dim=-1)
    sel = torch.topk(p, k, dim=-1).indices
    f = F.one_hot(sel, E).sum(dim=1).to(p.dtype).mean(dim=0)  # choices per token, summed over j
    return E * (f * p.mean(dim=0)).sum()


def forward(p, case, stable=False):
    x, k, T = p["x"], case.num_experts_per_tok, case.seq_length
    logits = x @ p["gate.weight"].T
    _, w, sel = route(logits, k, stable)
    kept = kept_slots(sel, case)
    out = torch.zeros_like(x)
    for e in range(case.num_local_experts):
        rows, slots = torch.nonzero((sel == e) & (kept == 1), as_tuple=True)
        out = out.index_add(0, rows, expert(x[rows], p, e) * w[rows, slots, None])
    aux = torch.stack([aux_of(logits[b * T:(b + 1) * T], k)
                       for b in range(case.batch_size)]).mean()
    z = torch.logsumexp(logits, dim=-1).pow(2).mean()
    objective = ((out * p["dout"]).sum() + case.router_aux_loss_coef * aux
                 + case.router_z_loss_coef * z)
    return {"logits": logits, "sel": sel, "w": w, "kept": kept, "out": out, "aux": aux, "z": z,
            "objective": objective}


def leaves(inputs, dtype):
    return {n: v.to(dtype).clone().requires_grad_(differentiable(n)) for n, v in inputs.items()}


def run(inputs, case, dtype, stable=False):
    p = leaves(inputs, dtype)
    r = forward(p, case, stable)
    r["objective"].backward()
    r = {key: v.detach() for key, v in r.items()}
    r["grads"] = {n: v.grad.detach().clone() for n, v in p.items() if differentiable(n)}
    return r


def routing_margin(logits, k):
    top = torch.topk(torch.softmax(logits.double(), dim=-1), k + 1, dim=-1).values
    return float((top[:, k - 1] - top[:, k]).min())


def routed_counts(case, r):
    """Slots routed to each expert in each sequence (before dropping): B lists of E counts."""
    T, E = case.seq_length, case.num_local_experts
    return [[int((r["sel"][b * T:(b + 1) * T] == e).sum()) for e in range(E)]
            for b in range(case.batch_size)]


def capacity_bites(case, r):
    """>= 3 slots dropped, yet some (sequence, expert) keeps all of its (>= 1) slots."""
    counts = [c for row in routed_counts(case, r) for c in row]
    whole = any(0 < c <= case.expert_capacity for c in counts)
    return int((r["kept"] == 0).sum()) >= 3 and whole


def float32_errors(case, r, r32):
    """Per-tensor L2 relative error of a float32 run, or None if it routes differently."""
    if not (torch.equal(r32["sel"], r["sel"]) and torch.equal(r32["kept"], r["kept"])):
        return None
    errs = {"out": rel_err(r32["out"], r["out"]),
            "objective": rel_err(r32["objective"], r["objective"])}
    errs.update({"grad." + n: rel_err(g, r["grads"][n]) for n, g in r32["grads"].items()})
    return errs


def accepted_draw(case):
    """The first seed from case.seed on whose draw routing is decisive, capacity (if any) bites,
    and a float32 run of this code stays within FLOAT32_TOLERANCE of the float64 one."""
    seed, rejected = case.seed, []
    while True:
        inputs = draw(case, seed)
        r = run(inputs, case, torch.float64)
        margin = routing_margin(r["logits"], case.num_experts_per_tok)
        if margin < MARGIN:
            rejected.append(f"{seed}: margin {margin:.1e}")
        elif case.expert_capacity and not capacity_bites(case, r):
            rejected.append(f"{seed}: capacity drops too few")
        else:
            errs = float32_errors(case, r, run(inputs, case, torch.float32, stable=True))
            worst = max(errs, key=errs.get) if errs else None
            if errs is None:
                rejected.append(f"{seed}: float32 routes differently")
            elif errs[worst] >= FLOAT32_TOLERANCE:
                rejected.append(f"{seed}: float32 {worst} {errs[worst]:.1e}")
            else:
                return seed, inputs, r, margin, (worst, errs[worst]), rejected
        seed += 1


# ---- transformers' own code, for the self-checks ---------------------------------------------

def hf_config(case, **extra):
    config = MixtralConfig(hidden_size=case.hidden_size, intermediate_size=case.intermediate_size,
                           num_local_experts=case.num_local_experts,
                           num_experts_per_tok=case.num_experts_per_tok, router_jitter_noise=0.0,
                           hidden_act="silu", **extra)
    if hasattr(config, "_experts_implementation"):
        config._experts_implementation = "eager"  # the reference loop; grouped_mm has no float64
    return config


def stacked(inputs, case, which):
    return torch.stack([inputs[f"experts.{e}.{which}.weight"]
                        for e in range(case.num_local_experts)])


def hf_block(inputs, case):
    """MixtralSparseMoeBlock in float64 holding the case's weights, whichever layout it has."""
    block = modeling_mixtral.MixtralSparseMoeBlock(hf_config(case)).double().eval()
    state = {"gate.weight": inputs["gate.weight"]}
    if hasattr(block.experts, "gate_up_proj"):  # fused 3-D layout (transformers 5)
        state["experts.gate_up_proj"] = torch.cat([stacked(inputs, case, "w1"),
                                                   stacked(inputs, case, "w3")], dim=1)
        state["experts.down_proj"] = stacked(inputs, case, "w2")
    else:  # per-expert Linear modules (transformers 4)
        state.update({k: v for k, v in inputs.items() if k.startswith("experts.")})
    block.load_state_dict({k: v.double() for k, v in state.items()}, strict=True)
    return block


def hf_checks(inputs, case, r):
    """Logits, choices and outputs of transformers' block; returns the printed errors."""
    block = hf_block(inputs, case)
    x = inputs["x"].double()
    with torch.no_grad():
        gate = block.gate(x)
        fused = isinstance(gate, tuple)
        logits = gate[0] if fused else gate
        check(rel_err(logits, r["logits"]) < 1e-12, "router logits differ from transformers'")
        errs = {"logits": rel_err(logits, r["logits"])}
        if fused:  # transformers 5's router returns its choices (its softmax runs in float32)
            check(torch.equal(gate[2], r["sel"]), "transformers' router chooses other experts")
            errs["weights (float32 router)"] = rel_err(gate[1], r["w"])
            check(errs["weights (float32 router)"] < 1e-6, "routing weights differ")
            # the experts alone, given our float64 weights with dropped slots zeroed
            mine = block.experts(x, r["sel"], r["w"] * r["kept"])
            errs["experts given our weights"] = rel_err(mine, r["out"])
            check(errs["experts given our weights"] < 1e-12, "experts differ from transformers'")
        if case.expert_capacity == 0:  # the whole block: dropless only
            got = block(x.view(case.batch_size, case.seq_length, -1))
            got = got[0] if isinstance(got, tuple) else got
            errs["whole block"] = rel_err(got.reshape(r["out"].shape), r["out"])
            # transformers' router takes its softmax in float32 whatever the model's dtype (5.x:
            # softmax(logits.float()); 4.x: softmax(..., dtype=torch.float)), so the whole block
            # matches to float32's precision; the experts given our weights match to float64's.
            check(errs["whole block"] < 1e-6, "block output differs")
    T, E, k = case.seq_length, case.num_local_experts, case.num_experts_per_tok
    hf_aux = [float(modeling_mixtral.load_balancing_loss_func(
        (r["logits"][b * T:(b + 1) * T],), num_experts=E, top_k=k))
        for b in range(case.batch_size)]
    mine = [float(aux_of(r["logits"][b * T:(b + 1) * T], k))
            for b in range(case.batch_size)]
    # load_balancing_loss_func accumulates in float32 whatever the logits' dtype
    errs["aux per sequence (float32 sums)"] = max(abs(h - m) / abs(m) for h, m in zip(hf_aux, mine))
    check(errs["aux per sequence (float32 sums)"] < 1e-6, "aux loss differs from transformers'")
    return errs


def checkpoint_layout(inputs, case):
    """Per-expert Mixtral names load into transformers' MixtralForCausalLM; returns its key names
    in memory and as save_pretrained writes them."""
    config = hf_config(case, vocab_size=16, num_hidden_layers=1, num_attention_heads=2,
                       num_key_value_heads=1)
    torch.manual_seed(0)
    model = MixtralForCausalLM(config)
    old = {k: v for k, v in model.state_dict().items() if ".mlp." not in k}
    old["model.layers.0.block_sparse_moe.gate.weight"] = inputs["gate.weight"]
    for k, v in inputs.items():
        if k.startswith("experts."):
            old["model.layers.0.block_sparse_moe." + k] = v
    with tempfile.TemporaryDirectory() as first, tempfile.TemporaryDirectory() as second:
        config.save_pretrained(first)
        write_safetensors(os.path.join(first, "model.safetensors"),
                          sorted(old.items()), {"format": "pt"})
        loaded, info = MixtralForCausalLM.from_pretrained(first, dtype=torch.float32,
                                                          output_loading_info=True)
        check(not any(info.get(key) for key in ("missing_keys", "unexpected_keys",
                                                "mismatched_keys")),
              f"per-expert checkpoint does not load cleanly: {info}")
        block = loaded.model.layers[0]
        block = getattr(block, "block_sparse_moe", None) or block.mlp
        check(torch.equal(block.gate.weight, inputs["gate.weight"]), "loaded router differs")
        if hasattr(block.experts, "gate_up_proj"):
            check(torch.equal(block.experts.gate_up_proj, torch.cat(
                [stacked(inputs, case, "w1"), stacked(inputs, case, "w3")], dim=1)),
                "gate_up_proj is not cat(w1, w3) along dim 1")
            check(torch.equal(block.experts.down_proj, stacked(inputs, case, "w2")),
                  "down_proj is not stack(w2)")
        memory = [k for k in loaded.state_dict() if "layers.0." in k and "attn" not in k]
        loaded.save_pretrained(second)
        saved, _ = read_safetensors(os.path.join(second, "model.safetensors"))
        check(set(saved) == set(old) and all(torch.equal(saved[k], old[k]) for k in old),
              "save_pretrained does not write the per-expert checkpoint back")
    return memory, sorted(k for k in saved if "layers.0." in k and "attn" not in k)


# ---- finite differences ----------------------------------------------------------------------

def finite_differences(inputs, case, r):
    """Largest entry of every gradient and one random direction through all inputs, h = 1e-5;
    each evaluation checks that the routing and the drops did not change."""
    base = {n: v.double() for n, v in inputs.items()}

    def objective_at(delta, h):
        q = {n: base[n] + h * delta[n] if n in delta else base[n] for n in base}
        with torch.no_grad():
            s = forward(q, case)
        check(torch.equal(s["sel"], r["sel"]) and torch.equal(s["kept"], r["kept"]),
              "a finite-difference step changed the routing")
        return float(s["objective"])

    h = 1e-5
    worst = 0.0
    for name, g in r["grads"].items():
        idx = int(g.abs().argmax())
        e = torch.zeros(g.numel(), dtype=torch.float64)
        e[idx] = 1.0
        fd = (objective_at({name: e.view(g.shape)}, h) -
              objective_at({name: e.view(g.shape)}, -h)) / (2 * h)
        want = float(g.reshape(-1)[idx])
        worst = max(worst, abs(fd - want) / abs(want) if want != 0 else abs(fd))
    gen = torch.Generator().manual_seed(7)
    direction = {n: torch.randn(g.shape, generator=gen, dtype=torch.float64)
                 for n, g in r["grads"].items()}
    length = math.sqrt(sum(float(d.pow(2).sum()) for d in direction.values()))
    direction = {n: d / length for n, d in direction.items()}
    analytic = sum(float((r["grads"][n] * d).sum()) for n, d in direction.items())
    fd = (objective_at(direction, h) - objective_at(direction, -h)) / (2 * h)
    return worst, abs(fd - analytic) / abs(analytic)


# ---- main ------------------------------------------------------------------------------------

def text(v):
    return repr(v) if isinstance(v, float) else str(v)


def build(case):
    seed, inputs, r, margin, (worst32, err32), rejected = accepted_draw(case)
    E, k, cap = case.num_local_experts, case.num_experts_per_tok, case.expert_capacity
    tokens_per_expert = torch.bincount(r["sel"][r["kept"] == 1], minlength=E).to(torch.int32)
    print(f"{case.name}: E={E} k={k} C={case.hidden_size} I={case.intermediate_size} "
          f"B={case.batch_size} T={case.seq_length} capacity={cap or 'dropless'} seed={seed}, "
          f"routing margin {margin:.4f}")
    for reason in rejected:
        print(f"  rejected seed {reason}")
    print(f"  aux {float(r['aux']):.12f}  z {float(r['z']):.12f}  "
          f"objective {float(r['objective']):.12f}")
    print(f"  routed slots per sequence and expert {routed_counts(case, r)}; "
          f"kept per expert {tokens_per_expert.tolist()}, "
          f"dropped {int((r['kept'] == 0).sum())} of {r['kept'].numel()}")
    print(f"  float32 run: same routing and drops; max rel err {err32:.2e} ({worst32})")
    if k == 1:
        check(torch.equal(r["w"], torch.ones_like(r["w"])), "top-1 weights are not 1")

    for what, err in hf_checks(inputs, case, r).items():
        print(f"  transformers vs reference, {what}: rel err {err:.2e}")
    worst, directional = finite_differences(inputs, case, r)
    print(f"  autograd vs central differences (h=1e-5, routing unchanged): worst entry rel err "
          f"{worst:.2e}, random direction rel err {directional:.2e}")
    check(worst < 1e-7 and directional < 1e-7, "gradients disagree with finite differences")

    p = case.name + "."
    tensors = [(p + n, v) for n, v in inputs.items()]
    tensors += [(p + "router_logits", r["logits"]),
                (p + "selected", r["sel"].to(torch.int32)),
                (p + "routing_weights", r["w"]), (p + "kept", r["kept"]),
                (p + "out", r["out"]), (p + "aux_loss", r["aux"].reshape(1)),
                (p + "z_loss", r["z"].reshape(1)),
                (p + "objective", r["objective"].reshape(1)),
                (p + "tokens_per_expert", tokens_per_expert)]
    tensors += [(p + "grad." + n, g) for n, g in r["grads"].items()]
    meta = {p + key: text(getattr(case, key)) for key in (
        "num_local_experts", "num_experts_per_tok", "hidden_size", "intermediate_size",
        "batch_size", "seq_length", "capacity_factor", "expert_capacity",
        "router_aux_loss_coef", "router_z_loss_coef")}
    meta[p + "seed"] = str(seed)
    return tensors, meta, inputs


def main():
    torch.set_num_threads(1)  # bit-for-bit reproducible reductions
    torch.use_deterministic_algorithms(True)
    print(f"torch {torch.__version__}, transformers {transformers.__version__}")
    tensors, metadata = [], {}
    for case in CASES:
        t, m, inputs = build(case)
        tensors += t
        metadata.update(m)
        if case.name == "top2":
            memory, saved = checkpoint_layout(inputs, case)
            print(f"  per-expert checkpoint loads into MixtralForCausalLM; in memory: "
                  f"{', '.join(memory)}; save_pretrained writes: {', '.join(saved)}")
    metadata.update({"cases": ",".join(c.name for c in CASES), "torch_version": torch.__version__,
                     "transformers_version": transformers.__version__})
    os.makedirs(os.path.dirname(GOLDEN), exist_ok=True)
    write_safetensors(GOLDEN, tensors, metadata)
    back, back_meta = read_safetensors(GOLDEN)
    check(back_meta == metadata and set(back) == {n for n, _ in tensors}, "read-back names")
    for name, v in tensors:
        check(back[name].dtype == v.dtype and torch.equal(back[name], v), f"read-back of {name}")
    print(f"wrote {os.path.relpath(GOLDEN)}: {len(tensors)} tensors, "
          f"{os.path.getsize(GOLDEN)} bytes")


if __name__ == "__main__":
    main()
