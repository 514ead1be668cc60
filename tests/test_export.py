"""`export`: a trained head as ONNX, and a face pack whose recogniser has the head appended.

Real models throughout: the SCRFD + MobileFaceNet pack and the published BCL checkpoint in
../shared/models, real faces of crowd.mp4. Heads are the registry's own classes in the
checkpoint format `train` writes (``training.checkpoints.save_state``), with random weights and
batch-norm statistics moved off their identity defaults, so the comparison has something to
compare; training them first would not change what is tested (the translation of the layers).
"""
import glob
import hashlib
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import onnx
import onnxruntime
import pyarrow.parquet as pq
import pytest
import torch

from conftest import BCL_CHECKPOINT, CROWD, FACE_PACK, REPO, need
from training import registry
from training.cli import EXIT_USAGE, export_main
from training.export import EXPORT_JSON, HEAD_ONNX, PACK_DIR, export, unit_rows

TOL = 1e-4


def sha256(path) -> str:
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def write_checkpoint(directory, head: str, in_dim: int = 128, seed: int = 0, val_loss=0.5,
                     **model_kwargs) -> str:
    """A checkpoint directory as `train` writes it, of a randomly initialised ``head``."""
    from training.checkpoints import save_state
    from training.objective import Objective
    from training.train import make_optimizer
    torch.manual_seed(seed)
    obj = Objective(head, in_dim, model_kwargs or None)
    for m in obj.modules():                 # eval-mode batch norm that is not the identity
        if isinstance(m, torch.nn.BatchNorm1d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
    hp = registry.get(head).hparams()
    os.makedirs(directory, exist_ok=True)
    save_state(str(directory), obj, make_optimizer(obj, hp),
               dict(epoch=1, history=[dict(val_loss=val_loss)]), hp)
    return str(directory)


def run_onnx(path, x: np.ndarray) -> np.ndarray:
    s = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return s.run(None, {s.get_inputs()[0].name: x})[0]


def torch_head(ckpt, x: np.ndarray) -> np.ndarray:
    from training.checkpoints import load_head
    _, model, _ = load_head(str(ckpt))
    with torch.no_grad():
        return model.embed(torch.from_numpy(x)).numpy()


@pytest.fixture(scope="module")
def crowd_faces():
    """Aligned face crops of a few crowd.mp4 frames and their original (unit-norm) embeddings."""
    import av

    from harvest.faces.insightface_backend import InsightFaceBackend
    need(CROWD)
    frames = []
    with av.open(str(CROWD)) as c:
        for i, f in enumerate(c.decode(video=0)):
            if i % 25 == 0:
                frames.append(f.to_ndarray(format="rgb24"))
    backend = InsightFaceBackend(need(FACE_PACK), threads=2)
    crops = np.concatenate([backend.align(f, d) for f, d in zip(frames, backend.detect(frames))])
    assert len(crops) >= 10
    return crops, backend.embed(crops)


# -- (1) head.onnx on onnxruntime == the torch head ----------------------------------------------

@pytest.mark.parametrize("head", sorted(registry.HEADS))
def test_head_onnx_equals_torch_head(head, tmp_path, crowd_faces):
    ckpt = write_checkpoint(tmp_path / "ckpt", head)
    record = export(ckpt, str(tmp_path / "out"))
    path = tmp_path / "out" / HEAD_ONNX
    _, real = crowd_faces
    for x in (unit_rows(257, 128, seed=1), real.astype(np.float32)):
        got, want = run_onnx(path, x), torch_head(ckpt, x)
        assert got.shape == want.shape == (len(x), record["head"]["out_dim"])
        diff = float(np.abs(got - want).max())
        print(f"{head}: n={len(x)} max abs diff {diff:.2e}")
        assert diff < TOL
    # the model says which checkpoint it is, and so does export.json
    model = onnx.load(str(path))
    props = {p.key: p.value for p in model.metadata_props}
    ckpt_sha = sha256(os.path.join(ckpt, "state.pt"))
    assert props["movieface_head"] == head and props["movieface_checkpoint_sha256"] == ckpt_sha
    meta = json.loads((tmp_path / "out" / EXPORT_JSON).read_text())
    assert meta["head"]["checkpoint_sha256"] == ckpt_sha
    assert meta["head_onnx"]["sha256"] == sha256(path)
    assert [d.dim_param or d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim] \
        == ["N", 128]
    assert sorted(os.listdir(tmp_path / "out")) == [EXPORT_JSON, HEAD_ONNX]   # no pack asked
    assert not [n for n in os.listdir(tmp_path / "out") if ".tmp-" in n]


def test_published_bcl_exports_as_its_256d_head(tmp_path, capsys):
    from training.heads import load_published
    ckpt = need(BCL_CHECKPOINT)
    assert export_main(["--head", ckpt, "--output", str(tmp_path / "out")]) == 0
    model, _ = load_published(ckpt)
    x = np.random.default_rng(3).standard_normal((100, 256)).astype(np.float32) * 3
    with torch.no_grad():
        want = model(torch.from_numpy(x)).numpy()
    got = run_onnx(tmp_path / "out" / HEAD_ONNX, x)
    diff = float(np.abs(got - want).max())
    print(f"published bcl: max abs diff {diff:.2e}")
    assert got.shape == (100, 64) and diff < TOL
    assert np.allclose(np.linalg.norm(got, axis=1), 1, atol=1e-5)
    assert json.loads((tmp_path / "out" / EXPORT_JSON).read_text())["head"]["checkpoint_sha256"] \
        == sha256(ckpt)


# -- (2) a harvest with the adapted pack == the head on the original harvest ----------------------

@pytest.fixture(scope="module")
def harvests(tmp_path_factory, ray_cluster):
    """One BCL head exported with the pack (through the CLI, from a run directory), crowd.mp4
    harvested with the original pack and with the adapted one."""
    from harvest.cli import EXIT_OK, main as harvest_main
    root = tmp_path_factory.mktemp("export")
    run = root / "runs" / "bcl"
    best = write_checkpoint(run / "checkpoint_000001", "bcl", seed=1, val_loss=0.25)
    write_checkpoint(run / "checkpoint_000000", "bcl", seed=2, val_loss=0.5)   # not the best
    assert export_main(["--head", str(run), "--output", str(root / "export"),
                        "--models", need(FACE_PACK)]) == 0
    (root / "videos").mkdir()
    shutil.copy(need(CROWD), root / "videos" / "crowd.mp4")
    out = {}
    packs = (("original", need(FACE_PACK)), ("adapted", str(root / "export" / PACK_DIR)))
    for name, models in packs:
        out[name] = root / name
        assert harvest_main(["run", "--input", str(root / "videos"), "--output", str(out[name]),
                             "--models", models, "--crops", "none", "--workers", "1",
                             "--no-progress"]) == EXIT_OK
    return root, best, out


def faces_of(output) -> tuple[dict, dict]:
    """{(frame, box): embedding} of every face of the one shard under ``output``, and its
    metadata."""
    from harvest.dataset.schema import read_metadata
    (path,) = glob.glob(str(output / "shards" / "*.parquet"))
    table = pq.read_table(path, columns=["frame_idx", "boxes", "embeddings"])
    faces = {}
    for row in table.to_pylist():
        for f, b, e in zip(row["frame_idx"], row["boxes"], row["embeddings"]):
            faces[(f, tuple(b))] = np.asarray(e, np.float32)
    return faces, read_metadata(pq.read_schema(path))


def test_adapted_pack_is_a_pack(harvests):
    root, best, _ = harvests
    pack = root / "export" / PACK_DIR
    meta = json.loads((pack / EXPORT_JSON).read_text())
    assert meta["head"]["checkpoint_sha256"] == sha256(os.path.join(best, "state.pt"))   # best
    assert sorted(os.listdir(pack)) == sorted([EXPORT_JSON, "scrfd_2.5g_bnkps.onnx",
                                               "mobilefacenet_128+bcl.onnx"])
    assert sha256(pack / "scrfd_2.5g_bnkps.onnx") == sha256(FACE_PACK / "scrfd_2.5g_bnkps.onnx")
    rec = onnx.load(str(pack / "mobilefacenet_128+bcl.onnx"))
    orig = onnx.load(str(FACE_PACK / "mobilefacenet_128.onnx"))
    assert rec.graph.input[0] == orig.graph.input[0]                   # same input, batch free
    names = [n.name for n in orig.graph.node]
    assert [n.name for n in rec.graph.node[:len(names)]] == names     # insightface reads them
    assert [d.dim_param or d.dim_value for d in rec.graph.output[0].type.tensor_type.shape.dim] \
        == ["N", 64]
    props = {p.key: p.value for p in rec.metadata_props}
    assert props["movieface_checkpoint_sha256"] == meta["head"]["checkpoint_sha256"]
    assert props["movieface_recogniser_sha256"] == sha256(FACE_PACK / "mobilefacenet_128.onnx")


def test_adapted_harvest_embeds_faces_as_the_head_does(harvests):
    from harvest.dataset.validate import validate_main
    root, best, out = harvests
    original, meta_o = faces_of(out["original"])
    adapted, meta_a = faces_of(out["adapted"])
    # the same faces: same detector, same frames, same boxes
    assert len(original) >= 100 and set(original) == set(adapted)
    keys = sorted(original)
    x = np.stack([original[k] for k in keys])
    y = np.stack([adapted[k] for k in keys])
    want = torch_head(best, x)
    want /= np.linalg.norm(want, axis=1, keepdims=True)
    diff = float(np.abs(y - want).max())
    cos = float((y * want).sum(axis=1).min())
    print(f"{len(keys)} faces: max abs diff {diff:.2e}, min cosine {cos:.7f}")
    assert y.shape == (len(keys), 64) and diff < TOL and cos > 0.9999
    # the shards say what made them: the files of the adapted pack, 64-d embeddings
    pack = root / "export" / PACK_DIR
    assert meta_a["embedding_dim"] == 64 and meta_o["embedding_dim"] == 128
    assert meta_a["embedder_file"] == "mobilefacenet_128+bcl.onnx"
    assert meta_a["embedder_sha256"] == sha256(pack / "mobilefacenet_128+bcl.onnx")
    assert meta_a["detector_sha256"] == meta_o["detector_sha256"] == sha256(
        pack / "scrfd_2.5g_bnkps.onnx")
    assert validate_main(str(out["adapted"])) == 0


def test_export_never_leaves_two_recognisers_in_a_pack(harvests, tmp_path, capsys):
    """Another head exported over an earlier pack would leave two recognisers there (the harvest
    picks one): refused in one line, nothing changed; the same head again replaces its files."""
    root, _, _ = harvests
    out = tmp_path / "export"
    shutil.copytree(root / "export", out)
    before = {p: sha256(out / PACK_DIR / p) for p in os.listdir(out / PACK_DIR)}
    other = write_checkpoint(tmp_path / "mvcorr", "mvcorr")
    assert export_main(["--head", other, "--output", str(out), "--models", need(FACE_PACK)]) \
        == EXIT_USAGE
    assert "mobilefacenet_128+bcl.onnx" in one_line_error(capsys)
    assert {p: sha256(out / PACK_DIR / p) for p in os.listdir(out / PACK_DIR)} == before
    again = write_checkpoint(tmp_path / "bcl", "bcl", seed=5)
    assert export_main(["--head", again, "--output", str(out), "--models", need(FACE_PACK)]) == 0
    assert sorted(os.listdir(out / PACK_DIR)) == sorted(before)
    assert json.loads((out / PACK_DIR / EXPORT_JSON).read_text())["head"]["checkpoint_sha256"] \
        == sha256(os.path.join(again, "state.pt"))


def test_torch_backend_runs_the_adapted_pack(harvests, crowd_faces):
    """The torch backend (``auto`` on a GPU node) runs the adapted recogniser through the
    project's ONNX interpreter: the same embeddings as onnxruntime (fp32, CPU)."""
    from harvest.faces.insightface_backend import InsightFaceBackend
    from harvest.faces.torch_backend import TorchFaceBackend
    root, _, _ = harvests
    crops, _ = crowd_faces
    pack = str(root / "export" / PACK_DIR)
    a = InsightFaceBackend(pack, threads=2).embed(crops)
    t = TorchFaceBackend(pack, threads=2, precision="fp32")
    b = t.embed(crops)
    diff = float(np.abs(a - b).max())
    print(f"torch vs onnxruntime on {len(crops)} faces: max abs diff {diff:.2e}")
    assert t.embedding_dim == 64 and b.shape == (len(crops), 64) and diff < TOL


# -- (3) the command's usage errors --------------------------------------------------------------

def one_line_error(capsys) -> str:
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1, err
    assert "Traceback" not in err
    return err


def test_missing_head_is_one_line_exit_2(tmp_path, capsys):
    out = tmp_path / "out"
    assert export_main(["--head", str(tmp_path / "nope"), "--output", str(out)]) == EXIT_USAGE
    err = one_line_error(capsys)
    assert err.startswith("export: --head") and "no such file" in err
    assert not out.exists()


def test_bad_heads_and_packs_are_one_line_exit_2(tmp_path, capsys):
    empty_run = tmp_path / "run"
    empty_run.mkdir()
    junk = tmp_path / "junk.pt"
    junk.write_text("not a checkpoint\n")
    out = tmp_path / "out"
    ckpt = write_checkpoint(tmp_path / "ckpt", "bcl")
    cases = [
        (["--head", str(empty_run)], "neither a checkpoint nor a run directory"),
        (["--head", str(junk)], "not a head checkpoint"),
        (["--head", ckpt, "--models", str(tmp_path / "no-pack")], "no such file"),
        (["--head", ckpt, "--models", str(empty_run)], "need one SCRFD detector"),
        # the published head takes 256-d VGGFace2 features: it cannot follow a 128-d recogniser
        (["--head", need(BCL_CHECKPOINT), "--models", need(FACE_PACK)], "256-d"),
    ]
    for args, message in cases:
        assert export_main(args + ["--output", str(out)]) == EXIT_USAGE, args
        err = one_line_error(capsys)
        assert err.startswith("export: ") and message in err, err
        assert not out.exists() or not os.listdir(out), "a failed export wrote files"
    (tmp_path / "file").write_text("x")
    assert export_main(["--head", ckpt, "--output", str(tmp_path / "file")]) == EXIT_USAGE
    assert "existing file" in one_line_error(capsys)


def test_module_entry_point(tmp_path):
    """``python3 -m training.export`` is the command too (a shell's builtin ``export`` shadows a
    console script of that name)."""
    r = subprocess.run([sys.executable, "-m", "training.export", "--head", str(tmp_path / "nope"),
                        "--output", str(tmp_path / "out")], cwd=REPO, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == EXIT_USAGE and len(r.stderr.strip().splitlines()) == 1, r.stderr
