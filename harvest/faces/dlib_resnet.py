"""dlib's ResNet face descriptor (``dlib_face_recognition_resnet_model_v1.dat``) in torch.

The same weights, read from dlib's own file by a small parser of dlib's serialization format,
run by a tiny ``torch.nn.Module``: batched, GIL released, and ~10x faster on CPU than this
build of dlib (no BLAS). Descriptors agree with ``dlib.face_recognition_model_v1
.compute_face_descriptor`` on the same 150x150 chips to ~1e-6 (tests/test_dlib_resnet.py).

The file (written by ``dlib::serialize(anet_type)``, dnn_face_recognition_ex.cpp):

* ints: a control byte (low nibble: byte count, bit 7: negative) then the magnitude, little
  endian; floats outside tensors: an int mantissa and an int exponent (value = m * 2**e);
  strings: an int length then the bytes; bools: the characters '0' / '1'.
* tensors: int version (2), n, k, nr, nc, then n*k*nr*nc raw little-endian float32; the
  ``alias_tensor`` views of a layer's parameter tensor: int version (1), n, k, nr, nc.
* the network: ``add_loss_layer`` (version, loss details, subnetwork), then every layer wrapper
  writes its version before its subnetwork, so the file holds all the versions from the output
  inward (2: ``add_layer``, 1: ``tag`` / ``skip``, 3: the ``add_layer`` over the input layer),
  then the input layer, then each computational layer's details from the input outward, each
  followed by its bookkeeping (3 bools, 3 empty tensors, and for the first one its sample
  expansion factor).

The network: con 7x7/2 (32) -> affine -> relu -> max_pool 3x3/2, then residual blocks
(conv3x3 -> affine -> relu -> conv3x3 -> affine, plus the block input; the first block of a level
has a stride-2 first conv and a 2x2/2 average pool of its input as the shortcut), relu after
each sum, global average pool, fc without bias to 128. dlib's ``add_prev`` adds tensors of
different shapes as if the smaller were zero-padded at the end of each dimension (channels 32
-> 64, and a 3x3 block output onto a 4x4 shortcut at the 256-channel level).
"""
from __future__ import annotations

import functools
import threading

import numpy as np

_INPUT = "input_rgb_image_sized"


class DlibFormatError(ValueError):
    pass


class _Reader:
    def __init__(self, data: bytes):
        self.b = data
        self.pos = 0

    def int(self) -> int:
        c = self.b[self.pos]
        n = c & 0x0F
        if n > 8 or c & 0x70:
            raise DlibFormatError(f"bad int control byte {c:#x} at {self.pos}")
        v = int.from_bytes(self.b[self.pos + 1:self.pos + 1 + n], "little")
        self.pos += 1 + n
        return -v if c & 0x80 else v

    def float(self) -> float:
        m, e = self.int(), self.int()
        if e >= 32000:              # dlib's codes for inf, -inf, nan
            return {32000: float("inf"), 32001: float("-inf")}.get(e, float("nan"))
        return float(m) * 2.0 ** e

    def str(self) -> str:
        n = self.int()
        s = self.b[self.pos:self.pos + n]
        self.pos += n
        return s.decode("latin-1")

    def peek_str(self) -> str | None:
        p = self.pos
        try:
            n = self.int()
            if n > 64:
                return None
            s = self.b[self.pos:self.pos + n]
            return s.decode("ascii") if s.replace(b"_", b"").isalnum() else None
        except (DlibFormatError, IndexError, UnicodeDecodeError):
            return None
        finally:
            self.pos = p

    def bool(self) -> bool:
        c = self.b[self.pos:self.pos + 1]
        if c not in (b"0", b"1"):
            raise DlibFormatError(f"expected a bool at {self.pos}, found {c!r}")
        self.pos += 1
        return c == b"1"

    def tensor(self) -> np.ndarray:
        v = self.int()
        if v != 2:
            raise DlibFormatError(f"tensor version {v} at {self.pos}")
        shape = tuple(self.int() for _ in range(4))
        n = int(np.prod(shape))
        a = np.frombuffer(self.b, "<f4", n, self.pos).reshape(shape).copy()
        self.pos += 4 * n
        return a

    def alias(self) -> tuple:
        v = self.int()
        if v != 1:
            raise DlibFormatError(f"alias_tensor version {v} at {self.pos}")
        return tuple(self.int() for _ in range(4))


def _layer(r: _Reader) -> dict:
    name = r.str()
    if name == "con_4":
        params = r.tensor().ravel()
        nf, nr, nc, sy, sx, py, px = (r.int() for _ in range(7))
        fshape, bshape = r.alias(), r.alias()
        for _ in range(4):
            r.float()               # learning-rate / weight-decay multipliers
        nw = int(np.prod(fshape))
        return dict(type="con", weight=params[:nw].reshape(fshape), bias=params[nw:nw + nf],
                    stride=(sy, sx), padding=(py, px), kernel=(nr, nc))
    if name == "affine_":
        params = r.tensor().ravel()
        g, _ = r.alias(), r.alias()
        if r.b[r.pos:r.pos + 1] not in (b"0", b"1"):
            mode = r.int()          # 0: CONV_MODE (per channel), 1: FC_MODE
            if mode != 0:
                raise DlibFormatError(f"affine_ mode {mode} is not the per-channel mode")
        k = int(np.prod(g))
        return dict(type="affine", gamma=params[:k], beta=params[k:2 * k])
    if name == "relu_":
        return dict(type="relu")
    if name in ("max_pool_2", "avg_pool_2"):
        nr, nc, sy, sx, py, px = (r.int() for _ in range(6))
        return dict(type=name[:3] + "_pool", kernel=(nr, nc), stride=(sy, sx), padding=(py, px))
    if name == "add_prev_":
        return dict(type="add_prev")
    if name == "fc_2":
        n_out, n_in = r.int(), r.int()
        params = r.tensor().ravel()
        wshape, _ = r.alias(), r.alias()
        bias_mode = r.int()
        for _ in range(4):
            r.float()
        w = params[:n_in * n_out].reshape(n_in, n_out)      # output = input @ w
        return dict(type="fc", weight=w, bias=None if bias_mode == 1 else params[n_in * n_out:])
    raise DlibFormatError(f"unsupported dlib layer {name!r}")


def parse_dlib_net(data: bytes) -> dict:
    """dlib's serialized loss_metric network -> {'loss', 'input', 'layers', 'versions'}:
    layers are the computational layers from the input outward."""
    r = _Reader(data)
    if r.int() != 1:
        raise DlibFormatError("not a dlib add_loss_layer (version)")
    loss = r.str()
    if not loss.startswith("loss_metric"):
        raise DlibFormatError(f"unsupported loss {loss!r}")
    margin, dist = r.float(), r.float()
    versions = []
    while r.peek_str() != _INPUT:
        versions.append(r.int())
        if len(versions) > 10000:
            raise DlibFormatError("no input layer found")
    r.str()
    mean = (r.float(), r.float(), r.float())
    size = (r.int(), r.int())
    n_layers = versions.count(2) + versions.count(3)
    layers = []
    for i in range(n_layers):
        layers.append(_layer(r))
        for _ in range(3):
            r.bool()
        for _ in range(3):      # x_grad, cached_output, params_grad (grad_final for the first)
            r.tensor()
        if i == 0 and versions[-1] >= 3:
            r.int()             # sample expansion factor
    if r.pos != len(data):
        raise DlibFormatError(f"{len(data) - r.pos} bytes left after the network")
    return dict(loss=dict(name=loss, margin=margin, distance_threshold=dist),
                input=dict(mean=mean, size=size), layers=layers, versions=versions)


def read_dlib_resnet(path: str) -> dict:
    """Parse ``dlib_face_recognition_resnet_model_v1.dat`` (cached per process and path)."""
    return _read_cached(str(path))


@functools.lru_cache(maxsize=4)
def _read_cached(path: str) -> dict:
    with open(path, "rb") as f:
        return parse_dlib_net(f.read())


def _group(layers: list[dict]) -> tuple[list, list, list]:
    """layers -> (stem, blocks, head): blocks are (down, [con, affine, relu, con, affine])."""
    kinds = [l["type"] for l in layers]
    if kinds[:4] != ["con", "affine", "relu", "max_pool"] or kinds[-2:] != ["avg_pool", "fc"]:
        raise DlibFormatError(f"not dlib's face ResNet layout: {kinds[:4]} ... {kinds[-2:]}")
    body, blocks, i = layers[4:-2], [], 0
    body_kinds = kinds[4:-2]
    while i < len(body):
        down = body_kinds[i + 5] == "avg_pool"
        n = 8 if down else 7
        want = (["con", "affine", "relu", "con", "affine"] + (["avg_pool"] if down else [])
                + ["add_prev", "relu"])
        if body_kinds[i:i + n] != want:
            raise DlibFormatError(f"unexpected residual block at layer {i + 4}: {body_kinds[i:i + n]}")
        blocks.append((down, body[i:i + 5], body[i + 5] if down else None))
        i += n
    return layers[:4], blocks, layers[-2:]


def _import_torch():
    import torch
    import torch.nn.functional as F
    return torch, F


class DlibResNet:
    """Factory for the torch module (kept out of import time: torch loads only when used)."""

    def __new__(cls, state: dict):
        return _module_class()(state)


@functools.lru_cache(maxsize=1)
def _module_class():
    torch, F = _import_torch()
    nn = torch.nn

    def folded(con: dict, aff: dict) -> tuple:
        # affine after conv folded into the conv: (w*x + b)*g + beta
        g = aff["gamma"].astype(np.float64)
        w = con["weight"].astype(np.float64) * g[:, None, None, None]
        b = con["bias"].astype(np.float64) * g + aff["beta"].astype(np.float64)
        return (nn.Parameter(torch.from_numpy(w.astype(np.float32)), requires_grad=False),
                nn.Parameter(torch.from_numpy(b.astype(np.float32)), requires_grad=False))

    class _Conv(nn.Module):
        def __init__(self, con, aff):
            super().__init__()
            self.weight, self.bias = folded(con, aff)
            self.stride, self.padding = tuple(con["stride"]), tuple(con["padding"])

        def forward(self, x):
            return F.conv2d(x, self.weight, self.bias, self.stride, self.padding)

    class _Block(nn.Module):
        def __init__(self, down, layers, pool):
            super().__init__()
            self.conv1 = _Conv(layers[0], layers[1])
            self.conv2 = _Conv(layers[3], layers[4])
            self.pool = None if pool is None else (tuple(pool["kernel"]), tuple(pool["stride"]),
                                                   tuple(pool["padding"]))

        def forward(self, x):
            y = self.conv2(F.relu(self.conv1(x)))
            s = x if self.pool is None else F.avg_pool2d(x, *self.pool, count_include_pad=True)
            if y.shape != s.shape:          # dlib add_prev: zero-pad the smaller at the end
                c, h, w = (max(a, b) for a, b in zip(y.shape[1:], s.shape[1:]))
                y = F.pad(y, (0, w - y.shape[3], 0, h - y.shape[2], 0, c - y.shape[1]))
                s = F.pad(s, (0, w - s.shape[3], 0, h - s.shape[2], 0, c - s.shape[1]))
            return F.relu(y + s)

    class DlibResNetModule(nn.Module):
        """uint8 RGB chips (N, 150, 150, 3) -> (N, 128) float32 descriptors."""

        def __init__(self, state):
            super().__init__()
            stem, blocks, head = _group(state["layers"])
            self.size = tuple(state["input"]["size"])
            self.register_buffer("mean", torch.tensor(state["input"]["mean"], dtype=torch.float32))
            self.stem = _Conv(stem[0], stem[1])
            mp = stem[3]
            self.max_pool = (tuple(mp["kernel"]), tuple(mp["stride"]), tuple(mp["padding"]))
            if any(mp["padding"]):
                raise DlibFormatError("padded max_pool is not supported")
            self.blocks = nn.ModuleList(_Block(*b) for b in blocks)
            gp, fc = head
            if tuple(gp["kernel"]) != (0, 0):
                raise DlibFormatError("expected avg_pool_everything before the fc layer")
            self.fc = nn.Parameter(torch.from_numpy(np.ascontiguousarray(fc["weight"])),
                                   requires_grad=False)         # (in, out)
            self.fc_bias = None if fc["bias"] is None else nn.Parameter(
                torch.from_numpy(fc["bias"].copy()), requires_grad=False)

        def forward(self, chips):
            x = (chips.float() - self.mean) / 256.0                  # dlib's input_rgb_image
            x = x.permute(0, 3, 1, 2).contiguous()
            x = F.max_pool2d(F.relu(self.stem(x)), *self.max_pool)
            for block in self.blocks:
                x = block(x)
            x = x.mean(dim=(2, 3)) @ self.fc
            return x if self.fc_bias is None else x + self.fc_bias

    return DlibResNetModule


_models: dict = {}
_models_lock = threading.Lock()


def dlib_resnet(path: str):
    """The torch module of this .dat file, built once per process (eval mode, no grad)."""
    with _models_lock:
        model = _models.get(path)
        if model is None:
            model = _models[path] = DlibResNet(read_dlib_resnet(path)).eval()
        return model


def compute_descriptors(model, chips: np.ndarray, batch: int = 64) -> np.ndarray:
    """(N, 150, 150, 3) uint8 RGB chips -> (N, 128) float64 descriptors, like dlib's
    ``compute_face_descriptor`` on the same chips."""
    torch, _ = _import_torch()
    chips = np.ascontiguousarray(chips, dtype=np.uint8)
    if chips.ndim != 4 or chips.shape[1:] != (*model.size, 3):
        raise ValueError(f"chips must be (N, {model.size[0]}, {model.size[1]}, 3) uint8, got {chips.shape}")
    out = np.empty((len(chips), 128), np.float64)
    with torch.inference_mode():
        for i in range(0, len(chips), batch):
            out[i:i + batch] = model(torch.from_numpy(chips[i:i + batch])).numpy()
    return out
