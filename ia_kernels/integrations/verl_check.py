"""Is ia_kernels registered in this Python's verl, and if not, why?

    python -m ia_kernels.integrations.verl_check

verl loads the `verl.plugins` entry points on `import verl` and logs a plugin that fails to load at
DEBUG level only, so a broken install otherwise surfaces as "unknown advantage estimator ia_passk".
This command imports verl as a training run does, then prints what it found: one line "registered"
(exit status 0), or each reason it is not (exit status 1): verl missing, the entry point missing
from this environment's package metadata, VERL_USE_EXTERNAL_PLUGINS excluding it, or the exception
loading it raised.
"""

from __future__ import annotations

import os
import sys
import traceback

ENTRY_POINT = "ia_kernels"
TARGET = "ia_kernels.integrations.verl"
TESTED_VERL = "0.9.1"
# the estimators ia_kernels.integrations.verl registers (kept equal to its ESTIMATORS by the tests; not
# imported from it, since importing it may be what fails)
ESTIMATOR_NAMES = ("ia_passk", "ia_passk_chen", "ia_rloo_length_penalty", "ia_rloo", "ia_grpo", "ia_dr_grpo",
                   "ia_reinforce")


def diagnose() -> tuple[bool, list[str]]:
    """(registered, lines to print)."""
    from importlib.metadata import entry_points

    lines: list[str] = []
    ours = [ep for ep in entry_points(group="verl.plugins") if ep.name == ENTRY_POINT]
    try:
        import verl
        from verl.trainer.ppo import core_algos
    except Exception as e:  # noqa: BLE001 - any import failure is the answer
        return False, [f"verl cannot be imported by {sys.executable}: {type(e).__name__}: {e}"]
    version = getattr(verl, "__version__", "?")
    if version != TESTED_VERL:
        lines.append(f"note: verl {version}; ia_kernels' plugin is tested against verl {TESTED_VERL}")

    missing = [name for name in ESTIMATOR_NAMES if name not in core_algos.ADV_ESTIMATOR_REGISTRY]
    if "ia_ppo" not in core_algos.POLICY_LOSS_REGISTRY:
        missing.append("ia_ppo (policy loss)")
    try:
        from verl.utils.experimental import torch_functional
        backend = getattr(torch_functional.FusedLinearForPPO, "_ia_kernels", False)
    except Exception:  # noqa: BLE001 - reported as missing; the load below shows the error
        backend = False
    if not backend:
        missing.append("impl_backend=ia_kernels (log-prob backend)")
    if not missing and ours:
        return True, lines + [f"registered: verl {version} has ia_kernels' estimators {', '.join(ESTIMATOR_NAMES)}, "
                              f"policy loss ia_ppo and log-prob backend impl_backend=ia_kernels"]
    if not missing:  # registered by an explicit import, not by verl's plugin loading
        return False, lines + [f"not registered by verl: no '{ENTRY_POINT}' entry point in group verl.plugins in "
                               f"this environment's metadata (found only because this command imported {TARGET}); "
                               f"reinstall: pip install ia-kernels"]
    lines.append(f"not registered: verl {version} lacks {', '.join(missing)}")
    if not ours:
        lines.append(f"reason: this environment has no '{ENTRY_POINT}' entry point in group verl.plugins: "
                     f"ia-kernels is not installed for {sys.executable} (pip install ia-kernels)")
        return False, lines
    policy = os.getenv("VERL_USE_EXTERNAL_PLUGINS", "auto").strip().lower()
    if policy == "none":
        lines.append("reason: VERL_USE_EXTERNAL_PLUGINS=none disables verl's plugin loading")
        return False, lines
    if policy != "auto" and ENTRY_POINT not in {p.strip() for p in policy.split(",")}:
        lines.append(f"reason: VERL_USE_EXTERNAL_PLUGINS={policy} does not name '{ENTRY_POINT}'")
        return False, lines
    try:
        ours[0].load()
    except Exception:  # noqa: BLE001 - verl swallowed this very exception
        lines.append(f"reason: loading {ours[0].value} failed (verl logs this at DEBUG only):")
        lines.extend("  " + line for line in traceback.format_exc().rstrip().splitlines())
        return False, lines
    lines.append(f"reason unknown: {ours[0].value} loads without error here; was it loaded before verl's "
                 f"registries were reset?")
    return False, lines


def main() -> int:
    ok, lines = diagnose()
    print("\n".join(lines))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
