"""The error a bad setting raises, in a module of its own so that every module can raise it
(config validation calls into models and tasks, which report their own problems) without an
import circle."""

from __future__ import annotations


class ConfigError(ValueError):
    """A bad setting; the message is one line that names the setting and what to change."""


__all__ = ["ConfigError"]
