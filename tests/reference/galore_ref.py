"""Goldens for keel's GaLore (optim/galore.h) from a from-scratch PyTorch implementation of the
GaLore algorithm (Zhao et al., 2024; the reference galore_torch's projector rule), fp32 tensors,
SVD in float64:

- every `gap` steps (steps 1, gap+1, ...), from that step's gradient G (m x n): U, S, Vh =
  svd(G); proj_type std projects the short side (m >= n: right, P = Vh[:r]; else left,
  P = U[:, :r]), reverse_std the long side, left the rows, right the columns. Each singular vector
  pair is signed so that the short-side vector's largest-magnitude entry is positive (keel's
  convention: a deterministic basis on every rank; the reference's svd sign is arbitrary);
- R = G P^T (right) or P^T G (left), in fp32;
- torch.optim.AdamW's update of R (its moments kept across refreshes, as the reference keeps them);
- W <- W (1 - lr wd) + scale * back(-lr * N), back(D) = D P (right) or P D (left).

Matrices not targeted and vectors take plain AdamW. Gradients are those of a quadratic,
G = (W X - Y) X^T computed in float64 and rounded to fp32, so keel recomputes them exactly.
Records W after every step, for each proj_type, 6 steps with gap 3 (a refresh at step 4).
Run with Debian's torch:
    /usr/bin/python3 tests/reference/galore_ref.py
writes tests/reference/golden/galore_torch.json.
"""
import json
import os

import torch

OUT = os.path.join(os.path.dirname(__file__), "golden", "galore_torch.json")

# name: (rows, cols, inputs); "proj" in the name marks a targeted matrix (targets "proj").
SHAPES = {
    "tall.q_proj.weight": (20, 8, 12),
    "wide.up_proj.weight": (8, 20, 12),
    "square.o_proj.weight": (10, 10, 12),
    "head.weight": (6, 5, 12),
}
VECTOR = "norm.weight"
RANK, GAP, SCALE, STEPS = 3, 3, 0.25, 6
LR, WD, BETAS, EPS = 1e-2, 0.1, (0.9, 0.999), 1e-8


def floats(t):
    return [float(f"{v:.9g}") for v in t.reshape(-1).tolist()]


def grad_of(w, x, y):
    g = (w.double() @ x.double() - y.double()) @ x.double().T
    return g.float()


def signed_svd(g):
    """U, S, Vh of g (float64), each pair signed by its short-side vector's largest entry."""
    u, s, vh = torch.linalg.svd(g.double(), full_matrices=False)
    m, n = g.shape
    for j in range(s.numel()):
        v = vh[j] if m >= n else u[:, j]  # the short side's vector
        if v[torch.argmax(v.abs())] < 0:
            u[:, j] = -u[:, j]
            vh[j] = -vh[j]
    return u, s, vh


def side(proj_type, m, n):
    if proj_type == "std":
        return "right" if m >= n else "left"
    if proj_type == "reverse_std":
        return "left" if m >= n else "right"
    return proj_type


class Adam:
    """torch.optim.AdamW's update of a tensor, returned as -lr * direction (no decay)."""

    def __init__(self, shape):
        self.m = torch.zeros(shape)
        self.v = torch.zeros(shape)

    def delta(self, g, t):
        b1, b2 = BETAS
        self.m.mul_(b1).add_(g, alpha=1 - b1)
        self.v.mul_(b2).addcmul_(g, g, value=1 - b2)
        bc1, bc2 = 1 - b1 ** t, 1 - b2 ** t
        denom = (self.v.sqrt() / (bc2 ** 0.5)).add_(EPS)
        return -(LR / bc1) * self.m / denom


def run(proj_type, start):
    params = {k: v.clone() for k, v in start["w"].items()}
    adam, proj, where = {}, {}, {}
    history = {k: [] for k in params}
    for t in range(1, STEPS + 1):
        for name, w in params.items():
            if name == VECTOR:
                g = (w.double() - start["y"][VECTOR].double()).float()
            else:
                g = grad_of(w, start["x"][name], start["y"][name])
            decay = 1 - LR * WD
            if "proj" not in name:
                adam.setdefault(name, Adam(w.shape))
                params[name] = w * decay + adam[name].delta(g, t)
                history[name].append(floats(params[name]))
                continue
            m, n = w.shape
            s = side(proj_type, m, n)
            r = min(RANK, m, n)
            if (t - 1) % GAP == 0:
                u, _, vh = signed_svd(g)
                proj[name] = (vh[:r] if s == "right" else u[:, :r]).float()
                where[name] = s
            p = proj[name]
            low = g @ p.T if s == "right" else p.T @ g
            adam.setdefault(name, Adam(low.shape))
            d = adam[name].delta(low, t)
            back = d @ p if s == "right" else p @ d
            params[name] = w * decay + SCALE * back
            history[name].append(floats(params[name]))
    return history


def main():
    gen = torch.Generator().manual_seed(11)
    start = {"w": {}, "x": {}, "y": {}}
    for name, (m, n, k) in SHAPES.items():
        start["w"][name] = torch.randn(m, n, generator=gen) * 0.5
        start["x"][name] = torch.randn(n, k, generator=gen)
        start["y"][name] = torch.randn(m, k, generator=gen)
    start["w"][VECTOR] = torch.randn(7, generator=gen)
    start["y"][VECTOR] = torch.randn(7, generator=gen)
    golden = {
        "torch": torch.__version__,
        "rank": RANK, "update_proj_gap": GAP, "scale": SCALE, "steps": STEPS,
        "lr": LR, "weight_decay": WD, "betas": list(BETAS), "eps": EPS,
        "tensors": {
            name: {"shape": list(start["w"][name].shape), "w": floats(start["w"][name]),
                   "x": floats(start["x"][name]) if name in start["x"] else [],
                   "y": floats(start["y"][name])}
            for name in start["w"]
        },
        "runs": {pt: run(pt, start) for pt in ("std", "reverse_std", "left", "right")},
    }
    with open(OUT, "w") as f:
        json.dump(golden, f, separators=(",", ":"))
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
