"""The converted ONNX graph (harvest.faces.onnx_torch) is device-consistent by construction,
tested without a GPU: the face pack runs on PyTorch's ``meta`` device (no data, real shapes),
where any tensor created on the host and mixed with device data, or any structural value read
back from the device, raises, as a CPU tensor meeting CUDA data does on a GPU (issue #19:
``Shape`` on the host, ``Gather`` indices moved to CUDA, ``index_select`` raising)."""
from __future__ import annotations

import pytest

from conftest import FACE_PACK, need

CASES = (("scrfd_2.5g_bnkps.onnx", (2, 3, 384, 640)), ("mobilefacenet_128.onnx", (4, 3, 112, 112)))


@pytest.mark.parametrize("name,shape", CASES)
@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_face_pack_runs_on_the_meta_device(name, shape, dtype):
    """Outputs have the shapes of a real CPU run, on the input's device, and every float tensor
    any op creates on the way is on that device (only small integer shape values stay on the
    host)."""
    import torch
    from torch.utils._python_dispatch import TorchDispatchMode
    from harvest.faces.onnx_torch import OnnxModule
    path = need(FACE_PACK / name)
    dt = getattr(torch, dtype)
    with torch.inference_mode():
        ref = OnnxModule(path).eval()(torch.zeros(shape))
    ref = ref if isinstance(ref, list) else [ref]

    created = []

    class Record(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            for t in out if isinstance(out, (tuple, list)) else [out]:
                if isinstance(t, torch.Tensor):
                    created.append((str(func), t.device.type, t.dtype, t.numel()))
            return out

    module = OnnxModule(path).eval().to("meta", dt)         # as the backend moves it to CUDA
    assert all(p.device.type == "meta" for p in module.parameters())
    with torch.inference_mode(), Record():
        got = module(torch.empty(shape, device="meta", dtype=dt))
    got = got if isinstance(got, list) else [got]
    assert [tuple(g.shape) for g in got] == [tuple(r.shape) for r in ref]
    assert all(g.device.type == "meta" for g in got)
    assert created
    on_host = [c for c in created if c[1] != "meta"]
    assert all(not c[2].is_floating_point and c[3] <= 8 for c in on_host), on_host
    if name.startswith("scrfd"):
        assert on_host                 # its Shape -> Gather -> Resize sizes run on the host


def test_host_values_meet_device_data_on_its_device():
    """A host value used as data (Gather indices into features) moves to the data's device;
    structural inputs (a Reshape's shape) stay on the host; mixed float dtypes meet in float32."""
    import torch
    from harvest.faces.onnx_torch import OPS, _place
    x = torch.empty(3, 5, device="meta")
    i = torch.tensor([0, 2])
    data, idx = _place("Gather", [x, i])
    assert idx.device.type == "meta" and OPS["Gather"]({"axis": 0}, data, idx).shape == (2, 5)
    y, shape = _place("Reshape", [x, torch.tensor([5, 3])])
    assert shape.device.type == "cpu" and OPS["Reshape"]({}, y, shape).shape == (5, 3)
    a, b = _place("Add", [torch.ones(2, dtype=torch.bfloat16), torch.ones(2)])
    assert a.dtype == b.dtype == torch.float32


def test_moving_the_module_leaves_its_structure_on_the_host():
    """``.to(device)`` moves weights, never the graph's shape constants (no GPU sync to read
    them, and nothing a meta tensor cannot answer)."""
    import torch
    from harvest.faces.onnx_torch import OnnxModule
    module = OnnxModule(need(FACE_PACK / "scrfd_2.5g_bnkps.onnx")).to("meta", torch.float16)
    assert module._host and all(t.device.type == "cpu" for t in module._host.values())
    assert all(b.device.type == "meta" for b in module.buffers())
