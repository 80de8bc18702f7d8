"""Running a ``@hydra.main`` entry point: Hydra's own config errors exit 2, with hints."""

from __future__ import annotations

import sys
import traceback
from collections.abc import Callable
from typing import Any

from pipelines.core.config_schema import close_key
from pipelines.core.errors import action_started


def run_hydra(main: Callable[[], Any]) -> None:
    """Run a ``@hydra.main`` entry point so that Hydra's own config errors exit 2, as ours do.

    Hydra reports an unknown config option or key, a malformed override and a failed
    interpolation itself, with the valid choices, and exits 1, before the command's action runs
    (with ``HYDRA_FULL_ERROR=1`` it raises instead, for the traceback). Either becomes exit code 2
    (a config error); once :func:`~pipelines.core.errors.run_command` has started, an exit code
    or an exception is left as it is (1 there is a fault, with its traceback).
    """
    try:
        main()
    except SystemExit as stop:
        if stop.code == 1 and not action_started():
            _hints(sys.argv[1:])
            raise SystemExit(2) from None
        raise
    except Exception:  # HYDRA_FULL_ERROR=1: Hydra lets its error through, to show the traceback
        if action_started():
            raise
        traceback.print_exc()
        _hints(sys.argv[1:])
        raise SystemExit(2) from None


def _hints(args: list[str]) -> None:
    """Hints after Hydra refused the command line.

    For a ``key=~/path`` its grammar cannot parse, and for a misspelt key (where Hydra suggests
    adding it with ``+``).
    """
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
