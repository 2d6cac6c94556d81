"""python -m benchmarks model: the performance and memory model of the fused linear ops, on paper.

For one call at N tokens, hidden size H, vocabulary V (default N=16384, H=4096, V=151936, bf16
inputs) the model lists every kernel each chunk launches (GEMMs, row passes, casts), its FLOPs and
HBM bytes, and its roofline time max(FLOPs / peak, bytes / bandwidth) on a device given by its
published peak dense bf16 FLOP/s and HBM bandwidth. Kernels run one after another on one stream, so
the call's time is the sum. Two columns: `roofline` (published peaks) and `attainable` (GEMMs at
GEMM_EFFICIENCY of peak, streaming passes at HBM_EFFICIENCY of bandwidth). TFLOP/s is on the 6 N H V
basis (the fused loss's useful GEMM work; 2 N H V for the no-grad forward) and is compared with
the 600 TFLOP/s goal.

Designs modelled, per op (linear_ppo_loss with token-level importance; linear_logprobs forward +
backward):
- `unfused` — what ia_kernels does today on CUDA: cuBLAS GEMM -> fp32 logits in HBM -> Triton row
  pass (two sweeps, dlogits written in place) -> cast dlogits to bf16 -> two GEMMs; fp32 weight-
  gradient accumulator; the ChunkDriver's default chunk (1 GiB of fp32 logits).
- `bf16-acc` — the same with the memory scheme of LMHead.new_weight_grad_accumulator: the weight
  gradient accumulated in the weight's dtype (bf16; fp32 sums inside each chunk's GEMM, one
  rounding per chunk, allowed up to 10 chunks), so no fp32 accumulator and no cast copy.
- `bf16-acc+bf16-dz` — bf16-acc whose row pass writes dlogits in bf16 (over the first half of each
  fp32 row, which it has already read) instead of a separate cast pass and copy.
- `epilogue-recompute` — the cut-cross-entropy design: row statistics in the GEMM epilogue (no
  logits in HBM), so the gradient needs the logits again: 8 N H V FLOPs.
- `fused-fwd` — linear_logprobs whose forward is ia_kernels/experimental/linear_stats.py (the GEMM
  with the row statistics in registers; no logits in HBM); its backward is bf16-acc's. Also the no-grad
  forward (`linear_logprobs_nograd`: behaviour / reference log-probs, 2 N H V).
Memory is the peak a call allocates beyond its inputs, given with and without the gradients it
returns (grad_hidden, grad_weight: the caller holds those whichever implementation runs).
The per-token side data (targets, log-probs, advantages, mask; ~33 bytes/token) is counted in the
row pass. `predict()` is what benchmarks/gpu_check.sh prints beside each GPU measurement.
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass

from . import harness

# Published datasheet figures: dense bf16 tensor-core FLOP/s (without sparsity) and HBM bandwidth.
DEVICES = {
    "H100-SXM": {"bf16_flops": 989.4e12, "hbm_bytes_s": 3.35e12},  # NVIDIA H100 datasheet, SXM5 80 GB
    "H200-SXM": {"bf16_flops": 989.4e12, "hbm_bytes_s": 4.8e12},  # NVIDIA H200 datasheet, SXM 141 GB
    "A100-SXM": {"bf16_flops": 312e12, "hbm_bytes_s": 2.039e12},  # NVIDIA A100 datasheet, 80 GB
}
GEMM_EFFICIENCY = 0.8  # large bf16 cuBLAS GEMMs on H100 reach ~790 of 989 TFLOP/s
HBM_EFFICIENCY = 0.9  # a streaming kernel reaches ~90% of the HBM bandwidth
GOAL_TFLOPS = 600.0
DEFAULT_SHAPE = {"N": 16384, "H": 4096, "V": 151936}
MEMORY_GOAL = 2e9  # bytes
CHUNK_BYTES = {"unfused": 1 << 30, "fused-fwd": 1 << 30, "bf16-acc": 1 << 30, "bf16-acc+bf16-dz": 1 << 30, "epilogue-recompute": 1 << 30}
SIDE_BYTES_PER_TOKEN = 33


@dataclass
class Kernel:
    name: str
    kind: str  # "gemm" or "pass"
    flops: float
    bytes: float
    count: int = 1  # launches per call (chunks)

    def time_s(self, dev: dict, attainable: bool) -> float:
        peak = dev["bf16_flops"] * (GEMM_EFFICIENCY if attainable else 1.0)
        bw = dev["hbm_bytes_s"] * (HBM_EFFICIENCY if attainable else 1.0)
        return self.count * max(self.flops / peak, self.bytes / bw)

    def bound(self, dev: dict) -> str:
        return "compute" if self.flops / dev["bf16_flops"] >= self.bytes / dev["hbm_bytes_s"] else "memory"


def chunk_rows(N: int, V: int, chunk_bytes: int) -> int:
    """ChunkDriver's rule (core/chunks.py chunk_rows): bytes of fp32 logits per chunk / (4 V), >= 16."""
    return max(1, min(max(16, chunk_bytes // (4 * V)), N))


def kernels(op: str, design: str, N: int, H: int, V: int, in_bytes: int = 2) -> tuple[list[Kernel], int]:
    """The kernels of one call (per chunk, with launch counts) and the rows per chunk."""
    K = math.ceil(N / chunk_rows(N, V, CHUNK_BYTES[design]))
    R = N / K  # rows of the average chunk: K chunks cover exactly N rows (each reads all of W)
    acc_bytes = 4 if design == "unfused" else in_bytes  # weight-gradient accumulator element
    dz_bytes = in_bytes if design == "bf16-acc+bf16-dz" else 4
    b = in_bytes
    side = SIDE_BYTES_PER_TOKEN * R
    logits = Kernel("GEMM z = h W^T (fp32 out)", "gemm", 2 * R * H * V, b * R * H + b * V * H + 4 * R * V, K)
    g_hidden = Kernel("GEMM dh = dz W", "gemm", 2 * R * H * V, b * R * V + b * V * H + b * R * H, K)
    g_weight = Kernel(f"GEMM dW += dz^T h ({'fp32' if acc_bytes == 4 else 'bf16'} acc)", "gemm", 2 * R * H * V,
                      b * R * V + b * R * H + 2 * acc_bytes * V * H, K)
    cast = Kernel("cast dz fp32 -> bf16", "pass", 0, 4 * R * V + b * R * V, K)
    out: list[Kernel] = []
    if design == "epilogue-recompute":
        # Forward: GEMM with an online log-sum-exp epilogue (reads h, W; writes per-row stats).
        # Backward: the GEMM again, dz formed in registers and fed to both gradient GEMMs in bf16.
        fwd = Kernel("GEMM + lse epilogue (fwd)", "gemm", 2 * R * H * V, b * R * H + b * V * H + side, K)
        rec = Kernel("GEMM recompute + dz epilogue (bwd)", "gemm", 2 * R * H * V,
                     b * R * H + b * V * H + b * R * V, K)
        g_hidden_e = Kernel("GEMM dh = dz W", "gemm", 2 * R * H * V, b * R * V + b * V * H + b * R * H, K)
        g_weight_e = Kernel("GEMM dW += dz^T h (bf16 acc)", "gemm", 2 * R * H * V,
                            b * R * V + b * R * H + 2 * b * V * H, K)
        return [fwd, rec, g_hidden_e, g_weight_e], chunk_rows(N, V, CHUNK_BYTES[design])
    fused_fwd = Kernel("GEMM + row stats in registers (linear_stats.py)", "gemm", 2 * R * H * V,
                       b * R * H + b * V * H + side, K)
    if op == "linear_logprobs_nograd":  # behaviour / reference log-probs: forward only
        if design == "fused-fwd":
            return [fused_fwd], chunk_rows(N, V, CHUNK_BYTES[design])
        return [logits, Kernel("row pass fwd: stats", "pass", 0, 4 * R * V + side, K)], \
            chunk_rows(N, V, CHUNK_BYTES[design])
    if op == "linear_ppo_loss":
        row = Kernel(f"row pass: stats + loss + dz ({'bf16' if dz_bytes == 2 else 'fp32'} dz)", "pass",
                     0, 4 * R * V + 4 * R * V + dz_bytes * R * V + side, K)
        out = [logits, row] + ([cast] if dz_bytes == 4 else []) + [g_hidden, g_weight]
    elif op == "linear_logprobs":
        fwd = Kernel("row pass fwd: stats", "pass", 0, 4 * R * V + side, K)
        bwd = Kernel(f"row pass bwd: dz ({'bf16' if dz_bytes == 2 else 'fp32'})", "pass", 0,
                     4 * R * V + dz_bytes * R * V + side, K)
        recompute = Kernel("GEMM z = h W^T again (bwd)", "gemm", 2 * R * H * V, logits.bytes, K)
        first = [fused_fwd] if design == "fused-fwd" else [logits, fwd]
        out = first + [recompute, bwd] + ([cast] if dz_bytes == 4 else []) + [g_hidden, g_weight]
    else:
        raise ValueError(op)
    return out, chunk_rows(N, V, CHUNK_BYTES[design])


def memory_bytes(design: str, N: int, H: int, V: int, in_bytes: int = 2, op: str = "") -> dict:
    """Peak device memory a call allocates beyond its inputs, by buffer; "(returned)" marks the
    gradients handed back to the caller."""
    R = chunk_rows(N, V, CHUNK_BYTES[design])
    mem = {"grad_hidden (returned)": in_bytes * N * H, "per-token vectors": 64 * N}
    if op == "linear_logprobs_nograd":
        return {"per-token vectors": 64 * N} | ({} if design == "fused-fwd" else {"fp32 logits chunk": 4 * R * V})
    if design == "unfused":
        mem["grad_weight fp32 accumulator"] = 4 * V * H
        mem["grad_weight cast to bf16 (returned)"] = in_bytes * V * H
    else:
        mem["grad_weight bf16 accumulator (returned)"] = in_bytes * V * H
    if design == "epilogue-recompute":
        mem["dz tile (bf16, per chunk)"] = in_bytes * R * V
    else:
        mem["fp32 logits chunk"] = 4 * R * V
        if design != "bf16-acc+bf16-dz":
            mem["bf16 dz copy"] = in_bytes * R * V
    return mem


def predict(op: str, device: str, design: str = "unfused", N: int | None = None, H: int | None = None,
            V: int | None = None) -> dict:
    N = N or DEFAULT_SHAPE["N"]
    H = H or DEFAULT_SHAPE["H"]
    V = V or DEFAULT_SHAPE["V"]
    dev = DEVICES[device]
    ks, R = kernels(op, design, N, H, V)
    useful = (2 if op == "linear_logprobs_nograd" else 6) * N * H * V
    t_roof = sum(k.time_s(dev, False) for k in ks)
    t_att = sum(k.time_s(dev, True) for k in ks)
    gemm_t = sum(k.time_s(dev, True) for k in ks if k.kind == "gemm")
    mem_bound = [k.name for k in ks if k.bound(dev) == "memory"]
    worst = max(ks, key=lambda k: k.time_s(dev, True))
    mem = memory_bytes(design, N, H, V, op=op)
    bottleneck = (f"GEMMs {gemm_t / t_att:.0%} of time (compute-bound)" if not any(k.kind == "gemm" for k in ks
                  if k.name in mem_bound) else "a memory-bound GEMM")
    if gemm_t / t_att < 0.85:
        bottleneck += f"; HBM passes {1 - gemm_t / t_att:.0%}"
    return {
        "op": op, "device": device, "design": design, "N": N, "H": H, "V": V, "rows_per_chunk": R,
        "chunks": math.ceil(N / R),
        "gemm_flops": sum(k.flops * k.count for k in ks if k.kind == "gemm"),
        "hbm_bytes": sum(k.bytes * k.count for k in ks),
        "roofline_ms": t_roof * 1e3, "attainable_ms": t_att * 1e3,
        "roofline_tflops": useful / t_roof / 1e12, "attainable_tflops": useful / t_att / 1e12,
        "meets_600": useful / t_att / 1e12 >= GOAL_TFLOPS,
        "memory_gb": sum(mem.values()) / 1e9,
        "workspace_gb": sum(v for k, v in mem.items() if "(returned)" not in k) / 1e9, "bottleneck": bottleneck, "largest_kernel": worst.name,
        "memory_bound_kernels": mem_bound,
        "kernels": [{"name": k.name, "flops_per_chunk": k.flops, "bytes_per_chunk": k.bytes, "launches": k.count,
                     "bound": k.bound(dev), "attainable_ms": k.time_s(dev, True) * 1e3} for k in ks],
        "memory": mem,
    }


OPS = ("linear_ppo_loss", "linear_logprobs", "linear_logprobs_nograd")

# Which modelled design a measured implementation runs (benchmarks/gpu_check.sh, --annotate).
_MODELLED_IMPL = {"ia_kernels": "unfused", "cut_cross_entropy": "epilogue-recompute"}
_SUITE_OP = {"ppo": "linear_ppo_loss", "logprobs": "linear_logprobs"}


def device_key(name: str) -> str | None:
    """The DEVICES entry for a torch.cuda device name ("NVIDIA H200" -> "H200-SXM"), else None."""
    for key in DEVICES:
        if key.split("-")[0] in (name or "").upper():
            return key
    return None


def annotate(paths: list[str]) -> list[dict]:
    """Each measured row of the benchmark JSON files at `paths` beside the model's prediction."""
    import json

    out = []
    for path in paths:
        payload = json.loads(open(path).read())
        op = _SUITE_OP.get(payload.get("suite"))
        dev = device_key(payload.get("env", {}).get("device", ""))
        for r in payload.get("rows", []):
            if op is None or "median_ms" not in r:
                continue
            row = {"suite": payload["suite"], "case": r.get("case", ""), "impl": r["impl"], "N": r["N"],
                   "H": r["H"], "V": r["V"], "measured_ms": r["median_ms"],
                   "measured_tflops": 6 * r["N"] * r["H"] * r["V"] / (r["median_ms"] * 1e9)}
            design = _MODELLED_IMPL.get(r["impl"])
            if dev and design:
                tokens = r.get("valid_tokens") or r["N"]  # padding rows never reach the GEMMs
                p = predict(op, dev, design, tokens, r["H"], r["V"])
                row.update(model_device=dev, design=design, predicted_ms=p["attainable_ms"],
                           roofline_ms=p["roofline_ms"], measured_vs_predicted=r["median_ms"] / p["attainable_ms"])
            out.append(row)
    return out
DESIGNS = ("unfused", "bf16-acc", "bf16-acc+bf16-dz", "epilogue-recompute", "fused-fwd")
# The designs that apply to each op (the no-grad forward has no gradient to accumulate).
OP_DESIGNS = {"linear_ppo_loss": DESIGNS[:4], "linear_logprobs": DESIGNS,
              "linear_logprobs_nograd": ("unfused", "fused-fwd")}


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks model", description=__doc__.split("\n")[0])
    parser.add_argument("--N", type=int, default=DEFAULT_SHAPE["N"])
    parser.add_argument("--H", type=int, default=DEFAULT_SHAPE["H"])
    parser.add_argument("--V", type=int, default=DEFAULT_SHAPE["V"])
    parser.add_argument("--kernels", action="store_true", help="also print the per-kernel breakdown")
    parser.add_argument("--json", default=None)
    parser.add_argument("--quick", action="store_true", help="ignored (the model is instant)")
    parser.add_argument("--device", default=None, help="ignored (the model covers H100 and H200)")
    parser.add_argument("--repeats", default=None, help="ignored")
    parser.add_argument("--dtype", default=None, help="ignored (bf16 inputs)")
    parser.add_argument("--annotate", nargs="+", default=None, metavar="JSON",
                        help="benchmark JSON files (logprobs, ppo) to print beside the model's prediction")
    args = parser.parse_args(argv)
    if args.annotate:
        rows = annotate(args.annotate)
        harness.report("model-vs-measured", rows, ["suite", "case", "impl", "N", "H", "V", "measured_ms",
                                                   "measured_tflops", "model_device", "design", "predicted_ms",
                                                   "roofline_ms", "measured_vs_predicted"], json_path=args.json)
        return 0
    rows = [predict(op, dev, design, args.N, args.H, args.V)
            for op in OPS for dev in ("H100-SXM", "H200-SXM") for design in OP_DESIGNS[op]]
    print(f"N={args.N} H={args.H} V={args.V}, bf16 inputs; 6NHV = {6 * args.N * args.H * args.V / 1e15:.1f} PFLOP; "
          f"attainable = GEMMs at {GEMM_EFFICIENCY:.0%} of peak, passes at {HBM_EFFICIENCY:.0%} of HBM bandwidth\n")
    if args.kernels:
        for op in OPS:
            for design in OP_DESIGNS[op]:
                r = predict(op, "H100-SXM", design, args.N, args.H, args.V)
                print(f"{op} / {design} on H100-SXM: {r['rows_per_chunk']} rows x {r['chunks']} chunks")
                harness.print_table(r["kernels"], ["name", "flops_per_chunk", "bytes_per_chunk", "launches", "bound",
                                                   "attainable_ms"])
                print()
    harness.report("model", rows, ["op", "device", "design", "rows_per_chunk", "hbm_bytes", "roofline_ms",
                                   "roofline_tflops", "attainable_ms", "attainable_tflops", "meets_600", "memory_gb", "workspace_gb",
                                   "bottleneck"], json_path=args.json,
                   extra={"devices": DEVICES, "gemm_efficiency": GEMM_EFFICIENCY, "hbm_efficiency": HBM_EFFICIENCY,
                          "goal_tflops": GOAL_TFLOPS})
    return 0


if __name__ == "__main__":
    import sys

    sys.exit(main(sys.argv[1:]))
