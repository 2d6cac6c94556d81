"""Fused linear log-probs vs eager PyTorch (and Liger-Kernel's fused linear cross-entropy on GPU).

Each case runs forward + backward of sum(logp * g) for a random upstream gradient g. FLOP basis:
6 N H V (one GEMM forward, two backward) — the work eager does; the fused op recomputes the logits
in backward (8 N H V), so its "GFLOP/s on the 6NHV basis" is the useful rate users feel.
"""

from __future__ import annotations

import argparse

import torch

import ia_kernels as ik

from .harness import add_common_args, input_dtype, free_memory, peak_extra_memory, report, time_fn

FULL = {"cpu": [(4096, 1024, 32768)], "cuda": [(16384, 4096, 151936), (8192, 4096, 151936)]}
QUICK = [(512, 256, 4099)]


def eager_logprobs(hidden, weight, targets):
    """What users write without a fused kernel: full fp32 logits, log_softmax, gather."""
    logits = (hidden @ weight.T).float()
    return torch.log_softmax(logits, dim=-1).gather(-1, targets[:, None]).squeeze(-1)


def liger_logprobs(hidden, weight, targets):
    # Liger's fused linear cross-entropy returns the mean CE = -mean(logp): the closest peer op.
    from liger_kernel.transformers import LigerFusedLinearCrossEntropyLoss

    return -LigerFusedLinearCrossEntropyLoss(reduction="none")(weight, hidden, targets)


def _candidates(device: str):
    cands = {"eager": eager_logprobs, "ia_kernels": lambda h, w, t: ik.linear_logprobs(h, w, t)}
    if torch.device(device).type == "cuda":
        try:
            import liger_kernel  # noqa: F401

            cands["liger"] = liger_logprobs
        except ImportError:
            pass
    return cands


def _case(name, fn, N, H, V, dtype, device, repeats, reference):
    torch.manual_seed(0)
    hidden = torch.randn(N, H, dtype=dtype, device=device).requires_grad_()
    weight = (torch.randn(V, H, dtype=dtype, device=device) / H**0.5).requires_grad_()
    targets = torch.randint(0, V, (N,), device=device)
    g = torch.randn(N, device=device)

    def step():
        hidden.grad = weight.grad = None
        logp = fn(hidden, weight, targets)
        (logp.float() * g).sum().backward()
        return logp

    logp = step().detach().float()
    err = None if reference is None else (logp - reference).abs().max().item()
    timing = time_fn(step, warmup=0, repeats=repeats, device=device)
    hidden.grad = weight.grad = None
    free_memory()
    grads_bytes = hidden.numel() * hidden.element_size() + weight.numel() * weight.element_size()
    peak = peak_extra_memory(step, device=device)
    extra = None if peak is None else max(0, peak - grads_bytes)
    flops = 6 * N * H * V
    row = {"impl": name, "N": N, "H": H, "V": V, "dtype": str(dtype).replace("torch.", ""),
           "median_ms": timing["median_ms"], "q20_ms": timing["q20_ms"], "q80_ms": timing["q80_ms"],
           "gflops_6nhv": flops / (timing["median_ms"] * 1e6), "peak_extra_mb": None if extra is None else extra / 2**20,
           "max_abs_err_vs_eager": err}
    del hidden, weight
    free_memory()
    return row, logp


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(prog="python -m benchmarks logprobs", description=__doc__)
    add_common_args(parser, dtype=True)
    args = parser.parse_args(argv)
    device = args.device
    dtype = input_dtype(args)
    shapes = QUICK if args.quick else FULL[torch.device(device).type]
    repeats = args.repeats or (2 if args.quick else 3)
    rows = []
    for N, H, V in shapes:
        reference = None
        for name, fn in _candidates(device).items():
            row, logp = _case(name, fn, N, H, V, dtype, device, repeats, reference)
            if name == "eager":
                reference = logp
                row["max_abs_err_vs_eager"] = 0.0
            rows.append(row)
        eager = next(r for r in rows if r["impl"] == "eager" and r["N"] == N)
        for r in rows:
            if r["N"] == N and r["V"] == V:
                r["speedup_vs_eager"] = eager["median_ms"] / r["median_ms"]
                if r["peak_extra_mb"] is not None and eager["peak_extra_mb"]:
                    r["mem_vs_eager"] = r["peak_extra_mb"] / eager["peak_extra_mb"]
    cols = ["impl", "N", "H", "V", "dtype", "median_ms", "q20_ms", "q80_ms", "gflops_6nhv", "speedup_vs_eager",
            "peak_extra_mb", "mem_vs_eager", "max_abs_err_vs_eager"]
    report("logprobs", rows, cols, device=device, json_path=args.json)
    return rows


if __name__ == "__main__":
    main()
