"""The public API of ``objectives``: the registry, and clear errors for bad input."""

from __future__ import annotations

import pytest
import torch

import objectives

R = torch.randn


def test_every_documented_name_is_registered():
    assert objectives.available() == sorted(
        [
            "cacr_inbatch",
            "cacr_moco_v2",
            "cacr_moco_v3",
            "infonce_inbatch",
            "infonce_queue",
            "align_uniform_inbatch",
            "align_uniform_queue",
            "hard_negative_inbatch",
        ]
    )
    for name in objectives.available():
        assert isinstance(objectives.build(name, **_required(name)), torch.nn.Module)


def _required(name):
    return {p: 1.0 for p, d in objectives.hyperparameters(name).items() if d is ...}


def test_hyperparameters_and_defaults_follow_the_issue_table():
    hp = objectives.hyperparameters("cacr_inbatch")
    assert hp["t_pos"] is ... and hp["t_neg"] is ...
    assert (hp["alpha"], hp["beta"], hp["weighting"], hp["tau_plus"]) == (1.0, 1.0, "full", None)
    hp = objectives.hyperparameters("cacr_moco_v2")
    assert (hp["intra_batch"], hp["official_queue_cache"]) == (True, False)
    hp = objectives.hyperparameters("cacr_moco_v3")
    assert (hp["cost"], hp["full_mode"]) == ("rbf", False)
    hp = objectives.hyperparameters("align_uniform_inbatch")
    assert (hp["align_alpha"], hp["unif_t"], hp["align_w"], hp["unif_w"]) == (2.0, 2.0, 1.0, 1.0)


@pytest.mark.parametrize(
    "call,match",
    [
        (lambda: objectives.build("simclr"), "unknown objective 'simclr'; choose one of align_uniform"),
        (lambda: objectives.build("cacr_inbatch", t_pos=1.0), "needs 't_neg'"),
        (
            lambda: objectives.build("infonce_inbatch", tau=0.2, temperature=1.0),
            "no hyper-parameter 'temperature'; it accepts tau",
        ),
        (lambda: objectives.build("cacr_inbatch", t_pos=1.0, t_neg=0.0), "t_neg must be a finite number > 0"),
        (lambda: objectives.build("cacr_inbatch", t_pos=-1.0, t_neg=1.0), "t_pos must be"),
        (
            lambda: objectives.build("cacr_inbatch", t_pos=1.0, t_neg=1.0, weighting="w1"),
            "weighting must be one of full, uniform_attraction",
        ),
        (lambda: objectives.build("cacr_inbatch", t_pos=1.0, t_neg=1.0, tau_plus=1.0), "tau_plus"),
        (lambda: objectives.build("cacr_moco_v3", temperature=0.2, cost="l2"), "cost must be one of rbf"),
        (lambda: objectives.build("infonce_queue", tau=float("nan")), "tau must be"),
        (lambda: objectives.build("hard_negative_inbatch", beta=-1.0), "beta must be >= 0"),
        (lambda: objectives.build("align_uniform_inbatch", unif_t=0), "unif_t must be"),
    ],
)
def test_bad_hyperparameters_raise_clear_errors(call, match):
    with pytest.raises(ValueError, match=match):
        call()


CACR_IN = objectives.build("cacr_inbatch", t_pos=1.0, t_neg=1.0)
MOCO2 = objectives.build("cacr_moco_v2", t_pos=1.0, t_neg=1.0)
MOCO3 = objectives.build("cacr_moco_v3", temperature=0.2)
NCE = objectives.build("infonce_inbatch", tau=0.2)
NCE_Q = objectives.build("infonce_queue", tau=0.2)
AU_Q = objectives.build("align_uniform_queue")


@pytest.mark.parametrize(
    "call,match",
    [
        (lambda: CACR_IN(R(8, 16)), r"views must be \[V, B, D\]"),
        (lambda: CACR_IN(R(1, 8, 16)), "V >= 2"),
        (lambda: CACR_IN(R(3, 1, 16)), "batch of at least 2"),
        (lambda: CACR_IN(torch.ones(2, 4, 3, dtype=torch.long)), "floating-point"),
        (lambda: CACR_IN([[1.0]]), "must be a torch.Tensor"),
        (lambda: NCE(R(3, 8, 16)), r"exactly 2 views"),
        (lambda: MOCO2(R(3, 8, 16), R(3, 7, 16), R(32, 16)), "q and k must have the same shape"),
        (lambda: MOCO2(R(3, 8, 16), R(2, 8, 16), R(32, 16)), "same shape"),
        (lambda: MOCO2(R(3, 8, 16), R(3, 8, 16), R(32, 15)), "share the embedding dimension"),
        (lambda: MOCO2(R(3, 8, 16), R(3, 8, 16), R(0, 16)), "queue must have at least 1 rows"),
        (lambda: MOCO2(R(3, 8, 16), R(3, 8, 16), R(32)), r"queue must be \[N, D\]"),
        (lambda: MOCO3(R(2, 8, 16), R(2, 8, 8)), "same shape"),
        (lambda: NCE_Q(R(8, 16), R(9, 16), R(32, 16)), "same shape"),
        (lambda: NCE_Q(R(8, 16), R(8, 16), R(0, 16)), "at least 1 rows"),
        (lambda: NCE_Q(R(2, 8, 16), R(2, 8, 16), R(32, 16)), r"q must be \[N, D\]"),
        (lambda: AU_Q(R(1, 16), R(1, 16), R(32, 16)), "at least 2 rows"),
    ],
)
def test_bad_inputs_raise_clear_errors(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_loss_is_a_scalar_and_terms_are_named():
    out = CACR_IN(R(5, 8, 16))
    assert out.loss.shape == () and set(out.terms) == {"attraction", "repulsion"}
    out = objectives.build("align_uniform_inbatch")(R(2, 8, 16))
    assert set(out.terms) == {"align", "uniform"}
    assert NCE(R(2, 8, 16)).terms == {}


def test_cacr_inbatch_takes_the_official_ablation_names_as_aliases():
    import objectives

    z = torch.nn.functional.normalize(
        torch.randn(3, 6, 5, generator=torch.Generator().manual_seed(4)), dim=-1
    )
    for official, ours in (
        ("without_w1", "uniform_attraction"),
        ("without_w2", "uniform_repulsion"),
        ("none", "uniform"),
    ):
        a = objectives.build("cacr_inbatch", t_pos=1.0, t_neg=0.9, weighting=official)(z)
        b = objectives.build("cacr_inbatch", t_pos=1.0, t_neg=0.9, weighting=ours)(z)
        torch.testing.assert_close(a.loss, b.loss)
    full = objectives.build("cacr_inbatch", t_pos=1.0, t_neg=0.9)(z).loss
    assert not torch.allclose(
        full, objectives.build("cacr_inbatch", t_pos=1.0, t_neg=0.9, weighting="none")(z).loss
    )
