"""One rank of the DeepSpeed ZeRO-3 check (tests/integrations/test_sharded_head.py runs it with torchrun
when deepspeed imports). The bundled tiny model under ZeRO-3 on CPU (gloo): IAGRPOTrainer's fused loss
(fused_head_loss) and TRL 1.16's own fused LM head, each on this rank's sequences; the full gradients
(safe_get_full_grad) against the mean over ranks of the unsharded model's gradients. Written to
OUT/rank<r>.json."""

import copy
import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import deepspeed  # noqa: E402
from deepspeed.utils import safe_get_full_grad  # noqa: E402
from transformers import AutoModelForCausalLM  # noqa: E402
from transformers.integrations import HfDeepSpeedConfig  # noqa: E402
from trl.trainer.utils import add_fused_lm_head  # noqa: E402

from head_cases import B, compare, ia_loss, reference, reference_trl_loss, trl_loss  # noqa: E402
from ia_kernels.integrations.trl import _install_loss_forward  # noqa: E402
from ia_train.models import TINY_DIR  # noqa: E402

OUT = sys.argv[1]
deepspeed.init_distributed(dist_backend="gloo")
RANK, WORLD = torch.distributed.get_rank(), torch.distributed.get_world_size()
CONFIG = {"train_micro_batch_size_per_gpu": B, "gradient_accumulation_steps": 1,
          "zero_optimization": {"stage": 3, "stage3_param_persistence_threshold": 0},
          "optimizer": {"type": "SGD", "params": {"lr": 0.0}}, "zero_allow_untested_optimizer": True}


def load():
    return AutoModelForCausalLM.from_pretrained(str(TINY_DIR), local_files_only=True, dtype=torch.float32)


def main():
    results = {}
    base = load()

    def ia_model():
        model = copy.deepcopy(base)
        _install_loss_forward(model)
        return model

    want_ia = reference(ia_model, lambda m, r: ia_loss(m, m, r), WORLD)
    want_trl = reference(lambda: copy.deepcopy(base), reference_trl_loss, WORLD)
    for path in ("ia_kernels", "trl"):
        hf_ds = HfDeepSpeedConfig(CONFIG)  # noqa: F841 - keeps zero3 "enabled" for transformers and TRL
        with deepspeed.zero.Init(config_dict_or_path=CONFIG):
            model = load()
        if path == "ia_kernels":
            _install_loss_forward(model)
        else:
            add_fused_lm_head(model)
        engine, *_ = deepspeed.initialize(model=model, config=CONFIG, model_parameters=model.parameters())
        loss = ia_loss(engine, engine.module, RANK) if path == "ia_kernels" else trl_loss(engine, RANK)
        engine.backward(loss)
        have = {name: safe_get_full_grad(p) for name, p in engine.module.named_parameters()}
        results[path] = compare(want_ia if path == "ia_kernels" else want_trl, have)
        del hf_ds
    with open(os.path.join(OUT, f"rank{RANK}.json"), "w") as f:
        json.dump(results, f)


main()
