"""`ia-train study`: the two papers' headline trade-offs, reproduced on the bundled model.

    ia-train study --quick          # about 10 minutes on a 2-core CPU
    ia-train study                  # the full grid (results/study/ holds its output)

Two grids of ordinary `ia-train` runs, each in its own process and directory (`<out>/runs/<name>/`):

- objectives (Tang et al. 2025; PKPO): the mean reward (rloo), grpo, pass@k (passk, k = 4, n = 8)
  and majority vote (majority, k = n = 4, with 32 prompts per step so that every objective trains on
  the same 128 samples per step). Evaluated before and after at pass@j and maj@j, j = 1, 2, 4, 8
  (16 in the full study): the mean objective should gain most at j = 1, the pass@k objective at
  large j.
- length (Arora & Zanette 2025): rloo on length-penalised rewards, alpha in {0, 0.05, 0.1, 0.2, 0.4},
  with their recipe (each response's token mean, then the mean over responses; the k1 KL penalty
  against the initial model in the reward, beta = 0.001): accuracy against mean response tokens,
  one point per alpha.

Each setting runs for several seeds (the seed changes the training problems, the sampling and the
held-out problems). study.json lists every run (objective, k, n, alpha, seed, its before / after /
change summaries) and, per setting, the mean over seeds with a 95% interval from a two-level
bootstrap (seeds resampled, then held-out problems within each seed), so the interval covers both
training noise and evaluation noise. objectives.png and length.png plot them; study.md tabulates.

A run whose summary.json exists with the same settings is kept, so an interrupted study continues
where it stopped (`ia-train study` again with the same --out). A run that fails is reported with
its log and the study ends with status 1 after the others finish: no figure hides a missing run.
"""

from .aggregate import aggregate, run_record, two_level_interval
from .grid import ALPHAS, LENGTH_RECIPE, MODES, OBJECTIVES, RunSpec, flags, grid
from .report import curve_ks_of, plot_length, plot_objectives, table
from .runner import finished_summary, run_grid, run_one

__all__ = ["ALPHAS", "LENGTH_RECIPE", "MODES", "OBJECTIVES", "RunSpec", "aggregate", "curve_ks_of", "finished_summary",
           "flags", "grid", "plot_length", "plot_objectives", "run_grid", "run_one", "run_record", "table",
           "two_level_interval"]
