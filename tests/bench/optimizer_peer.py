"""The optimizer bench's peers: torch.optim.AdamW (fp32; foreach, as PyTorch defaults to) and
bitsandbytes' AdamW8bit (its CPU backend, block size 256), one step per parameter on tensors of
the same sizes as keel_optimizer_step's, best of R steps after a warm-up. Prints one JSON line.

    optimizer_peer.py --params N --threads T [--repeats R]
"""
import argparse
import json
import time

import torch


def best_step(opt, repeats):
    opt.step()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        opt.step()
        best = min(best, time.perf_counter() - t0)
    return best


def state_bytes(opt):
    """Bytes of every tensor the optimizer keeps per parameter (its state, measured)."""
    total = 0
    for state in opt.state.values():
        for v in state.values():
            if torch.is_tensor(v) and v.numel() > 1:  # not the step counter or the maps
                total += v.numel() * v.element_size()
    return total


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--params", type=int, required=True)
    p.add_argument("--threads", type=int, required=True)
    p.add_argument("--repeats", type=int, default=5)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    tensor = 4 << 20
    count = (a.params + tensor - 1) // tensor
    params = [torch.nn.Parameter(torch.full((tensor,), 0.01)) for _ in range(count)]
    for q in params:
        q.grad = torch.randn(tensor) * 1e-3
    out = {"torch": torch.__version__, "threads": a.threads, "params": count * tensor}
    n = count * tensor
    opt = torch.optim.AdamW(params, lr=1e-3, weight_decay=0.1)
    s = best_step(opt, a.repeats)
    out["torch_adamw"] = {"step_seconds": s, "ns_per_param": s / n * 1e9,
                          "state_bytes_per_param": state_bytes(opt) / n}
    del opt
    try:
        import bitsandbytes as bnb
        opt = bnb.optim.AdamW8bit(params, lr=1e-3, weight_decay=0.1)
        s = best_step(opt, a.repeats)
        out["bnb_adamw8bit"] = {"step_seconds": s, "ns_per_param": s / n * 1e9,
                                "state_bytes_per_param": (state_bytes(opt) - 2 * 256 * 4 * count) / n,
                                "version": bnb.__version__}
    except ImportError:
        pass
    print(json.dumps(out))


if __name__ == "__main__":
    main()
