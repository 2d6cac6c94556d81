"""The evaluation on held-out problems: pass@j / maj@j and mean tokens with intervals (metrics.py),
sampling and scoring the problems (sampling.py), its tables (report.py), and `ia-train eval`
(cli.py)."""
