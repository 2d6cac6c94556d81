"""The study's table (study.md) and figures (objectives.png, length.png), from the aggregates alone."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from .grid import BASELINES


def curve_ks_of(part: dict) -> list[int]:
    """The j of the pass@j entries of an aggregated before / after / change."""
    return sorted(int(name.split("@")[1]) for name in part if name.startswith("pass@") and not name.endswith("_ci"))


def _cell(part: dict, name: str, digits: int = 3, sign: bool = False) -> str:
    value = part.get(name)
    if value is None:
        return "—"
    fmt = f"{{:{'+' if sign else ''}.{digits}f}}"
    ci = part.get(name + "_ci")
    if ci is None:
        return fmt.format(value)
    return f"{fmt.format(value)} [{fmt.format(ci[0])}, {fmt.format(ci[1])}]"


def _grid_rows(agg: dict, grid: str) -> list[dict]:
    return [r for r in agg["settings"] if r["grid"] == grid]


def _paired(agg: dict, grid: str) -> list[dict]:
    return [r for r in agg["paired"] if r["grid"] == grid]


def _seeds_note(rows: list[dict]) -> str:
    seeds = sorted({len(r["seeds"]) for r in rows})
    kinds = sorted({r["interval"] for r in rows})
    return (f"{'/'.join(map(str, seeds))} seed(s) per setting; 95% intervals: {', '.join(kinds)}")


def _class_table(rows: list[tuple[str, dict]], columns: list[tuple[str, str, int]], key: str = "setting",
                 sign: bool = False) -> list[str]:
    """One line per (setting, class) of rows [(setting, {class: values})]: the columns' values (mean
    [interval])."""
    lines = [f"| {key} | class | " + " | ".join(h for h, _, _ in columns) + " |",
             "|---|---|" + "---|" * len(columns)]
    for label, classes in rows:
        for c, values in (classes or {}).items():
            cells = [_cell(values, name, digits, sign) for _, name, digits in columns]
            lines.append(f"| {label} | {c} | " + " | ".join(cells) + " |")
    return lines


def table(agg: dict) -> str:
    """study.md: the objectives' curves, their paired differences from rloo and per-class values; the
    length grid's accuracy and tokens, their differences from alpha = 0, and per class; the whitening
    ablation against its whitened twin."""
    lines: list[str] = []
    obj = _grid_rows(agg, "objectives")
    if obj:
        ks = curve_ks_of(obj[0]["after"])
        names = [f"pass@{j}" for j in ks] + [f"maj@{j}" for j in ks if j > 2]
        lines += [f"## Objectives ({_seeds_note(obj)})", "",
                  "After training, mean over seeds [95% interval]:", "",
                  "| objective | " + " | ".join(names) + " | mean tokens |", "|---|" + "---|" * (len(names) + 1)]
        base = obj[0]["before"]
        lines.append("| base model | " + " | ".join(_cell(base, n) for n in names) + f" | {_cell(base, 'mean_tokens', 1)} |")
        for r in obj:
            lines.append(f"| {r['label']} | " + " | ".join(_cell(r["after"], n) for n in names)
                         + f" | {_cell(r['after'], 'mean_tokens', 1)} |")
        paired = _paired(agg, "objectives")
        if paired:
            lines += ["", f"Paired difference from {paired[0]['baseline']} after training (same seeds, same held-out "
                          "problems; mean over seeds [95% t interval]):", "",
                      "| objective | " + " | ".join(names) + " | mean tokens |", "|---|" + "---|" * (len(names) + 1)]
            for r in paired:
                lines.append(f"| {r['label']} − {r['baseline']} | "
                             + " | ".join(_cell(r["after"], n, sign=True) for n in names)
                             + f" | {_cell(r['after'], 'mean_tokens', 1, sign=True)} |")
        if obj[0].get("per_class"):
            k = obj[0].get("k") or 4
            top = max(ks)
            columns = [("pass@1", "pass@1", 3), (f"pass@{k}", f"pass@{k}", 3), (f"pass@{top}", f"pass@{top}", 3),
                       (f"maj@{k}", f"maj@{k}", 3), ("mean tokens", "mean_tokens", 1)]
            rows = [("base model", obj[0]["per_class"]["before"])] + [(r["label"], r["per_class"]["after"]) for r in obj]
            lines += ["", "Per problem class, after training:", ""] + _class_table(rows, columns, "objective")
            if paired and paired[0].get("per_class"):
                lines += ["", f"Per class, paired difference from {paired[0]['baseline']} after training:", ""]
                lines += _class_table([(f"{r['label']} − {r['baseline']}", r["per_class"]) for r in paired], columns,
                                      "objective", sign=True)
        lines.append("")
    length = _grid_rows(agg, "length")
    if length:
        lines += [f"## Length penalty ({_seeds_note(length)})", "",
                  "After training, and the change from the base model, mean over seeds [95% interval]:", "",
                  "| alpha | pass@1 | mean tokens | change in pass@1 | change in mean tokens |", "|---|---|---|---|---|"]
        for r in length:
            lines.append(f"| {r['alpha']:g} | {_cell(r['after'], 'pass@1')} | {_cell(r['after'], 'mean_tokens', 1)} | "
                         f"{_cell(r['change'], 'pass@1', sign=True)} | {_cell(r['change'], 'mean_tokens', 1, sign=True)} |")
        base = length[0]["before"]
        lines += ["", f"Base model (the same seeds' held-out problems): pass@1 {_cell(base, 'pass@1')}, "
                      f"mean tokens {_cell(base, 'mean_tokens', 1)}"]
        paired = _paired(agg, "length")
        if paired:
            lines += ["", f"Paired difference from {paired[0]['baseline']} after training:", "",
                      "| alpha | pass@1 | mean tokens |", "|---|---|---|"]
            for r in paired:
                lines.append(f"| {r['label']} | {_cell(r['after'], 'pass@1', sign=True)} | "
                             f"{_cell(r['after'], 'mean_tokens', 1, sign=True)} |")
        if all(r.get("per_class") for r in length):
            classes = list(length[0]["per_class"]["after"])
            for name, title, digits in (("mean_tokens", "mean tokens", 1), ("pass@1", "pass@1", 3)):
                lines += ["", f"Per problem class, {title} after training (the staircase: each class turns short "
                              "at its own alpha):", "",
                          "| class | base model | " + " | ".join(f"alpha = {r['alpha']:g}" for r in length) + " |",
                          "|---|---|" + "---|" * len(length)]
                for c in classes:
                    lines.append(f"| {c} | {_cell(length[0]['per_class']['before'][c], name, digits)} | "
                                 + " | ".join(_cell(r["per_class"]["after"].get(c, {}), name, digits) for r in length)
                                 + " |")
        lines.append("")
    lines += _whitening_table(agg)
    return "\n".join(lines)


def _whitening_table(agg: dict) -> list[str]:
    """The ablation: the length grid's run at its alpha against the same run without the whitening,
    overall and per class, and their paired difference (same seeds, same held-out problems)."""
    base_grid, base_label = BASELINES["whitening"]
    whitened = next((x for x in _grid_rows(agg, base_grid) if x["label"] == base_label), None)
    paired = {r["label"]: r for r in _paired(agg, "whitening")}
    lines: list[str] = []
    for r in _grid_rows(agg, "whitening"):
        diff = paired.get(r["label"])
        if whitened is None or diff is None:  # its twin has not finished yet: nothing to compare with
            continue
        lines += [f"## Whitening ablation ({_seeds_note([r])})", "",
                  f"alpha = {r['alpha']:g} with OpenRLHF's whitening (the length grid's run) and without it, after "
                  "training, and the paired difference without − with (same seeds, same held-out problems; mean over "
                  "seeds [95% interval]):", "",
                  "| run | pass@1 | mean tokens | change in pass@1 | change in mean tokens |", "|---|---|---|---|---|"]
        for name, row in (("whitened", whitened), ("unwhitened", r)):
            lines.append(f"| {name} | {_cell(row['after'], 'pass@1')} | {_cell(row['after'], 'mean_tokens', 1)} | "
                         f"{_cell(row['change'], 'pass@1', sign=True)} | "
                         f"{_cell(row['change'], 'mean_tokens', 1, sign=True)} |")
        lines.append(f"| unwhitened − whitened | {_cell(diff['after'], 'pass@1', sign=True)} | "
                     f"{_cell(diff['after'], 'mean_tokens', 1, sign=True)} | | |")
        if r.get("per_class") and whitened.get("per_class") and diff.get("per_class"):
            lines += ["", "Per problem class, after training:", "",
                      "| class | tokens whitened | tokens unwhitened | difference | pass@1 whitened | pass@1 unwhitened "
                      "| difference |", "|---|---|---|---|---|---|---|"]
            for c, values in r["per_class"]["after"].items():
                w, d = whitened["per_class"]["after"].get(c, {}), diff["per_class"].get(c, {})
                lines.append(f"| {c} | {_cell(w, 'mean_tokens', 1)} | {_cell(values, 'mean_tokens', 1)} | "
                             f"{_cell(d, 'mean_tokens', 1, sign=True)} | {_cell(w, 'pass@1')} | "
                             f"{_cell(values, 'pass@1')} | {_cell(d, 'pass@1', sign=True)} |")
        lines.append("")
    return lines


def _errors(part: dict, name: str) -> tuple[float, float]:
    ci = part.get(name + "_ci")
    if ci is None or any(v is None or (isinstance(v, float) and math.isnan(v)) for v in ci):
        return 0.0, 0.0
    return part[name] - ci[0], ci[1] - part[name]


def _log2_axis(ax, ks) -> None:
    ax.set_xscale("log", base=2)
    ax.set_xticks(ks)
    ax.set_xticklabels([str(k) for k in ks])
    ax.set_xlabel("k")
    ax.grid(alpha=0.3)


def plot_objectives(agg: dict, path: Path) -> Path | None:
    """pass@j after training per objective; the paired differences from rloo at pass@j and maj@j;
    pass@k per problem class."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    obj = _grid_rows(agg, "objectives")
    if not obj:
        return None
    paired = _paired(agg, "objectives")
    fig, axes = plt.subplots(2, 2, figsize=(12, 8.5))
    ax_curve, ax_pass, ax_maj, ax_class = axes.flat
    colours = {r["label"]: f"C{i}" for i, r in enumerate(obj)}
    for i, r in enumerate(obj):
        ks = curve_ks_of(r["after"])
        shift = (i - (len(obj) - 1) / 2) * 0.03  # keep error bars apart on the log axis
        names = [f"pass@{k}" for k in ks]
        ax_curve.errorbar([k * 2 ** shift for k in ks], [r["after"][n] for n in names],
                          yerr=np.array([_errors(r["after"], n) for n in names]).T, marker="o", capsize=3,
                          label=r["label"], color=colours[r["label"]])
    base = obj[0]["before"]
    ks = curve_ks_of(base)
    ax_curve.plot(ks, [base[f"pass@{k}"] for k in ks], "k--", lw=1, label="base model")
    ax_curve.set_title("pass@k after training", fontsize=11)
    _log2_axis(ax_curve, ks)
    ax_curve.legend(fontsize=8)
    for ax, metric in ((ax_pass, "pass"), (ax_maj, "maj")):
        for i, r in enumerate(paired):
            pks = [k for k in curve_ks_of(r["after"]) if metric == "pass" or k > 2]
            shift = (i - (len(paired) - 1) / 2) * 0.03
            names = [f"{metric}@{k}" for k in pks]
            ax.errorbar([k * 2 ** shift for k in pks], [r["after"][n] for n in names],
                        yerr=np.array([_errors(r["after"], n) for n in names]).T, marker="o", capsize=3,
                        label=f"{r['label']} − {r['baseline']}", color=colours.get(r["label"]))
        ax.axhline(0, color="0.4", lw=1)
        ax.set_title(f"{metric}@k: paired difference from {paired[0]['baseline'] if paired else 'rloo'} "
                     "(same seeds and problems)", fontsize=10)
        _log2_axis(ax, [k for k in ks if metric == "pass" or k > 2])  # maj@1, maj@2 are pass@1
        if paired:
            ax.legend(fontsize=8)
    k = obj[0].get("k") or 4
    if obj[0].get("per_class"):
        classes = list(obj[0]["per_class"]["after"])
        width = 0.8 / (len(obj) + 1)
        x = np.arange(len(classes))
        rows = [("base model", obj[0]["per_class"]["before"], "0.6")] + \
            [(r["label"], r["per_class"]["after"], colours[r["label"]]) for r in obj]
        for i, (label, values, colour) in enumerate(rows):
            ys = [values[c][f"pass@{k}"] for c in classes]
            err = np.array([_errors(values[c], f"pass@{k}") for c in classes]).T
            ax_class.bar(x + (i - len(rows) / 2 + 0.5) * width, ys, width, yerr=err, capsize=2, label=label,
                         color=colour)
        ax_class.set_xticks(x)
        ax_class.set_xticklabels(classes)
        ax_class.set_ylim(0, 1.05)
        ax_class.set_title(f"pass@{k} per problem class after training", fontsize=11)
        ax_class.grid(alpha=0.3, axis="y")
        ax_class.legend(fontsize=7, ncol=3, loc="lower center")
    else:
        ax_class.axis("off")
    return _save(fig, obj, "Objectives on held-out problems", path)


def plot_length(agg: dict, path: Path) -> Path | None:
    """pass@1 against mean tokens per alpha (and the base model); per problem class, mean tokens and
    pass@1 against alpha: each class switches to the short style at its own alpha. The whitening
    ablation's runs, where there are any, are hollow diamonds beside their alpha."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    length = _grid_rows(agg, "length")
    if not length:
        return None
    per_class = all(r.get("per_class") for r in length)
    fig, axes = plt.subplots(1, 3 if per_class else 1, figsize=(16 if per_class else 6.5, 4.6), squeeze=False)
    ax = axes[0, 0]
    base = length[0]["before"]
    ax.errorbar([base["mean_tokens"]], [base["pass@1"]], xerr=np.array([_errors(base, "mean_tokens")]).T,
                yerr=np.array([_errors(base, "pass@1")]).T, marker="s", color="k", capsize=3, ls="none",
                label="base model")
    for i, r in enumerate(length):
        a = r["after"]
        ax.errorbar([a["mean_tokens"]], [a["pass@1"]], xerr=np.array([_errors(a, "mean_tokens")]).T,
                    yerr=np.array([_errors(a, "pass@1")]).T, marker="o", capsize=3, ls="none", color=f"C{i}",
                    label=f"alpha = {r['alpha']:g}")
    alphas = [r["alpha"] for r in length]
    ablation = [r for r in _grid_rows(agg, "whitening") if r["alpha"] in alphas]
    for r in ablation:  # hollow: the same alpha without the whitening
        a = r["after"]
        ax.errorbar([a["mean_tokens"]], [a["pass@1"]], xerr=np.array([_errors(a, "mean_tokens")]).T,
                    yerr=np.array([_errors(a, "pass@1")]).T, marker="D", mfc="none", capsize=3, ls="none",
                    color=f"C{alphas.index(r['alpha'])}", label=f"alpha = {r['alpha']:g}, unwhitened")
    ax.set_xlabel("mean response tokens (held-out problems)")
    ax.set_ylabel("pass@1 (held-out problems)")
    ax.set_title("accuracy vs tokens", fontsize=11)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    if per_class:
        classes = list(length[0]["per_class"]["after"])
        xs = np.arange(len(alphas))
        for j, (ax, name, title) in enumerate(((axes[0, 1], "mean_tokens", "mean tokens per class"),
                                               (axes[0, 2], "pass@1", "pass@1 per class"))):
            for i, c in enumerate(classes):
                values = [r["per_class"]["after"][c] for r in length]
                ax.errorbar(xs + (i - len(classes) / 2) * 0.04, [v[name] for v in values],
                            yerr=np.array([_errors(v, name) for v in values]).T, marker="o", capsize=3, label=c,
                            color=f"C{i}")
                ax.axhline(length[0]["per_class"]["before"][c][name], color=f"C{i}", lw=0.8, ls=":")
                for r in ablation:
                    v = r.get("per_class", {}).get("after", {}).get(c)
                    if v:
                        ax.errorbar([alphas.index(r["alpha"]) + (i - len(classes) / 2) * 0.04 + 0.2], [v[name]],
                                    yerr=np.array([_errors(v, name)]).T, marker="D", mfc="none", capsize=3,
                                    ls="none", color=f"C{i}")
            ax.set_xticks(xs)
            ax.set_xticklabels([f"{a:g}" for a in alphas])
            ax.set_xlabel("alpha (dotted: base model" + ("; hollow diamonds: unwhitened" if ablation else "") + ")")
            ax.set_title(title + " after training", fontsize=11)
            ax.grid(alpha=0.3)
            if j == 0:
                ax.legend(fontsize=8)
    return _save(fig, length, "Length penalty", path)


def _save(fig, rows: list[dict], title: str, path: Path) -> Path:
    """The figure's title (how many seeds, which intervals), written to path and closed."""
    import matplotlib.pyplot as plt

    seeds = len(rows[0]["seeds"])
    fig.suptitle(f"{title} (mean over {seeds} seed{'s' if seeds > 1 else ''}; 95% intervals: "
                 f"{rows[0]['interval']})", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
