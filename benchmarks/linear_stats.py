"""No-grad log-probs (behaviour / reference policy): unfused vs the fused GEMM + row-statistics kernel.

Candidates, forward only, bf16 inputs on GPU:
  eager         fp32 logits [N, V] materialised, log_softmax, gather
  ia_kernels    ia_kernels.linear_logprobs under no_grad (cuBLAS GEMM per chunk -> fp32 logits in
                HBM -> row pass)
  fused         ia_kernels/experimental/linear_stats.py (the GEMM with the row statistics in
                registers; on GPU only: the Triton interpreter would time NumPy)
Each row carries the model's prediction (benchmarks/model.py, op linear_logprobs_nograd) when the
device is one the model knows. FLOP basis 2 N H V.
"""

from __future__ import annotations

import argparse

import torch

import ia_kernels as ik

from . import model
from .harness import add_common_args, free_memory, input_dtype, peak_extra_memory, report, time_fn

FULL = {"cpu": [(2048, 1024, 32768)], "cuda": [(16384, 4096, 151936)]}
QUICK = [(256, 128, 4099)]


def eager(hidden, weight, targets):
    logits = (hidden @ weight.T).float()
    return torch.log_softmax(logits, -1).gather(-1, targets[:, None]).squeeze(-1)


def unfused(hidden, weight, targets):
    return ik.linear_logprobs(hidden, weight, targets)


def fused(hidden, weight, targets):
    from ia_kernels.experimental.linear_stats import linear_stats_forward

    out = torch.empty((3, hidden.shape[0]), dtype=torch.float32, device=hidden.device)
    linear_stats_forward(hidden, weight, targets, 1.0, -100, out[0], out[1], out[2])
    return out[0]


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(prog="python -m benchmarks linear_stats", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(parser, dtype=True)
    args = parser.parse_args(argv)
    device = args.device
    dtype = input_dtype(args)
    cuda = torch.device(device).type == "cuda"
    shapes = QUICK if args.quick else FULL["cuda" if cuda else "cpu"]
    repeats = args.repeats or (2 if args.quick else 5)
    cands = {"eager": eager, "ia_kernels": unfused}
    if cuda:
        cands["fused"] = fused
    dev_key = model.device_key(torch.cuda.get_device_name() if cuda else "")
    rows = []
    for N, H, V in shapes:
        g = torch.Generator().manual_seed(0)
        hidden = torch.randn(N, H, generator=g).to(device, dtype)
        weight = (torch.randn(V, H, generator=g) / H ** 0.5).to(device, dtype)
        targets = torch.randint(0, V, (N,), generator=g).to(device)
        with torch.no_grad():
            ref = eager(hidden, weight, targets)
            for name, fn in cands.items():
                t = time_fn(lambda: fn(hidden, weight, targets), warmup=1, repeats=repeats, device=device)
                free_memory()
                peak = peak_extra_memory(lambda: fn(hidden, weight, targets), device=device)
                err = (fn(hidden, weight, targets) - ref).abs().max().item()
                row = {"impl": name, "N": N, "H": H, "V": V, "dtype": str(dtype).replace("torch.", ""),
                       "median_ms": t["median_ms"], "tflops_2nhv": 2 * N * H * V / (t["median_ms"] * 1e9),
                       "peak_extra_mb": None if peak is None else peak / 2**20, "max_abs_err_vs_eager": err}
                design = {"ia_kernels": "unfused", "fused": "fused-fwd"}.get(name)
                if dev_key and design:
                    row["predicted_ms"] = model.predict("linear_logprobs_nograd", dev_key, design, N, H, V)[
                        "attainable_ms"]
                rows.append(row)
        del hidden, weight
        free_memory()
    report("linear_stats", rows, ["impl", "N", "H", "V", "dtype", "median_ms", "tflops_2nhv", "predicted_ms",
                                  "peak_extra_mb", "max_abs_err_vs_eager"], device=device, json_path=args.json)
    return rows


if __name__ == "__main__":
    main()
