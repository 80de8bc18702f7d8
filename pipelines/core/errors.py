"""The entry points' expected failures: :class:`ConfigError` and :func:`run_command`."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

_action_started = False  # set by run_command: an exit code 1 after it is a fault, not a config error


class ConfigError(ValueError):
    """A config that cannot run; the message lists every problem, one per line."""


def settings_from(cls: type[Any], cfg: dict[str, Any], group: str) -> Any:
    """Build the dataclass ``cls`` from the config group ``group``, refusing a key it lacks.

    Raises:
        ValueError: naming the first unknown key (``<group>.<key>``) and the known ones.
    """
    known = set(cls.__dataclass_fields__)
    unknown = sorted(set(cfg) - known)
    if unknown:
        raise ValueError(f"{group}.{unknown[0]} is not a setting; use {', '.join(sorted(known))}")
    return cls(**cfg)


def run_command(
    action: Callable[[], str], stops: dict[type[Exception], tuple[str, int]] | None = None
) -> int:
    """Run a command's ``action`` and print the text it returns; expected failures print one message.

    Args:
        action: does the work and returns what to print.
        stops: more expected exception types, each with its message prefix and exit code.

    Returns:
        0, 2 for a :class:`ConfigError` (``config error:`` and the problem, one line each when
        there are several) or a ``stops`` code.
        An error raised inside a Ray task is never one of these: it propagates with its traceback.
    """
    global _action_started
    _action_started = True
    handled: dict[type[Exception], tuple[str, int]] = {ConfigError: ("config error: ", 2), **(stops or {})}
    try:
        text = action()
    except tuple(handled) as err:
        if any(c.__name__ == "RayTaskError" for c in type(err).__mro__):
            raise  # raised inside a Ray task: a fault to see whole (with its traceback), not bad input
        prefix, code = next(v for k, v in handled.items() if isinstance(err, k))
        print(f"{prefix}{err}", file=sys.stderr, flush=True)
        return code
    print(text, flush=True)
    return 0


def action_started() -> bool:
    """Whether :func:`run_command` has started its action (an exit after it is not a config error)."""
    return _action_started
