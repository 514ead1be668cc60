"""Heads people can use elsewhere: a trained head as ONNX, and a face pack whose recogniser has
the head appended (the ``export`` command, :mod:`training.cli`).

``head_to_onnx(model)`` writes the head's clustering embedding (``model.embed``: what
``registry.HeadSpec.embed_tracks`` applies to a track, here to one row) as an ONNX graph
(N, D) -> (N, E), built node by node from the head's layers (Gemm, Relu, BatchNormalization,
LpNormalization, Mul), so it needs no ONNX exporter package and runs unchanged on onnxruntime
and on the project's own ONNX interpreter (``harvest.faces.onnx_torch``, the ``torch`` backend).

``append_head(recogniser, head)`` composes the pack's recogniser with it: same input, same node
names (insightface reads a recogniser's input scaling from them), then an L2 normalisation (the
harvest stores unit-norm embeddings, ``FaceBackend.embed``, and heads are trained on those),
then the head. ``export`` writes ``head.onnx`` and, given a pack, a pack directory that
``harvest run --models`` takes as it is: the detector copied byte for byte, the adapted
recogniser, and ``export.json`` naming the head (checkpoint sha256) it carries; the same record
is stored in the adapted model's ``metadata_props``. Every file is written atomically
(``harvest.dataset.storage.write_atomic``), and every ONNX model is checked against the torch head on
onnxruntime before anything is written.

Which heads translate: the layer types below (Linear, ReLU, BatchNorm1d, Dropout, Identity,
nested Sequential) inside the head classes of ``training.heads`` (``_embed_graphs``); a new
head class needs its ``embed`` written there, and tests/test_export.py fails for every
registered head that has none.
"""
from __future__ import annotations

import json
import os
import posixpath
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from harvest.vectors import l2_normalize

HEAD_ONNX = "head.onnx"
EXPORT_JSON = "export.json"
PACK_DIR = "pack"
HEAD_INPUT, HEAD_OUTPUT = "embeddings", "head_embedding"
DEFAULT_OPSET = 13
TOLERANCE = 1e-4        # max abs difference onnxruntime vs torch an export must stay under


class ExportError(ValueError):
    """A head or pack that cannot be exported (reported in one line by the CLI)."""


# -- the head as an ONNX graph -------------------------------------------------------------------

@dataclass
class _Graph:
    """Nodes and initializers of a graph under construction; every name starts with ``prefix``."""
    prefix: str = ""
    nodes: list = field(default_factory=list)
    initializers: list = field(default_factory=list)
    _n: int = 0

    def name(self, what: str) -> str:
        self._n += 1
        return f"{self.prefix}{what}_{self._n}"

    def const(self, what: str, value) -> str:
        from onnx import numpy_helper
        name = self.name(what)
        arr = value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else np.asarray(value)
        arr = np.ascontiguousarray(arr, np.float32)
        self.initializers.append(numpy_helper.from_array(arr, name))
        return name

    def op(self, op_type: str, inputs: list[str], output: str | None = None, **attrs) -> str:
        from onnx import helper
        out = output or self.name(op_type.lower())
        node = helper.make_node(op_type, inputs, [out], name=self.name(op_type), **attrs)
        self.nodes.append(node)
        return out


def _l2(g: _Graph, x: str) -> str:
    return g.op("LpNormalization", [x], axis=1, p=2)


def _layers(g: _Graph, module: nn.Module, x: str) -> str:
    """A module built of plain layers (eval mode) -> its output name."""
    if isinstance(module, nn.Sequential):
        for m in module:
            x = _layers(g, m, x)
        return x
    if isinstance(module, nn.Linear):
        ins = [x, g.const("weight", module.weight)]
        if module.bias is not None:
            ins.append(g.const("bias", module.bias))
        return g.op("Gemm", ins, transB=1)
    if isinstance(module, nn.ReLU):
        return g.op("Relu", [x])
    if isinstance(module, nn.BatchNorm1d):
        if module.running_mean is None:
            raise ExportError("BatchNorm1d without running statistics cannot be exported")
        c = module.num_features
        scale = module.weight if module.affine else torch.ones(c)
        bias = module.bias if module.affine else torch.zeros(c)
        return g.op("BatchNormalization", [x, g.const("bn_scale", scale), g.const("bn_bias", bias),
                                           g.const("bn_mean", module.running_mean),
                                           g.const("bn_var", module.running_var)],
                    epsilon=float(module.eps))
    if isinstance(module, (nn.Dropout, nn.Identity)):
        return x                                    # eval mode: the identity
    raise ExportError(f"cannot export a {type(module).__name__} layer to ONNX")


def _embed_mlp(g: _Graph, model, x: str) -> str:
    """``EmbedMLP.forward``: optional rescale to norm sqrt(D), Linear/ReLU, L2-normalised."""
    if model.input_norm:
        scale = np.float32(model.linears[0].in_features ** 0.5)
        x = g.op("Mul", [_l2(g, x), g.const("sqrt_dim", scale)])
    for i, layer in enumerate(model.linears):
        x = _layers(g, layer, x)
        if i < len(model.linears) - 1:
            x = g.op("Relu", [x])
    return _l2(g, x)


def _embed_graphs() -> dict:
    """head class -> (graph, model, input name) -> output name: what its ``embed`` computes."""
    from training.heads import EmbedMLP, ImpTripletHead, MvCorrHead, SiameseMLP
    return {
        EmbedMLP: _embed_mlp,
        ImpTripletHead: lambda g, m, x: _layers(g, m.tower, x),
        MvCorrHead: lambda g, m, x: _layers(g, m.towers[0], x),     # embed = tower 0
        SiameseMLP: lambda g, m, x: _l2(g, _layers(g, m.fc1, x)),   # normalised fc1 features
    }


def head_dims(model: nn.Module) -> tuple[int, int]:
    """(D, E): the head's input and clustering-embedding sizes."""
    first = next((m for m in model.modules() if isinstance(m, nn.Linear)), None)
    if first is None:
        raise ExportError(f"{type(model).__name__}: no linear layer, cannot tell its input size")
    d = first.in_features
    model.eval()
    with torch.no_grad():
        e = model.embed(torch.ones(2, d)).shape[1]
    return d, int(e)


def head_graph(g: _Graph, model: nn.Module, x: str) -> str:
    """Add to ``g`` the nodes computing ``model.embed`` from the tensor named ``x`` -> the
    name of their output."""
    build = _embed_graphs().get(type(model))
    if build is None:
        raise ExportError(f"no ONNX translation for the head class {type(model).__name__} "
                          "(add its embed to training/export.py _embed_graphs)")
    model.eval()
    return build(g, model, x)


def head_to_onnx(model: nn.Module, opset: int = DEFAULT_OPSET, metadata: dict | None = None):
    """The head's clustering embedding as an ONNX model: input ``embeddings`` (N, D) float32
    (unit-norm rows, as in the shards), output ``head_embedding`` (N, E) float32."""
    import onnx
    from onnx import TensorProto, helper
    d, e = head_dims(model)
    g = _Graph()
    out = head_graph(g, model, HEAD_INPUT)
    g.nodes.append(helper.make_node("Identity", [out], [HEAD_OUTPUT], name="output"))
    graph = helper.make_graph(
        g.nodes, "head", [helper.make_tensor_value_info(HEAD_INPUT, TensorProto.FLOAT, ["N", d])],
        [helper.make_tensor_value_info(HEAD_OUTPUT, TensorProto.FLOAT, ["N", e])], g.initializers)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)],
                              producer_name="movieface export")
    proto.ir_version = min(proto.ir_version, 8)       # readable by older onnxruntime releases
    _set_metadata(proto, metadata)
    onnx.checker.check_model(proto)
    return proto


def _set_metadata(proto, metadata: dict | None) -> None:
    from onnx import helper
    if metadata:
        helper.set_model_props(proto, {**{p.key: p.value for p in proto.metadata_props},
                                       **{k: str(v) for k, v in metadata.items()}})


# -- the recogniser with the head appended -------------------------------------------------------

def append_head(recogniser, model: nn.Module, metadata: dict | None = None):
    """ONNX recogniser (N, 3, S, S) -> (N, D) and a head with input D -> one ONNX model with the
    recogniser's input (name, shape, node names unchanged) and output (N, E): the recogniser's
    embedding L2-normalised (as the harvest stores it), then the head's ``embed``."""
    import onnx
    from onnx import helper
    rec = onnx.load_from_string(recogniser) if isinstance(recogniser, bytes) else recogniser
    if len(rec.graph.output) != 1:
        raise ExportError(f"the recogniser has {len(rec.graph.output)} outputs, expected one")
    out = rec.graph.output[0]
    dims = out.type.tensor_type.shape.dim
    rec_dim = dims[-1].dim_value if len(dims) == 2 and dims[-1].HasField("dim_value") else None
    d, e = head_dims(model)
    if rec_dim != d:
        raise ExportError(f"the head takes {d}-d embeddings, the pack's recogniser gives "
                          f"{rec_dim or 'unknown'}-d ones: train the head on shards of this pack")
    opset = next((o.version for o in rec.opset_import if o.domain in ("", "ai.onnx")), None)
    if opset is None or opset < 9:
        raise ExportError(f"the recogniser's ONNX opset {opset} is older than 9")
    taken = {n.name for n in rec.graph.node} | {t.name for t in rec.graph.initializer} | \
        {o for n in rec.graph.node for o in n.output} | {i.name for i in rec.graph.input}
    prefix = "head/"
    while any(t.startswith(prefix) for t in taken):
        prefix = "_" + prefix
    g = _Graph(prefix)
    y = head_graph(g, model, _l2(g, out.name))     # on what the harvest stores (unit norm)
    name = HEAD_OUTPUT if HEAD_OUTPUT not in taken else prefix + HEAD_OUTPUT
    g.nodes.append(helper.make_node("Identity", [y], [name], name=prefix + "output"))
    batch = dims[0]                                   # the recogniser's batch axis, as it is
    shape = [batch.dim_param if batch.HasField("dim_param")
             else (batch.dim_value if batch.HasField("dim_value") else "N"), e]
    composed = onnx.ModelProto()
    composed.CopyFrom(rec)
    graph = composed.graph
    graph.node.extend(g.nodes)
    graph.initializer.extend(g.initializers)
    del graph.output[:]
    graph.output.append(helper.make_tensor_value_info(name, out.type.tensor_type.elem_type, shape))
    _set_metadata(composed, metadata)
    onnx.checker.check_model(composed)
    return composed


# -- checks, files ---------------------------------------------------------------------------------

def _session(proto):
    import onnxruntime
    opts = onnxruntime.SessionOptions()
    opts.intra_op_num_threads = 1
    return onnxruntime.InferenceSession(proto.SerializeToString(), sess_options=opts,
                                        providers=["CPUExecutionProvider"])


def unit_rows(n: int, d: int, seed: int = 0) -> np.ndarray:
    """``n`` random unit-norm float32 rows of size ``d`` (the shards' embeddings are unit norm)."""
    return l2_normalize(np.random.default_rng(seed).standard_normal((n, d)))


def torch_embed(model: nn.Module, x: np.ndarray) -> np.ndarray:
    model.eval()
    with torch.no_grad():
        return model.embed(torch.from_numpy(np.ascontiguousarray(x, np.float32))).numpy()


def check_head_onnx(proto, model: nn.Module, n: int = 64, seed: int = 0) -> float:
    """Max abs difference of onnxruntime on ``proto`` vs ``model.embed`` on random unit rows;
    raises ExportError over ``TOLERANCE``."""
    x = unit_rows(n, head_dims(model)[0], seed)
    got = _session(proto).run(None, {proto.graph.input[0].name: x})[0]
    diff = float(np.abs(got - torch_embed(model, x)).max())
    if not diff <= TOLERANCE:
        raise ExportError(f"the exported head differs from the torch head by {diff:.3g}")
    return diff


def check_appended(composed, recogniser, model: nn.Module, n: int = 4, seed: int = 0) -> float:
    """Max abs difference of the composed model vs the head applied (torch) to the recogniser's
    L2-normalised output (onnxruntime), on random face-sized inputs."""
    rec = _session(recogniser)
    inp = rec.get_inputs()[0]
    shape = [n if not isinstance(s, int) else s for s in inp.shape]
    x = np.random.default_rng(seed).uniform(-1, 1, shape).astype(np.float32)
    base = rec.run(None, {inp.name: x})[0].reshape(shape[0], -1)
    base = l2_normalize(base)
    got = _session(composed).run(None, {inp.name: x})[0]
    diff = float(np.abs(got - torch_embed(model, base)).max())
    if not diff <= TOLERANCE:
        raise ExportError(f"the adapted recogniser differs from recogniser + head by {diff:.3g}")
    return diff


def checkpoint_file(head_path: str) -> str:
    """The weights file a head path means (a run directory -> its best checkpoint's state.pt)."""
    import fsspec

    from training.checkpoints import STATE_FILE, resolve_head
    path = resolve_head(head_path)
    fs, p = fsspec.core.url_to_fs(path)
    return path.rstrip("/") + "/" + STATE_FILE if fs.isdir(p) else path


def _sha256(url: str) -> str:
    import fsspec

    from harvest.dataset.storage import sha256_file
    fs, p = fsspec.core.url_to_fs(url)
    return sha256_file(fs, p)


def _write(fs, path: str, data: bytes) -> str:
    from harvest.dataset.storage import sha256_bytes, write_atomic
    write_atomic(fs, path, data)
    return sha256_bytes(data)


def _absolute(url: str) -> str:
    return url if "://" in url else os.path.abspath(url)


def _adapted_name(rec_path: str, head: str) -> str:
    """``mobilefacenet_128.onnx`` + bcl -> ``mobilefacenet_128+bcl.onnx`` (the recogniser's stem
    first, so the pack's licence rules, ``OnnxPackBackend.licences``, still match it)."""
    stem = os.path.basename(rec_path).removesuffix(".onnx")
    return f"{stem}+{head}.onnx"


def _export_pack(fs, root: str, output: str, models: str, name: str, model, head_info: dict,
                 props: dict) -> dict:
    """``output/pack/``: the pack's detector as it is and its recogniser with the head appended
    (checked against the two run one after the other), with its own ``export.json``; -> the
    pack's record. Refuses a pack directory that holds another export's recogniser."""
    import onnx

    from harvest.faces.base import file_sha256
    from harvest.faces.insightface_backend import find_model_pack
    from harvest.faces.registry import stage_models
    det_path, rec_path = find_model_pack(stage_models(models))
    recogniser = onnx.load(rec_path)
    adapted_file = _adapted_name(rec_path, name)
    composed = append_head(recogniser, model, metadata={
        **props, "movieface_recogniser": os.path.basename(rec_path),
        "movieface_recogniser_sha256": file_sha256(rec_path)})
    pack_diff = check_appended(composed, recogniser, model)
    pack_dir = posixpath.join(root, PACK_DIR)
    ours = {os.path.basename(det_path), adapted_file}
    others = sorted(n for n in (posixpath.basename(f) for f in fs.glob(pack_dir + "/*.onnx"))
                    if n not in ours)
    if others:      # the harvest would pick one recogniser of several: refuse, delete nothing
        raise ExportError(f"{output}/{PACK_DIR} already holds {', '.join(others)} of another "
                          "export: give another --output or remove that directory")
    det_sha = _write(fs, posixpath.join(pack_dir, os.path.basename(det_path)),
                     open(det_path, "rb").read())
    rec_sha = _write(fs, posixpath.join(pack_dir, adapted_file), composed.SerializeToString())
    pack_record = dict(
        source=_absolute(models), directory=PACK_DIR, embedding_dim=head_info["out_dim"],
        detector=dict(file=os.path.basename(det_path), sha256=det_sha),
        recogniser=dict(file=adapted_file, sha256=rec_sha, max_abs_diff=pack_diff,
                        from_file=os.path.basename(rec_path), from_sha256=file_sha256(rec_path)),
        note="harvest run --models <this directory>: embeddings are the head's, L2-normalised")
    _write(fs, posixpath.join(pack_dir, EXPORT_JSON),
           (json.dumps(dict(head=head_info, pack=pack_record), indent=2) + "\n").encode())
    return pack_record


def export(head_path: str, output: str, models: str | None = None) -> dict:
    """Write ``output/head.onnx`` and, with a pack (``models``: an SCRFD + ArcFace-format ONNX
    directory or URL), ``output/pack/`` (detector as is, recogniser + head, ``export.json``);
    ``output/export.json`` records it all. Returns that record."""
    import fsspec
    import onnx
    import onnxruntime

    from training.checkpoints import load_head

    ckpt = _absolute(checkpoint_file(head_path))
    try:
        name, model, _ = load_head(ckpt)
    except FileNotFoundError:
        raise
    except Exception as e:          # torch.load of a file that is no head checkpoint
        raise ExportError(f"{head_path}: not a head checkpoint ({type(e).__name__}: "
                          f"{str(e).splitlines()[0] if str(e) else ''})") from None
    model.eval()
    d, e = head_dims(model)
    head_info = dict(head=name, checkpoint=ckpt, checkpoint_sha256=_sha256(ckpt), in_dim=d,
                     out_dim=e, embedding="the head's clustering embedding (model.embed) of a "
                                          "unit-norm face embedding")
    props = dict(movieface_head=name, movieface_checkpoint_sha256=head_info["checkpoint_sha256"],
                 movieface_head_in_dim=d, movieface_head_out_dim=e)
    fs, root = fsspec.core.url_to_fs(output)
    root = root.rstrip("/")
    proto = head_to_onnx(model, metadata=props)
    diff = check_head_onnx(proto, model)
    record = dict(head=head_info, head_onnx=dict(file=HEAD_ONNX, input=HEAD_INPUT,
                                                 output=HEAD_OUTPUT, max_abs_diff=diff),
                  versions=dict(torch=torch.__version__, onnx=onnx.__version__,
                                onnxruntime=onnxruntime.__version__))
    if models:
        record["pack"] = _export_pack(fs, root, output, models, name, model, head_info, props)
    record["head_onnx"]["sha256"] = _write(fs, posixpath.join(root, HEAD_ONNX),
                                           proto.SerializeToString())
    _write(fs, posixpath.join(root, EXPORT_JSON), (json.dumps(record, indent=2) + "\n").encode())
    return record


if __name__ == "__main__":  # python3 -m training.export ... (the `export-head` command, by name)
    from harvest.console import export_head
    export_head()
