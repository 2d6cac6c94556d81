"""Fused linear PPO loss vs the eager composition (and Liger-Kernel's chunked GRPO loss).

Each case is one training step's loss work, forward + backward, from final hidden states [B, T, H]
and the LM head [V, H] to the gradients of both:
  eager       fp32 logits [N, V] materialised, log_softmax, gather, then the PyTorch loss
              (ia_kernels.reference.ppo_loss run in fp32)
  ia_kernels  ia_kernels.linear_ppo_loss (token level: one pass, 6 N H V FLOPs; GSPO: two phases, 8 N H V)
  liger       liger_kernel.chunked_loss.LigerFusedLinearGRPOLoss (pure PyTorch, chunked over sequences;
              compiled=False on CPU, where torch.compile would time the compiler)

FLOP basis 6 N H V (one logits GEMM forward, two gradient GEMMs). The machine is shared, so the
candidates are timed in interleaved rounds and each speedup is the median of per-round ratios.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import ia_kernels as ik
from ia_kernels import reference as ref

from .harness import add_common_args, input_dtype, free_memory, peak_extra_memory, report

FULL = {"cpu": [(8, 512, 1024, 32768)], "cuda": [(16, 1024, 4096, 151936)]}  # (B, T, H, V): N = B T
QUICK = [(4, 64, 128, 4099)]
_GRPO = (dict(aggregation="token-mean", kl_coef=0.04), dict(loss_type="bnpo", beta=0.04))
_GSPO = (dict(aggregation="seq-mean-token-mean", importance="sequence", clip_low=3e-4, clip_high=4e-4),
         dict(loss_type="grpo", importance_sampling_level="sequence", epsilon_low=3e-4, epsilon_high=4e-4, beta=0.0))
CASES = {
    # name: (ia_kernels / reference options, Liger options, padded). Padded batches have completion
    # lengths uniform in [T/4, T] (~37% padding), which ia_kernels skips and the others compute;
    # unpadded ones compare the kernels on equal work.
    "grpo-token": (*_GRPO, False),
    "grpo-token-padded": (*_GRPO, True),
    "gspo-sequence": (*_GSPO, False),
}


def make_inputs(B, T, H, V, dtype, device, padded, seed=0):
    g = torch.Generator(device="cpu").manual_seed(seed)
    hidden = torch.randn(B, T, H, generator=g).to(device, dtype)
    weight = (torch.randn(V, H, generator=g) / H**0.5).to(device, dtype)
    targets = torch.randint(0, V, (B, T), generator=g).to(device)
    lengths = torch.randint(T // 4, T + 1, (B,), generator=g) if padded else torch.full((B,), T)
    mask = (torch.arange(T)[None, :] < lengths[:, None]).to(device)
    with torch.no_grad():
        logp = ik.linear_logprobs(hidden, weight, targets)
    old = (logp + 0.1 * torch.randn(B, T, generator=g).to(device)).float()
    ref_logp = (logp + 0.1 * torch.randn(B, T, generator=g).to(device)).float()
    adv = torch.randn(B, generator=g).to(device)
    return hidden, weight, targets, old, ref_logp, adv, mask


def eager_loss(hidden, weight, targets, old, ref_logp, adv, mask, options):
    logits = (hidden.reshape(-1, hidden.shape[-1]) @ weight.T).float()
    logp = torch.log_softmax(logits, dim=-1).gather(-1, targets.reshape(-1, 1)).view(targets.shape)
    return ref.ppo_loss(logp, old, adv, mask, ref_logp=ref_logp, dtype=torch.float32, **options)[0]


def fused_loss(hidden, weight, targets, old, ref_logp, adv, mask, options):
    return ik.linear_ppo_loss(hidden, weight, targets, old, adv, mask, ref_logp=ref_logp, **options)[0]


def make_liger_loss(liger_options):
    from liger_kernel.chunked_loss import LigerFusedLinearGRPOLoss

    opts = dict(liger_options)
    beta = opts.pop("beta")
    fn = LigerFusedLinearGRPOLoss(beta=beta, use_ref_model=beta != 0, chunk_size=1,
                                  compiled=torch.cuda.is_available(), **opts)

    def liger_loss(hidden, weight, targets, old, ref_logp, adv, mask, options):
        return fn(hidden, weight, targets, mask.long(), adv, ref_per_token_logps=ref_logp if beta else None,
                  old_per_token_logps=old, num_items_in_batch=mask.sum())[0]

    return liger_loss


def _candidates(liger_options, impls):
    cands = {"eager": eager_loss, "ia_kernels": fused_loss}
    try:
        cands["liger"] = make_liger_loss(liger_options)
    except ImportError:
        pass
    return {name: fn for name, fn in cands.items() if name == "eager" or name in impls}


def _run_case(case, B, T, H, V, dtype, device, rounds, impls):
    options, liger_options, padded = CASES[case]
    inputs = make_inputs(B, T, H, V, dtype, device, padded)
    hidden, weight = inputs[0], inputs[1]
    cands = _candidates(liger_options, impls)
    leaves = {name: (hidden.clone().requires_grad_(), weight.clone().requires_grad_()) for name in cands}

    def step_of(name):
        h, w = leaves[name]

        def step():
            h.grad = w.grad = None
            loss = cands[name](h, w, *inputs[2:], options)
            loss.backward()
            return loss

        return step

    steps = {name: step_of(name) for name in cands}
    losses = {name: steps[name]().item() for name in cands}  # warm-up, and the values to compare
    grads = {name: leaves[name][1].grad.clone() for name in cands}
    samples = {name: [] for name in cands}
    for _ in range(rounds):  # interleaved: contention hits every candidate alike
        for name in cands:
            t0 = time.perf_counter()
            steps[name]()
            if device == "cuda":
                torch.cuda.synchronize()
            samples[name].append((time.perf_counter() - t0) * 1e3)
    grads_bytes = hidden.numel() * hidden.element_size() + weight.numel() * weight.element_size()
    rows = []
    for name in cands:
        h, w = leaves[name]
        h.grad = w.grad = None
        free_memory()
        peak = peak_extra_memory(steps[name], device=device)
        med = statistics.median(samples[name])
        ordered = sorted(samples[name])
        rows.append({
            "case": case, "impl": name, "N": B * T, "valid_tokens": int(inputs[-1].sum()), "H": H, "V": V,
            "dtype": str(dtype).replace("torch.", ""),
            "median_ms": med, "min_ms": ordered[0], "max_ms": ordered[-1],
            "gflops_6nhv": 6 * B * T * H * V / (med * 1e6),
            "peak_extra_mb": None if peak is None else max(0, peak - grads_bytes) / 2**20,
            "loss_diff_vs_eager": abs(losses[name] - losses["eager"]),
            "wgrad_max_diff_vs_eager": (grads[name] - grads["eager"]).abs().max().item(),
            "samples_ms": samples[name],
        })
    eager = rows[0]
    for r in rows:
        ratios = [e / s for e, s in zip(eager["samples_ms"], r["samples_ms"])]
        r["speedup_vs_eager"] = statistics.median(ratios)
        if r["peak_extra_mb"] is not None and eager["peak_extra_mb"]:
            r["mem_vs_eager"] = r["peak_extra_mb"] / eager["peak_extra_mb"]
    del leaves, inputs
    free_memory()
    return rows


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(prog="python -m benchmarks ppo", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(parser, dtype=True)
    parser.add_argument("--cases", default=",".join(CASES), help=f"comma-separated subset of {', '.join(CASES)}")
    parser.add_argument("--impls", default="ia_kernels,liger", help="besides eager: ia_kernels, liger")
    args = parser.parse_args(argv)
    device = args.device
    dtype = input_dtype(args)
    shapes = QUICK if args.quick else FULL[torch.device(device).type]
    rounds = args.repeats or (2 if args.quick else 3)
    rows = []
    for case in args.cases.split(","):
        if case not in CASES:
            parser.error(f"unknown case {case!r}; cases: {', '.join(CASES)}")
        for B, T, H, V in shapes:
            rows += _run_case(case, B, T, H, V, dtype, device, rounds, args.impls.split(","))
    cols = ["case", "impl", "N", "valid_tokens", "H", "V", "dtype", "median_ms", "min_ms", "max_ms", "gflops_6nhv",
            "speedup_vs_eager", "peak_extra_mb", "mem_vs_eager", "loss_diff_vs_eager", "wgrad_max_diff_vs_eager"]
    report("ppo", rows, cols, device=device, json_path=args.json)
    return rows


if __name__ == "__main__":
    main()
