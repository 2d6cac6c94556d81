"""`ia-train study`: both papers' effects, on the bundled model and task (chain_styles), over seeds.

    ia-train study --quick                   # one seed, short runs: under 15 minutes on a 2-core CPU
    ia-train study                           # the full grid (results/study/ holds its output)
    ia-train study --report-only --out DIR   # rebuild study.md and the figures from DIR/study.json

Two grids of ordinary `ia-train` runs, each in its own process and directory (`<out>/runs/<name>/`),
and an ablation:

- objectives (Tang et al. 2025; PKPO): the mean reward (rloo), grpo, pass@k (passk, k = 4, n = 8)
  and majority vote (majority, k = n = 4, with 32 prompts per step so that every objective trains on
  the same 128 samples per step), 5 seeds. Evaluated before and after at pass@j and maj@j, j = 1, 2,
  4, ... 32: the mean objective should gain most at j = 1; on the task's `pick` class (one style is
  right per problem, the prompt does not say which) it collapses onto one style, and pass@k training,
  which keeps both, should overtake it at large j.
- length (Arora & Zanette 2025): rloo on length-penalised rewards, alpha in {0, 0.05, 0.1, 0.2, 0.4},
  3 seeds, with their recipe (each response's token mean, then the mean over responses; the k1 KL
  penalty against the initial model in the reward, beta = 0.001; OpenRLHF's whitening of each step's
  advantages over the rollout batch): accuracy against mean response tokens, one point per alpha,
  and per problem class the staircase (each class of t2..t5 turns to the short style at its own alpha).
- whitening (the ablation; full study only, `--no-whitening-ablation` leaves it out): the length
  grid's alpha = 0.1 run without the whitening, for each of its seeds, paired with the whitened run
  of the same seed: how much of the length reduction is the whitening's rather than the reward's.

300 steps per run, 200 held-out problems of distinct prompts (40 per class) with 32 samples each.
The seed sets the training problems, the sampling and the held-out problems; runs of one seed share
their held-out problems. study.json lists every run (settings; before / after / change of every
pass@j, maj@j and mean tokens, overall and per class; times) and the aggregates: per setting the
mean over seeds with a 95% Student-t interval over the seed values, and per setting the paired
difference from its grid's baseline (rloo; alpha = 0; for the ablation the whitened run at the
same alpha) on the same seeds, also with a t interval over
seeds. objectives.png and length.png plot them; study.md tabulates. `--report-only` rebuilds all of
that from study.json's runs alone.

A run whose summary.json exists with the same settings is kept, and one stopped mid-way continues
from its last checkpoint (every 50 steps), so an interrupted study continues where it stopped
(`ia-train study` again with the same --out). A run that fails is reported with its log and the
study ends with status 1 after the others finish: no figure hides a missing run.
"""

from .aggregate import aggregate, paired_rows, run_record, setting_rows
from .grid import (ABLATION_ALPHA, ALPHAS, BASELINES, CHECKPOINT_EVERY, LENGTH_RECIPE, MODES, OBJECTIVES, RunSpec,
                   flags, grid)
from .report import curve_ks_of, plot_length, plot_objectives, table
from .runner import finished_summary, resumable, run_grid, run_one

__all__ = ["ABLATION_ALPHA", "ALPHAS", "BASELINES", "CHECKPOINT_EVERY", "LENGTH_RECIPE", "MODES", "OBJECTIVES",
           "RunSpec", "aggregate", "curve_ks_of", "finished_summary", "flags", "grid", "paired_rows", "plot_length",
           "plot_objectives", "resumable", "run_grid", "run_one", "run_record", "setting_rows", "table"]
