"""A search config (``configs/search/<name>.yaml``) turned into a Tune space and trial overrides.

A search starts every trial from one pretraining preset (``experiment``) plus ``overrides``
(Hydra syntax, e.g. ``trainer.epochs=6``), and samples ``params``: dotted pretraining keys with a
distribution each (``{loguniform: [lo, hi]}``, ``{uniform: [lo, hi]}``, ``{randint: [lo, hi]}``,
``{choice: [...]}``, ``{grid: [...]}``). A search over several objectives lists ``arms``, each
with its own ``experiment``, ``overrides`` and ``params``; Tune then runs a grid over the arms
(an arm's own ``grid`` values are points of that grid: they add trials to their arm only).
``shared`` params (e.g. a grid of seeds) are sampled once per trial, whatever its arm.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

DISTRIBUTIONS = ("loguniform", "uniform", "randint", "choice", "grid")
SEP = "::"  # arm :: key in Tune's flat parameter names
FORCED = ("trainer.checkpoint_every_steps=0", "eval.knn_every_epochs=1")  # one report per epoch


class SearchConfigError(ValueError):
    """A search config problem, naming the key and the fix."""


@dataclass
class Arm:
    """One objective setting of a search: where trials start and what they sample."""

    name: str
    experiment: str
    overrides: list[str] = field(default_factory=list)
    params: dict[str, dict[str, Any]] = field(default_factory=dict)
    paper: dict[str, Any] = field(default_factory=dict)


def _check_distribution(where: str, spec: Any) -> None:
    if not isinstance(spec, dict) or len(spec) != 1 or next(iter(spec)) not in DISTRIBUTIONS:
        raise SearchConfigError(f"{where}: one of {', '.join(DISTRIBUTIONS)} with its values, got {spec!r}")
    kind, values = next(iter(spec.items()))
    if kind in ("loguniform", "uniform", "randint"):
        if not (isinstance(values, list) and len(values) == 2 and values[0] < values[1]):
            raise SearchConfigError(f"{where}.{kind}: [low, high] with low < high, got {values!r}")
        if kind == "loguniform" and values[0] <= 0:
            raise SearchConfigError(f"{where}.loguniform: low must be > 0, got {values[0]}")
    elif not (isinstance(values, list) and values):
        raise SearchConfigError(f"{where}.{kind}: a non-empty list, got {values!r}")


def arms(search: dict[str, Any]) -> list[Arm]:
    """The arms of ``search`` (one implicit arm when it lists none), checked.

    Raises:
        SearchConfigError: naming the key.
    """
    if not search.get("name"):
        raise SearchConfigError("search is missing: pick one with search=<name> (configs/search/)")
    shared = list(search.get("overrides") or [])
    raw = search.get("arms") or {"main": {}}
    out = []
    for name, arm in raw.items():
        arm = arm or {}
        experiment = arm.get("experiment") or search.get("experiment")
        if not experiment:
            raise SearchConfigError(f"search.arms.{name}.experiment (or search.experiment) is not set")
        params = {**(search.get("params") or {}), **(arm.get("params") or {})}
        for key, spec in params.items():
            _check_distribution(
                f"search.params.{key}" if name == "main" else f"search.arms.{name}.params.{key}", spec
            )
        out.append(
            Arm(
                name,
                str(experiment),
                shared + list(arm.get("overrides") or []),
                params,
                dict(arm.get("paper") or search.get("paper") or {}),
            )
        )
    for key, spec in (search.get("shared") or {}).items():
        _check_distribution(f"search.shared.{key}", spec)
    if not any(a.params for a in out) and not search.get("shared"):
        raise SearchConfigError("search.params is empty: give at least one key to search")
    return out


def _grid_points(arm: Arm) -> list[dict[str, Any]]:
    """Every combination of ``arm``'s own ``grid`` values, as ``{<arm>::<key>: value}``."""
    points: list[dict[str, Any]] = [{}]
    for key, spec in arm.params.items():
        kind, values = next(iter(spec.items()))
        if kind == "grid":
            points = [{**p, f"{arm.name}{SEP}{key}": v} for p in points for v in values]
    return points


def _sampler(spec: dict[str, Any]) -> Any:
    from ray import tune

    kind, values = next(iter(spec.items()))
    if kind == "grid":
        return tune.grid_search(list(values))
    if kind == "choice":
        return tune.choice(list(values))
    return getattr(tune, kind)(*values)


def param_space(search: dict[str, Any]) -> dict[str, Any]:
    """The Tune ``param_space``: ``arm`` (a grid, with several arms) and ``<arm>::<key>`` samplers.

    With several arms, ``arm`` is one grid of points ``{"name": arm, "<arm>::<key>": ...}``: one
    point per combination of the arm's own ``grid`` values, holding the samplers of its other
    keys. An arm's grid adds trials to that arm only, and a trial samples only its own arm's keys
    (Tune resolves samplers inside a grid point). ``shared`` params multiply every point.
    """
    from ray import tune

    space: dict[str, Any] = {}
    all_arms = arms(search)
    if len(all_arms) > 1:
        points = []
        for arm in all_arms:
            sampled = {key: spec for key, spec in arm.params.items() if next(iter(spec)) != "grid"}
            for point in _grid_points(arm):
                samplers = {f"{arm.name}{SEP}{key}": _sampler(spec) for key, spec in sampled.items()}
                points.append({"name": arm.name, **point, **samplers})
        space["arm"] = tune.grid_search(points)
    else:
        for key, spec in all_arms[0].params.items():
            space[f"{all_arms[0].name}{SEP}{key}"] = _sampler(spec)
    for name, spec in (search.get("shared") or {}).items():
        space[name] = _sampler(spec)
    return space


def flat_config(config: dict[str, Any]) -> dict[str, Any]:
    """A trial's Tune ``config`` with its ``arm`` grid point (a dict, with several arms) spread out."""
    point = config.get("arm")
    if not isinstance(point, dict):
        return config
    rest = {k: v for k, v in point.items() if k != "name"}
    return {**config, **rest, "arm": point["name"]}


def trial_arm(search: dict[str, Any], config: dict[str, Any]) -> Arm:
    """The arm a trial's Tune ``config`` belongs to."""
    all_arms = arms(search)
    name = flat_config(config).get("arm", all_arms[0].name)
    return next(a for a in all_arms if a.name == name)


def trial_values(search: dict[str, Any], config: dict[str, Any]) -> dict[str, Any]:
    """``{dotted key: value}`` that a trial's Tune ``config`` sets (its own arm's keys only)."""
    config = flat_config(config)
    arm = trial_arm(search, config)
    own = {key: config[f"{arm.name}{SEP}{key}"] for key in arm.params if f"{arm.name}{SEP}{key}" in config}
    return {**own, **{key: config[key] for key in search.get("shared") or {} if key in config}}


def _format(value: Any) -> str:
    if isinstance(value, float):
        return repr(float(value))
    if isinstance(value, list | tuple):
        return "[" + ",".join(_format(v) for v in value) + "]"
    return str(value)


def trial_overrides(search: dict[str, Any], config: dict[str, Any]) -> list[str]:
    """The pretraining overrides of one trial: preset, shared and arm overrides, sampled values."""
    arm = trial_arm(search, config)
    values = [f"{k}={_format(v)}" for k, v in trial_values(search, config).items()]
    return [f"experiment={arm.experiment}", *arm.overrides, *values, *FORCED]
