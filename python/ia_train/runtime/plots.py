"""PNG plots of a run, from its metrics.jsonl and summary.json (matplotlib, Agg backend)."""

from __future__ import annotations

from pathlib import Path

PANELS = [
    ("reward", "mean reward (training samples)"),
    ("accuracy", "fraction correct (training samples)"),
    ("mean_tokens", "mean response tokens"),
    ("loss", "PPO loss"),
    ("approx_kl", "approx. KL(old || new)"),
    ("clip_frac_low", "clipped fraction (ratio below 1 - clip)"),
    ("clip_frac_high", "clipped fraction (ratio above 1 + clip)"),
    ("entropy_mean", "mean token entropy"),
    ("grad_norm", "gradient norm (before clipping)"),
    ("lr", "learning rate"),
]


def _smooth(values: list[float], width: int) -> list[float]:
    out, acc = [], []
    for v in values:
        acc.append(v)
        acc = acc[-width:]
        out.append(sum(acc) / len(acc))
    return out


def training_curves(rows: list[dict], path: Path, title: str = "") -> Path | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [(key, label) for key, label in PANELS if any(key in r for r in rows)]
    if not panels:
        return None
    cols = 2
    nrows = (len(panels) + cols - 1) // cols
    fig, axes = plt.subplots(nrows, cols, figsize=(10, 2.6 * nrows), squeeze=False)
    for ax, (key, label) in zip(axes.flat, panels):
        pts = [(r["step"], r[key]) for r in rows if key in r]
        xs, ys = [p[0] for p in pts], [p[1] for p in pts]
        ax.plot(xs, ys, color="0.75", lw=1)
        ax.plot(xs, _smooth(ys, max(1, len(ys) // 15)), color="C0", lw=2)
        ax.set_title(label, fontsize=10)
        ax.set_xlabel("step", fontsize=8)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    if title:
        fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def before_after(summary: dict, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = ["pass@1", "pass@k", "maj@k"]
    fig, ax = plt.subplots(figsize=(6, 3.2))
    for j, when in enumerate(("before", "after")):
        means = [summary[when][m] for m in names]
        lo = [summary[when][m] - summary[when][m + "_ci"][0] for m in names]
        hi = [summary[when][m + "_ci"][1] - summary[when][m] for m in names]
        xs = [i + (j - 0.5) * 0.38 for i in range(len(names))]
        ax.bar(xs, means, width=0.36, yerr=[lo, hi], capsize=3, label=when)
    ax.set_xticks(range(len(names)))
    ax.set_xticklabels([m.replace("k", str(summary["k"])) for m in names])
    ax.set_ylim(0, 1)
    ax.set_ylabel("held-out problems")
    ax.legend()
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
