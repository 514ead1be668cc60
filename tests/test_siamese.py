"""SSiam / TSiam pieces: methods.md 4.6 test vectors, miners against brute force, the head's
features, finite gradients, and the loss falling on toy problems."""
import numpy as np
import pytest
import torch

from training.heads import SiameseMLP
from training.heads.siamese import batch_loss
from training.losses import (ContrastiveLoss, draw, ssiam_neighbours, ssiam_pairs,
                             tsiam_negative_tracks, tsiam_pairs)
from training.losses.face_distances import CACHE_MB, FaceDistances
from training.losses.siamese_miners import ssiam_neighbours_dense

X46 = torch.tensor([[0, 0], [0.2, 0], [3, 0], [3, 0.5], [0, 4], [1, 4]], dtype=torch.float64)


def pairs_list(p):
    return list(zip(p.first.tolist(), p.second.tolist(), p.similar.tolist()))


# ---------------------------------------------------------------- methods.md 4.6
def test_ssiam_mining_vector():
    nn, r, fn, f = ssiam_neighbours(X46)
    assert nn.tolist() == [1, 0, 3, 2, 5, 4]
    np.testing.assert_allclose(r.numpy(), [0.2, 0.2, 0.5, 0.5, 1.0, 1.0], atol=1e-9)
    assert fn.tolist() == [5, 5, 4, 4, 2, 2]
    np.testing.assert_allclose(f.numpy(), [4.1231, 4.0792, 5.0, 4.6098, 5.0, 4.4721], atol=1e-4)
    assert pairs_list(ssiam_pairs(X46, n_pairs=4)) == [(4, 5, 1), (5, 4, 1), (1, 5, 0), (0, 5, 0)]
    # odd batch: the extra slot goes to the negatives
    p = ssiam_pairs(X46, n_pairs=5)
    assert p.similar.tolist() == [1, 1, 0, 0, 0]


def test_contrastive_vector():
    e1 = torch.tensor([[0, 0], [1, 0], [0, 0], [0.2, 0.1]], dtype=torch.float64)
    e2 = torch.tensor([[0.3, 0.4], [1, 0.5], [0.6, 0], [1.5, 0.1]], dtype=torch.float64)
    c = torch.tensor([1, 1, 0, 0])
    loss = ContrastiveLoss(margin=1.0)
    assert float(loss(e1, e2, c)) == pytest.approx(0.165, abs=1e-12)
    per_pair = [float(loss(e1[i:i + 1], e2[i:i + 1], c[i:i + 1])) for i in range(4)]
    np.testing.assert_allclose(per_pair, [0.25, 0.25, 0.16, 0.0], atol=1e-12)
    comp = loss.components(e1, e2, c)
    assert float(comp["similar"]) == pytest.approx(0.5 / 4)
    assert float(comp["dissimilar"]) == pytest.approx(0.16 / 4)


def test_contrastive_validation():
    loss = ContrastiveLoss()
    e = torch.zeros(3, 2)
    with pytest.raises(ValueError):
        loss(e, e, torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError):
        loss(e, torch.zeros(2, 2), torch.tensor([0, 1, 1]))
    with pytest.raises(ValueError):
        loss(e, e * float("nan"), torch.tensor([0, 1, 1]))


def test_contrastive_gradients_finite_at_coincident_points():
    e1 = torch.tensor([[0.5, 0.5], [0.1, 0.2], [1.0, 1.0]], dtype=torch.float64, requires_grad=True)
    e2 = e1.detach().clone().requires_grad_(True)        # every pair at D = 0
    loss = ContrastiveLoss()(e1, e2, torch.tensor([1, 0, 0]))
    loss.backward()
    assert float(loss.detach()) == pytest.approx(2 / 3, abs=1e-5)   # two negatives at D = 0
    assert torch.isfinite(e1.grad).all() and torch.isfinite(e2.grad).all()


# ---------------------------------------------------------------- miners vs brute force
def brute_ssiam(x: np.ndarray, n_pairs: int):
    """Literal transcription of 4.3: full matrix, stable row sort, columns 1 and end."""
    b = len(x)
    d = np.zeros((b, b))
    for i in range(b):
        for j in range(b):
            d[i, j] = np.sqrt(max(x[i] @ x[i] + x[j] @ x[j] - 2 * x[i] @ x[j], 0.0))
    order = np.argsort(d, axis=1, kind="stable")
    nn, fn = order[:, 1], order[:, -1]
    r, f = d[np.arange(b), nn], d[np.arange(b), fn]
    pos = np.argsort(-r, kind="stable")[:n_pairs // 2]
    neg = np.argsort(f, kind="stable")[:n_pairs - n_pairs // 2]
    return [(int(i), int(nn[i]), 1) for i in pos] + [(int(i), int(fn[i]), 0) for i in neg]


@pytest.mark.parametrize("seed", range(4))
def test_ssiam_miner_matches_brute_force(seed):
    rng = np.random.default_rng(seed)
    frames = rng.integers(-3, 4, size=(40, 5)).astype(np.float64)   # integer grid: many ties
    idx = draw(len(frames), 60, torch.Generator().manual_seed(seed))  # with replacement: duplicates
    x = frames[idx.numpy()]
    assert pairs_list(ssiam_pairs(torch.from_numpy(x), n_pairs=17)) == brute_ssiam(x, 17)


def brute_negatives(means, cannot_link, n_far):
    t = len(means)
    rel = np.zeros((t, t), bool)
    for i, cl in enumerate(cannot_link):
        rel[i, list(cl)] = True
        if len(cl) == 0:
            d = [np.linalg.norm(means[i] - means[j]) if j != i else -1 for j in range(t)]
            rel[i, np.argsort(d)[::-1][:n_far]] = True
    return rel | rel.T


def test_tsiam_negative_tracks_matches_brute_force():
    rng = np.random.default_rng(0)
    means = rng.normal(size=(30, 6))
    cannot_link = [[] for _ in range(30)]
    for a, b in [(0, 1), (0, 2), (3, 4), (5, 6), (7, 8), (8, 9)]:
        cannot_link[a].append(b)
        cannot_link[b].append(a)
    got = tsiam_negative_tracks(means, cannot_link, n_far=5, block=7).toarray()
    np.testing.assert_array_equal(got, brute_negatives(means, cannot_link, 5))
    assert not got.diagonal().any()
    # singleton tracks have exactly n_far outgoing negatives besides those pointing at them
    assert got[20].sum() >= 5


def brute_tsiam(x, track, rel, frame, n_pairs):
    b = len(x)
    d = np.array([[np.sqrt(max(x[i] @ x[i] + x[j] @ x[j] - 2 * x[i] @ x[j], 0.0)) for j in range(b)]
                  for i in range(b)])
    pos, neg = [], []
    for i in range(b):
        same = [j for j in range(b) if track[j] == track[i] and frame[j] != frame[i]]
        if same:
            j = max(same, key=lambda j: (d[i, j], -j))           # first of the farthest
            pos.append((-d[i, j], i, j))
        other = [j for j in range(b) if rel[track[i], track[j]]]
        if other:
            j = min(other, key=lambda j: (d[i, j], j))            # first of the nearest
            neg.append((d[i, j], i, j))
    pos = sorted(pos)[:n_pairs // 2]                            # (key, i): stable on index
    neg = sorted(neg)[:n_pairs - n_pairs // 2]
    return [(i, j, 1) for _, i, j in pos] + [(i, j, 0) for _, i, j in neg]


@pytest.mark.parametrize("seed", range(3))
def test_tsiam_miner_matches_brute_force(seed):
    rng = np.random.default_rng(seed)
    n_tracks, n_frames = 12, 80
    frame_track = rng.integers(0, n_tracks, n_frames)
    frames = rng.integers(-3, 4, size=(n_frames, 4)).astype(np.float64) + frame_track[:, None]
    cannot_link = [[] for _ in range(n_tracks)]
    for a, b in [(0, 1), (1, 2), (3, 4), (5, 6)]:
        cannot_link[a].append(b)
        cannot_link[b].append(a)
    means = np.stack([frames[frame_track == t].mean(0) if (frame_track == t).any()
                      else np.zeros(4) for t in range(n_tracks)])
    rel = tsiam_negative_tracks(means, cannot_link, n_far=3)
    idx = draw(n_frames, 50, torch.Generator().manual_seed(seed)).numpy()
    x, tr = frames[idx], frame_track[idx]
    got = tsiam_pairs(torch.from_numpy(x), torch.from_numpy(tr), rel, torch.from_numpy(idx),
                      n_pairs=21)
    assert pairs_list(got) == brute_tsiam(x, tr, rel.toarray(), idx, 21)
    # invariants: positives inside one track, different frames; negatives between related tracks
    for i, j, s in pairs_list(got):
        if s:
            assert tr[i] == tr[j] and idx[i] != idx[j]
        else:
            assert rel[tr[i], tr[j]]


@pytest.mark.parametrize("cache_mb", [CACHE_MB, 0])
@pytest.mark.parametrize("seed", range(3))
def test_miners_on_title_distances_match_brute_force(seed, cache_mb):
    """The training path: a draw of face ids mined from the title's FaceDistances (whole matrix
    cached, or per draw), duplicates in the draw mined once, same pairs as brute force."""
    rng = np.random.default_rng(seed)
    n_tracks, n_frames = 9, 45
    frame_track = np.sort(rng.integers(0, n_tracks, n_frames))
    frames = rng.integers(-2, 3, size=(n_frames, 3)).astype(np.float64) + frame_track[:, None]
    frames[5] = frames[6]                                     # equal features, different frames
    dist = FaceDistances(torch.from_numpy(frames), cache_mb=cache_mb)
    assert (dist.full is not None) == (cache_mb > 0)
    cannot_link = [[] for _ in range(n_tracks)]
    for a, b in [(0, 1), (2, 3), (3, 4)]:
        cannot_link[a].append(b)
        cannot_link[b].append(a)
    rel = tsiam_negative_tracks(np.stack([frames[frame_track == t].mean(0)
                                          if (frame_track == t).any() else np.zeros(3)
                                          for t in range(n_tracks)]), cannot_link, n_far=2)
    idx = draw(n_frames, 120, torch.Generator().manual_seed(seed)).numpy()   # many duplicates
    x, tr = frames[idx], frame_track[idx]
    got = ssiam_pairs(torch.from_numpy(x), 23, torch.from_numpy(idx), dist)
    assert pairs_list(got) == brute_ssiam(x, 23)
    got = tsiam_pairs(torch.from_numpy(x), torch.from_numpy(tr), rel, torch.from_numpy(idx), 23,
                      dist)
    assert pairs_list(got) == brute_tsiam(x, tr, rel.toarray(), idx, 23)
    nn, r, fn, f = ssiam_neighbours(torch.from_numpy(x), idx, dist)
    nn_d, r_d, fn_d, f_d = ssiam_neighbours_dense(torch.from_numpy(x))
    assert torch.equal(nn, nn_d) and torch.equal(fn, fn_d)
    # numpy's sqrt is correctly rounded (as the brute force's); torch's vectorised float64
    # sqrt can be one ulp off (sqrt(78)), so the dense reference's distances match to an ulp
    torch.testing.assert_close(r, r_d, rtol=1e-15, atol=0)
    torch.testing.assert_close(f, f_d, rtol=1e-15, atol=0)


def test_tsiam_returns_fewer_pairs_when_the_draw_lacks_them():
    x = torch.tensor([[0.0, 0], [1, 0], [5, 5]])
    rel = tsiam_negative_tracks(np.zeros((3, 2)), [[], [], []], n_far=0)   # no negatives at all
    p = tsiam_pairs(x, torch.tensor([0, 0, 1]), rel, n_pairs=8)
    assert pairs_list(p) == [(0, 1, 1), (1, 0, 1)]


# ---------------------------------------------------------------- head
def test_head_shapes_init_and_track_features():
    torch.manual_seed(0)
    head = SiameseMLP(2048)
    assert head(torch.zeros(3, 2048)).shape == (3, 2)
    assert not head.fc1.bias.any() and not head.fc2.bias.any()
    assert float(head.fc1.weight.detach().std()) == pytest.approx((2 / 2048) ** 0.5, rel=0.02)
    assert float(head.fc2.weight.detach().std()) == pytest.approx((2 / 512) ** 0.5, rel=0.1)
    x = torch.randn(10, 2048)
    feats = head.features(x)
    assert feats.shape == (10, 512) and (feats < 0).any()      # before the ReLU
    torch.testing.assert_close(head.embed(x).norm(dim=1), torch.ones(10))
    track = torch.tensor([2, 0, 0, 1, 2, 2, 1, 0, 0, 2])
    got = head.embed_tracks(x, track)
    for t in range(3):
        m = feats[track == t].mean(0)
        torch.testing.assert_close(got[t], m / m.norm())


# ---------------------------------------------------------------- toy training
def toy_identities(rng, n_ids=4, per_id=150, dim=32, spread=0.6):
    centres = rng.normal(size=(n_ids, dim)) * 2
    labels = np.repeat(np.arange(n_ids), per_id)
    return torch.tensor(centres[labels] + spread * rng.normal(size=(len(labels), dim)),
                        dtype=torch.float32), labels


def train(head, mine, frames, steps=40, seed=0):
    loss_fn = ContrastiveLoss()
    opt = torch.optim.SGD(head.parameters(), lr=1e-2, momentum=0.9, weight_decay=5e-4)
    g = torch.Generator().manual_seed(seed)
    losses = []
    for _ in range(steps):
        idx = draw(len(frames), 200, g)
        p = mine(idx)
        batch = {"first": frames[idx[p.first]], "second": frames[idx[p.second]],
                 "similar": p.similar}
        loss = batch_loss(head, loss_fn, batch)
        opt.zero_grad()
        loss.backward()
        assert all(torch.isfinite(q.grad).all() for q in head.parameters())
        opt.step()
        losses.append(float(loss.detach()))
    return losses


def test_ssiam_loss_falls_on_toy_problem():
    rng = np.random.default_rng(0)
    frames, _ = toy_identities(rng)
    torch.manual_seed(0)
    head = SiameseMLP(frames.shape[1], hidden=64)
    losses = train(head, lambda idx: ssiam_pairs(frames[idx], n_pairs=64), frames)
    assert np.mean(losses[-10:]) < 0.5 * np.mean(losses[:5])


def test_tsiam_loss_falls_and_separates_co_occurring_tracks():
    rng = np.random.default_rng(1)
    frames, ident = toy_identities(rng)
    track = torch.as_tensor(np.arange(len(ident)) // 30)            # 5 tracks per identity
    n_tracks = int(track.max()) + 1
    track_id = track.numpy()
    track_ident = ident[::30]
    # symmetric co-occurrence between some tracks of different identities; the rest singletons
    cannot_link = [[u for u in range(n_tracks) if track_ident[u] != track_ident[t] and
                    (u + t) % 3 == 0] for t in range(n_tracks)]
    means = np.stack([frames[track_id == t].numpy().mean(0) for t in range(n_tracks)])
    rel = tsiam_negative_tracks(means, cannot_link, n_far=3)
    torch.manual_seed(0)
    head = SiameseMLP(frames.shape[1], hidden=64)
    losses = train(head, lambda idx: tsiam_pairs(frames[idx], track[idx], rel, idx, n_pairs=64),
                   frames)
    assert np.mean(losses[-10:]) < 0.5 * np.mean(losses[:5])
    with torch.no_grad():
        emb = head.embed_tracks(frames, track)
    sim = emb @ emb.T
    same = torch.as_tensor(track_ident[:, None] == track_ident[None, :])
    off = ~torch.eye(n_tracks, dtype=torch.bool)
    assert sim[same & off].mean() > sim[~same].mean()
