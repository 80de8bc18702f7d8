"""Every objective against the independent float64 loop references of tests/helpers/reference.py.

Losses must agree to 1e-10 (relative) and input gradients to 1e-8 (relative to the largest
gradient entry, since entries near zero have no meaningful relative error), on a grid of batch
sizes, dimensions, view counts, hyper-parameters and options.
"""

from __future__ import annotations

import itertools

import pytest
import torch

import objectives
from tests.helpers import reference
from tests.helpers.inputs import make_inputs


def _cases():
    shapes = [dict(V=2, B=2, D=3), dict(V=2, B=5, D=4), dict(V=3, B=6, D=8), dict(V=5, B=4, D=16)]
    hps = [dict(t_pos=1.0, t_neg=0.9), dict(t_pos=0.5, t_neg=3.0, alpha=2.0, beta=0.7)]
    for shape, hp, weighting, tau_plus in itertools.product(
        shapes, hps, ["full", "uniform_attraction", "uniform_repulsion", "uniform"], [None, 0.1]
    ):
        yield "cacr_inbatch", shape, dict(hp, weighting=weighting, tau_plus=tau_plus)
    for shape, hp, intra, cache in itertools.product(
        [dict(V=2, B=3, D=4, Q=5), dict(V=3, B=4, D=6, Q=9), dict(V=5, B=3, D=8, Q=4)],
        [dict(t_pos=1.0, t_neg=2.0), dict(t_pos=2.5, t_neg=0.6, alpha=3.0, beta=3.0)],
        [True, False],
        [False, True],
    ):
        yield "cacr_moco_v2", shape, dict(hp, intra_batch=intra, official_queue_cache=cache)
    for shape, T, cost, full in itertools.product(
        [dict(V=2, B=4, D=5), dict(V=3, B=3, D=6), dict(V=4, B=5, D=8)],
        [1.0, 0.2],
        ["rbf", "euclidean"],
        [False, True],
    ):
        yield "cacr_moco_v3", shape, dict(temperature=T, cost=cost, full_mode=full)
    for B, tau in itertools.product([2, 5, 8], [0.5, 0.19, 0.05]):
        yield "infonce_inbatch", dict(B=B, D=6), dict(tau=tau)
        yield "hard_negative_inbatch", dict(B=B, D=6), dict(tau=tau, tau_plus=0.1, beta=1.0)
    for tau_plus, beta in [(0.0, 1.0), (0.3, 0.0), (0.1, 2.5)]:
        yield "hard_negative_inbatch", dict(B=4, D=5), dict(tau=0.5, tau_plus=tau_plus, beta=beta)
    for B, D, Q, tau in [(1, 3, 2, 0.2), (4, 6, 9, 0.07), (6, 16, 5, 0.5)]:
        yield "infonce_queue", dict(B=B, D=D, Q=Q), dict(tau=tau)
    for B, hp in itertools.product(
        [2, 5], [dict(), dict(align_alpha=1.0, unif_t=3.0, align_w=0.5, unif_w=2.0)]
    ):
        yield "align_uniform_inbatch", dict(B=B, D=6), hp
    for (B, D, Q), hp in itertools.product(
        [(2, 4, 3), (5, 6, 8)],
        [dict(), dict(intra_batch=False), dict(align_alpha=3.0, unif_t=2.0, align_w=1.0, unif_w=0.5)],
    ):
        yield "align_uniform_queue", dict(B=B, D=D, Q=Q), hp


CASES = list(_cases())


def _id(case):
    name, shape, hp = case
    return name + "-" + "-".join(f"{k}{v}" for k, v in {**shape, **hp}.items())


@pytest.mark.parametrize("case", CASES, ids=[_id(c) for c in CASES])
def test_matches_float64_reference(case):
    name, shape, hp = case
    ours_in = make_inputs(name, seed=len(_id(case)), **shape)
    ref_in = [x.detach().clone().requires_grad_(x.requires_grad) for x in ours_in]

    out = objectives.build(name, **hp)(*ours_in)
    ref_loss, ref_terms = reference.REFERENCES[name](*ref_in, **hp)

    assert out.loss.dim() == 0 and out.loss.dtype == torch.float64
    torch.testing.assert_close(out.loss, ref_loss, rtol=1e-10, atol=1e-12)
    assert set(out.terms) == set(ref_terms)
    for key, value in ref_terms.items():
        torch.testing.assert_close(out.terms[key], value, rtol=1e-10, atol=1e-12)
    if name.startswith("cacr"):  # spec 2.7: CACR terms already carry alpha and beta
        total = out.terms["attraction"] + out.terms["repulsion"]
        torch.testing.assert_close(total, out.loss, rtol=1e-12, atol=1e-12)

    out.loss.backward()
    ref_loss.backward()
    for ours, ref in zip(ours_in, ref_in, strict=True):
        if not ours.requires_grad:  # the queue
            assert ours.grad is None
            continue
        scale = ref.grad.abs().max().item()
        assert scale > 0
        torch.testing.assert_close(ours.grad, ref.grad, rtol=1e-8, atol=1e-8 * scale)


def test_case_grid_covers_every_objective():
    assert {c[0] for c in CASES} == set(objectives.available())
