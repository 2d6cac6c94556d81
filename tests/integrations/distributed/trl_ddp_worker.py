"""One rank of the DDP checks (tests/integrations/test_trl_ddp.py runs it with torchrun, 2 CPU processes).

TRL's GRPOTrainer and IAGRPOTrainer, each from the same weights and seed, with DDP over the ranks
(accelerate's multi-CPU, gloo). Six prompts x 4 completions per generation batch, 12 per rank: one
prompt's group is split across the ranks. Written to OUT/rank<r>.json per case: the logged metrics of
both trainers, the largest weight change, the largest difference between the trainers' weights, and
a checksum of the IA weights (every rank must hold the same).
"""

import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from trl import GRPOConfig, GRPOTrainer  # noqa: E402

from ia_kernels.integrations.trl import IAGRPOConfig, IAGRPOTrainer  # noqa: E402
from trl_helpers import dyadic_reward, max_weight_diff, run, tiny_model_and_tokenizer  # noqa: E402

OUT = sys.argv[1]
RANK = int(os.environ["RANK"])

CASES = {
    "on-policy, KL": dict(beta=0.04),
    "num_iterations 2, steps_per_generation 2": dict(num_iterations=2, steps_per_generation=2, max_steps=4,
                                                     per_device_train_batch_size=6, learning_rate=0.3),
}


def main():
    model, tokenizer = tiny_model_and_tokenizer()
    results = {}
    for case, overrides in CASES.items():
        # chat prompts: the tiny model answers and stops with EOS, so the ranks hold different token counts
        overrides = {"per_device_train_batch_size": 12, "max_completion_length": 32, "temperature": 1.0, **overrides}
        common = dict(n_prompts=6, chat=True, reward_funcs=(dyadic_reward,), **overrides)
        ref, ref_trainer, _ = run(GRPOTrainer, GRPOConfig, model, tokenizer, f"{OUT}/trl", **common)
        got, trainer, caught = run(IAGRPOTrainer, IAGRPOConfig, model, tokenizer, f"{OUT}/ia", **common)
        assert trainer.accelerator.num_processes == 2
        results[case] = {
            "trl": [h for h in ref_trainer.state.log_history if "loss" in h],
            "ia": [h for h in trainer.state.log_history if "loss" in h],
            "moved": max_weight_diff(ref, model), "diff": max_weight_diff(ref, got),
            "checksum": sum(float(p.detach().double().sum()) for p in got.parameters()),
            "warnings": [w for w in caught if w.startswith("ia_kernels")],
        }
    with open(os.path.join(OUT, f"rank{RANK}.json"), "w") as f:
        json.dump(results, f)


main()
