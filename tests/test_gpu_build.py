"""benchmarks/gpu_build.py and benchmarks/model.py: the GPU compile check and the performance model.

The full compile of every variant runs in CI as `python -m benchmarks gpu-build` (.ci/run); here:
the enumeration really goes through the launchers and reaches every constexpr they can set, the
resource parsing and the failure rules, one real ahead-of-time compile per architecture, and the
model's arithmetic.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from benchmarks import gpu_build, model

ROOT = Path(__file__).resolve().parent.parent

triton = pytest.importorskip("triton")


# The tests run Triton under its interpreter (tests/conftest.py); compiling needs the real JIT
# functions, so the compile-side checks run once in a subprocess without TRITON_INTERPRET.
_PROBE = r"""
import json, sys
from benchmarks import gpu_build as g
from ia_kernels.kernels.triton import logprobs, ppo
before = (logprobs._logprob_rows_forward_kernel, ppo._ppo_rows_fused_kernel)
launches = g.enumerate_triton_launches()
quick = g.enumerate_triton_launches(quick=True)
out = {"restored": (logprobs._logprob_rows_forward_kernel, ppo._ppo_rows_fused_kernel) == before,
       "launches": [dict(name=x.name, V=x.args[2] if "rows" in x.name else None,
                         num_warps=x.kwargs.get("num_warps"), **x.constexprs) for x in launches]}
by_key, by_ir = g.distinct_variants(quick, by_ir=False), g.distinct_variants(quick)
out["distinct"] = dict(quick=len(quick), by_key=len(by_key), by_ir=len(by_ir),
                       covers_key=sum(v.covers for v in by_key), covers_ir=sum(v.covers for v in by_ir))
fwd = [x for x in quick if x.name == "_logprob_rows_forward_kernel"]
out["v_attrs"] = {str(x.args[2]): g.specialise(x, 90)[2][(2,)] for x in fwd}
heaviest = next(x for x in quick if x.name == "_ppo_rows_fused_kernel" and x.args[2] == 151936
                and all(x.kwargs[k] for k in ("HAS_DUAL", "HAS_KL", "HAS_ENTROPY")))
out["compiled"] = [g.compile_triton(heaviest, cc) for cc in g.ARCHS]
json.dump(out, sys.stdout)
"""


@pytest.fixture(scope="module")
def probe():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    proc = subprocess.run([sys.executable, "-c", _PROBE], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout)


def _constexprs(probe, name):
    return [x for x in probe["launches"] if x["name"] == name]


def test_recording_restores_the_kernels(probe):
    assert probe["restored"]


def test_enumeration_reaches_every_constexpr_the_launchers_set(probe):
    names = {x["name"] for x in probe["launches"]}
    assert names == {"_logprob_rows_forward_kernel", "_logprob_rows_backward_kernel", "_ppo_rows_fused_kernel",
                     "_ppo_terms_kernel", "_linear_stats_kernel"}
    fused = _constexprs(probe, "_ppo_rows_fused_kernel")
    combos = {(c["HAS_DUAL"], c["HAS_KL"], c["KL_ESTIMATOR"], c["HAS_ENTROPY"]) for c in fused}
    assert len(combos) == 2 * 2 * 3 * 2
    # CUDA launch settings, not the interpreter's: BLOCK_V capped at 4096, 8 warps.
    assert {c["BLOCK_V"] for c in fused} == {4096, 1024, 8} and {c["num_warps"] for c in fused} == {8}
    terms = _constexprs(probe, "_ppo_terms_kernel")
    assert {c["SEQUENCE"] for c in terms} == {False, True}
    assert {c["BLOCK_T"] for c in terms} == {1024, 8} and {c["num_warps"] for c in terms} == {4}
    backward = _constexprs(probe, "_logprob_rows_backward_kernel")
    assert {c["HAS_G_ENTROPY"] for c in backward} == {False, True}


def test_distinct_variants_keep_every_specialisation(probe):
    d = probe["distinct"]
    assert d["by_ir"] <= d["by_key"] <= d["quick"]
    assert d["covers_key"] == d["covers_ir"] == d["quick"]


def test_specialisation_matches_the_jit(probe):
    """V=151936 is divisible by 16 (Triton's JIT marks it so), 50257 is not."""
    assert probe["v_attrs"]["151936"] == [["tt.divisibility", 16]]
    assert probe["v_attrs"]["50257"] == []


def test_production_fused_kernel_compiles_without_spills(probe):
    for row in probe["compiled"]:
        assert "error" not in row, row
        assert row["regs"] > 0 and row["num_warps"] == 8
        assert gpu_build.problems(row) == []
    assert [r["arch"] for r in probe["compiled"]] == ["sm_80", "sm_90"]


def test_interpreter_mode_is_refused(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET"):
        gpu_build.enumerate_triton_launches(quick=True)


PTXAS = """ptxas info    : Compiling entry function '_Z6kernelPf' for 'sm_90'
ptxas info    : Function properties for _Z6kernelPf
    24 bytes stack frame, 8 bytes spill stores, 12 bytes spill loads
ptxas info    : Used 255 registers, used 1 barriers, 240000 bytes smem, 360 bytes cmem[0]
ptxas info    : Compiling entry function '_Z4goodPf' for 'sm_80'
ptxas info    : Function properties for _Z4goodPf
    0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
ptxas info    : Used 32 registers, used 0 barriers, 360 bytes cmem[0]
"""


def test_ptxas_parsing_and_failure_rules():
    bad, good = gpu_build.parse_ptxas(PTXAS)
    assert (bad["regs"], bad["spill_bytes"], bad["shared"], bad["arch"]) == (255, 20, 240000, "sm_90")
    assert (good["regs"], good["spill_bytes"], good["shared"], good["arch"]) == (32, 0, 0, "sm_80")
    problems = gpu_build.problems(bad)
    assert any("spills" in p for p in problems) and any("shared memory" in p for p in problems)
    assert gpu_build.problems(good) == []
    assert gpu_build.problems({"error": "boom", "arch": "sm_80"}) == ["compile error: boom"]
    # sm_80's limit is lower than sm_90's.
    assert gpu_build.problems({"arch": "sm_80", "shared": 200 * 1024}) and not gpu_build.problems(
        {"arch": "sm_90", "shared": 200 * 1024})


def test_model_counts_the_fused_ops_flops():
    N, H, V = 16384, 4096, 151936
    ppo = model.predict("linear_ppo_loss", "H100-SXM", "unfused")
    lp = model.predict("linear_logprobs", "H100-SXM", "unfused")
    assert ppo["gemm_flops"] == pytest.approx(6 * N * H * V, rel=0.02)  # chunks round N up
    assert lp["gemm_flops"] == pytest.approx(8 * N * H * V, rel=0.02)
    # The fp32 accumulator alone passes 2 GB; the bf16 scheme's workspace stays under it.
    assert ppo["memory"]["grad_weight fp32 accumulator"] == 4 * V * H > 2e9
    scheme = model.predict("linear_ppo_loss", "H100-SXM", "bf16-acc")
    assert scheme["workspace_gb"] < 2 < ppo["workspace_gb"]
    assert scheme["chunks"] <= 10  # within LMHead.MAX_LOW_PRECISION_STEPS
    # More bandwidth never predicts a slower call.
    for op in model.OPS:
        for design in model.OP_DESIGNS[op]:
            assert (model.predict(op, "H200-SXM", design)["attainable_ms"]
                    <= model.predict(op, "H100-SXM", design)["attainable_ms"])
    assert model.device_key("NVIDIA H200") == "H200-SXM" and model.device_key("cpu") is None


def test_model_annotates_measurements(tmp_path):
    rows = [{"case": "grpo-token", "impl": "ia_kernels", "N": 16384, "valid_tokens": 16384, "H": 4096,
             "V": 151936, "median_ms": 100.0}, {"case": "grpo-token", "impl": "eager", "N": 16384, "H": 4096,
                                                "V": 151936, "median_ms": 300.0}]
    path = tmp_path / "ppo.json"
    path.write_text(json.dumps({"suite": "ppo", "env": {"device": "NVIDIA H100 80GB HBM3"}, "rows": rows}))
    out = model.annotate([str(path)])
    assert out[0]["predicted_ms"] == pytest.approx(model.predict("linear_ppo_loss", "H100-SXM")["attainable_ms"])
    assert "predicted_ms" not in out[1]


def test_model_suite_runs(tmp_path, capsys):
    assert model.main(["--json", str(tmp_path / "m.json")]) == 0
    assert "linear_ppo_loss" in capsys.readouterr().out
    assert torch.tensor(0).item() == 0
