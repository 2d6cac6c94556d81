"""The weight-gradient accumulator in the weight's dtype (LMHead.new_weight_grad_accumulator).

At N=16384, H=4096, V=151936 an fp32 accumulator alone is 2.5 GB; accumulating in the bf16 weight's
own dtype (the buffer is the returned gradient) removes it. Each chunk's dZ^T h is still summed in
fp32 and rounded to bf16 once per chunk, so the error grows with the number of chunks; up to
LMHead.MAX_LOW_PRECISION_STEPS chunks it stays within the design's rule (at most 2x plain PyTorch's
error against float64). These tests measure it on CPU with bf16 inputs, beside the fp32
accumulator's and plain PyTorch's (logits in bf16, log_softmax in fp32, autograd).
"""

import pytest
import torch

from ia_kernels.core.chunks import LMHead


def _inputs(N, H, V, seed, scale):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(N, H, generator=g).to(torch.bfloat16)
    weight = (torch.randn(V, H, generator=g) * scale / H ** 0.5).to(torch.bfloat16)
    targets = torch.randint(0, V, (N,), generator=g)
    g_logp = torch.randn(N, generator=g) / N  # token weights of a mean-aggregated loss
    return hidden, weight, targets, g_logp


def _exact_grad_weight(hidden, weight, targets, g_logp):
    h = hidden.double()
    w = weight.double().requires_grad_(True)
    logp = torch.log_softmax(h @ w.T, -1).gather(-1, targets[:, None]).squeeze(-1)
    (logp * g_logp.double()).sum().backward()
    return w.grad


def _plain_grad_weight(hidden, weight, targets, g_logp):
    w = weight.clone().requires_grad_(True)
    logits = hidden @ w.T
    logp = torch.log_softmax(logits.float(), -1).gather(-1, targets[:, None]).squeeze(-1)
    (logp * g_logp).sum().backward()
    return w.grad


def _chunked_grad_weight(hidden, weight, targets, g_logp, rows, acc):
    """The ChunkDriver's loop: fp32 logits per chunk, dlogits, LMHead.backprop_chunk into `acc`."""
    head = LMHead.prepare(weight, None)
    for a in range(0, hidden.shape[0], rows):
        h = hidden[a:a + rows]
        z = head.logits(h)
        p = torch.softmax(z, -1)
        onehot = torch.zeros_like(p).scatter_(1, targets[a:a + rows, None], 1.0)
        dz = g_logp[a:a + rows, None].float() * (onehot - p)
        head.backprop_chunk(dz, h, None, acc, None)
    return LMHead.finish_weight_grad(acc, weight)


def _rel_err(x, exact):
    return ((x.double() - exact).norm() / exact.norm()).item()


def _max_err(x, exact):
    return ((x.double() - exact).abs().max() / exact.abs().max()).item()


def test_accumulator_dtypes():
    for dtype, acc_dtype in ((torch.bfloat16, torch.bfloat16), (torch.float16, torch.float16),
                             (torch.float32, torch.float32), (torch.float64, torch.float64)):
        w = torch.zeros(3, 2, dtype=dtype)
        acc = LMHead.new_weight_grad_accumulator(w)
        assert acc.dtype == acc_dtype and acc.shape == w.shape and not acc.any()
        out = LMHead.finish_weight_grad(acc, w)
        assert out.dtype == dtype and (out is acc) == (acc_dtype == dtype)


def _errors(scale, seed, steps, N=2048, H=64, V=1000):
    hidden, weight, targets, g_logp = _inputs(N, H, V, seed=seed, scale=scale)
    rows = -(-N // steps)
    exact = _exact_grad_weight(hidden, weight, targets, g_logp)
    plain = _plain_grad_weight(hidden, weight, targets, g_logp)
    fp32_acc = _chunked_grad_weight(hidden, weight, targets, g_logp, rows,
                                    torch.zeros(weight.shape, dtype=torch.float32)).to(torch.bfloat16)
    acc = torch.zeros(weight.shape, dtype=torch.bfloat16)  # the bf16 accumulator, whatever `steps`
    bf16_acc = _chunked_grad_weight(hidden, weight, targets, g_logp, rows, acc)
    return {name: (_rel_err(x, exact), _max_err(x, exact))
            for name, x in (("plain", plain), ("fp32_acc", fp32_acc), ("bf16_acc", bf16_acc))}


@pytest.mark.parametrize("seed", [1, 2])
@pytest.mark.parametrize("scale", [1.0, 8.0])  # unit logits, and large peaked ones
def test_bf16_accumulator_error_against_float64(scale, seed):
    steps = LMHead.MAX_LOW_PRECISION_STEPS  # the most chunks that still get the bf16 accumulator
    weight = torch.zeros(4, 4, dtype=torch.bfloat16)
    assert LMHead.new_weight_grad_accumulator(weight, steps=steps).dtype == torch.bfloat16
    errs = _errors(scale, seed, steps)
    print(f"scale={scale} seed={seed} steps={steps}: relative Frobenius / max error vs float64: "
          + ", ".join(f"{k} {r:.2e} / {m:.2e}" for k, (r, m) in errs.items()))
    # The design's rule: no worse than 2x plain PyTorch in the same input dtype (Frobenius norm;
    # the largest element with the bf16 atol of tests/test_linear_logprobs.py, relative here).
    assert errs["bf16_acc"][0] <= 2 * errs["plain"][0]
    assert errs["bf16_acc"][1] <= 2 * errs["plain"][1] + 2e-3
    # And within a small factor of the fp32 accumulator's (which rounds once, at the end).
    assert errs["bf16_acc"][0] <= 3 * errs["fp32_acc"][0]


def test_more_steps_fall_back_to_fp32():
    """Past MAX_LOW_PRECISION_STEPS chunks the error would pass 2x plain PyTorch's: fp32 accumulator."""
    weight = torch.zeros(4, 4, dtype=torch.bfloat16)
    assert LMHead.new_weight_grad_accumulator(weight, steps=LMHead.MAX_LOW_PRECISION_STEPS + 1).dtype == torch.float32
    errs = _errors(1.0, 1, 32)  # what the bf16 accumulator would give over 32 chunks
    print("32 steps, unit logits: " + ", ".join(f"{k} {r:.2e} / {m:.2e}" for k, (r, m) in errs.items()))
    assert errs["bf16_acc"][0] > 2 * errs["plain"][0]  # why the fallback exists


def test_bf16_accumulator_one_chunk_equals_fp32_then_round():
    """With one chunk the bf16 accumulator rounds once, exactly like the fp32 accumulator's final cast."""
    hidden, weight, targets, g_logp = _inputs(64, 32, 100, seed=2, scale=1.0)
    fp32_acc = _chunked_grad_weight(hidden, weight, targets, g_logp, 64, torch.zeros(weight.shape))
    bf16_acc = _chunked_grad_weight(hidden, weight, targets, g_logp, 64, LMHead.new_weight_grad_accumulator(weight))
    assert torch.equal(bf16_acc, fp32_acc.to(torch.bfloat16))


def test_block_rows_do_not_change_the_result(monkeypatch):
    """The CPU path's blocking over vocabulary rows (a bounded fp32 temporary) adds no error of its
    own: each element is still one fp32 sum rounded once per chunk. Bit equality is not promised: the
    CPU BLAS picks its summation order by the GEMM's shape (on some CPUs a third of a [300, 32] fp32
    product's elements differ in the last bit between one GEMM and 7-row blocks), so the results may
    differ where that last fp32 bit moves a bf16 rounding, by one bf16 step at most."""
    hidden, weight, targets, g_logp = _inputs(256, 32, 300, seed=3, scale=1.0)
    whole = _chunked_grad_weight(hidden, weight, targets, g_logp, 32, LMHead.new_weight_grad_accumulator(weight))
    monkeypatch.setattr(LMHead, "_ACC_BLOCK_ROWS", 7)
    blocked = _chunked_grad_weight(hidden, weight, targets, g_logp, 32, LMHead.new_weight_grad_accumulator(weight))
    step = torch.finfo(torch.bfloat16).eps * torch.maximum(whole.float().abs(), blocked.float().abs())
    diff = (whole.float() - blocked.float()).abs()
    assert torch.all(diff <= step), float((diff / step).max())
    assert (diff > 0).float().mean() < 0.01  # a rare tie, not a different computation
