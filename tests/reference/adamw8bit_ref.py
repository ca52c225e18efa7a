"""Goldens for keel's 8-bit AdamW from bitsandbytes itself (its CPU backend, requantizing by its
reference rule):

- the dynamic quantization maps, signed and unsigned (create_dynamic_map);
- blockwise quantization of a vector with awkward block edges (codes and absmax) by bitsandbytes'
  reference rule (quantize_nearest below);
- AdamW8bit (block size 256, both moments 8-bit, min_8bit_size 0 so that a 600-element parameter,
  two full blocks and a short one, is quantized) over 3 steps: the parameters, the codes and the
  absmax of both moments after each step.

Run with a Python that has torch and bitsandbytes (keel used bitsandbytes 0.50.2):
    .venv-bench/bin/pip install bitsandbytes
    .venv-bench/bin/python tests/reference/adamw8bit_ref.py
writes tests/reference/golden/adamw8bit_bnb.json.
"""
import json
import os

import bitsandbytes as bnb
import bitsandbytes.backends.cpu.ops as cpu_ops
import bitsandbytes.functional as F
import torch

OUT = os.path.join(os.path.dirname(__file__), "golden", "adamw8bit_bnb.json")


def quantize_nearest(A, code, blocksize):
    """bitsandbytes' reference rule for blockwise quantization (its pure-torch "default" backend):
    x · (1 / absmax) clamped to [-1, 1], then the nearest map value by bucketize over midpoints.
    bitsandbytes' compiled CPU library searches differently (it maps 0.0 to the code of 2.1e-5,
    not to 0), so the goldens use this rule, the one keel implements."""
    A_flat = A.reshape(-1).float()
    n = A_flat.numel()
    blocks = (n + blocksize - 1) // blocksize
    padded = torch.zeros(blocks * blocksize)
    padded[:n] = A_flat
    absmax = padded.reshape(blocks, blocksize).abs().max(dim=-1)[0]
    scale = (1.0 / absmax.clamp(min=1e-38)).repeat_interleave(blocksize)[:n]
    scaled = torch.clamp(A_flat * scale, -1, 1)
    bounds = (code[:-1] + code[1:]) / 2
    return torch.bucketize(scaled, bounds, out_int32=True).to(torch.uint8).reshape(A.shape), absmax


def _quant_direct(A_fp32, code, absmax_out, out_uint8, blocksize):
    out, absmax = quantize_nearest(A_fp32, code, blocksize)
    out_uint8.copy_(out)
    absmax_out.copy_(absmax)


# AdamW8bit's CPU step requantizes through this function; the rest of the step is bitsandbytes'.
cpu_ops._quant_blockwise_fp32_direct = _quant_direct


def floats(t):
    # 9 significant digits read back as the same fp32 value.
    return [float(f"{v:.9g}") for v in t.reshape(-1).tolist()]


def main():
    torch.manual_seed(1234)
    golden = {"bitsandbytes": bnb.__version__, "torch": torch.__version__}
    golden["signed_map"] = floats(F.create_dynamic_map(signed=True))
    golden["unsigned_map"] = floats(F.create_dynamic_map(signed=False))

    # 700 values in blocks of 256: two full blocks and a short one; one block of zeros.
    x = torch.randn(700) * torch.logspace(-3, 1, 700)
    x[256:300] = 0.0
    codes, absmax = quantize_nearest(x, F.create_dynamic_map(signed=True), 256)
    golden["quantize"] = {"x": floats(x), "block": 256, "codes": codes.tolist(),
                          "absmax": floats(absmax)}

    p = torch.nn.Parameter(torch.randn(5, 120) * 0.1)
    config = {"lr": 1e-2, "beta1": 0.9, "beta2": 0.95, "eps": 1e-8, "weight_decay": 0.1}
    opt = bnb.optim.AdamW8bit([p], lr=config["lr"], betas=(config["beta1"], config["beta2"]),
                              eps=config["eps"], weight_decay=config["weight_decay"],
                              min_8bit_size=0)
    steps = []
    golden["adamw"] = {"config": config, "shape": list(p.shape), "param0": floats(p.detach()),
                       "steps": steps}
    for _ in range(3):
        g = torch.randn(p.shape) * torch.rand(p.shape[0], 1) * 0.5  # rows of different scales
        p.grad = g
        opt.step()
        st = opt.state[p]
        steps.append({"grad": floats(g), "param": floats(p.detach()),
                      "exp_avg_codes": st["state1"].reshape(-1).tolist(),
                      "exp_avg_absmax": floats(st["absmax1"]),
                      "exp_avg_sq_codes": st["state2"].reshape(-1).tolist(),
                      "exp_avg_sq_absmax": floats(st["absmax2"])})
    with open(OUT, "w") as f:
        json.dump(golden, f, separators=(",", ":"))
    print("wrote", OUT, os.path.getsize(OUT), "bytes")


if __name__ == "__main__":
    main()
