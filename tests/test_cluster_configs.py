"""cluster_configs/: every Ray cluster launcher YAML passes the installed Ray's own validation
(the schema it ships and the checks `ray up` runs), every KubeRay manifest carries what the
ray.io/v1 CRDs require, and every job command they document or run parses with the installed
`harvest` / `train` CLIs and fits the GPU nodes it is meant for.

The Ray version lives in one place, the ``ray[...]==X`` pin of pyproject.toml: the configs'
images, rayVersion and pip pins must name it, and the installed Ray must be it."""
from __future__ import annotations

import argparse
import copy
import json
import math
import os
import re
import shlex
import tomllib
from unittest import mock

import jsonschema
import pytest
import ray
import yaml
from packaging.requirements import Requirement
from ray.autoscaler._private.util import prepare_config, validate_config

import harvest.cli
import training.cli
from conftest import REPO

CONFIGS = REPO / "cluster_configs"
NOT_YAML = {"Dockerfile", "Dockerfile.dockerignore", "gpu_setup.sh"}


def _docs(path):
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


FILES = sorted(p for p in CONFIGS.iterdir() if p.is_file())
YAMLS = {p.name: _docs(p) for p in FILES if p.suffix == ".yaml"}
LAUNCHERS = {n: d[0] for n, d in YAMLS.items() if "provider" in d[0]}
MANIFESTS = [(n, i, doc) for n, docs in YAMLS.items() for i, doc in enumerate(docs)
             if "apiVersion" in doc]
RAYCLUSTER = next(doc for _, _, doc in MANIFESTS if doc["kind"] == "RayCluster")
RAYJOBS = {doc["metadata"]["name"]: doc for _, _, doc in MANIFESTS if doc["kind"] == "RayJob"}
PROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
EXTRAS = PROJECT["optional-dependencies"]


def ray_requirement(dependencies: list[str]) -> Requirement:
    (req,) = [r for r in map(Requirement, dependencies) if r.name == "ray"]
    return req


RAY_PIN = next(iter(ray_requirement(PROJECT["dependencies"]).specifier)).version


# --- job commands -------------------------------------------------------------------------------

class _Parsed(Exception):
    pass


def parse_job(argv: list[str]) -> argparse.Namespace:
    """Parse a job's argv with the installed CLI it names (SystemExit on a bad flag)."""
    cmd, rest = argv[0], argv[1:]
    if cmd == "harvest":
        return harvest.cli.parse(rest)
    assert cmd == "train", f"unknown job command {cmd!r}"
    seen = {}
    real = argparse.ArgumentParser.parse_args

    def spy(self, args=None, namespace=None):
        seen["ns"] = real(self, args, namespace)
        return seen["ns"]

    # train_main parses, then joins Ray: stop it right there
    with mock.patch.object(argparse.ArgumentParser, "parse_args", spy), \
            mock.patch.object(training.cli, "_ray_init", side_effect=_Parsed):
        with pytest.raises(_Parsed):
            training.cli.train_main(rest)
    return seen["ns"]


def documented_jobs(path) -> list[list[str]]:
    """The `ray job submit ... -- CMD` commands in a file's comments, as argv lists."""
    text = "\n".join(line.lstrip("#").strip() for line in path.read_text().splitlines()
                     if line.startswith("#"))
    text = text.replace("\\\n", " ")
    return [shlex.split(line.split(" -- ", 1)[1]) for line in text.splitlines()
            if line.startswith("ray job submit") and " -- " in line]


def actors_per_node(ns, cpus: float, gpus: float) -> int:
    """Harvest actors one node of `cpus` / `gpus` holds."""
    fits = [math.floor(have / need + 1e-9) for have, need in
            ((cpus, ns.cpus_per_worker), (gpus, ns.gpus_per_worker)) if need > 0]
    return min(fits) if fits else 0


# --- the Ray version ----------------------------------------------------------------------------

# Where a config names a Ray version: image tags, KubeRay's rayVersion, pip pins, prose
# ("Ray 2.60").
RAY_VERSION_MENTIONS = (r"rayproject/ray:(\d[\w.]*?)-", r"rayVersion:\s*\"?(\d[\w.]*)",
                        r"\bray\[[\w,]*\]==(\d[\w.]*)", r"\bRay (\d+\.\d+(?:\.\d+)?)\b")


def ray_versions(text: str) -> list[str]:
    return [m.group(1) for pattern in RAY_VERSION_MENTIONS for m in re.finditer(pattern, text)]


def stale_ray_versions(text: str, pin: str) -> list[str]:
    """The Ray versions ``text`` names that are not ``pin`` (prose may name just major.minor)."""
    return [v for v in ray_versions(text) if v != pin and not pin.startswith(v + ".")]


def test_ray_is_pinned_and_the_pinned_ray_is_installed():
    """One supported Ray: an exact pin (a looser range lets the next Ray release into CI, where
    the configs below, which name one version, fail), with the extras harvest and train use."""
    req = ray_requirement(PROJECT["dependencies"])
    (spec,) = req.specifier
    assert spec.operator == "==", f"pyproject.toml: pin ray exactly, not {req}"
    assert {"default", "data", "train"} <= req.extras
    assert ray.__version__ == RAY_PIN, \
        f"installed ray {ray.__version__}, pyproject.toml pins {RAY_PIN}: pip install -e ."


@pytest.mark.parametrize("name", [p.name for p in FILES])
def test_every_ray_version_a_config_names_is_the_pin(name):
    assert stale_ray_versions((CONFIGS / name).read_text(), RAY_PIN) == []


def test_every_kind_of_ray_version_mention_is_checked():
    """The configs name the pin in each form the check reads, and a stale one of each is caught."""
    text = "".join(p.read_text() for p in FILES)
    for pattern in RAY_VERSION_MENTIONS:
        assert re.search(pattern, text), f"no config mentions Ray as {pattern}"
    forms = ("rayproject/ray:{}-py311-gpu", 'rayVersion: "{}"', 'pip install "ray[default]=={}"',
             "(Ray {}, Python 3.11)")
    for form in forms:
        assert stale_ray_versions(form.format(RAY_PIN), RAY_PIN) == []
        assert stale_ray_versions(form.format("2.59.1"), RAY_PIN) == ["2.59.1"], form


# --- launcher configs ---------------------------------------------------------------------------

def ray_up_validate(config: dict) -> dict:
    """What `ray up` does to a config before it calls the cloud: fill in the provider's
    defaults, merge setup commands, check docker, then validate against ray-schema.json and
    Ray's own cross-field checks (`ray.autoscaler._private.commands._bootstrap_config`)."""
    prepared = prepare_config(copy.deepcopy(config))
    validate_config(prepared)
    return prepared


def gpu_node_types(config: dict) -> dict:
    return {k: v for k, v in config["available_node_types"].items()
            if v.get("resources", {}).get("GPU", 0) > 0}


def test_cluster_configs_are_all_known_and_load():
    assert {"aws-gpu.yaml", "gcp-gpu.yaml", "local-cpu.yaml"} <= set(LAUNCHERS)
    assert {doc["kind"] for _, _, doc in MANIFESTS} == {"RayCluster", "RayJob"}
    assert len(RAYJOBS) == 2
    for p in FILES:
        assert p.name in NOT_YAML or p.name in LAUNCHERS or any(n == p.name for n, *_ in MANIFESTS), \
            f"{p.name}: neither a launcher config, a KubeRay manifest nor a known helper"
    # the launchers are single documents; a launcher file never mixes in manifests
    assert all(len(YAMLS[n]) == 1 for n in LAUNCHERS)


@pytest.mark.parametrize("name", sorted(LAUNCHERS))
def test_launcher_config_passes_rays_validation(name):
    prepared = ray_up_validate(LAUNCHERS[name])
    # and directly against the schema file shipped inside the installed ray package
    schema = json.load(open(os.path.join(os.path.dirname(ray.autoscaler.__file__),
                                         "ray-schema.json")))
    jsonschema.validate(LAUNCHERS[name], schema)
    assert prepared["head_node_type"] in prepared["available_node_types"]


@pytest.mark.parametrize("name", ["aws-gpu.yaml", "gcp-gpu.yaml"])
def test_cloud_launcher_autoscales_declared_gpu_workers(name):
    config = LAUNCHERS[name]
    assert 0 < config["idle_timeout_minutes"] <= 30
    head = config["available_node_types"][config["head_node_type"]]
    assert head["resources"] == {"CPU": 0}, "nothing but drivers on the head"
    gpus = gpu_node_types(config)
    assert gpus, "a GPU worker type with declared resources"
    for node_type in gpus.values():
        res = node_type["resources"]
        assert node_type["min_workers"] == 0 < node_type["max_workers"] <= config["max_workers"]
        assert isinstance(res["GPU"], int) and res["GPU"] >= 1 and res.get("CPU", 0) >= 1
    # the documented harvest command packs whole actors onto one GPU node, and its --workers
    # can all be placed within max_workers
    jobs = documented_jobs(CONFIGS / name)
    assert {argv[0] for argv in jobs} == {"harvest", "train"}
    for argv in jobs:
        ns = parse_job(argv)
        for node_type in gpus.values():
            res = node_type["resources"]
            if argv[0] == "harvest":
                assert ns.gpus_per_worker > 0 and ns.workers, "GPU actors, pool size given"
                per_node = actors_per_node(ns, res["CPU"], res["GPU"])
                assert per_node >= 1
                assert ns.workers <= per_node * node_type["max_workers"]
            else:
                assert ns.gpu and ns.workers <= res["GPU"] * node_type["max_workers"]


@pytest.mark.parametrize("name", sorted(LAUNCHERS))
def test_launcher_installs_this_checkout_with_the_right_extras(name):
    config = LAUNCHERS[name]
    mounts = {remote for remote, local in config["file_mounts"].items() if local == "."}
    assert len(mounts) == 1
    (remote,) = mounts
    installs = [c for c in config["setup_commands"] if "pip install" in c and " -e " in c]
    assert installs, "setup installs the project"
    for cmd in installs:
        target = next(t for t in shlex.split(cmd) if t.startswith(remote))
        extras = re.fullmatch(re.escape(remote) + r"\[([\w,]+)\]", target).group(1).split(",")
        assert set(extras) <= set(EXTRAS), f"unknown extra in {target}"
    want = {"aws-gpu.yaml": "s3", "gcp-gpu.yaml": "gcs"}.get(name)
    if want:
        assert any(f"[{want}]" in c for c in installs)
        # GPU workers get the CUDA onnxruntime from the script in this directory
        worker = " ".join(config["worker_setup_commands"])
        assert f"{remote}/cluster_configs/gpu_setup.sh" in worker
        assert "onnxruntime-gpu" in (CONFIGS / "gpu_setup.sh").read_text()
        # the cluster runs the Ray of the client that runs `ray up` / `ray job submit`
        for key in ("head_image", "worker_image"):
            assert f":{RAY_PIN}-" in config["docker"][key]
        assert config["docker"]["worker_image"].endswith("-gpu")
    else:   # no image: the setup installs the pinned Ray next to the project
        assert any(f"ray[default]=={RAY_PIN}" in c for c in installs)


BROKEN_LAUNCHERS = {
    "fractional GPU resource": lambda c: c["available_node_types"]["gpu_worker"]["resources"]
    .update(GPU=0.5),
    "misspelt node-type key": lambda c: c["available_node_types"]["gpu_worker"]
    .update(min_replicas=0),
    "unknown top-level key": lambda c: c.update(idle_timeout_seconds=600),
    "head type not a node type": lambda c: c.update(head_node_type="ray.head"),
    "min workers above max_workers": lambda c: c["available_node_types"]["gpu_worker"]
    .update(min_workers=99),
    "string resource count": lambda c: c["available_node_types"]["gpu_worker"]["resources"]
    .update(CPU="8"),
}


@pytest.mark.parametrize("breakage", sorted(BROKEN_LAUNCHERS))
def test_ray_validation_rejects_a_broken_launcher_config(breakage):
    config = copy.deepcopy(LAUNCHERS["aws-gpu.yaml"])
    BROKEN_LAUNCHERS[breakage](config)
    with pytest.raises((jsonschema.ValidationError, ValueError)):
        ray_up_validate(config)


# --- KubeRay manifests --------------------------------------------------------------------------

DNS1123 = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")


def _quantity(q) -> float:
    q = str(q)
    return float(q[:-1]) / 1000 if q.endswith("m") else float(q)


def _str_map_problems(where: str, params) -> list[str]:
    if not isinstance(params, dict):
        return [f"{where}: rayStartParams must be a map"]
    return [f"{where}: rayStartParams[{k!r}] must be a string (CRD type map[string]string)"
            for k, v in params.items() if not isinstance(v, str)]


def _pod_problems(where: str, template) -> list[str]:
    containers = (template or {}).get("spec", {}).get("containers") or []
    if not containers:
        return [f"{where}: template.spec.containers is empty"]
    return [f"{where}: container without name/image" for c in containers
            if not c.get("name") or not c.get("image")]


def cluster_spec_problems(spec: dict) -> list[str]:
    """What KubeRay (ray.io/v1 RayClusterSpec) requires and what this project relies on:
    a head group with rayStartParams and a container; worker groups with a name, replica
    bounds, rayStartParams, and GPU limits; the in-tree autoscaler on; the pinned Ray."""
    out = []
    if spec.get("rayVersion") != RAY_PIN:
        out.append(f"rayVersion {spec.get('rayVersion')!r} != pinned ray {RAY_PIN}")
    if spec.get("enableInTreeAutoscaling") is not True:
        out.append("enableInTreeAutoscaling must be true")
    head = spec.get("headGroupSpec") or {}
    if "rayStartParams" not in head:
        out.append("headGroupSpec.rayStartParams missing")
    out += _str_map_problems("headGroupSpec", head.get("rayStartParams", {}))
    out += _pod_problems("headGroupSpec", head.get("template"))
    groups = spec.get("workerGroupSpecs") or []
    if not groups:
        out.append("no workerGroupSpecs")
    for g in groups:
        where = f"workerGroupSpecs[{g.get('groupName')!r}]"
        if not g.get("groupName"):
            out.append(f"{where}: groupName missing")
        if "rayStartParams" not in g:
            out.append(f"{where}: rayStartParams missing")
        out += _str_map_problems(where, g.get("rayStartParams", {}))
        out += _pod_problems(where, g.get("template"))
        lo, n, hi = (g.get(k) for k in ("minReplicas", "replicas", "maxReplicas"))
        if not all(isinstance(v, int) for v in (lo, n, hi)) or not 0 <= lo <= n <= hi or hi < 1:
            out.append(f"{where}: need integers 0 <= minReplicas <= replicas <= maxReplicas, "
                       f"maxReplicas >= 1 (got {lo}, {n}, {hi})")
        elif lo != 0:
            out.append(f"{where}: minReplicas must be 0 (GPU pods only while there is work)")
        for c in (g.get("template") or {}).get("spec", {}).get("containers") or []:
            res = c.get("resources") or {}
            gpu = (res.get("limits") or {}).get("nvidia.com/gpu")
            if not isinstance(gpu, int) or gpu < 1:
                out.append(f"{where}/{c.get('name')}: needs limits nvidia.com/gpu >= 1")
            elif (res.get("requests") or {}).get("nvidia.com/gpu", gpu) != gpu:
                out.append(f"{where}/{c.get('name')}: nvidia.com/gpu requests != limits")
            if "cpu" not in (res.get("limits") or {}):
                out.append(f"{where}/{c.get('name')}: needs a cpu limit (Ray's CPU count)")
    return out


def manifest_problems(doc: dict) -> list[str]:
    out = []
    if doc.get("apiVersion") != "ray.io/v1":
        out.append(f"apiVersion {doc.get('apiVersion')!r} is not ray.io/v1")
    name = (doc.get("metadata") or {}).get("name") or ""
    if not DNS1123.fullmatch(name) or len(name) > 63:
        out.append(f"metadata.name {name!r} is not a DNS-1123 label")
    kind = doc.get("kind")
    spec = doc.get("spec") or {}
    if kind == "RayCluster":
        out += cluster_spec_problems(spec)
    elif kind == "RayJob":
        if not isinstance(spec.get("entrypoint"), str) or not spec["entrypoint"].strip():
            out.append("RayJob needs an entrypoint")
        if spec.get("shutdownAfterJobFinishes") is not True:
            out.append("shutdownAfterJobFinishes must be true (the job's cluster is deleted)")
        ttl = spec.get("ttlSecondsAfterFinished")
        if not isinstance(ttl, int) or ttl <= 0:
            out.append("ttlSecondsAfterFinished must be a positive integer")
        if "rayClusterSpec" not in spec:
            out.append("RayJob needs a rayClusterSpec")
        else:
            out += cluster_spec_problems(spec["rayClusterSpec"])
    else:
        out.append(f"kind {kind!r} is not RayCluster or RayJob")
    return out


@pytest.mark.parametrize("where", [f"{n}#{i}" for n, i, _ in MANIFESTS])
def test_kuberay_manifest_has_what_kuberay_requires(where):
    doc = next(d for n, i, d in MANIFESTS if f"{n}#{i}" == where)
    assert manifest_problems(doc) == []


def test_rayjobs_run_on_the_raycluster_spec_and_one_image():
    for job in RAYJOBS.values():
        assert job["spec"]["rayClusterSpec"] == RAYCLUSTER["spec"]
    images = set()
    for spec in [RAYCLUSTER["spec"]] + [j["spec"]["rayClusterSpec"] for j in RAYJOBS.values()]:
        for tpl in [spec["headGroupSpec"]["template"]] + [g["template"] for g in
                                                          spec["workerGroupSpecs"]]:
            images |= {c["image"] for c in tpl["spec"]["containers"]}
    assert len(images) == 1
    # the image is built from cluster_configs/Dockerfile on the pinned Ray
    base = re.search(r"^FROM\s+(\S+)", (CONFIGS / "Dockerfile").read_text(), re.M).group(1)
    assert base.startswith(f"rayproject/ray:{RAY_PIN}-") and base.endswith("-gpu")
    assert "gpu_setup.sh" in (CONFIGS / "Dockerfile").read_text()


def _worker_pod(spec) -> tuple[dict, float, int]:
    (group,) = spec["workerGroupSpecs"]
    (c,) = group["template"]["spec"]["containers"]
    return group, _quantity(c["resources"]["limits"]["cpu"]), c["resources"]["limits"]["nvidia.com/gpu"]


@pytest.mark.parametrize("job", sorted(RAYJOBS))
def test_rayjob_entrypoint_parses_and_fits_the_gpu_pods(job):
    spec = RAYJOBS[job]["spec"]
    argv = shlex.split(spec["entrypoint"])
    ns = parse_job(argv)
    group, cpu, gpu = _worker_pod(spec["rayClusterSpec"])
    if argv[0] == "harvest":
        assert ns.command == "run" and ns.gpus_per_worker > 0 and ns.workers
        per_pod = actors_per_node(ns, cpu, gpu)
        assert per_pod >= 1, "one harvest actor must fit a GPU pod"
        assert ns.workers <= per_pod * group["maxReplicas"]
    else:
        assert ns.gpu and ns.workers <= gpu * group["maxReplicas"]
    assert {"harvest", "train"} == {shlex.split(j["spec"]["entrypoint"])[0] for j in RAYJOBS.values()}


@pytest.mark.parametrize("name", sorted(YAMLS))
def test_documented_job_commands_parse(name):
    """Each `ray job submit ... -- CMD` in a file's comments runs a CLI that accepts its flags."""
    jobs = documented_jobs(CONFIGS / name)
    assert jobs or name.startswith("k8s-rayjob-"), f"{name} documents no job command"
    for argv in jobs:
        parse_job(argv)


def test_raycluster_documented_job_parses_and_fits():
    jobs = documented_jobs(CONFIGS / "k8s-raycluster.yaml")
    assert jobs
    group, cpu, gpu = _worker_pod(RAYCLUSTER["spec"])
    for argv in jobs:
        ns = parse_job(argv)
        assert argv[0] != "harvest" or 1 <= ns.workers <= \
            actors_per_node(ns, cpu, gpu) * group["maxReplicas"]


@pytest.mark.parametrize("old,new", [("--gpus-per-worker", "--gpus-per-actor"),
                                     ("--gpu", "--gpus"), ("--head bcl", "--head vgg")])
def test_a_renamed_flag_in_an_entrypoint_is_caught(old, new):
    job = next(j for j in RAYJOBS.values() if old in j["spec"]["entrypoint"])
    argv = shlex.split(job["spec"]["entrypoint"].replace(old, new))
    with pytest.raises(SystemExit):
        parse_job(argv)


BROKEN_MANIFESTS = {
    "alpha API": lambda d: d.update(apiVersion="ray.io/v1alpha1"),
    "no GPU limit": lambda d: d["spec"]["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]
    ["resources"]["limits"].pop("nvidia.com/gpu"),
    "integer rayStartParams": lambda d: d["spec"]["headGroupSpec"]["rayStartParams"]
    .update({"num-cpus": 0}),
    "min above max": lambda d: d["spec"]["workerGroupSpecs"][0].update(minReplicas=9),
    "no head container": lambda d: d["spec"]["headGroupSpec"]["template"]["spec"]
    .update(containers=[]),
    "autoscaler off": lambda d: d["spec"].pop("enableInTreeAutoscaling"),
    "bad name": lambda d: d["metadata"].update(name="MovieFace_cluster"),
}


@pytest.mark.parametrize("breakage", sorted(BROKEN_MANIFESTS))
def test_manifest_check_rejects_a_broken_raycluster(breakage):
    doc = copy.deepcopy(RAYCLUSTER)
    BROKEN_MANIFESTS[breakage](doc)
    assert manifest_problems(doc)


def test_manifest_check_rejects_a_rayjob_that_keeps_its_cluster():
    job = copy.deepcopy(next(iter(RAYJOBS.values())))
    job["spec"]["shutdownAfterJobFinishes"] = False
    job["spec"].pop("ttlSecondsAfterFinished")
    assert len(manifest_problems(job)) == 2
