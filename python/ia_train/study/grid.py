"""The study's grid: which ia-train runs it makes (settings per objective and per alpha, per seed)."""

from __future__ import annotations

from dataclasses import dataclass

ALPHAS = (0.0, 0.05, 0.1, 0.2, 0.4)
# Arora & Zanette's recipe around the penalty (see configs/recipes/math500_length_alpha_*.yaml)
LENGTH_RECIPE = {"objective": "rloo", "aggregation": "seq-mean-token-mean", "kl_reward_coef": 0.001}
OBJECTIVES = (  # (label, settings): the same 128 samples per step for each
    ("rloo", {"objective": "rloo", "n": 8, "k": 4}),
    ("grpo", {"objective": "grpo", "n": 8, "k": 4}),
    ("passk (k=4)", {"objective": "passk", "n": 8, "k": 4}),
    ("majority (k=4)", {"objective": "majority", "n": 4, "k": 4, "prompts_per_step": 32}),
)
MODES = {  # what --quick and the full study run; the flags below override
    "quick": {"seeds": 1, "steps": 100, "eval_problems": 100, "eval_n": 8, "alphas": (0.0, 0.4)},
    "full": {"seeds": 3, "steps": 100, "eval_problems": 200, "eval_n": 16, "alphas": ALPHAS},
}


@dataclass(frozen=True)
class RunSpec:
    name: str  # directory name under <out>/runs
    grid: str  # "objectives" or "length"
    label: str  # the setting, as the plots and tables name it
    settings: tuple  # (flag name, value) pairs for ia-train

    @property
    def config(self) -> dict:
        return dict(self.settings)


def grid(mode: dict, seeds: list[int]) -> list[RunSpec]:
    common = {"steps": mode["steps"], "eval_problems": mode["eval_problems"], "eval_n": mode["eval_n"],
              "checkpoint_every": 0, "tensorboard": False}
    specs = []
    for seed in seeds:
        for alpha in mode["alphas"]:
            s = {**common, **LENGTH_RECIPE, "n": 8, "k": 4, "alpha": alpha, "seed": seed}
            specs.append(RunSpec(f"length-alpha{alpha:g}-seed{seed}", "length", f"alpha={alpha:g}",
                                 tuple(sorted(s.items()))))
        for label, settings in OBJECTIVES:
            s = {**common, **settings, "seed": seed}
            name = f"objective-{settings['objective']}-k{settings['k']}-n{settings['n']}-seed{seed}"
            specs.append(RunSpec(name, "objectives", label, tuple(sorted(s.items()))))
    return specs


def flags(settings: dict) -> list[str]:
    out = []
    for key, value in settings.items():
        out += ["--" + key.replace("_", "-"), str(value).lower() if isinstance(value, bool) else str(value)]
    return out
