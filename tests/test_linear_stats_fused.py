"""The experimental fused GEMM + row-statistics Triton kernel (ia_kernels/experimental/linear_stats.py)
against float64.

On CPU it runs under the Triton interpreter (tests/conftest.py), at small odd shapes that exercise
every tile edge; the logits are never materialised by the kernel, so its log-probs, log-sum-exp
and entropy must match those of the float64 logits of the same (rounded) inputs.
"""

import os

import pytest
import torch

triton = pytest.importorskip("triton")
if not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1":
    pytest.skip("needs CUDA or the Triton interpreter", allow_module_level=True)

from ia_kernels.experimental.linear_stats import launch_config, linear_stats_forward  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def _exact(hidden, weight, targets, temperature, ignore_index=-100):
    x = (hidden.double() @ weight.double().T) / temperature
    lp = torch.log_softmax(x, -1)
    lse = torch.logsumexp(x, -1)
    ent = -(lp.exp() * lp).sum(-1)
    ignored = targets == ignore_index
    logp = lp.gather(-1, targets.clamp(0, x.shape[1] - 1)[:, None]).squeeze(-1)
    return torch.where(ignored, 0.0, logp), lse, ent


def _run(hidden, weight, targets, temperature=1.0):
    N = hidden.shape[0]
    out = torch.empty((3, N), dtype=torch.float32, device=hidden.device)
    linear_stats_forward(hidden, weight, targets, temperature, -100, out[0], out[1], out[2])
    return out


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 2e-5), (torch.bfloat16, 2e-4), (torch.float16, 2e-4)])
@pytest.mark.parametrize("N,H,V,temperature,scale", [(37, 48, 300, 1.0, 1.0), (20, 33, 129, 0.7, 6.0),
                                                    (5, 16, 64, 1.3, 1.0)])
def test_matches_float64_of_the_same_inputs(dtype, tol, N, H, V, temperature, scale):
    g = torch.Generator().manual_seed(N + V)
    hidden = torch.randn(N, H, generator=g).to(DEVICE, dtype)
    weight = (torch.randn(V, H, generator=g) * scale / H ** 0.5).to(DEVICE, dtype)
    targets = torch.randint(0, V, (N,), generator=g).to(DEVICE)
    targets[::4] = -100  # ignored rows
    out = _run(hidden, weight, targets, temperature)
    exact = _exact(hidden, weight, targets, temperature)
    for name, ours, ref in zip(("logp", "lse", "entropy"), out, exact):
        err = (ours.double() - ref).abs().max().item()
        assert err <= tol * max(1.0, ref.abs().max().item()), f"{name}: {err:.3g}"
    assert (out[0][targets == -100] == 0).all() and (out[0] <= 0).all() and (out[2] >= 0).all()


def test_bad_rows_give_nan():
    hidden = torch.randn(6, 16).to(DEVICE)
    weight = torch.randn(40, 16).to(DEVICE)
    targets = torch.tensor([0, 1, 40, -3, 5, 6], device=DEVICE)  # two targets outside [0, V)
    hidden[4, 0] = float("nan")
    out = _run(hidden, weight, targets)
    assert torch.isnan(out[0][[2, 3, 4]]).all() and torch.isfinite(out[0][[0, 1, 5]]).all()
    assert torch.isnan(out[1][4]) and torch.isnan(out[2][4])


def test_strided_hidden_and_empty():
    base = torch.randn(9, 40).to(DEVICE)
    hidden = base[:, 3:35]  # non-contiguous rows
    weight = torch.randn(70, 32).to(DEVICE)
    targets = torch.randint(0, 70, (9,)).to(DEVICE)
    out = _run(hidden, weight, targets)
    exact = _exact(hidden, weight, targets, 1.0)
    assert (out[0].double() - exact[0]).abs().max() < 1e-4
    _run(hidden[:0], weight, targets[:0])  # no rows: nothing launched


def test_launch_config_fits_shared_memory():
    for dtype in (torch.bfloat16, torch.float16, torch.float32):
        cfg = launch_config(dtype, torch.device("cuda"))
        elt = 4 if dtype == torch.float32 else 2
        smem = cfg["num_stages"] * (cfg["BLOCK_M"] + cfg["BLOCK_N"]) * cfg["BLOCK_K"] * elt
        assert smem <= 160 * 1024  # under sm_80's 163 KB (gpu-build checks the compiled value)
