#!/usr/bin/env bash
# GPU runtime for the harvest workers: swap the CPU onnxruntime (a dependency of movieface) for
# the CUDA build, add PyNvVideoCodec (NVDEC), make the CUDA/cuDNN libraries that pip installs findable by the loader, and
# fail if onnxruntime was not built with CUDA. Idempotent: run again after every
# `pip install -e .`, which brings the CPU onnxruntime back.
# Used by aws-gpu.yaml and gcp-gpu.yaml (worker_setup_commands) and by the Dockerfile.
set -euo pipefail

# onnxruntime and onnxruntime-gpu both install the `onnxruntime` package: keep exactly one, and
# remove both before installing so that neither uninstall deletes the other's files.
# < 1.27: the last builds for CUDA 12, which every driver >= 525 runs (1.27+ need CUDA 13, i.e.
# driver >= 580); [cuda,cudnn] brings the CUDA runtime and cuDNN 9 as pip wheels.
ORT_GPU="${ORT_GPU:-onnxruntime-gpu[cuda,cudnn]>=1.21,<1.27}"
pip uninstall -y -q onnxruntime onnxruntime-gpu || true
pip install --no-cache-dir -q "$ORT_GPU"

# onnxruntime dlopen()s libcudnn/libcublas; the nvidia-* wheels are not on the loader path
# unless something loads them first, and then the CUDA provider fails and onnxruntime falls
# back to the CPU (with only a warning). Register their lib directories with ldconfig.
python - <<'PY' | sudo tee /etc/ld.so.conf.d/zz-pip-nvidia.conf >/dev/null
import glob, os, nvidia
for root in nvidia.__path__:
    for d in sorted(glob.glob(os.path.join(root, "*", "lib"))):
        print(d)
PY
sudo ldconfig

# NVDEC decoding for the torch backend (harvest/video/nvdec.py; `--decoder auto` uses it where usable)
pip install --no-cache-dir -q "PyNvVideoCodec>=2.2,<3"

python -c "import onnxruntime as o; p = o.get_available_providers(); assert 'CUDAExecutionProvider' in p, p; print('onnxruntime', o.__version__, p)"
