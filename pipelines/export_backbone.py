"""Export a pretrained backbone for use elsewhere.

    python pipelines/export_backbone.py ~/cacr-runs/<run> --to torchvision --out r50.pth
    python pipelines/export_backbone.py <run>/checkpoint_e0200_s00078000 --to detectron2 --out r50.pkl
    python pipelines/export_backbone.py backbone.pt --model resnet50 --to detectron2 --out r50.pkl
    python pipelines/export_backbone.py <vit run> --to timm --out vit.pth
    python pipelines/export_backbone.py r-50-1000ep.pth.tar --model resnet50 --to torchvision --out r50.pth

``torchvision``: the state dict, checked to load with ``strict=True`` into the torchvision model
(``resnet18`` / ``resnet50`` / ``vit_b_16`` or the ViT-S/16 ``VisionTransformer``) whose classifier
is set aside. ``timm``: the same tensors in timm's names, for ``timm.create_model(<name>,
num_classes=0)`` (the command prints the call). ``detectron2``: a ``.pkl`` with detectron2's ResNet
names, for its ``MODEL.WEIGHTS`` (with ``MODEL.PIXEL_MEAN/STD`` in RGB order and ``INPUT.FORMAT
RGB``, as MoCo's detection recipe does). A bare source file may also be an official CACR-SSL or
MoCo checkpoint (``module.encoder_q.*`` / ``module.base_encoder.*`` keys): its online encoder is
exported.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from pipelines.core.errors import ConfigError
from pipelines.core.run_files import CONFIG_FILE, read_run_file
from pipelines.evaluation.export import (
    TIMM_NAMES,
    TORCHVISION_NAMES,
    fit_problem,
    load_state,
    to_timm,
    torchvision_model,
    write_detectron2,
)
from pipelines.probe.run import find_checkpoint


def main(argv: list[str] | None = None) -> int:
    """Parse the arguments, export, and say what was written; 2 on bad input."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", help="a run folder, a checkpoint folder or a backbone.pt file")
    parser.add_argument("--to", choices=("torchvision", "timm", "detectron2"), required=True)
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument(
        "--model",
        help="model.name when the source is a bare weights file (backbone.pt, an official checkpoint)",
    )
    parser.add_argument(
        "--image-size", type=int, help="ViT input size (position embeddings); default: the run's, else 224"
    )
    args = parser.parse_args(argv)
    src = Path(args.source).expanduser()
    try:
        if src.is_file():
            weights, name, image_size = src, args.model, args.image_size or 224
            if not name:
                raise ConfigError(f"{src} is a bare weights file: add --model {'|'.join(TORCHVISION_NAMES)}")
        else:
            run_dir, checkpoint = find_checkpoint(src)
            weights = checkpoint / "backbone.pt"
            model = read_run_file(run_dir / CONFIG_FILE)["model"]
            name = args.model or model["name"]
            image_size = args.image_size or int(model["image_size"])
            if float(model["width"]) != 1.0:
                raise ConfigError(
                    f"{run_dir} used model.width={model['width']}: a scaled network has no torchvision "
                    "or detectron2 counterpart"
                )
            if model.get("stem") == "cifar":
                raise ConfigError(
                    f"{run_dir} used model.stem=cifar (a 3x3 conv1, no max-pool): its conv1 does not fit "
                    "torchvision's or detectron2's ImageNet stem"
                )
        out = args.out.expanduser()
        if out.is_dir():
            raise ConfigError(f"--out {out} is a folder: give the file to write, e.g. {out / 'backbone.pth'}")
        if out.exists() and out.resolve() == weights.resolve():
            raise ConfigError(f"--out {out} is the file being exported: write the export to another file")
        state = load_state(weights)
        if args.to == "detectron2":
            if not str(name).startswith("resnet"):
                raise ConfigError(f"--to detectron2 needs a ResNet backbone, not {name}")
            out = write_detectron2(state, out)
            print(f"wrote {out}: {len(state)} tensors renamed to detectron2's ResNet names", flush=True)
            return 0
        target = torchvision_model(name, image_size)
        problem = fit_problem(state, target.state_dict())
        if problem:
            raise ConfigError(f"{weights} does not fit torchvision's {name} (--model): {problem}")
        if out.exists():
            print(f"replacing {out}", flush=True)
        out.parent.mkdir(parents=True, exist_ok=True)
        if args.to == "timm":
            torch.save(to_timm(state, name), out)
            print(f"wrote {out}: loads with strict=True into {_timm_call(name, image_size)}", flush=True)
            return 0
        torch.save(state, out)
        head = "heads" if name.startswith("vit") else "fc"
        print(
            f"wrote {out}: loads with strict=True into torchvision's {name} once {head} is set aside "
            f"(model.{head} = torch.nn.Identity())",
            flush=True,
        )
        return 0
    except (ConfigError, ValueError, RuntimeError) as err:
        print(f"export error: {err}", file=sys.stderr, flush=True)
        return 2


def _timm_call(name: str, image_size: int) -> str:
    """The ``timm.create_model`` call whose model takes the timm export of ``name``."""
    extra = ", num_heads=12" if name == "vit_s16_moco_v3" else ""  # MoCo-v3's ViT-S: 12 heads, not 6
    if name.startswith("vit") and image_size != 224:
        extra += f", img_size={image_size}"
    return f"timm.create_model({TIMM_NAMES[name]!r}, num_classes=0{extra})"


if __name__ == "__main__":
    sys.exit(main())
