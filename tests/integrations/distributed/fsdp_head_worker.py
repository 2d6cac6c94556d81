"""One rank of the FSDP2 sharded-LM-head check (tests/integrations/test_sharded_head.py runs it with
torchrun, 2 CPU processes, gloo).

The bundled tiny model under FSDP2 (fully_shard), its LM head either in the root unit or wrapped as its
own unit (what size-based wrapping does with a large vocabulary). Each rank computes a loss on its own
sequences, backward, and FSDP2 averages the gradients over ranks. Every rank also computes the
reference (head_cases.reference). Written to OUT/rank<r>.json: for each wrapping and each path
("ia_kernels": IAGRPOTrainer's fused loss; "trl": TRL 1.16's own fused LM head, which reads
lm_head.weight outside the head's forward), the largest gradient difference to the reference (LM head
and all parameters) and the largest reference gradient.
"""

import copy
import json
import os
import sys

import torch
import torch.distributed as dist
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from transformers import AutoModelForCausalLM  # noqa: E402
from trl.trainer.utils import add_fused_lm_head  # noqa: E402

from head_cases import compare, grads, ia_loss, reference, reference_trl_loss, trl_loss  # noqa: E402
from ia_kernels.integrations.trl import _install_loss_forward  # noqa: E402
from ia_train.models import TINY_DIR  # noqa: E402

OUT = sys.argv[1]
dist.init_process_group("gloo")
RANK, WORLD = dist.get_rank(), dist.get_world_size()


def shard(model, head_unit: bool):
    mesh = init_device_mesh("cpu", (WORLD,))
    for layer in model.model.layers:
        fully_shard(layer, mesh=mesh)
    if head_unit:
        fully_shard(model.lm_head, mesh=mesh)
    fully_shard(model, mesh=mesh)
    return model


def main():
    base = AutoModelForCausalLM.from_pretrained(str(TINY_DIR), local_files_only=True, dtype=torch.float32)
    results = {}

    def ia_model():
        model = copy.deepcopy(base)
        _install_loss_forward(model)
        return model

    def trl_model():
        model = copy.deepcopy(base)
        add_fused_lm_head(model, temperature=1.0)
        return model

    want_ia = reference(ia_model, lambda m, r: ia_loss(m, m, r), WORLD)
    want_trl = reference(lambda: copy.deepcopy(base), reference_trl_loss, WORLD)
    for head_unit in (False, True):
        wrapping = "lm_head own unit" if head_unit else "lm_head in root unit"
        model = shard(ia_model(), head_unit)
        ia_loss(model, model, RANK).backward()
        results[f"ia_kernels, {wrapping}"] = compare(want_ia, grads(model))
        model = shard(trl_model(), head_unit)
        trl_loss(model, RANK).backward()
        results[f"trl, {wrapping}"] = compare(want_trl, grads(model))
    with open(os.path.join(OUT, f"rank{RANK}.json"), "w") as f:
        json.dump(results, f)
    dist.destroy_process_group()


main()
