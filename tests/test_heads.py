"""Head architectures and the published BCL checkpoint (methods.md 1.3, 1.7)."""
import math

import numpy as np
import pytest
import torch

from training import registry
from training.heads import EmbedMLP, ImpTripletHead, MvCorrHead, load_published

from conftest import BCL_CHECKPOINT, need


@pytest.fixture(scope="module")
def published():
    return load_published(need(BCL_CHECKPOINT))


def test_published_checkpoint_radius(published):
    model, loss = published
    assert [tuple(l.weight.shape) for l in model.linears] == [(256, 256), (128, 256), (64, 128),
                                                               (64, 64)]
    norms = [float(p.detach().norm()) for p in model.parameters()]
    np.testing.assert_allclose(norms, [9.2394, 0.5986, 6.5407, 0.4385, 4.6523, 0.4041, 4.6495,
                                       0.2358], atol=1e-4)
    assert float(loss.b) == pytest.approx(0.205105, abs=1e-6)
    assert loss.hac_threshold() == pytest.approx(0.820420, abs=1e-6)


def test_published_checkpoint_forward(published):
    model, _ = published
    x = torch.stack([torch.linspace(-1, 1, 256), torch.ones(256) / 16,
                     torch.sin(torch.arange(256, dtype=torch.float32))])
    with torch.no_grad():
        emb = model(x).double()
    np.testing.assert_allclose(emb[0, :6], [0.016494, -0.005644, 0.229796, -0.044197, 0.012350,
                                            0.059100], atol=2e-6)
    np.testing.assert_allclose(emb[1, :6], [0.035901, -0.026937, 0.050785, 0.031353, 0.233776,
                                            0.085077], atol=2e-6)
    np.testing.assert_allclose(emb[2, :6], [-0.021138, -0.036970, -0.009801, 0.037420, 0.105087,
                                            0.143227], atol=2e-6)
    np.testing.assert_allclose(emb.sum(dim=1), [1.216700, -0.049495, -0.516295], atol=1e-5)
    d = torch.cdist(emb, emb) ** 2
    np.testing.assert_allclose([d[0, 1], d[0, 2], d[1, 2]], [0.456932, 0.752020, 0.302166],
                               atol=1e-5)


def test_embedmlp_zero_output_is_nan():
    model = EmbedMLP(4, (3, 2))
    for p in model.parameters():
        torch.nn.init.zeros_(p)
    assert torch.isnan(model(torch.ones(2, 4))).all()


def test_head_shapes_and_parameter_counts():
    d = 128
    imp = ImpTripletHead(d)
    assert imp(torch.randn(5, d)).shape == (5, 512)
    mv = MvCorrHead(d)
    assert mv(torch.randn(5, 3, d)).shape == (5, 3, 256)
    assert mv.embed(torch.randn(5, d)).shape == (5, 256)
    # unshared towers: three different weight tensors
    w = [t[0][0].weight for t in mv.towers]
    assert not torch.equal(w[0], w[1])
    assert sum(p.numel() for p in mv.parameters()) == 3 * (
        d * 512 + 512 + 2 * 512 + 512 * 256 + 256 + 2 * 256)
    bcl = EmbedMLP(d, (256, 128, 64, 64))
    out = bcl(torch.randn(5, d))
    np.testing.assert_allclose(out.norm(dim=1).detach(), 1.0, atol=1e-6)


@pytest.mark.parametrize("name", sorted(registry.HEADS))
def test_registry_batch_loss_is_finite_scalar(name):
    spec = registry.get(name)
    d, b = 16, 12
    model = spec.model(d)
    loss = spec.loss(**spec.loss_kwargs)
    views = torch.nn.functional.normalize(torch.randn(b, 3, d), dim=-1)
    batch = {"views": views, "negative": torch.randn(b, d), "labels": torch.arange(b),
             "allowed": torch.rand(b, b) > 0.5, "first": torch.randn(b, d),
             "second": torch.randn(b, d), "similar": torch.arange(b) % 2}
    out = spec.batch_loss(model, loss, batch)
    assert out.ndim == 0 and math.isfinite(float(out))
    out.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_registry_unknown_head():
    with pytest.raises(ValueError):
        registry.get("nope")
