"""A run folder's own files when they are damaged, and what counts as a finished run.

Each case builds the damage itself (a cut file, a hand edit) on real files written by the
project's writers, and checks the message names the file and what differs.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from pipelines.core import checkpoints as ckpt
from pipelines.core.errors import ConfigError
from pipelines.core.run_files import (
    RunFileError,
    final_evaluation_done,
    keep_probes,
    read_results,
    read_run_file,
)
from pipelines.probe.run import find_checkpoint
from pipelines.training.run import _check_checkpoints, _check_existing
from tests.helpers.runs import smoke


def cut_in_half(path: Path) -> int:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return len(data)


def test_a_cut_json_or_yaml_file_is_named_with_what_to_do(tmp_path) -> None:
    results = tmp_path / "results.json"
    results.write_text(json.dumps({"pretrained": {"knn_top1": 41.5, "per_class": list(range(50))}}))
    cut_in_half(results)
    with pytest.raises(RunFileError, match=rf"{results} cannot be read .*cut short or edited.*move it away"):
        read_results(tmp_path)
    config = tmp_path / "config.yaml"
    config.write_text("trainer:\n  name: demo\n" + "trainer: [unclosed\n")
    with pytest.raises(RunFileError, match=rf"{config} cannot be read"):
        read_run_file(config)
    assert read_results(tmp_path / "none") == {}  # no results yet: not an error


def test_a_probe_of_an_unfinished_run_does_not_finish_it(tmp_path) -> None:
    """``linear_probe.py`` on a run still training writes a results.json of its own; the run must
    still resume (it used to be taken for finished and never trained again)."""
    cfg = smoke(tmp_path, "trainer.name=u")
    run_dir = tmp_path / "u"
    run_dir.mkdir()
    (run_dir / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    probe_only = {"linear_probes": {"small_scale": {"knn_top1": 30.0}}, "classes": ["a", "b"]}
    (run_dir / "results.json").write_text(json.dumps(probe_only))
    assert _check_existing(run_dir, cfg) is False
    assert not final_evaluation_done(probe_only)

    final = {"pretrained": {"knn_top1": 41.0}, "objective": "cacr_inbatch (K=1)"}
    kept = keep_probes(run_dir, final)  # the run's final evaluation keeps the probe's entry
    assert kept == {**final, "linear_probes": {"small_scale": {"knn_top1": 30.0}}}
    (run_dir / "results.json").write_text(json.dumps(kept))
    assert _check_existing(run_dir, cfg) is True and final_evaluation_done(kept)


def write_ckpt(run_dir: Path, epoch: int, step: int) -> Path:
    state = {"epoch": epoch, "step": step, "model": {"w": torch.arange(1000.0)}}
    return ckpt.write_checkpoint(
        run_dir / f"checkpoint_e{epoch:04d}_s{step:08d}", state, {"w": torch.ones(10)}
    )


def test_a_resumed_run_refuses_to_start_over_when_its_only_checkpoint_is_damaged(tmp_path, capsys) -> None:
    cfg = smoke(tmp_path, "trainer.name=r")
    run_dir = tmp_path / "r"
    older = write_ckpt(run_dir, 1, 8)
    (run_dir / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    newer = write_ckpt(run_dir, 2, 16)
    size = cut_in_half(newer / ckpt.STATE)

    # an older complete one is left: resume from it, saying which was skipped and why
    _check_checkpoints(cfg)
    out = capsys.readouterr().out
    assert f"resuming from {older}" in out
    assert f"{newer}: state.pt has {size // 2:,} bytes where COMPLETE recorded {size:,}" in out

    # the probe and the exporter name the problem too
    with pytest.raises(ConfigError, match=rf"state.pt has {size // 2:,} bytes where COMPLETE recorded"):
        find_checkpoint(newer)
    assert find_checkpoint(run_dir) == (run_dir.resolve(), older)

    cut_in_half(older / ckpt.BACKBONE)  # now none is usable: the run would silently start over
    with pytest.raises(
        RunFileError, match=r"no usable checkpoint.*start over.*\n.*checkpoint_e0001_s00000008"
    ):
        _check_checkpoints(cfg)
    with pytest.raises(ConfigError, match="every checkpoint of the run is damaged"):
        find_checkpoint(run_dir)


def test_a_checkpoint_whose_writing_never_finished_is_skipped_with_a_warning(tmp_path, capsys) -> None:
    cfg = smoke(tmp_path, "trainer.name=c")
    crashed = write_ckpt(tmp_path / "c", 1, 8)
    (crashed / ckpt.COMPLETE).unlink()  # a crash before the marker: expected, not damage
    _check_checkpoints(cfg)
    out = capsys.readouterr().out
    assert "starting from the first step" in out and "no COMPLETE marker" in out
    found, torn = ckpt.scan_checkpoints(str(tmp_path), "c")
    assert found == [] and [(t.path, t.was_complete) for t in torn] == [(str(crashed), False)]


def test_a_run_that_failed_before_its_first_checkpoint_restarts_with_corrected_settings(tmp_path, capsys):
    """A bad value caught only inside Ray left config.yaml behind; the fixed command must run."""
    cfg = smoke(tmp_path, "trainer.name=w")
    run_dir = tmp_path / "w"
    run_dir.mkdir()
    (run_dir / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    fixed = smoke(tmp_path, "trainer.name=w", "objective.hparams.t_neg=2.0")
    assert _check_existing(run_dir, fixed) is False
    assert "never saved a checkpoint: starting it again" in capsys.readouterr().out

    write_ckpt(run_dir, 1, 8)  # once it has trained, other settings are refused as before
    refused = r"already exists .* with other settings:\n  objective.hparams.t_neg"
    with pytest.raises(ConfigError, match=refused) as other:
        _check_existing(run_dir, fixed)
    assert "cannot be extended" not in str(other.value)
    longer = smoke(tmp_path, "trainer.name=w", f"trainer.epochs={cfg['trainer']['epochs'] + 1}")
    with pytest.raises(ConfigError, match=r"trainer.epochs: \d+ -> \d+") as extended:  # a run made longer
        _check_existing(run_dir, longer)
    assert "a run cannot be extended: plan the whole length with trainer.epochs and stop early with" in str(
        extended.value
    )
    epochs = cfg["trainer"]["epochs"]
    shorter = smoke(tmp_path, "trainer.name=w", f"trainer.epochs={epochs - 1}", "objective.hparams.t_neg=2.0")
    with pytest.raises(ConfigError) as cut:
        _check_existing(run_dir, shorter)
    assert f"keep trainer.epochs={epochs} and add trainer.stop_at_epoch={epochs - 1}" in str(cut.value)
    # dataset.num_classes only checks the shards: a run started with the preset's count resumes with null
    assert _check_existing(run_dir, smoke(tmp_path, "trainer.name=w", "dataset.num_classes=null")) is False
