"""The entry points' expected failures: :class:`ConfigError` and :func:`run_command`."""

from __future__ import annotations

import sys
import traceback
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


def run_hydra(main: Callable[[], Any]) -> None:
    """Run a ``@hydra.main`` entry point so that Hydra's own config errors exit 2, as ours do.

    Hydra reports an unknown config option or key, a malformed override and a failed
    interpolation itself, with the valid choices, and exits 1, before the command's action runs
    (with ``HYDRA_FULL_ERROR=1`` it raises instead, for the traceback). Either becomes exit code 2
    (a config error); once :func:`run_command` has started, an exit code or an exception is left
    as it is (1 there is a fault, with its traceback).
    """
    try:
        main()
    except SystemExit as stop:
        if stop.code == 1 and not _action_started:
            _hints(sys.argv[1:])
            raise SystemExit(2) from None
        raise
    except Exception:  # HYDRA_FULL_ERROR=1: Hydra lets its error through, to show the traceback
        if _action_started:
            raise
        traceback.print_exc()
        _hints(sys.argv[1:])
        raise SystemExit(2) from None


def _hints(args: list[str]) -> None:
    """Hints after Hydra refused the command line.

    For a ``key=~/path`` its grammar cannot parse, and for a misspelt key (where Hydra suggests
    adding it with ``+``).
    """
    from pipelines.core.config_schema import close_key

    for arg in args:
        key, eq, value = arg.partition("=")
        meant = close_key(key) if eq and not key.startswith(("~", "-", "+")) else None
        if meant:
            print(
                f"hint: {key} is not a setting: did you mean {meant}? (`--cfg job` lists every key)",
                file=sys.stderr,
                flush=True,
            )
        if eq and value.startswith("~") and not key.startswith(("~", "-")):
            print(
                f"hint: {arg}: write the home folder as $HOME ({key}=$HOME{value[1:]}), or quote the "
                f"value ('{key}=\"{value}\"'); the shell does not expand ~ after {key}=, and Hydra's "
                "override grammar takes no bare ~ in a value",
                file=sys.stderr,
                flush=True,
            )
