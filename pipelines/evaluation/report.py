"""What a person reads after a run: ``results.md`` (tables) and ``report.png`` (one figure).

Both are made from ``results.json`` (the judged encoders), ``metrics.jsonl`` (the training curves)
and ``class_counts.json`` (the pretraining set's class counts) in the run folder. The figure shows
the loss and its terms and the kNN monitor against epochs and, for a run pretrained on an
imbalanced set, each class's test accuracy against its number of pretraining images.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pipelines.core.run_files import METRICS_JSONL, REPORT_PNG, RESULTS_JSON, RESULTS_MD
from pipelines.core.run_log import RunLog
from pipelines.core.storage import write_atomic
from pipelines.evaluation.breakdown import is_imbalanced


def judged_encoders(results: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """``(label, judgement)`` rows: the run's final evaluation, then each standalone probe."""
    rows = []
    if "pretrained" in results:
        rows.append(("pretrained", results["pretrained"]))
    if "random_init" in results:
        rows.append(("random init (BatchNorm recomputed)", results["random_init"]))
    for name, probe in (results.get("linear_probes") or {}).items():
        rows.append((f"pretrained, linear_probe.py {name}", probe))
    return rows


def own_classes(rows: list[tuple[str, dict[str, Any]]]) -> list[tuple[str, dict[str, Any]]]:
    """The rows judged on the run's own classes (a probe on another dataset has its own)."""
    return [(label, j) for label, j in rows if not (j.get("judged_on") or {}).get("other_dataset")]


def _num(value: Any) -> str:
    return "–" if value is None else f"{value:.2f}"


def _linear_cells(judged: dict[str, Any]) -> list[str]:
    lin = judged.get("linear") or {}
    return [_num(lin.get("final_top1")), _num(lin.get("best_top1")), _num(lin.get("selected_top1"))]


def _group_size(group: dict[str, Any]) -> str:
    """``"5 classes"``, with ``", 2 without test images"`` when some are left out of the mean."""
    n, untested = int(group["classes"]), int(group.get("untested") or 0)
    text = f"{n} class{'es' * (n != 1)}"
    return text + (f", {untested} without test images" if untested else "")


def results_markdown(results: dict[str, Any], title: str) -> str:
    """The Markdown summary of ``results`` (see the module docstring)."""
    rows = judged_encoders(results)
    lines = [f"# {title}", ""]
    meta = [f"{k}: {results[k]}" for k in ("objective", "epochs", "steps", "checkpoint") if results.get(k)]
    if meta:
        lines += ["; ".join(str(m) for m in meta), ""]
    splits = sorted({str(j["judged_on"]["eval_split"]) for _, j in rows if j.get("judged_on")})
    on = splits[0] if len(splits) == 1 else "the evaluation split"
    on_split = f"the {on} split" if len(splits) == 1 else on
    lines += [
        f"| encoder | kNN top-1 | linear top-1, final epoch | best over epochs (on {on}) | selected on val |",
        "|---|---|---|---|---|",
    ]
    for label, judged in rows:
        lines.append(
            f"| {label} | {_num(judged.get('knn_top1'))} | " + " | ".join(_linear_cells(judged)) + " |"
        )
    where = [(label, j["judged_on"]) for label, j in rows if j.get("judged_on")]
    if where:
        lines += [""] + [
            f"- {label}: judged on `{w['root']}` ({w['train_split']} -> {w['eval_split']}, "
            f"{w['classes']} classes)"
            for label, w in where
        ]
    at_k = [(label, j["knn_top1_at_k"]) for label, j in rows if j.get("knn_top1_at_k")]
    if at_k:
        ks = list(at_k[0][1])
        used = sorted({str(j["knn_k"]) if "knn_k" in j else "?" for _, j in rows if j.get("knn_top1_at_k")})
        banks = sorted({str(j["knn_bank"]) for _, j in rows if j.get("knn_bank")})
        note = f"the table's kNN column: k = {' or '.join(used)}"
        if banks:
            note += f"; a k above the bank ({' or '.join(banks)} images) votes with all of it"
        lines += [
            "",
            f"kNN top-1 by number of neighbours k ({note}):",
            "",
            "| encoder | " + " | ".join(f"k = {k}" for k in ks) + " |",
            "|---" * (len(ks) + 1) + "|",
        ]
        lines += [f"| {label} | " + " | ".join(_num(v.get(k)) for k in ks) + " |" for label, v in at_k]
    # rows probed the same way: a run's own probe and a later linear_probe.py may differ
    probes: dict[tuple[Any, Any, bool], list[str]] = {}
    for label, j in rows:
        lin = j.get("linear") or {}
        if lin:
            how = (lin.get("protocol"), lin.get("epochs"), bool(lin.get("augment")))
            probes.setdefault(how, []).append(label)
    for (name, epochs, augment), labels in probes.items():
        how = "random-resized crops + flips" if augment else "cached centre-crop features"
        who = f" ({', '.join(labels)})" if len(probes) > 1 else ""
        lines.append(f"\nProbe `{name}`{who}: {epochs} epochs on {how}.")
    if probes:
        lines.append(
            f"'Best over epochs' picks the epoch on {on_split} (what the official small-scale script "
            "prints); 'final epoch' does not pick; 'selected on val' picks on a split held out of train "
            "(eval.protocol.val_fraction)."
        )
    counts = results.get("train_counts") or []
    classes = results.get("classes") or [str(i) for i in range(len(counts))]
    with_breakdown = [(label, j["breakdown"]) for label, j in own_classes(rows) if j.get("breakdown")]
    source = _breakdown_source([j for _, j in own_classes(rows) if j.get("breakdown")])
    if with_breakdown and counts and is_imbalanced(counts):
        shots = with_breakdown[0][1]["shots"]
        head = " | ".join(f"{k} ({v['rule']}, {_group_size(v)})" for k, v in shots.items())
        lines += [
            "",
            "## Many / medium / few-shot top-1 (by pretraining images per class)",
            "",
            source,
            "",
            f"| encoder | {head} |",
            "|---|---|---|---|",
        ]
        for label, b in with_breakdown:
            lines.append(f"| {label} | " + " | ".join(_num(v["top1"]) for v in b["shots"].values()) + " |")
    blocks = [(label, b["blocks_of_10"]) for label, b in with_breakdown if b.get("blocks_of_10")]
    if blocks:
        lines += [
            "",
            "## Top-1 per block of 10 classes (the official CIFAR-100 report)",
            "",
            source,
            "",
            "| encoder | " + " | ".join(f"{10 * i}-{10 * i + 9}" for i in range(len(blocks[0][1]))) + " |",
            "|---" * (len(blocks[0][1]) + 1) + "|",
        ]
        lines += [f"| {label} | " + " | ".join(_num(v) for v in b) + " |" for label, b in blocks]
    if with_breakdown and counts:
        lines += [
            "",
            "## Per class",
            "",
            source,
            "",
            "| class | pretraining images | " + " | ".join(label for label, _ in with_breakdown) + " |",
            "|---|---|" + "---|" * len(with_breakdown),
        ]
        for c, name in enumerate(classes):
            accs = " | ".join(_num(b["per_class"][c]) for _, b in with_breakdown)
            lines.append(f"| {name} | {counts[c]} | {accs} |")
    return "\n".join(lines) + "\n"


def _breakdown_source(judged: list[dict[str, Any]]) -> str:
    """The line saying which predictions the per-class tables count (``breakdown_source``)."""
    sources = {j.get("breakdown_source", "linear") for j in judged}
    if sources == {"knn"}:
        return "Top-1 of the kNN classifier (no linear probe ran)."
    if sources == {"linear"}:
        return "Top-1 of each encoder's linear probe at its final epoch."
    return "Top-1 of each encoder's linear probe at its final epoch (kNN's where no probe ran)."


def encoder_table(rows: list[tuple[str, dict[str, Any]]]) -> list[str]:
    """Console lines: each encoder's kNN and linear top-1 (final epoch / best epoch / selected on val)."""
    width = max([len("encoder"), *(len(label) for label, _ in rows)])
    lines = [f"{'encoder':<{width}}  kNN top-1  linear top-1: final / best epoch / selected on val"]
    for label, judged in rows:
        final, best, selected = _linear_cells(judged)
        lines.append(
            f"{label:<{width}}  {_num(judged.get('knn_top1')):>9}  {final:>6} / {best:>6} / {selected:>6}"
        )
    return lines


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def loss_series(metrics: list[dict[str, Any]], steps_per_epoch: int) -> dict[str, list[tuple[float, float]]]:
    """The loss panel's curves: ``label -> [(epoch, loss), ...]`` from a run's ``metrics.jsonl`` rows.

    The per-step logs (``loss/<term>``, every ``trainer.log_every_steps`` steps), or, for a run
    that logged fewer steps than it has epochs (epochs shorter than that interval), each epoch's
    mean loss (``epoch/loss_mean``) drawn at the end of the epoch.
    """
    spe = max(1, int(steps_per_epoch))
    steps = [r for r in metrics if "loss/total" in r]
    means = [(r["epoch"] + 1, r["epoch/loss_mean"]) for r in metrics if "epoch/loss_mean" in r]
    if len(steps) < len(means):  # logged less often than once an epoch: the epochs' means say more
        return {"total (epoch mean)": means}
    keys = sorted({k for r in steps for k in r if k.startswith("loss/")})
    return {k.removeprefix("loss/"): [(r["step"] / spe, r[k]) for r in steps if k in r] for k in keys}


def report_figure(
    results: dict[str, Any], metrics: list[dict[str, Any]], steps_per_epoch: int, title: str
) -> Any:
    """The run's figure: loss terms and kNN top-1 against epochs (+ per-class accuracy vs class size).

    Returns:
        A matplotlib ``Figure`` (Agg backend; the caller saves or logs it).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    counts = results.get("train_counts") or []
    judged = [(label, j) for label, j in own_classes(judged_encoders(results)) if j.get("breakdown")]
    show_classes = bool(counts and judged and is_imbalanced(counts))
    fig, axes = plt.subplots(1, 3 if show_classes else 2, figsize=(16 if show_classes else 11, 4.2))
    ax = axes[0]
    series = loss_series(metrics, steps_per_epoch)
    for label, pts in series.items():
        ax.plot(
            *zip(*pts, strict=True),
            "o-" if len(pts) < 3 else "-",  # a short run's one or two points stay visible
            label=label,
            lw=1.2 if label.startswith("total") else 0.8,
        )
    ax.set(xlabel="epoch", ylabel="loss", title="pretraining loss and its terms")
    if series:
        ax.legend(fontsize=8)
    ax = axes[1]
    knn = [(r["epoch"] + 1, r["epoch/knn_top1"]) for r in metrics if "epoch/knn_top1" in r]
    if knn:
        ax.plot(*zip(*knn, strict=True), "o-", label="kNN monitor (pretrained)")
    for label, j in judged_encoders(results):
        if (
            j.get("knn_top1") is not None
            and label.startswith(("pretrained", "random"))
            and "probe" not in label
        ):
            ax.axhline(
                j["knn_top1"],
                ls="--",
                lw=0.9,
                color="grey" if label.startswith("random") else "C1",
                label=f"final kNN, {label}",
            )
    ax.set(xlabel="epoch", ylabel="top-1 (%)", title="kNN top-1 on the held-out split")
    ax.legend(fontsize=8)
    if show_classes:
        ax = axes[2]
        for i, (label, j) in enumerate(judged):
            acc = j["breakdown"]["per_class"]
            pts = [(n, a) for n, a in zip(counts, acc, strict=True) if a is not None]
            ax.scatter(*zip(*pts, strict=True), s=12, alpha=0.7, color=f"C{i}", label=label)
        ax.set_xscale("symlog", linthresh=1)
        ax.set(
            xlabel="pretraining images of the class",
            ylabel="test top-1 of the class (%)",
            title="per-class accuracy vs class size",
        )
        ax.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def write_results(
    run_dir: str | Path, results: dict[str, Any], title: str, steps_per_epoch: int
) -> dict[str, Path]:
    """Write ``results.json``, ``results.md`` and ``report.png`` into ``run_dir``; return their paths.

    Also logs the figure to the run's TensorBoard (tag ``report``).
    """
    import matplotlib.pyplot as plt

    d = Path(run_dir)
    out = {"json": d / RESULTS_JSON, "md": d / RESULTS_MD, "png": d / REPORT_PNG}
    for key, text in (
        ("json", json.dumps(results, indent=2, default=str) + "\n"),
        ("md", results_markdown(results, title)),
    ):
        write_atomic(out[key], text)
    fig = report_figure(results, _read_jsonl(d / METRICS_JSONL), steps_per_epoch, title)
    fig.savefig(out["png"], dpi=110)
    log = RunLog(d, resume_step=None)
    log.figure("report", fig, int(results.get("steps") or 0))
    log.close()
    plt.close(fig)
    return out
