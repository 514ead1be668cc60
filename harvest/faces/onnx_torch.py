"""Run an ONNX face model as a torch module: the one place where ONNX files become torch.

``OnnxModule(path)`` reads the graph with ``onnx`` and executes its nodes in order with torch
operations; float initializers become ``nn.Parameter`` s, so the module is trainable (a
recogniser can be fine-tuned) and moves with ``.to(device, dtype)`` like any module. Only the
operators that SCRFD detectors and ArcFace-format recognisers use are implemented (a missing one
raises at load time, naming it). Outputs match onnxruntime to ~1e-5 (tests/test_torch_backend.py).

Devices, by construction: the graph's *structure* stays on the host, its *data* follows the
input. Structure is what ops read as Python numbers (Reshape shapes, Slice bounds, Resize scales
and sizes, Unsqueeze axes, Clip bounds): the integer constants, the float constants used only in
those places, and the values of ``Shape`` (a tensor's size is host knowledge on any device) and
of arithmetic on them. They live in a plain dict that ``.to(device, dtype)`` never moves, so
reading them never syncs a GPU and never touches a ``meta`` tensor. Every op on data runs on the
device of its data: a host value that meets device data (indices of a Gather on features, say)
moves to that device first (``_place``). tests/test_onnx_torch_device.py runs the face pack
on the ``meta`` device to hold this without a GPU.

A small interpreter instead of onnx2torch: onnx2torch imports torchvision, whose registry wheels
are built for CUDA torch and do not import beside the CPU torch build that CI installs.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


def _attrs(node) -> dict:
    import onnx
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def _ints(t) -> list[int]:
    return [int(v) for v in torch.as_tensor(t).reshape(-1).tolist()]


def _add_bias(y, b, shape):
    """y + b; a float32 bias of a reduced-precision layer is added in float32 and the sum
    rounded once (``OnnxModule.reduce_precision``)."""
    if b.dtype == y.dtype:
        return y + b.reshape(shape)
    return (y.float() + b.reshape(shape)).to(y.dtype)


def _conv(a, x, w, b=None):
    pads = a.get("pads", [0] * 4)
    k = len(pads) // 2
    if pads[:k] != pads[k:]:
        x = F.pad(x, [p for i in reversed(range(k)) for p in (pads[i], pads[i + k])])
        pads = [0] * len(pads)
    y = F.conv2d(x, w, b if b is None or b.dtype == x.dtype else None, stride=a.get("strides", 1),
                 padding=pads[:k], dilation=a.get("dilations", 1), groups=a.get("group", 1))
    return y if b is None or b.dtype == x.dtype else _add_bias(y, b, (1, -1) + (1,) * k)


def _pool(kind):
    def run(a, x):
        pads = a.get("pads", [0, 0, 0, 0])
        if pads[:2] != pads[2:]:
            raise NotImplementedError("asymmetric pooling pads")
        args = dict(kernel_size=a["kernel_shape"], stride=a.get("strides", a["kernel_shape"]),
                    padding=pads[:2], ceil_mode=bool(a.get("ceil_mode", 0)))
        if kind == "max":
            return F.max_pool2d(x, **args)
        return F.avg_pool2d(x, count_include_pad=bool(a.get("count_include_pad", 0)), **args)
    return run


def _resize(a, x, roi=None, scales=None, sizes=None):
    mode = a.get("mode", b"nearest")
    mode = mode.decode() if isinstance(mode, bytes) else mode
    ctm = a.get("coordinate_transformation_mode", b"half_pixel")
    ctm = ctm.decode() if isinstance(ctm, bytes) else ctm
    if sizes is not None and sizes.numel():
        size = _ints(sizes)[2:]
    else:
        s = torch.as_tensor(scales).reshape(-1).tolist()[2:]
        size = [int(math.floor(d * f)) for d, f in zip(x.shape[2:], s)]
    if mode == "nearest":
        if ctm != "asymmetric" or a.get("nearest_mode", b"round_prefer_floor") not in (b"floor", "floor"):
            raise NotImplementedError(f"Resize nearest with {ctm}")
        return F.interpolate(x, size=size, mode="nearest")
    if mode == "linear":
        return F.interpolate(x, size=size, mode="bilinear", align_corners=ctm == "align_corners")
    raise NotImplementedError(f"Resize mode {mode}")


def _reshape(a, x, shape):
    dims = _ints(shape)
    dims = [x.shape[i] if d == 0 else d for i, d in enumerate(dims)]
    return x.reshape(dims)


def _slice(a, x, starts, ends, axes=None, steps=None):
    starts, ends = _ints(starts), _ints(ends)
    axes = _ints(axes) if axes is not None else list(range(len(starts)))
    steps = _ints(steps) if steps is not None else [1] * len(starts)
    idx = [slice(None)] * x.dim()
    for s, e, ax, st in zip(starts, ends, axes, steps):
        n = x.shape[ax]
        idx[ax] = slice(max(-n, min(s, n)), max(-n - 1, min(e, n)), st)
    return x[tuple(idx)]


def _gemm(a, x, w, b=None):
    if a.get("transA", 0):
        x = x.t()
    w = w.t() if a.get("transB", 0) else w
    y = a.get("alpha", 1.0) * (x @ w)
    return y if b is None else _add_bias(y, a.get("beta", 1.0) * b, b.shape)


def _bn(a, x, scale, bias, mean, var):
    return F.batch_norm(x, mean, var, scale, bias, training=False, eps=a.get("epsilon", 1e-5))


def _prelu(a, x, slope):
    if slope.dim() > 1:                       # (C, 1, 1) in ONNX; F.prelu wants (C,)
        return torch.where(x >= 0, x, x * slope)
    return F.prelu(x, slope)


def _unsqueeze(a, x, axes=None):
    for ax in sorted(a["axes"] if axes is None else _ints(axes)):
        x = x.unsqueeze(ax)
    return x


OPS = {
    "Conv": _conv,
    "Relu": lambda a, x: F.relu(x),
    "Sigmoid": lambda a, x: torch.sigmoid(x),
    "LeakyRelu": lambda a, x: F.leaky_relu(x, a.get("alpha", 0.01)),
    "PRelu": _prelu,
    "Clip": lambda a, x, lo=None, hi=None: torch.clamp(
        x, min=float(lo) if lo is not None else a.get("min"),
        max=float(hi) if hi is not None else a.get("max")),
    "Add": lambda a, x, y: x + y,
    "Sub": lambda a, x, y: x - y,
    "Mul": lambda a, x, y: x * y,
    "Div": lambda a, x, y: x / y,
    "MaxPool": _pool("max"),
    "AveragePool": _pool("avg"),
    "GlobalAveragePool": lambda a, x: x.mean(dim=(2, 3), keepdim=True),
    "BatchNormalization": _bn,
    "Flatten": lambda a, x: x.flatten(a.get("axis", 1)),
    "Gemm": _gemm,
    "MatMul": lambda a, x, y: x @ y,
    "Transpose": lambda a, x: x.permute(*a["perm"]),
    "Reshape": _reshape,
    "Concat": lambda a, *xs: torch.cat([t.to(xs[0].dtype) for t in xs], dim=a["axis"]),
    "Shape": lambda a, x: torch.tensor(list(x.shape), dtype=torch.int64),     # on the host
    "Gather": lambda a, x, i: torch.index_select(x, a.get("axis", 0), i.reshape(-1).long()).reshape(
        x.shape[:a.get("axis", 0)] + i.shape + x.shape[a.get("axis", 0) + 1:]),
    "Unsqueeze": _unsqueeze,
    "Slice": _slice,
    "Resize": _resize,
    "Upsample": lambda a, x, scales: _resize({**a, "coordinate_transformation_mode": "asymmetric",
                                              "nearest_mode": "floor"}, x, None, scales),
    "Identity": lambda a, x: x,
    "Dropout": lambda a, x, *rest: x,
    # x / ||x||_p along ``axis``: the L2 normalisations of an exported head (training/export.py)
    "LpNormalization": lambda a, x: F.normalize(x, p=float(a.get("p", 2)), dim=a.get("axis", -1)),
}

# inputs an op reads as Python numbers (graph structure): (op, input position) pairs
HOST_INPUTS = {("Reshape", 1), ("Slice", 1), ("Slice", 2), ("Slice", 3), ("Slice", 4),
               ("Resize", 1), ("Resize", 2), ("Resize", 3), ("Upsample", 1), ("Unsqueeze", 1),
               ("Clip", 1), ("Clip", 2)}
# biases, which keep their own dtype (float32 in a bfloat16 network: ``reduce_precision``)
BIAS_INPUTS = {("Conv", 2), ("Gemm", 2)}


def _on_host(t: torch.Tensor) -> bool:
    return t.device.type == "cpu"


def _place(op: str, args: list) -> list:
    """A node's inputs placed for its op. Structural inputs (``HOST_INPUTS``) stay as they are,
    on the host. Data inputs go to one device, that of the first one not on the host, if any
    (host values: integer constants, shapes and arithmetic on them), and float data to one
    dtype: float32 where dtypes are mixed (an output layer kept in float32 by
    ``OnnxModule.reduce_precision`` takes its reduced-precision input in float32)."""
    data = [k for k, t in enumerate(args) if t is not None and (op, k) not in HOST_INPUTS]
    device = next((args[k].device for k in data if not _on_host(args[k])), None)
    floats = {args[k].dtype for k in data
              if args[k].is_floating_point() and (op, k) not in BIAS_INPUTS}
    dtype = floats.pop() if len(floats) == 1 else torch.float32
    out = list(args)
    for k in data:
        t = out[k]
        if device is not None and _on_host(t):
            t = t.to(device)
        if t.is_floating_point() and t.dtype != dtype and (op, k) not in BIAS_INPUTS:
            t = t.to(dtype)
        out[k] = t
    return out


class OnnxModule(nn.Module):
    """An ONNX graph as a torch module (float initializers are trainable parameters)."""

    def __init__(self, path: str):
        super().__init__()
        import onnx
        from onnx import numpy_helper

        model = onnx.load(path)
        graph = model.graph
        self.params = nn.ParameterDict()
        self._keys: dict[str, str] = {}
        self._host: dict[str, torch.Tensor] = {}     # graph structure: never moved (see above)
        arrays = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
        self.nodes = []
        for node in graph.node:
            if node.op_type == "Constant":
                arrays[node.output[0]] = numpy_helper.to_array(_attrs(node)["value"])
                continue
            if node.op_type not in OPS:
                raise NotImplementedError(f"{path}: ONNX operator {node.op_type} is not supported")
            self.nodes.append((node.op_type, list(node.input), list(node.output), _attrs(node)))
        as_data = {i for op, ins, _, _ in self.nodes for k, i in enumerate(ins)
                   if (op, k) not in HOST_INPUTS}
        for name, arr in arrays.items():
            self._add_tensor(name, arr, structural=name not in as_data)
        init_names = {i.name for i in graph.initializer}
        self.input_names = [i.name for i in graph.input if i.name not in init_names]
        self.output_names = [o.name for o in graph.output]

    def _key(self, name: str) -> str:
        if name not in self._keys:
            self._keys[name] = f"t{len(self._keys)}"
        return self._keys[name]

    def _add_tensor(self, name: str, arr: np.ndarray, structural: bool) -> None:
        """A constant of the graph: integers and constants only read as structure stay on the
        host; float weights become parameters (trainable), float scalars buffers (moved and cast
        with the module, never trained)."""
        t = torch.from_numpy(np.array(arr, copy=True))
        if structural or not t.is_floating_point():
            self._host[name] = t
        elif t.numel() > 1:
            self.params[self._key(name)] = nn.Parameter(t)
        else:
            self.register_buffer(self._key(name), t, persistent=True)

    def _tensor(self, name: str, env: dict):
        if name in env:
            return env[name]
        if name in self._host:
            return self._host[name]
        key = self._keys[name]
        return self.params[key] if key in self.params else getattr(self, key)

    def forward(self, *inputs, outputs=None, resume=None):
        """``outputs``: names of tensors to return instead of the graph outputs (an inner
        feature); ``resume``: {name: tensor} for inner tensors: the graph runs on from the node
        after the last one that produces them (the nodes after it may only need those tensors
        and weights), e.g. the tail of a recogniser on a perturbed feature."""
        env = dict(zip(self.input_names, inputs))
        start = 0
        if resume:
            env.update(resume)
            start = 1 + max(i for i, n in enumerate(self.nodes) if set(n[2]) & set(resume))
        for op, ins, outs, attrs in self.nodes[start:]:
            args = [self._tensor(i, env) if i else None for i in ins]
            while args and args[-1] is None:
                args.pop()
            out = OPS[op](attrs, *_place(op, args))
            env[outs[0]] = out
        res = [env[n] for n in (outputs or self.output_names)]
        return res[0] if len(res) == 1 else res

    def output_layers(self) -> set[int]:
        """Indices (in ``self.nodes``) of the output layers: for each graph output, the last
        Conv / Gemm / MatMul it depends on and every node between that one and the output."""
        producer = {o: k for k, (_, _, outs, _) in enumerate(self.nodes) for o in outs}
        layers = set()
        for name in self.output_names:
            path, k = [], producer.get(name)
            while k is not None:
                path.append(k)
                op, ins, _, _ = self.nodes[k]
                if op in ("Conv", "Gemm", "MatMul"):
                    layers.update(path)
                    break
                k = next((producer[i] for i in ins if i in producer), None)   # the data input
        return layers

    def reduce_precision(self, dtype) -> "OnnxModule":
        """Cast the network to ``dtype`` (float16 / bfloat16) except what must stay float32
        (measured on crowd.mp4 against float32, bfloat16 on CPU):
          * the output layers (``output_layers``), weights and arithmetic (``_place``):
            rounding an output to bfloat16 (8 significant bits) moves SCRFD's box and landmark
            regressions by up to 2 source pixels, and the shifted crop cost a face 0.05 of
            embedding cosine (min IoU 0.973 -> 0.993, min cosine 0.952 -> 0.988 with them);
          * in bfloat16 also the biases of Conv / Gemm layers (added in float32, the sum
            rounded once, ``_add_bias``): the recogniser's folded batch norms put large biases
            against large products, and rounding them cost 0.008 of cosine on identical crops
            (the weights' rounding half as much). float16's 11 bits make both negligible."""
        keep = {i for k in self.output_layers() for i in self.nodes[k][1]}
        if dtype == torch.bfloat16:
            keep |= {ins[k] for op, ins, _, _ in self.nodes for k in range(len(ins))
                     if (op, k) in BIAS_INPUTS}
        for k in {i for op, ins, _, _ in self.nodes for i in ins} - keep:
            key = self._keys.get(k)
            if key in self.params:
                self.params[key].data = self.params[key].data.to(dtype)
            elif key is not None and key in self._buffers:
                self._buffers[key] = self._buffers[key].to(dtype)
        return self

    def last_linear_input(self) -> str:
        """Name of the input of the last Conv / Gemm / MatMul node (a recogniser's embedding
        layer: where SER-FIQ-style dropout goes)."""
        return next(ins[0] for op, ins, _, _ in reversed(self.nodes)
                    if op in ("Conv", "Gemm", "MatMul"))
