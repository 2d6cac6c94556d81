"""The study's table (study.md) and figures (objectives.png, length.png)."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def table(rows: list[dict]) -> str:
    lines = []
    obj = [r for r in rows if r["grid"] == "objectives"]
    if obj:
        ks = curve_ks_of(obj[0]["after"])
        lines += ["Objectives: change after training (mean over seeds [95% interval])", "",
                  "| objective | " + " | ".join(f"pass@{j}" for j in ks) + " | " + " | ".join(f"maj@{j}" for j in ks) + " |",
                  "|---|" + "---|" * (2 * len(ks))]
        for r in obj:
            cells = [_cell(r["change"], f"{m}@{j}") for m in ("pass", "maj") for j in ks]
            lines.append(f"| {r['label']} | " + " | ".join(cells) + " |")
        lines.append("")
    length = [r for r in rows if r["grid"] == "length"]
    if length:
        lines += ["Length penalty: after training (mean over seeds [95% interval])", "",
                  "| alpha | pass@1 | mean tokens | change in pass@1 | change in mean tokens |", "|---|---|---|---|---|"]
        for r in length:
            lines.append(f"| {r['alpha']:g} | {_cell(r['after'], 'pass@1')} | {_cell(r['after'], 'mean_tokens', 1)} | "
                         f"{_cell(r['change'], 'pass@1')} | {_cell(r['change'], 'mean_tokens', 1)} |")
        base = length[0]["before"]
        lines += ["", f"Base model (mean over the same seeds' held-out problems): pass@1 {_cell(base, 'pass@1')}, "
                      f"mean tokens {_cell(base, 'mean_tokens', 1)}"]
    return "\n".join(lines) + "\n"


def curve_ks_of(part: dict) -> list[int]:
    """The j of the pass@j entries of an aggregated before / after / change."""
    return sorted(int(name.split("@")[1]) for name in part if name.startswith("pass@") and not name.endswith("_ci"))


def _cell(part: dict, name: str, digits: int = 3) -> str:
    lo, hi = part[name + "_ci"]
    return f"{part[name]:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}]"


def _errors(part: dict, name: str) -> tuple[float, float]:
    return part[name] - part[name + "_ci"][0], part[name + "_ci"][1] - part[name]


def plot_objectives(rows: list[dict], path: Path) -> Path | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    obj = [r for r in rows if r["grid"] == "objectives"]
    if not obj:
        return None
    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    for i, r in enumerate(obj):
        ks = curve_ks_of(r["after"])
        shift = (i - (len(obj) - 1) / 2) * 0.03  # keep error bars apart on the log axis
        xs = [k * 2 ** shift for k in ks]
        for ax, when, metric in ((axes[0], "after", "pass"), (axes[1], "change", "pass"), (axes[2], "change", "maj")):
            names = [f"{metric}@{k}" for k in ks]
            err = np.array([_errors(r[when], n) for n in names]).T
            ax.errorbar(xs, [r[when][n] for n in names], yerr=err, marker="o", capsize=3, label=r["label"], color=f"C{i}")
    base = obj[0]["before"]
    ks = curve_ks_of(base)
    axes[0].plot(ks, [base[f"pass@{k}"] for k in ks], "k--", lw=1, label="before training")
    titles = ("pass@k after training", "change in pass@k", "change in maj@k")
    for ax, title in zip(axes, titles):
        ax.set_xscale("log", base=2)
        ax.set_xticks(ks)
        ax.set_xticklabels([str(k) for k in ks])
        ax.set_xlabel("k")
        ax.set_title(title, fontsize=11)
        ax.grid(alpha=0.3)
    for ax in axes[1:]:
        ax.axhline(0, color="0.4", lw=1)
    axes[0].legend(fontsize=8)
    seeds = len(obj[0]["seeds"])
    fig.suptitle(f"Objectives on held-out problems (mean over {seeds} seed{'s' if seeds > 1 else ''}, 95% intervals)",
                 fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_length(rows: list[dict], path: Path) -> Path | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    length = [r for r in rows if r["grid"] == "length"]
    if not length:
        return None
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    base = length[0]["before"]
    ax.errorbar([base["mean_tokens"]], [base["pass@1"]], xerr=np.array([_errors(base, "mean_tokens")]).T,
                yerr=np.array([_errors(base, "pass@1")]).T, marker="s", color="k", capsize=3, ls="none",
                label="before training")
    for i, r in enumerate(length):
        a = r["after"]
        ax.errorbar([a["mean_tokens"]], [a["pass@1"]], xerr=np.array([_errors(a, "mean_tokens")]).T,
                    yerr=np.array([_errors(a, "pass@1")]).T, marker="o", capsize=3, ls="none", color=f"C{i}",
                    label=f"alpha = {r['alpha']:g}")
    ax.set_xlabel("mean response tokens (held-out problems)")
    ax.set_ylabel("pass@1 (held-out problems)")
    seeds = len(length[0]["seeds"])
    ax.set_title(f"Length penalty: accuracy vs tokens (mean over {seeds} seed{'s' if seeds > 1 else ''}, 95% intervals)",
                 fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
