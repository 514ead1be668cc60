"""Losses against the test vectors of methods.md 1.7, 2.3, 3.4; gradients; toy problems."""
import math

import numpy as np
import pytest
import torch

from training.losses import (BallClusterLoss, ImpTripletLoss, MvCorrLoss, batch_hard_triplet,
                             cheng_triplet, mcca_covariances)

LEARNED_H = -1.4799282550811768


def unit(*angles):
    return torch.tensor([[math.cos(a), math.sin(a)] for a in angles], dtype=torch.float64)


def bcl(h=None):
    loss = BallClusterLoss().double()
    if h is not None:
        with torch.no_grad():
            loss.h_bias.fill_(h)
    return loss


# ---------------------------------------------------------------- BCL (methods.md 1.7)
def test_bcl_toy1_distances_terms_and_gradient():
    x, y = unit(0, 0.5, 2.0, 2.6), torch.tensor([0, 0, 1, 1])
    loss = bcl()
    assert float(loss.b.detach()) == pytest.approx(0.744397, abs=1e-6)
    d, _ = loss.distances(x, y)
    np.testing.assert_allclose(d.numpy(), [[0.062175, 3.332552], [0.062175, 2.454404],
                                           [2.356492, 0.089327], [3.405426, 0.089327]], atol=1e-6)
    comp = loss.components(x, y)
    assert float(comp["ctrd_pos"]) == pytest.approx(0.0, abs=1e-9)
    assert float(comp["ctrd_neg"]) == pytest.approx(3.862352, abs=1e-6)
    total = loss(x, y)
    total.backward()
    assert float(loss.h_bias.grad) == pytest.approx(4.724813, abs=1e-6)
    learned = bcl(LEARNED_H).components(x, y)
    assert float(learned["ctrd_pos"]) == 0.0 and float(learned["ctrd_neg"]) == 0.0


def test_bcl_toy3_and_toy2():
    x, y = unit(0, 1.2, 2.0, 3.0), torch.tensor([0, 0, 1, 1])
    d, _ = bcl().distances(x, y)
    np.testing.assert_allclose(d.numpy(), [[0.349329, 3.602287], [0.349329, 1.465002],
                                           [1.660066, 0.244835], [3.474787, 0.244835]], atol=1e-6)
    init, learned = bcl().components(x, y), bcl(LEARNED_H).components(x, y)
    assert float(init["ctrd_pos"]) == 0.0
    assert float(init["ctrd_neg"]) == pytest.approx(4.199034, abs=1e-6)
    assert float(learned["ctrd_pos"]) == pytest.approx(0.367907, abs=1e-6)
    assert float(learned["ctrd_neg"]) == pytest.approx(0.166706, abs=1e-6)

    x2 = torch.tensor([[1, 0, 0], [0.9, 0.1, 0], [0, 1, 0], [0.2, 0.8, 0.1], [0, 0, 1],
                       [0.6, 0, 0.8]], dtype=torch.float64)
    x2 = x2 / x2.norm(dim=1, keepdim=True)
    y2 = torch.tensor([7, 7, 3, 3, 9, 9])
    init, learned = bcl().components(x2, y2), bcl(LEARNED_H).components(x2, y2)
    assert float(init["ctrd_pos"]) == 0.0
    assert float(init["ctrd_neg"]) == pytest.approx(5.296011, abs=1e-6)
    assert float(learned["ctrd_pos"]) == 0.0
    assert float(learned["ctrd_neg"]) == pytest.approx(0.442386, abs=1e-6)


def test_bcl_single_cluster_and_allowed_mask():
    x, y = unit(0, 0.5, 2.0, 2.6), torch.tensor([0, 0, 0, 0])
    comp = bcl().components(x, y)
    assert float(comp["ctrd_neg"]) == 0.0
    # allowed mask: no sample may use another centroid -> no negative term.
    y = torch.tensor([0, 0, 1, 1])
    none = torch.zeros(4, 2, dtype=torch.bool)
    assert float(bcl().components(x, y, none)["ctrd_neg"]) == 0.0
    # all allowed == supervised mode.
    full = torch.ones(4, 2, dtype=torch.bool)
    assert float(bcl().components(x, y, full)["ctrd_neg"]) == pytest.approx(3.862352, abs=1e-6)
    # only samples 0, 1 have a candidate: mean over those two samples.
    half = torch.tensor([[False, True], [False, True], [False, False], [False, False]])
    d_neg = torch.tensor([3.332552, 2.454404], dtype=torch.float64)
    want = torch.relu(9 * 0.744397 + 0.05 - d_neg).mean()
    assert float(bcl().components(x, y, half)["ctrd_neg"]) == pytest.approx(float(want), abs=1e-5)


def test_bcl_validation_errors():
    with pytest.raises(ValueError):
        bcl()(torch.tensor([[float("nan"), 0.0]], dtype=torch.float64), torch.tensor([0]))
    with pytest.raises(ValueError):
        bcl()(unit(0, 1), torch.tensor([0.0, 1.0]))
    with pytest.raises(ValueError):
        bcl()(unit(0, 1), torch.tensor([0, 1]), torch.ones(2, 3, dtype=torch.bool))


# ---------------------------------------------------------------- ImpTriplet (methods.md 2.3)
TOY_A = (torch.tensor([[0, 0], [1, 0], [0, 0.5], [1, 1]], dtype=torch.float64),
         torch.tensor([0, 0, 1, 1]))
TOY_B = (torch.tensor([[1, 0, 0], [0.8, 0.3, 0], [0, 1, 0], [0.2, 0.9, 0.1], [0, 0, 1],
                       [0.5, 0.1, 0.7]], dtype=torch.float64), torch.tensor([0, 0, 1, 1, 2, 2]))


@pytest.mark.parametrize("toy, variant, normalize, margin, want", [
    (TOY_A, "triplet", False, 0.3, 0.609017),
    (TOY_A, "imptriplet", False, 0.3, 1.425141),
    (TOY_A, "retriplet", False, 0.3, 0.730464),
    (TOY_B, "triplet", False, 0.3, 0.017368),
    (TOY_B, "imptriplet", False, 0.3, 0.364620),
    (TOY_B, "retriplet", False, 0.3, 0.017368),
    (TOY_B, "imptriplet", True, 0.3, 0.355010),
    (TOY_B, "retriplet", True, 0.3, 0.000655),
    (TOY_B, "imptriplet", False, None, 1.188873),
])
def test_batch_hard_reference_forms(toy, variant, normalize, margin, want):
    x, y = toy
    got = batch_hard_triplet(x, y, margin=margin, variant=variant, normalize=normalize)
    assert float(got) == pytest.approx(want, abs=1e-6)


def test_cheng_form():
    got = cheng_triplet(torch.tensor([0.5], dtype=torch.float64),
                        torch.tensor([1.2], dtype=torch.float64))
    assert float(got) == pytest.approx(-0.699, abs=1e-9)


def test_imptriplet_paper_form_matches_retriplet_on_toy_a_triplets():
    # The batch-hard triplets of Toy A, given explicitly: the paper form without the intra
    # term is the ReTriplet value (its second term is relu(d_ap - d_pn + m)).
    x, _ = TOY_A
    a, p, n = x[[0, 1, 2, 3]], x[[1, 0, 3, 2]], x[[2, 3, 0, 1]]
    loss = ImpTripletLoss(margin=0.3, beta=0.0)
    assert float(loss(a, p, n)) == pytest.approx(0.730464, abs=1e-6)
    # intra term: beta * mean relu(d_ap - tau2), d_ap = [1, 1, 1.118034, 1.118034]
    full = ImpTripletLoss(margin=0.3, beta=0.002, tau2=0.01).components(a, p, n)
    want = 0.002 * np.mean(np.array([1, 1, 1.118034, 1.118034]) - 0.01)
    assert float(full["intra"]) == pytest.approx(want, abs=1e-8)


# ---------------------------------------------------------------- MvCorr (methods.md 3.4)
def mvcorr_views(identical=False):
    i = np.arange(8)[:, None]
    d = np.arange(2)[None, :]
    shared = np.sin(0.9 * i + 1.7 * d + 0.3)
    views = [shared if identical else shared + 0.5 * np.cos(1.3 * i * (v + 1) + 0.4 * d + v)
             for v in range(3)]
    return torch.tensor(np.stack(views, axis=1))  # (8, 3, 2)


def test_mvcorr_covariances_and_loss():
    v = mvcorr_views()
    r_w, r_b = mcca_covariances(v)
    np.testing.assert_allclose(r_w.numpy(), [[1.745410, 0.318801], [0.318801, 2.307813]], atol=1e-6)
    np.testing.assert_allclose(r_b.numpy(), [[1.154865, -0.200080], [-0.200080, 1.801683]],
                               atol=1e-6)
    loss = MvCorrLoss(gamma=0.2, ridge=0.0)
    np.testing.assert_allclose(loss.isc(v).numpy(), [0.980767, 0.529113], atol=1e-6)
    assert float(loss(v)) == pytest.approx(-0.754940, abs=1e-6)
    assert float(MvCorrLoss(gamma=0.0, ridge=0.0)(v)) == pytest.approx(-0.756086, abs=1e-6)
    same = mvcorr_views(identical=True)
    for g in (0.0, 0.2):
        assert float(MvCorrLoss(gamma=g, ridge=0.0)(same)) == pytest.approx(-1.0, abs=1e-6)


def test_mvcorr_gradient_norm():
    v = mvcorr_views().requires_grad_(True)
    MvCorrLoss(gamma=0.2, ridge=0.0)(v).backward()
    assert float(v.grad[:, 0].norm()) == pytest.approx(0.103427, abs=1e-5)


def test_mvcorr_is_finite_with_fewer_objects_than_dimensions():
    """A small validation title gives batches with m < D: R_W is singular there. The loss must
    stay finite (null directions count as ISC 0) and keep finite gradients."""
    torch.manual_seed(0)
    v = torch.randn(4, 3, 16, dtype=torch.float64, requires_grad=True)
    isc = MvCorrLoss().isc(v)
    # rank R_W <= 3 views x (4 - 1) = 9, so at least 7 of the 16 components are null directions
    assert torch.isfinite(isc).all() and int((isc == 0).sum()) >= 16 - 9
    assert float(isc.max()) <= 1.0 + 1e-9
    loss = MvCorrLoss()(v)
    assert torch.isfinite(loss)
    loss.backward()
    assert torch.isfinite(v.grad).all()


# ---------------------------------------------------------------- gradients and toy problems
@pytest.mark.parametrize("name", ["bcl", "imptriplet", "mvcorr"])
def test_finite_gradients_and_loss_falls_on_toy_problem(name):
    """Each loss, minimised by SGD over free embeddings, falls and keeps finite gradients."""
    g = torch.Generator().manual_seed(0)
    if name == "bcl":
        params = torch.randn(24, 8, generator=g)
        lossf = BallClusterLoss()
        labels = torch.arange(8).repeat_interleave(3)
        fn = lambda p: lossf(torch.nn.functional.normalize(p, dim=1), labels)
    elif name == "imptriplet":
        params = torch.randn(3, 16, 4, generator=g)
        lossf = ImpTripletLoss()
        fn = lambda p: lossf(p[0], p[1], p[2])
    else:
        params = torch.randn(64, 3, 4, generator=g)
        lossf = MvCorrLoss()
        fn = lambda p: lossf(p)
    params.requires_grad_(True)
    opt = torch.optim.SGD([params, *lossf.parameters()], lr=0.05)
    first = None
    for _ in range(200):
        opt.zero_grad()
        loss = fn(params)
        loss.backward()
        assert torch.isfinite(params.grad).all()
        first = float(loss) if first is None else first
        opt.step()
    last = float(fn(params))
    assert last < 0.5 * first if first > 0 else last < first - 0.1
