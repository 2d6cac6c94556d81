"""The evaluation's tables, as text: a training run's before / after / change, and `ia-train eval`'s
pass@k / maj@k for a list of k."""

from __future__ import annotations

from .metrics import METRICS


def summary_table(summary: dict) -> str:
    """The before / after / change table of a training run's summary."""
    k = summary["k"]
    lines = [f"held-out problems: {summary['before']['problems']}, n = {summary['n']} samples each, k = {k}; "
             f"95% bootstrap intervals over problems (paired for the change)",
             f"{'metric':<12} {'before':>22} {'after':>22} {'change':>26}"]
    for name in METRICS:
        fmt = "{:+.1f}" if name == "mean_tokens" else "{:+.3f}"
        cell = lambda s: (f"{fmt.format(s[name])} [{fmt.format(s[name + '_ci'][0])}, "  # noqa: E731
                          f"{fmt.format(s[name + '_ci'][1])}]").replace("+", "")
        delta = summary["change"]
        d = f"{fmt.format(delta[name])} [{fmt.format(delta[name + '_ci'][0])}, {fmt.format(delta[name + '_ci'][1])}]"
        label = name.replace("@k", f"@{k}")
        lines.append(f"{label:<12} {cell(summary['before']):>22} {cell(summary['after']):>22} {d:>26}")
    return "\n".join(lines)


def class_table(summary: dict) -> str:
    """Per problem class (when the task has classes): pass@1, pass@k, maj@k and mean tokens, before
    -> after (change); empty when the evaluation has no classes."""
    k = summary["k"]
    before, after, delta = (summary[w].get("per_class") or {} for w in ("before", "after", "change"))
    if not after:
        return ""
    columns = (("pass@1", "{:.3f}"), ("pass@k", "{:.3f}"), ("maj@k", "{:.3f}"), ("mean_tokens", "{:.1f}"))
    lines = [f"per class (held-out problems): pass@1, pass@{k}, maj@{k}, mean tokens; before -> after (change)"]
    for c, a in after.items():
        cells = []
        for key, fmt in columns:
            cell = fmt.format(a[key])
            if c in before:
                cell = fmt.format(before[c][key]) + " -> " + cell
            if c in delta:
                cell += " (" + ("+" if delta[c][key] >= 0 else "") + fmt.format(delta[c][key]) + ")"
            cells.append(cell)
        lines.append(f"{c:<8} ({a['problems']:>3})  " + "   ".join(cells))
    return "\n".join(lines)


def eval_table(results: dict, ks: list[int], n: int, problems: int) -> str:
    """`ia-train eval`'s table: pass@k and maj@k for every k, and the mean response tokens."""
    lines = [f"{problems} held-out problems, n = {n} samples each; 95% bootstrap intervals over problems",
             f"{'metric':<12} {'value':>8}  interval"]
    for name in [f"pass@{k}" for k in ks] + [f"maj@{k}" for k in ks] + ["mean_tokens"]:
        lo, hi = results[name + "_ci"]
        fmt = "{:.1f}" if name == "mean_tokens" else "{:.3f}"
        lines.append(f"{name:<12} {fmt.format(results[name]):>8}  [{fmt.format(lo)}, {fmt.format(hi)}]")
    if results.get("per_class"):
        names = [f"pass@{k}" for k in ks] + [f"maj@{k}" for k in ks]
        lines += ["per class (problems): " + ", ".join(names) + ", mean_tokens"]
        for c, v in results["per_class"].items():
            lines.append(f"{c:<8} ({v['problems']:>3})  " + "  ".join(f"{v[n]:.3f}" for n in names)
                         + f"  {v['mean_tokens']:.1f}")
    return "\n".join(lines)
