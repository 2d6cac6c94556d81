"""Fused linear log-probs vs eager PyTorch (and, on GPU where installed, Liger-Kernel's fused linear
cross-entropy and cut-cross-entropy's linear_cross_entropy).

Each case runs forward + backward of sum(logp * g) for a random upstream gradient g. FLOP basis:
6 N H V (one GEMM forward, two backward) — the work eager does; the fused op recomputes the logits
in backward (8 N H V), so its "GFLOP/s on the 6NHV basis" is the useful rate users feel.

--tp P: the vocabulary-parallel op (tp_group=...) on P processes (gloo on CPU, nccl on GPU), each
holding V/P rows of the LM head, against the single-process op on the same total threads, with the
bytes each rank all-reduces per token (the row statistics and the hidden gradient).
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


def cce_logprobs(hidden, weight, targets):
    # cut-cross-entropy (Apple, Wijmans et al. 2024): per-token CE = -logp, logits never stored.
    from cut_cross_entropy import linear_cross_entropy

    return -linear_cross_entropy(hidden, weight, targets, reduction="none").float()


def _candidates(device: str):
    cands = {"eager": eager_logprobs, "ia_kernels": lambda h, w, t: ik.linear_logprobs(h, w, t)}
    if torch.device(device).type == "cuda":
        for module, name, fn in (("liger_kernel", "liger", liger_logprobs),
                                 ("cut_cross_entropy", "cut_cross_entropy", cce_logprobs)):
            try:
                __import__(module)
                cands[name] = fn
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


def _tp_rank(rank: int, world: int, port: int, N: int, H: int, V: int, repeats: int, threads: int, queue) -> None:
    """One rank of the --tp run: times the sharded op and tallies the bytes it all-reduces."""
    import os

    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(threads)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.manual_seed(0)
    hidden = torch.randn(N, H).requires_grad_()
    weight = torch.randn(V, H) / H**0.5
    block = torch.tensor_split(torch.arange(V), world)[rank]
    w = weight[block[0]:block[-1] + 1].clone().requires_grad_()
    targets = torch.randint(0, V, (N,))
    g = torch.randn(N)
    tally = {"bytes": 0}
    all_reduce = dist.all_reduce

    def counting_all_reduce(t, *a, **k):
        tally["bytes"] += t.numel() * t.element_size()
        return all_reduce(t, *a, **k)

    dist.all_reduce = counting_all_reduce

    def step():
        hidden.grad = w.grad = None
        (ik.linear_logprobs(hidden, w, targets, tp_group=dist.group.WORLD) * g).sum().backward()

    step()
    tally["bytes"] = 0
    step()
    bytes_per_call = tally["bytes"]
    dist.barrier()
    timing = time_fn(step, warmup=0, repeats=repeats)
    dist.all_reduce = all_reduce
    queue.put({"rank": rank, "median_ms": timing["median_ms"], "bytes_per_token": bytes_per_call / N})
    dist.destroy_process_group()


def _tp_main(args, P: int) -> list[dict]:
    """The single-process op on all threads, then the same work split over P processes."""
    import socket

    import torch.multiprocessing as mp

    if torch.device(args.device).type != "cpu":
        raise SystemExit("--tp runs on CPU processes here (gloo); on GPUs launch the op under torchrun with nccl")
    N, H, V = (256, 128, 4099) if args.quick else FULL["cpu"][0]
    repeats = args.repeats or (2 if args.quick else 3)
    total = torch.get_num_threads()
    row, _ = _case("single-process", lambda h, w, t: ik.linear_logprobs(h, w, t), N, H, V, torch.float32, "cpu",
                   repeats, None)
    rows = [{"impl": "single-process", "P": 1, "threads_per_rank": total, "N": N, "H": H, "V": V,
             "median_ms": row["median_ms"], "bytes_per_token": 0.0}]
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    threads = max(1, total // P)
    procs = [ctx.Process(target=_tp_rank, args=(r, P, port, N, H, V, repeats, threads, queue)) for r in range(P)]
    for p in procs:
        p.start()
    ranks = sorted((queue.get(timeout=1800) for _ in procs), key=lambda r: r["rank"])
    for p in procs:
        p.join()
    slowest = max(r["median_ms"] for r in ranks)
    rows.append({"impl": f"tp (gloo, {P} processes)", "P": P, "threads_per_rank": threads, "N": N, "H": H, "V": V,
                 "median_ms": slowest, "bytes_per_token": ranks[0]["bytes_per_token"],
                 "speedup_vs_single": rows[0]["median_ms"] / slowest})
    report("logprobs-tp", rows, ["impl", "P", "threads_per_rank", "N", "H", "V", "median_ms", "speedup_vs_single",
                                 "bytes_per_token"], device="cpu", json_path=args.json)
    return rows


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(prog="python -m benchmarks logprobs", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(parser, dtype=True)
    parser.add_argument("--tp", type=int, default=0,
                        help="run the vocabulary-parallel op on this many processes against one process")
    args = parser.parse_args(argv)
    if args.tp:
        if args.tp < 2:
            parser.error(f"--tp must be at least 2, got {args.tp}")
        return _tp_main(args, args.tp)
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
