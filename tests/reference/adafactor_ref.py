"""Goldens for keel's Adafactor from Hugging Face transformers' Adafactor (the paper's algorithm as
the Trainer uses it), CPU, fp32: a 12 x 20 matrix (factored second moment) and a 20-vector (full
second moment), 3 steps of fixed gradients, under two settings:

- "trainer": what HF's Trainer builds for optim="adafactor": lr 1e-2, relative_step=False,
  scale_parameter=False, warmup_init=False, no first moment; weight_decay 0.1;
- "paper": relative_step=True, scale_parameter=True (lr=None, so the step size is
  min(1e-2, 1/sqrt(t)) x max(1e-3, RMS(param))), first moment beta1=0.9; no weight decay.

Each records the parameters and the state (exp_avg_sq_row/col or exp_avg_sq, exp_avg) after every
step. Run with a Python that has torch and transformers (keel used transformers 5.23.0):
    .venv-bench/bin/python tests/reference/adafactor_ref.py
writes tests/reference/golden/adafactor_transformers.json.
"""
import json
import os

import torch
import transformers
from transformers.optimization import Adafactor

OUT = os.path.join(os.path.dirname(__file__), "golden", "adafactor_transformers.json")


def floats(t):
    return [float(f"{v:.9g}") for v in t.reshape(-1).tolist()]


SETTINGS = {
    "trainer": dict(lr=1e-2, relative_step=False, scale_parameter=False, warmup_init=False,
                    beta1=None, weight_decay=0.1),
    "paper": dict(lr=None, relative_step=True, scale_parameter=True, warmup_init=False,
                  beta1=0.9, weight_decay=0.0),
}


def main():
    golden = {"transformers": transformers.__version__, "torch": torch.__version__, "runs": {}}
    for name, kw in SETTINGS.items():
        torch.manual_seed(7)
        w = torch.nn.Parameter(torch.randn(12, 20) * 0.5)
        b = torch.nn.Parameter(torch.randn(20) * 0.5)
        run = {"settings": {k: v for k, v in kw.items()}, "w0": floats(w.detach()),
               "b0": floats(b.detach()), "steps": []}
        opt = Adafactor([w, b], **kw)
        for _ in range(3):
            # Rows and columns of different scales, so both factors matter.
            w.grad = torch.randn(12, 20) * torch.rand(12, 1) * torch.rand(1, 20)
            b.grad = torch.randn(20) * 0.1
            opt.step()
            sw, sb = opt.state[w], opt.state[b]
            step = {"w_grad": floats(w.grad), "b_grad": floats(b.grad), "w": floats(w.detach()),
                    "b": floats(b.detach()), "w_row": floats(sw["exp_avg_sq_row"]),
                    "w_col": floats(sw["exp_avg_sq_col"]), "b_sq": floats(sb["exp_avg_sq"])}
            if kw["beta1"] is not None:
                step["w_avg"] = floats(sw["exp_avg"])
                step["b_avg"] = floats(sb["exp_avg"])
            run["steps"].append(step)
        golden["runs"][name] = run
    with open(OUT, "w") as f:
        json.dump(golden, f, separators=(",", ":"))
    print("wrote", OUT, os.path.getsize(OUT), "bytes")


if __name__ == "__main__":
    main()
