"""Build a framework (encoders, heads, objective) from the resolved config."""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

from torch import nn

import objectives
from pipelines.core.config_schema import HeadConfig, with_defaults
from pipelines.models.backbones import build_backbone
from pipelines.models.frameworks import COMPATIBLE, Framework, InBatch, MoCoV2, MoCoV3
from pipelines.models.heads import build_mlp


def check_combination(framework: str, objective: str, num_views: int) -> None:
    """Refuse a framework/objective pair that cannot work, or a view count the objective rejects.

    Args:
        framework: ``framework.name``.
        objective: ``objective.name``.
        num_views: global views per image (``objective.K + 1``).

    Raises:
        ValueError: naming the keys and what would work instead.
    """
    if framework not in COMPATIBLE:
        raise ValueError(f"framework.name must be one of {', '.join(COMPATIBLE)}; got {framework!r}")
    allowed = COMPATIBLE[framework]
    if objective not in allowed:
        fits = [f for f, objs in COMPATIBLE.items() if objective in objs]
        raise ValueError(
            f"objective {objective!r} does not work with framework {framework!r} (it takes "
            f"{', '.join(allowed)}); use framework={fits[0] if fits else '?'} or another objective"
        )
    views = allowed[objective]
    if views is not None and num_views != views:
        raise ValueError(
            f"objective {objective!r} compares exactly {views} views (objective.K={views - 1}); "
            f"got objective.K={num_views - 1}"
        )


def _head(spec: dict[str, Any] | None, in_dim: int) -> nn.Module:
    return build_mlp(
        in_dim,
        int(spec["hidden"]),
        int(spec["out"]),
        int(spec["layers"]),
        batch_norm=bool(spec["batch_norm"]),
        last_batch_norm=bool(spec["last_batch_norm"]),
        output_bias=bool(spec["output_bias"]),
    )


def backbone_of(model: dict[str, Any]) -> nn.Module:
    """The backbone the ``model`` config group describes (freshly initialised; omitted keys: defaults)."""
    model = with_defaults("model", model)
    return build_backbone(
        model["name"],
        image_size=int(model["image_size"]),
        stem=model["stem"],
        width=float(model["width"]),
        norm=model["norm"],
        zero_init_residual=bool(model["zero_init_residual"]),
    )


def build_framework(cfg: dict[str, Any], distributed: bool = False, seed: int = 0) -> Framework:
    """Build the framework of a resolved config (plain dict with ``model``, ``framework``, ``objective``).

    Args:
        cfg: the resolved run config.
        distributed: the world has more than one rank (objectives then gather negatives, unless
            ``framework.gather_negatives`` is false).
        seed: seeds the MoCo-v2 queue's initial contents.

    Returns:
        The framework module (on the CPU, float32). Keys a group leaves out take the schema's
        defaults (:mod:`pipelines.core.config_schema`).
    """
    m, fw = with_defaults("model", cfg["model"]), with_defaults("framework", cfg["framework"])
    obj = with_defaults("objective", cfg["objective"])
    check_combination(fw["name"], obj["name"], int(obj["K"]) + 1)
    backbone = backbone_of(m)
    hparams = dict(obj["hparams"])
    if distributed and fw["gather_negatives"] and "gather" in objectives.hyperparameters(obj["name"]):
        hparams["gather"] = True
    objective = objectives.build(obj["name"], **hparams)
    projector = _head(m["projector"], backbone.feature_dim)
    base = nn.Sequential(OrderedDict(backbone=backbone, projector=projector))
    per_view = fw["forward"] == "per_view"
    if fw["name"] == "inbatch":
        return InBatch(base, backbone, objective, per_view=per_view)
    if fw["name"] == "moco_v2":
        return MoCoV2(
            base,
            backbone,
            objective,
            momentum=float(fw["momentum"]),
            queue_size=int(fw["queue_size"]),
            dim=int(m["projector"]["out"]),
            shuffle_bn=bool(fw["shuffle_bn"]),
            seed=seed,
            per_view=per_view,
        )
    predictor = _head(with_defaults(HeadConfig, m["predictor"]), int(m["projector"]["out"]))
    online = nn.Sequential(OrderedDict(base=base, predictor=predictor))
    return MoCoV3(
        online,
        backbone,
        objective,
        momentum_part=base,
        momentum=float(fw["momentum"]),
        cosine=bool(fw["momentum_cosine"]),
        per_view=per_view,
        full_mode=bool((obj.get("hparams") or {}).get("full_mode", False)),
    )
