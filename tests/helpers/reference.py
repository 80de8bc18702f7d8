"""Independent float64 reference implementations of every objective, straight from the spec.

Loop-based and deliberately naive: Python loops over anchors, candidates and views, scalar
softmaxes, literal ``exp``/``log`` where the spec writes them. They share no code with
``objectives`` and are only meant for small inputs. Gradients flow through them via autograd;
``sg`` marks the spec's stop-gradients.
"""

from __future__ import annotations

import torch
from torch import Tensor


def unit(x: Tensor) -> Tensor:
    return x / x.norm(dim=-1, keepdim=True)


def sqd(a: Tensor, b: Tensor) -> Tensor:
    return ((a - b) ** 2).sum()


def dot(a: Tensor, b: Tensor) -> Tensor:
    return (a * b).sum()


def sg(x: Tensor) -> Tensor:
    return x.detach()


def softmax(xs: list[Tensor]) -> list[Tensor]:
    m = max(float(x.detach()) for x in xs)
    e = [torch.exp(x - m) for x in xs]
    s = sum(e)
    return [ei / s for ei in e]


def mean(xs: list[Tensor]) -> Tensor:
    return sum(xs) / len(xs)


def cacr_inbatch(views, t_pos, t_neg, alpha=1.0, beta=1.0, weighting="full", tau_plus=None):
    V, B, _ = views.shape
    z = [[unit(views[v, b]) for b in range(B)] for v in range(V)]
    uni_att = weighting in ("uniform_attraction", "uniform")
    uni_rep = weighting in ("uniform_repulsion", "uniform")
    per_view = []
    for v in range(V):
        per_anchor = []
        for b in range(B):
            d = [sqd(z[v][b], z[u][b]) for u in range(V) if u != v]
            w = [1.0 / len(d)] * len(d) if uni_att else softmax([t_pos * di for di in d])
            per_anchor.append(sum(wi * alpha * di for wi, di in zip(w, d, strict=True)))
        per_view.append(mean(per_anchor))
    attraction = mean(per_view)
    per_pair = []
    for x in range(V):
        for y in range(x + 1, V):
            per_anchor = []
            for i in range(B):
                d = [sqd(z[x][i], z[y][j]) for j in range(B) if j != i]
                w = [1.0 / len(d)] * len(d) if uni_rep else softmax([-t_neg * dj for dj in d])
                s = sum(wj * (-beta) * dj for wj, dj in zip(w, d, strict=True))
                if tau_plus is not None:
                    s = (-tau_plus * sqd(z[x][i], z[y][i]) + s) / (1 - tau_plus)
                per_anchor.append(s)
            per_pair.append(mean(per_anchor))
    repulsion = mean(per_pair)
    return attraction + repulsion, {"attraction": attraction, "repulsion": repulsion}


def cacr_moco_v2(
    q, k, queue, t_pos, t_neg, alpha=1.0, beta=1.0, intra_batch=True, official_queue_cache=False
):
    V, B, _ = q.shape
    qn = [[unit(q[v, b]) for b in range(B)] for v in range(V)]
    kn = [[unit(k[v, b]) for b in range(B)] for v in range(V)]
    L1, L2 = 0.0, 0.0
    for v in range(V):
        att, rep = [], []
        for b in range(B):
            c = [sqd(qn[v][b], kn[u][b]) for u in range(V) if u != v]
            w = softmax([t_pos * sg(ci) for ci in c])
            att.append(sum(wi * ci for wi, ci in zip(w, c, strict=True)))
            src = qn[0][b] if official_queue_cache else qn[v][b]
            d_q = [2 - 2 * dot(src, queue[m]) for m in range(queue.shape[0])]
            d_i = [sqd(qn[v][b], qn[v][j]) for j in range(B) if j != b] if intra_batch else []
            w = softmax([-t_neg * sg(d) for d in d_q] + [-t_neg * d for d in d_i])
            rep.append(sum(wm * (-dm) for wm, dm in zip(w, d_q + d_i, strict=True)))
        L1 = L1 + alpha * mean(att)
        L2 = L2 + beta * mean(rep)
    return L1 / V + L2 / V, {"attraction": L1 / V, "repulsion": L2 / V}


def cacr_moco_v3(q, k, temperature, cost="rbf", full_mode=False):
    T = temperature
    V, B, _ = q.shape
    qn = [[unit(q[v, b]) for b in range(B)] for v in range(V)]
    kn = [[unit(k[v, b]) for b in range(B)] for v in range(V)]
    keys = list(range(V)) if full_mode else [0, 1]
    att, rep = 0.0, 0.0
    for i in keys:
        js = [j for j in range(V) if j != i]
        p = {}
        for n in range(B):
            w = softmax([sg(sqd(qn[j][n], kn[i][n])) / T for j in js])
            for j, wj in zip(js, w, strict=True):
                p[j, n] = wj
        for j in js:
            a_j, r_j = [], []
            for n in range(B):
                if cost == "rbf":
                    logits = [dot(qn[j][n], kn[i][m]) / T for m in range(B)]
                    ce = torch.log(sum(torch.exp(lg) for lg in logits)) - logits[n]
                    a = sqd(qn[j][n], kn[i][n])
                    r = (
                        2
                        * T
                        * torch.log(sum(torch.exp(-sqd(qn[j][n], kn[i][m]) / (2 * T)) for m in range(B)))
                    )
                    assert abs(float((a + r - 2 * T * ce).detach())) < 1e-9  # the spec's identity
                else:
                    costs = [1 - dot(qn[j][n], kn[i][m]) for m in range(B)]
                    a = costs[n]
                    nc = [-costs[m] for m in range(B) if m != n]
                    w = softmax([sg(x) / T for x in nc])
                    r = sum(wm * x for wm, x in zip(w, nc, strict=True))
                a_j.append(p[j, n] * a)
                r_j.append(p[j, n] * r)
            reduce = mean if cost == "rbf" else sum
            att = att + reduce(a_j)
            rep = rep + reduce(r_j)
    att, rep = att / len(keys), rep / len(keys)
    return att + rep, {"attraction": att, "repulsion": rep}


def _two_view(views):
    B = views.shape[1]
    z = [unit(views[0, b]) for b in range(B)] + [unit(views[1, b]) for b in range(B)]
    return z, B


def infonce_inbatch(views, tau):
    z, B = _two_view(views)
    losses = []
    for a in range(2 * B):
        p = (a + B) % (2 * B)
        pos = torch.exp(dot(z[a], z[p]) / tau)
        neg = sum(torch.exp(dot(z[a], z[n]) / tau) for n in range(2 * B) if n not in (a, p))
        losses.append(-torch.log(pos / (pos + neg)))
    return mean(losses), {}


def infonce_queue(q, k, queue, tau):
    losses = []
    for b in range(q.shape[0]):
        qb, kb = unit(q[b]), unit(k[b])
        logits = [dot(qb, kb) / tau] + [dot(qb, queue[m]) / tau for m in range(queue.shape[0])]
        losses.append(-torch.log(torch.exp(logits[0]) / sum(torch.exp(x) for x in logits)))
    return mean(losses), {}


def _unif(Z, t):
    n = len(Z)
    terms = [torch.exp(-t * sqd(Z[i], Z[j])) for i in range(n) for j in range(i + 1, n)]
    return torch.log(mean(terms))


def align_uniform_inbatch(views, align_alpha=2.0, unif_t=2.0, align_w=1.0, unif_w=1.0):
    B = views.shape[1]
    z1 = [unit(views[0, b]) for b in range(B)]
    z2 = [unit(views[1, b]) for b in range(B)]
    align = mean([(z1[b] - z2[b]).norm() ** align_alpha for b in range(B)])
    uniform = (_unif(z1, unif_t) + _unif(z2, unif_t)) / 2
    return align_w * align + unif_w * uniform, {"align": align, "uniform": uniform}


def align_uniform_queue(q, k, queue, align_w=3.0, align_alpha=2.0, unif_w=1.0, unif_t=3.0, intra_batch=True):
    B, Q = q.shape[0], queue.shape[0]
    qn = [unit(q[b]) for b in range(B)]
    kn = [unit(k[b]) for b in range(B)]
    align = mean([(2 - 2 * dot(qn[b], kn[b])) ** (align_alpha / 2) for b in range(B)])
    total = sum(torch.exp(-unif_t * (2 - 2 * dot(qn[b], queue[m]))) for b in range(B) for m in range(Q))
    count = B * Q
    if intra_batch:
        total = total + sum(torch.exp(-unif_t * sqd(qn[i], qn[j])) for i in range(B) for j in range(i + 1, B))
        count += B * (B - 1) // 2
    uniform = torch.log(total / count)
    return align_w * align + unif_w * uniform, {"align": align, "uniform": uniform}


def hard_negative_inbatch(views, tau=0.5, tau_plus=0.1, beta=1.0):
    z, B = _two_view(views)
    N = 2 * B - 2
    losses = []
    for a in range(2 * B):
        p = (a + B) % (2 * B)
        pos = torch.exp(dot(z[a], z[p]) / tau)
        neg = [torch.exp(dot(z[a], z[n]) / tau) for n in range(2 * B) if n not in (a, p)]
        imp = [x**beta for x in neg]
        reweight = sum(i * x for i, x in zip(imp, neg, strict=True)) / mean(imp)
        ng = (-tau_plus * N * pos + reweight) / (1 - tau_plus)
        ng = torch.clamp(ng, min=N * torch.e ** (-1 / tau))
        losses.append(-torch.log(pos / (pos + ng)))
    return mean(losses), {}


REFERENCES = {
    "cacr_inbatch": cacr_inbatch,
    "cacr_moco_v2": cacr_moco_v2,
    "cacr_moco_v3": cacr_moco_v3,
    "infonce_inbatch": infonce_inbatch,
    "infonce_queue": infonce_queue,
    "align_uniform_inbatch": align_uniform_inbatch,
    "align_uniform_queue": align_uniform_queue,
    "hard_negative_inbatch": hard_negative_inbatch,
}
