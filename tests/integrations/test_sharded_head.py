"""IAGRPOTrainer's fused loss with a sharded LM head.

FSDP2 (fully_shard on CPU with gloo, two processes; tests/integrations/distributed/fsdp_head_worker.py):
with the head in the root unit and with the head wrapped as its own unit (what size-based wrapping
does with a large vocabulary), the gradients FSDP2 leaves on every parameter must equal the mean over
ranks of the unsharded model's gradients. The fused loss runs as the head module's forward inside the
model's forward, so FSDP2's hooks unshard the head and reduce-scatter its gradient; TRL 1.16's own
fused head reads lm_head.weight outside the head's forward and does not average the head's gradient
when the head is its own unit (recorded here to show the check sees that error).

DeepSpeed ZeRO-3: where deepspeed imports (it is not a test dependency: `pip install
--no-build-isolation deepspeed` builds it on a CPU machine), the same check under ZeRO-3 on gloo
(distributed/zero3_head_worker.py). Always: ZeRO-3's contract, emulated on the head module in one
process. Outside the module's forward the parameter is an empty partition; a pre-forward hook gathers
it, a forward hook releases it and arms a gather before the outputs' backward, as ZeRO-3's module
hooks do. A trainer step must equal the step on the plain model.
"""

import copy
import json
import os
import subprocess
import sys

import pytest
import torch

pytest.importorskip("trl")
pytest.importorskip("datasets")

from ia_kernels.integrations.trl import IAGRPOConfig, IAGRPOTrainer, _install_loss_forward  # noqa: E402

from .trl_helpers import max_weight_diff, run, tiny_model_and_tokenizer  # noqa: E402

WORKERS = os.path.join(os.path.dirname(__file__), "distributed")


def _torchrun(worker, out):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
           os.path.join(WORKERS, worker), str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    return [json.loads((out / f"rank{r}.json").read_text()) for r in range(2)]


@pytest.fixture(scope="module")
def fsdp_results(tmp_path_factory):
    return _torchrun("fsdp_head_worker.py", tmp_path_factory.mktemp("fsdp"))


@pytest.mark.parametrize("wrapping", ["lm_head in root unit", "lm_head own unit"])
def test_fsdp2_gradients_equal_the_unsharded_mean(fsdp_results, wrapping):
    for rank, results in enumerate(fsdp_results):
        r = results[f"ia_kernels, {wrapping}"]
        print(f"rank {rank}, {wrapping}: head gradient max error {r['head_error']:.3g} (largest {r['head_scale']:.3g}),"
              f" all parameters {r['all_error']:.3g} (largest {r['all_scale']:.3g})")
        assert r["head_scale"] > 0.1
        assert r["head_error"] <= 1e-6 * r["head_scale"] and r["all_error"] <= 1e-6 * r["all_scale"], r


def test_fsdp2_check_sees_trl_fused_head_error(fsdp_results):
    """TRL 1.16's fused LM head under the same check: right in the root unit, its head gradient not
    averaged when the head is its own unit (the error the check above guards against)."""
    for results in fsdp_results:
        assert results["trl, lm_head in root unit"]["head_error"] <= 1e-5
        r = results["trl, lm_head own unit"]
        print(f"TRL 1.16, lm_head own unit: head gradient max error {r['head_error']:.3g} (largest {r['head_scale']:.3g})")
        assert r["head_error"] > 0.1 * r["head_scale"]


def test_deepspeed_zero3_gradients_equal_the_unsharded_mean(tmp_path):
    pytest.importorskip("deepspeed", reason="deepspeed is not a test dependency")
    for rank, results in enumerate(_torchrun("zero3_head_worker.py", tmp_path)):
        for path in ("ia_kernels", "trl"):
            r = results[path]
            print(f"ZeRO-3, rank {rank}, {path}: head gradient max error {r['head_error']:.3g} (largest "
                  f"{r['head_scale']:.3g}), all parameters {r['all_error']:.3g} (largest {r['all_scale']:.3g})")
            assert r["head_scale"] > 0.1
            assert r["head_error"] <= 1e-6 * r["head_scale"] and r["all_error"] <= 2e-6 * r["all_scale"], (path, r)


class _Regather(torch.autograd.Function):
    """Identity whose backward first gathers the partitioned parameters (ZeRO-3's pre-backward hook)."""

    @staticmethod
    def forward(ctx, x, partition):
        ctx.partition = partition
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        ctx.partition.gather()
        return grad, None


class Zero3Partition:
    """ZeRO-3's parameter lifecycle on one module: empty outside its forward (and its backward)."""

    def __init__(self, module):
        self.params = list(module.parameters(recurse=False))
        self.full = [p.data for p in self.params]
        self.gathers = 0
        self.release()
        module.register_forward_pre_hook(lambda *a: self.gather())
        module.register_forward_hook(self.after_forward)

    def gather(self):
        self.gathers += 1
        for p, full in zip(self.params, self.full):
            p.data = full

    def release(self):
        for i, p in enumerate(self.params):
            if p.data.numel():
                self.full[i] = p.data
            p.data = torch.empty(0, dtype=p.dtype)

    def after_forward(self, module, args, output):
        self.release()

        def arm(x):
            return _Regather.apply(x, self) if isinstance(x, torch.Tensor) and x.requires_grad else x

        return tuple(arm(x) for x in output) if isinstance(output, tuple) else arm(output)


def test_zero3_partitioned_head_step_equals_plain_step(tmp_path):
    model, tokenizer = tiny_model_and_tokenizer()
    partitions = []

    def partition_head(m):
        partitions.append(Zero3Partition(m.lm_head))

    plain, _, _ = run(IAGRPOTrainer, IAGRPOConfig, model, tokenizer, tmp_path / "plain")
    sharded, _, caught = run(IAGRPOTrainer, IAGRPOConfig, model, tokenizer, tmp_path / "zero3", setup=partition_head)
    assert not [w for w in caught if w.startswith("ia_kernels")], caught
    (partition,) = partitions
    partition.gather()  # the step's result, whole
    assert partition.gathers > 2  # generation and the loss went through the head's hooks
    moved = max_weight_diff(plain, model)
    assert moved > 1e-3 and max_weight_diff(plain, sharded) == 0.0


def test_loss_forward_follows_a_deep_copy():
    """A deep copy of a patched model (TRL's reference model, a user's snapshot) runs its own weights."""
    model, _ = tiny_model_and_tokenizer()
    _install_loss_forward(model)
    clone = copy.deepcopy(model)
    with torch.no_grad():
        for p in clone.parameters():
            p.mul_(0.5)
    ids = torch.randint(3, 99, (2, 6), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want = clone.model(input_ids=ids).last_hidden_state
        got = clone(input_ids=ids, ia_kernels_loss=lambda h: h)
        logits = clone(input_ids=ids).logits
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    torch.testing.assert_close(logits, clone.lm_head(want), rtol=1e-6, atol=1e-6)


def test_call_as_forward_restores_the_module_forward():
    from ia_kernels.integrations.trl import _call_as_forward

    head = torch.nn.Linear(4, 3)
    seen = []
    out = _call_as_forward(head, torch.ones(2, 4), lambda h, w, b: seen.append((h, w, b)) or "done")
    assert out == "done" and seen[0][1] is head.weight and seen[0][2] is head.bias
    assert "forward" not in head.__dict__  # the class forward again
    own = lambda x: x * 2  # noqa: E731 - an instance forward, as TRL's cast_lm_head_to_fp32 sets
    head.forward = own
    _call_as_forward(head, torch.ones(2, 4), lambda h, w, b: None)
    assert head.__dict__["forward"] is own
    with pytest.raises(RuntimeError, match="boom"):
        _call_as_forward(head, torch.ones(2, 4), lambda h, w, b: (_ for _ in ()).throw(RuntimeError("boom")))
    assert head.__dict__["forward"] is own  # restored on error too
