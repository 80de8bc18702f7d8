"""Contrastive objectives for self-supervised pretraining: CACR and its baselines.

A standalone package that imports torch only. Every objective is a ``torch.nn.Module`` built by
name and called on embeddings; it returns a :class:`LossOutput` (``loss``, ``terms``)::

    import objectives
    loss_fn = objectives.build("cacr_inbatch", t_pos=1.0, t_neg=0.9)
    out = loss_fn(views)          # views [K + 1, B, D]
    out.loss.backward()

The CACR variants also have ``loss_fn.diagnostics(...)`` (entropy and largest value of the
attraction and repulsion weights) for logging. ``objectives.available()`` lists the names.
"""

from __future__ import annotations

import inspect

from torch import nn

from objectives._common import LossOutput
from objectives.align_uniform_inbatch import AlignUniformInBatch
from objectives.align_uniform_queue import AlignUniformQueue
from objectives.cacr_inbatch import CACRInBatch
from objectives.cacr_moco_v2 import CACRMoCoV2
from objectives.cacr_moco_v3 import CACRMoCoV3
from objectives.distributed import gather_rows
from objectives.hard_negative_inbatch import HardNegativeInBatch
from objectives.infonce_inbatch import InfoNCEInBatch
from objectives.infonce_queue import InfoNCEQueue

REGISTRY: dict[str, type[nn.Module]] = {
    "cacr_inbatch": CACRInBatch,
    "cacr_moco_v2": CACRMoCoV2,
    "cacr_moco_v3": CACRMoCoV3,
    "infonce_inbatch": InfoNCEInBatch,
    "infonce_queue": InfoNCEQueue,
    "align_uniform_inbatch": AlignUniformInBatch,
    "align_uniform_queue": AlignUniformQueue,
    "hard_negative_inbatch": HardNegativeInBatch,
}


def available() -> list[str]:
    """Names accepted by :func:`build`, sorted."""
    return sorted(REGISTRY)


def hyperparameters(name: str) -> dict[str, object]:
    """Return the constructor arguments of objective ``name`` with defaults (``...``: required)."""
    params = inspect.signature(_lookup(name).__init__).parameters
    return {
        p: (... if v.default is inspect.Parameter.empty else v.default)
        for p, v in params.items()
        if p != "self"
    }


def build(name: str, **hparams: object) -> nn.Module:
    """Build objective ``name`` with hyper-parameters ``hparams``.

    Args:
        name: one of :func:`available`.
        **hparams: constructor arguments of that objective.

    Returns:
        The objective, a ``torch.nn.Module``.

    Raises:
        ValueError: for an unknown name, an unknown or missing hyper-parameter, or a bad value.

    """
    cls = _lookup(name)
    accepted = hyperparameters(name)
    unknown = sorted(set(hparams) - set(accepted))
    if unknown:
        raise ValueError(
            f"objective {name!r} has no hyper-parameter {', '.join(map(repr, unknown))}; "
            f"it accepts {', '.join(accepted)}"
        )
    missing = [p for p, d in accepted.items() if d is ... and p not in hparams]
    if missing:
        raise ValueError(f"objective {name!r} needs {', '.join(map(repr, missing))}")
    return cls(**hparams)


def _lookup(name: str) -> type[nn.Module]:
    try:
        return REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown objective {name!r}; choose one of {', '.join(available())}") from None


__all__ = [
    "REGISTRY",
    "AlignUniformInBatch",
    "AlignUniformQueue",
    "CACRInBatch",
    "CACRMoCoV2",
    "CACRMoCoV3",
    "HardNegativeInBatch",
    "InfoNCEInBatch",
    "InfoNCEQueue",
    "LossOutput",
    "available",
    "build",
    "gather_rows",
    "hyperparameters",
]
