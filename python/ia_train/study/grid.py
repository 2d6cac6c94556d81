"""The study's grid: which ia-train runs it makes (settings per objective and per alpha, per seed)."""

from __future__ import annotations

from dataclasses import dataclass

ALPHAS = (0.0, 0.05, 0.1, 0.2, 0.4)
# Arora & Zanette's recipe around the penalty (see configs/recipes/math500_length_alpha_*.yaml): RLOO,
# each response's token mean, the k1 KL against the initial model in the reward (beta = 0.001), and
# OpenRLHF's whitening of each step's advantages over the whole rollout batch
LENGTH_RECIPE = {"objective": "rloo", "aggregation": "seq-mean-token-mean", "kl_reward_coef": 0.001,
                 "whiten_advantages": True}
OBJECTIVES = (  # (label, settings): the same 128 samples per step for each
    ("rloo", {"objective": "rloo", "n": 8, "k": 4}),
    ("grpo", {"objective": "grpo", "n": 8, "k": 4}),
    ("passk (k=4)", {"objective": "passk", "n": 8, "k": 4}),
    ("majority (k=4)", {"objective": "majority", "n": 4, "k": 4, "prompts_per_step": 32}),
)
# The whitening ablation: the length grid's run at this alpha without OpenRLHF's whitening, so that the
# report can say how much of the length grid's early switching is the whitening's and how much the
# reward's (at 0.1 the one-class formula keeps t4 and t5 explained; the whitened runs turn t4 brief).
ABLATION_ALPHA = 0.1
# the setting every paired comparison is taken against, per grid: (grid, label)
BASELINES = {"objectives": ("objectives", "rloo"), "length": ("length", "alpha=0"),
             "whitening": ("length", f"alpha={ABLATION_ALPHA:g}")}
# The study's runs sample with ia-train's own decode loop (--rollout builtin): on the bundled model it
# takes 2.4 s per step against generate's 4.2 s (one thread, 2-core CPU), which is what makes 35 runs
# of 300 steps an afternoon. `ia-train study --rollout hf` runs them with generate instead.
STUDY_ROLLOUT = "builtin"
MODES = {  # what --quick and the full study run; the flags below override
    "quick": {"objective_seeds": 1, "length_seeds": 1, "steps": 60, "eval_problems": 50, "eval_n": 8,
              "alphas": (0.0, 0.4), "whitening_ablation": False, "rollout": STUDY_ROLLOUT},
    "full": {"objective_seeds": 5, "length_seeds": 3, "steps": 300, "eval_problems": 200, "eval_n": 32,
             "alphas": ALPHAS, "whitening_ablation": True, "rollout": STUDY_ROLLOUT},
}
# a study's run keeps a checkpoint this often, so that a stopped study continues its runs mid-way
CHECKPOINT_EVERY = 50


@dataclass(frozen=True)
class RunSpec:
    name: str  # directory name under <out>/runs
    grid: str  # "objectives", "length" or "whitening" (the ablation)
    label: str  # the setting, as the plots and tables name it
    settings: tuple  # (flag name, value) pairs for ia-train

    @property
    def config(self) -> dict:
        return dict(self.settings)


def grid(mode: dict) -> list[RunSpec]:
    """Every run of the study: the length grid (mode["alphas"], mode["length_seeds"] seeds) and the
    objectives (mode["objective_seeds"] seeds), seed by seed, so that a study stopped early holds
    whole seeds; with mode["whitening_ablation"], each of the length grid's seeds also runs its
    ABLATION_ALPHA setting without the whitening, right after the length grid's runs of that seed.
    The seed sets the training problems, the sampling and the held-out problems: runs of one seed
    share their held-out problems (paired comparisons)."""
    common = {"steps": mode["steps"], "eval_problems": mode["eval_problems"], "eval_n": mode["eval_n"],
              "checkpoint_every": CHECKPOINT_EVERY, "tensorboard": False,
              **({"rollout": mode["rollout"]} if mode.get("rollout") else {})}
    if mode.get("whitening_ablation") and ABLATION_ALPHA not in mode["alphas"]:
        raise ValueError(f"the whitening ablation is paired with the length grid's alpha = {ABLATION_ALPHA:g}, "
                         f"which this grid lacks (alphas {tuple(mode['alphas'])})")

    def length_run(alpha: float, seed: int, **changed) -> tuple:
        """A length run's settings: the recipe at this alpha and seed, with `changed` on top."""
        return tuple(sorted({**common, **LENGTH_RECIPE, "n": 8, "k": 4, "alpha": alpha, "seed": seed,
                             **changed}.items()))

    specs = []
    for seed in range(max(mode["objective_seeds"], mode["length_seeds"])):
        if seed < mode["length_seeds"]:
            for alpha in mode["alphas"]:
                specs.append(RunSpec(f"length-alpha{alpha:g}-seed{seed}", "length", f"alpha={alpha:g}",
                                     length_run(alpha, seed)))
            if mode.get("whitening_ablation"):
                specs.append(RunSpec(f"length-alpha{ABLATION_ALPHA:g}-unwhitened-seed{seed}", "whitening",
                                     f"alpha={ABLATION_ALPHA:g} unwhitened",
                                     length_run(ABLATION_ALPHA, seed, whiten_advantages=False)))
        if seed < mode["objective_seeds"]:
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
