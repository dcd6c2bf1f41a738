"""Static checkers of the Docker images, requirements files and CI workflows (used by test_docker_static.py).

Not collected by pytest (no test_ prefix). Each checker returns readable problems ("Dockerfile.cuda:12:
what is wrong"), [] when clean. The Dockerfile parser joins `\\` continuations and substitutes ARG
defaults: all the checks need, not a full grammar (no heredocs, no escape directive).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import stat
import subprocess
from dataclasses import dataclass
from pathlib import Path

from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name

GOLDEN = "tests/golden/parity-cpu.json"
# ARG names that state a package version, and the distribution each one names.
VERSION_ARGS = {"TORCH_VERSION": "torch", "TORCH_NPU_VERSION": "torch-npu", "VLLM_VERSION": "vllm",
                "VLLM_ASCEND_VERSION": "vllm-ascend", "TRANSFORMERS_VERSION": "transformers"}
PIP_VALUE_OPTIONS = set("-r --requirement -c --constraint -e --editable -i --index-url --extra-index-url -f "
                        "--find-links -t --target --prefix --root --src --upgrade-strategy --platform "
                        "--python-version --cache-dir -C --config-settings --progress-bar --log --trusted-host "
                        "--no-binary --only-binary --global-option --proxy --retries --timeout --report".split())
Rules = list[tuple[bool, re.Pattern]]


@dataclass(frozen=True)
class Instruction:
    line: int     # 1-based line where the instruction starts
    keyword: str  # upper case: FROM, RUN, COPY, ...
    value: str    # its arguments, continuation lines joined with a space


def parse_dockerfile(text: str) -> list[Instruction]:
    """Logical instructions: `\\` continues a line; comment and blank lines inside one are dropped."""
    out, buf, start = [], "", 0
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        start = start if buf else number
        if line.endswith("\\"):
            buf += line[:-1].rstrip() + " "
            continue
        keyword, _, value = (buf + line).partition(" ")
        out.append(Instruction(start, keyword.upper(), value.strip()))
        buf = ""
    if buf:
        raise ValueError(f"line {start}: the last instruction ends with a line continuation")
    return out


def _substitute(value: str, args: dict[str, str]) -> str:
    return re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: args.get(m[1] or m[2], m[0]), value)


def _glob_regex(pattern: str) -> str:
    """Docker's .dockerignore syntax: `**` any directories, `*` / `?` within one path element."""
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        elif pattern[i] == "[" and "]" in pattern[i:]:
            end = pattern.index("]", i)
            out, i = out + "[" + pattern[i + 1:end].replace("!", "^", 1) + "]", end + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return out


def load_dockerignore(path: Path) -> Rules:
    """(is_exception, regex) per pattern line, in file order; no file means no rules."""
    rules = []
    for raw in path.read_text().splitlines() if path.exists() else []:
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negated, line = line.startswith("!"), line.lstrip("!").strip()
        rules.append((negated, re.compile(_glob_regex(os.path.normpath(line).lstrip("/")) + r"\Z")))
    return rules


def is_ignored(rel_path: str, rules: Rules) -> bool:
    """Docker's rule: a pattern matches a path or any of its parents; the last matching line wins."""
    parts = rel_path.strip("/").split("/")
    prefixes = ["/".join(parts[:n]) for n in range(1, len(parts) + 1)]
    ignored = False
    for negated, regex in rules:
        if any(regex.match(p) for p in prefixes):
            ignored = not negated
    return ignored


def _context_files(context: Path, directory: Path) -> list[str]:
    """Files under `directory` that a checkout has (git: tracked or not ignored), relative to context."""
    try:
        listed = subprocess.run(["git", "-C", str(context), "ls-files", "-co", "--exclude-standard", "-z"],
                                capture_output=True, text=True, check=True).stdout.split("\0")
        files = [f for f in listed if f and (context / f).is_file()]
    except (subprocess.CalledProcessError, FileNotFoundError):
        files = [p.relative_to(context).as_posix() for p in context.rglob("*") if p.is_file()]
    prefix = directory.relative_to(context).as_posix() + "/"
    return [f for f in files if f.startswith(prefix)]


def _check_copy(keyword: str, value: str, context: Path, rules: Rules, where: str):
    """(problems, [(source, destination)]) of a COPY/ADD from the build context."""
    parts = json.loads(value) if value.startswith("[") else value.split()
    if any(p.startswith("--from") for p in parts):
        return [], []
    args = [p for p in parts if not p.startswith("--")]
    if len(args) < 2:
        return [f"{where}: {keyword} needs a source and a destination"], []
    problems, pairs = [], []
    for src in args[:-1]:
        if keyword == "ADD" and re.match(r"\w+://", src):
            problems.append(f"{where}: ADD from a URL '{src}': download in RUN with a pinned checksum instead")
            continue
        matches = sorted(context.glob(src)) if not src.startswith("/") else []
        if "$" in src or not matches:
            problems.append(f"{where}: {keyword} source '{src}' does not exist in the build context {context}")
            continue
        for path in matches:
            files = _context_files(context, path) if path.is_dir() else [path.relative_to(context).as_posix()]
            problems += [f"{where}: {keyword} source '{f}' is excluded by .dockerignore" for f in files
                         if is_ignored(f, rules)]
        pairs.append((src, args[-1]))
    return problems, pairs


def _check_pip(value: str, where: str, env_constrained: bool) -> list[str]:
    problems = []
    for segment in re.split(r"&&|\|\||;|\|", value):
        found = re.search(r"\bpip3?\s+install\s+(.*)$", segment)
        if not found:
            continue
        try:
            tokens = shlex.split(found[1])
        except ValueError:
            tokens = found[1].split()
        constrained = env_constrained or "PIP_CONSTRAINT=" in segment
        requirements, i = [], 0
        while i < len(tokens):
            tok = tokens[i]
            if tok in ("-r", "--requirement", "-c", "--constraint") or tok.startswith(("--requirement=", "--constraint=")):
                constrained = True
            if tok in ("-e", "--editable") and i + 1 < len(tokens):
                requirements.append(tokens[i + 1])
            if tok.startswith("-"):
                i += 2 if tok in PIP_VALUE_OPTIONS else 1
                continue
            requirements.append(tok)
            i += 1
        for req in requirements:
            if re.match(r"[./]", req) and "://" not in req:
                continue  # a local path: the project itself
            if "://" in req:
                if not re.search(r"://[^@\s]+@[^/@\s]+$", req):
                    problems.append(f"{where}: '{req}' installs from a URL without a pinned ref (@tag or @commit)")
            elif "==" not in req and not constrained:
                problems.append(f"{where}: unpinned pip install '{req}': pin NAME==VERSION or pass "
                                "the repository's requirements file with -r/-c")
    return problems


def pins(requirements_text: str) -> tuple[dict[str, str], dict[str, str]]:
    """(NAME==VERSION of requirement lines, NAME==VERSION mentioned in comments); names normalised."""
    pinned, mentioned = {}, {}
    for line in requirements_text.splitlines():
        target = mentioned if line.lstrip().startswith("#") else pinned
        for name, ver in re.findall(r"([A-Za-z0-9_.-]+)(?:\[[^]]*\])?==([0-9][^\s;#]*)", line):
            target.setdefault(canonicalize_name(name), ver)
    return pinned, mentioned


def stated_versions(text: str, dist: str) -> set[str]:
    """Every version of `dist` a text states: NAME==V, an image tag NAME:vV, a git tag NAME.git@vV, ARG NAME_VERSION=V."""
    name = r"(?<![\w.-])" + re.escape(dist).replace(r"\-", "[-_]")
    arg = dist.upper().replace("-", "_") + "_VERSION"
    patterns = [name + r"==([0-9][\w.+]*)", name + r":v([0-9][\w.]*)", name + r"\.git@v([0-9][\w.]*)",
                r"\b" + arg + r"=([0-9][\w.+]*)"]
    return {v.rstrip(".") for p in patterns for v in re.findall(p, text, flags=re.IGNORECASE)}


def check_requirements(path: Path, required: list[str]) -> list[str]:
    """A stack file usable both as `pip install -r` and as `-c`: every line NAME==VERSION, no extras
    (pip: "Constraints cannot have extras"), no URL or option; every name in `required` pinned."""
    problems, names = [], set()
    for number, raw in enumerate(path.read_text().splitlines(), 1):
        line = raw.split(" #", 1)[0].strip()
        if not line or line.startswith("#"):
            continue
        where = f"{path.name}:{number}"
        try:
            req = Requirement(line)
        except InvalidRequirement:
            problems.append(f"{where}: '{line}' is not NAME==VERSION (options and paths do not work with -c)")
            continue
        names.add(canonicalize_name(req.name))
        if req.extras:
            problems.append(f"{where}: '{line}' has extras, which pip refuses in a constraints file (-c)")
        if req.url or len(req.specifier) != 1 or next(iter(req.specifier)).operator != "==":
            problems.append(f"{where}: '{line}' is not pinned to one version (NAME==VERSION)")
    missing = sorted({canonicalize_name(Requirement(r).name) for r in required} - names)
    problems += [f"{path.name}: runtime dependency {m} is not pinned" for m in missing]
    return problems


def check_entrypoint(script: Path) -> list[str]:
    if not script.is_file():
        return [f"entrypoint script {script} does not exist"]
    problems, text = [], script.read_text()
    if not script.stat().st_mode & stat.S_IXUSR:
        problems.append(f"{script} is not executable (mode {oct(script.stat().st_mode & 0o777)}; chmod 0755)")
    if text.splitlines()[0] not in ("#!/usr/bin/env bash", "#!/bin/bash"):
        problems.append(f"{script} does not start with a bash shebang")
    if "set -euo pipefail" not in text:
        problems.append(f"{script} does not use bash strict mode (set -euo pipefail)")
    doctor, train = text.find("-m lmm_r1_ascend.doctor --device"), text.rfind("-m lmm_r1_ascend.train")
    if doctor < 0 or train < 0 or doctor > train:
        problems.append(f"{script} must run `python -m lmm_r1_ascend.doctor --device ...` and then the train CLI")
    return problems


def check_dockerfile(path: Path, context: Path, requirements: Path) -> list[str]:
    """Every problem found in one Dockerfile, as 'file:line: what is wrong' strings."""
    rules = load_dockerignore(context / ".dockerignore")
    pinned, mentioned = pins(requirements.read_text()) if requirements.exists() else ({}, {})
    problems, named, copies = [], [], []
    global_args, args, stages = {}, {}, set()
    user = entrypoint = None
    env_constrained = in_stage = False
    for ins in parse_dockerfile(path.read_text()):
        where = f"{path.name}:{ins.line}"
        scope = args if in_stage else global_args
        if ins.keyword == "ARG":
            name, eq, default = ins.value.partition("=")
            name = name.strip()
            scope[name] = _substitute(default.strip().strip('"'), scope) if eq else global_args.get(name, f"${name}")
            if name in VERSION_ARGS:
                named.append((VERSION_ARGS[name], scope[name], where))
            continue
        value = _substitute(ins.value, scope)
        if ins.keyword == "FROM":
            tokens = [t for t in value.split() if not t.startswith("--")]
            image, in_stage, args, user = tokens[0], True, {}, None
            stages.update(tokens[2:3] if len(tokens) > 2 and tokens[1].lower() == "as" else [])
            tag = image.rsplit("/", 1)[-1].partition(":")[2]
            if image in stages or image == "scratch" or "@sha256:" in image:
                pass
            elif "$" in image or not tag or tag == "latest":
                problems.append(f"{where}: base image '{image}' must be pinned to a tag other than latest")
            elif "vllm-ascend" in image:
                named.append(("vllm-ascend", tag.lstrip("v").split("-")[0], where))
        elif ins.keyword in ("COPY", "ADD"):
            found, pairs = _check_copy(ins.keyword, value, context, rules, where)
            problems, copies = problems + found, copies + pairs
        elif ins.keyword == "RUN":
            problems += _check_pip(value, where, env_constrained)
        elif ins.keyword == "ENV" and "PIP_CONSTRAINT" in value:
            env_constrained = True
        elif ins.keyword == "USER":
            user = value.strip()
        elif ins.keyword in ("ENTRYPOINT", "CMD"):
            if user is None or user.split(":")[0] in ("root", "0") or "$" in user:
                problems.append(f"{where}: {ins.keyword} runs as root: add USER <non-root uid> before it")
            if ins.keyword == "ENTRYPOINT":
                entrypoint = (json.loads(value) if value.startswith("[") else value.split())[0]
    if entrypoint is None:
        problems.append(f"{path.name}: no ENTRYPOINT")
    else:
        sources = [src for src, dest in copies if dest == entrypoint]
        problems += check_entrypoint(context / sources[0]) if sources else [
            f"{path.name}: ENTRYPOINT {entrypoint} is not copied from the repository"]
    if requirements.name not in [Path(src).name for src, _ in copies]:
        problems.append(f"{path.name}: does not install from {requirements.name} (no COPY of it)")
    for dist, version, where in named:
        expected = pinned.get(dist, mentioned.get(dist))
        if version != expected:
            problems.append(f"{where}: {dist} {version} is not the version {requirements.name} names ({expected})")
    return problems


def check_workflow(workflow: dict, device: str) -> list[str]:
    """A hardware workflow installs the pinned stack, runs doctor, `pytest -m DEVICE`, the parity run and
    the comparison with the golden file, and uploads the parity record."""
    problems = []
    triggers = workflow.get("on", workflow.get(True)) or {}  # YAML 1.1 reads a bare `on` as True
    if "main" not in (triggers.get("push") or {}).get("branches", []):
        problems.append("not triggered on push to main")
    problems += [f"no {t} trigger" for t in ("pull_request", "workflow_dispatch") if t not in triggers]
    steps = [s for job in workflow.get("jobs", {}).values() for s in job.get("steps", [])]
    problems += [f"job {name} has no timeout-minutes" for name, job in workflow.get("jobs", {}).items()
                 if not isinstance(job.get("timeout-minutes"), int)]
    problems += [f"action {s['uses']} is not pinned to a version tag or commit" for s in steps
                 if "uses" in s and not re.search(r"@(v\d+(\.\d+)*|[0-9a-f]{40})$", s["uses"])]
    if "concurrency" not in workflow:
        problems.append("no concurrency group")
    run = "\n".join(s.get("run", "") for s in steps)
    expected = {
        "the pinned stack": rf"pip install -r requirements-{device}\.txt",
        "the project under the stack's constraints": rf"pip install -c requirements-{device}\.txt -e",
        "doctor": rf"-m lmm_r1_ascend\.doctor --device {device}\b",
        f"pytest -m {device}": rf"-m pytest -m {device}\b",
        # fp32 + reference attention: the one configuration comparable with the CPU golden
        "the parity run": rf"-m lmm_r1_ascend\.parity run --device {device} --dtype float32 --attention reference "
                          rf"--out parity-{device}\.json",
        "the bf16 parity run": rf"-m lmm_r1_ascend\.parity run --device {device} --dtype bfloat16 "
                               rf"--out parity-{device}-bf16\.json",
        "the parity comparison": rf"-m lmm_r1_ascend\.parity compare {re.escape(GOLDEN)} parity-{device}\.json",
    }
    problems += [f"does not run {what}" for what, pattern in expected.items() if not re.search(pattern, run)]
    for number, line in enumerate(run.replace("\\\n", " ").splitlines(), 1):
        problems += _check_pip(line, f"run line {number}", env_constrained=False)
    if re.search(r"\bsed\b.*requirements-", run):
        problems.append(f"rewrites requirements-{device}.txt with sed: use the file itself with -r / -c")
    if not any(s.get("uses", "").startswith("actions/upload-artifact@") and s.get("with", {}).get("path")
               == f"parity-{device}*.json" for s in steps):
        problems.append(f"does not upload parity-{device}*.json")
    return problems


def write_file(root: Path, name: str, text: str, mode: int = 0o644) -> Path:
    """Test helper: write root/name (parents made) with the given file mode."""
    path = root / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(mode)
    return path


# ---- environment defaults of the images and launch scripts (ASCEND.md, "More facts") ----------------

# The first vLLM release with PR 40812 (its v0.20.1 release notes list it): the sleep-mode (cumem) pool
# turns expandable segments off inside itself instead of asserting against them (PR 14189), and it
# looks for them in PYTORCH_CUDA_ALLOC_CONF only.
VLLM_EXPANDABLE_WITH_SLEEP = "0.20.1"
HCCL_CONNECT_RANGE = (120, 7200)  # seconds (ASCEND.md, "Environment variables")
HCCL_AIV_EXEC_MAX = 1091          # CANN: with HCCL_OP_EXPANSION_MODE=AIV a larger HCCL_EXEC_TIMEOUT is lowered to this
# Opt-in NPU settings no image or launch script may default (why: docs/docker.md, "NPU settings"),
# with the values that would be a change from the libraries' own defaults.
NPU_OPT_IN = {"HCCL_OP_EXPANSION_MODE": None, "TASK_QUEUE_ENABLE": {"2"}, "CPU_AFFINITY_CONF": None,
              "VLLM_ENABLE_V1_MULTIPROCESSING": None, "VLLM_BATCH_INVARIANT": None}


def dockerfile_env(path: Path) -> dict[str, str]:
    """NAME -> value of every ENV instruction (`ENV A=1 B=2` and the legacy `ENV A 1`), later ones winning."""
    env: dict[str, str] = {}
    for ins in parse_dockerfile(path.read_text()):
        if ins.keyword != "ENV":
            continue
        tokens = shlex.split(ins.value)
        if tokens and "=" not in tokens[0]:
            env[tokens[0]] = " ".join(tokens[1:])
        else:
            env.update(t.split("=", 1) for t in tokens)
    return env


def script_env_defaults(text: str) -> dict[str, str]:
    """NAME -> value a shell script exports when the caller has not set NAME: `export NAME=VALUE`,
    `export NAME=${NAME:-VALUE}` and `: "${NAME:=VALUE}"` (comment lines are not read)."""
    env: dict[str, str] = {}
    for raw in text.splitlines():
        line = raw.split(" #", 1)[0].strip()
        if line.startswith("#"):
            continue
        for name, default, plain in re.findall(r"\bexport\s+(\w+)=(?:\"?\$\{\w+:?-([^}]*)\}\"?|(\S+))", line):
            env[name] = default if default or not plain else plain
        for name, default in re.findall(r"\$\{(\w+):?=([^}]*)\}", line):
            env[name] = default
    return env


def _expandable(value: str | None) -> bool:
    return bool(value) and re.search(r"expandable_segments\s*:\s*true", value, re.IGNORECASE) is not None


def check_env_defaults(defaults: dict[str, str], device: str, *, where: str, sleep_mode_default: bool,
                       vllm_version: str | None = None) -> list[str]:
    """Problems of one image's / script's environment defaults against ASCEND.md ("More facts").

    NPU: no expandable segments while vLLM's sleep mode is the default; HCCL connect timeout within
    120-7200 s; no AIV expansion mode with an exec timeout above its 1091 s cap; no opt-in setting
    defaulted. CUDA: expandable segments as a default only with a vLLM that includes PR 40812, and only
    under PYTORCH_CUDA_ALLOC_CONF (the name vLLM reads)."""
    from packaging.version import Version

    problems = []
    if device == "npu":
        if sleep_mode_default:
            problems += [f"{where}: defaults {name}={defaults[name]} while vLLM's sleep mode is on by default "
                         "(rollout.vllm_enable_sleep): expandable segments break vllm-ascend's sleep-mode pool"
                         for name in ("PYTORCH_NPU_ALLOC_CONF", "PYTORCH_ALLOC_CONF")
                         if _expandable(defaults.get(name))]
        connect, (low, high) = defaults.get("HCCL_CONNECT_TIMEOUT"), HCCL_CONNECT_RANGE
        if connect is not None and not (connect.isdigit() and low <= int(connect) <= high):
            problems.append(f"{where}: HCCL_CONNECT_TIMEOUT={connect} is outside HCCL's {low}-{high} s")
        execute = defaults.get("HCCL_EXEC_TIMEOUT")
        if execute is not None and not (execute.isdigit() and int(execute) > 0):
            problems.append(f"{where}: HCCL_EXEC_TIMEOUT={execute} is not a positive number of seconds")
        if (defaults.get("HCCL_OP_EXPANSION_MODE", "").upper() == "AIV" and execute and execute.isdigit()
                and int(execute) > HCCL_AIV_EXEC_MAX):
            problems.append(f"{where}: HCCL_EXEC_TIMEOUT={execute} with HCCL_OP_EXPANSION_MODE=AIV is silently "
                            f"lowered to {HCCL_AIV_EXEC_MAX} s")
        for name, values in NPU_OPT_IN.items():
            if name in defaults and (values is None or defaults[name] in values):
                problems.append(f"{where}: defaults the opt-in {name}={defaults[name]} (docs/docker.md, NPU settings)")
    elif device == "cuda" and sleep_mode_default:
        if _expandable(defaults.get("PYTORCH_CUDA_ALLOC_CONF")) and (
                vllm_version is None or Version(vllm_version) < Version(VLLM_EXPANDABLE_WITH_SLEEP)):
            problems.append(f"{where}: defaults expandable segments with vLLM {vllm_version}: sleep mode asserts "
                            f"against them before vLLM {VLLM_EXPANDABLE_WITH_SLEEP} (PR 40812)")
        if _expandable(defaults.get("PYTORCH_ALLOC_CONF")):
            problems.append(f"{where}: defaults expandable segments under PYTORCH_ALLOC_CONF, which vLLM's sleep-mode "
                            "pool does not read (use PYTORCH_CUDA_ALLOC_CONF)")
    return problems
