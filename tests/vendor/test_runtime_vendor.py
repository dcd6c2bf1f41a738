"""The project's HCCL group and its vLLM calls held against what Ascend and vllm-ascend ship.

Read, never imported (no CANN here): the pinned torch-npu 2.10.0.post4 wheel and the pinned
vllm-ascend 0.23.0 wheel (requirements-npu.txt, docker/Dockerfile.npu), parsed with `ast`.
Each test names the vendor file it reads. What the vendor code does at run time on an NPU is
not checked here (no NPU): these tests hold our call sites to the vendor's own definitions
and callers.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from artifacts import read_member

from lmm_r1_ascend.backends.npu import NpuBackend
from lmm_r1_ascend.rollout import vllm_worker_ext

pytestmark = pytest.mark.vendor

ROOT = Path(__file__).resolve().parents[2]
WEIGHT_SYNC = ROOT / "kernels" / "weight_sync.py"
WORKER_EXT = ROOT / "lmm_r1_ascend" / "rollout" / "vllm_worker_ext.py"


def _parse(text: str) -> ast.Module:
    return ast.parse(text)


def _class(tree: ast.AST, name: str) -> ast.ClassDef:
    found = [n for n in ast.walk(tree) if isinstance(n, ast.ClassDef) and n.name == name]
    assert len(found) == 1, f"class {name}: found {len(found)}"
    return found[0]


def _function(tree: ast.AST, name: str) -> ast.FunctionDef:
    found = [n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef) and n.name == name]
    assert len(found) == 1, f"function {name}: found {len(found)}"
    return found[0]


def _methods(cls: ast.ClassDef) -> dict[str, ast.FunctionDef]:
    return {n.name: n for n in cls.body if isinstance(n, ast.FunctionDef)}


def _signature(fn: ast.FunctionDef) -> list[tuple[str, object]]:
    """[(parameter, default or None)] after self, as written."""
    args = fn.args.args[1:]
    defaults = [None] * (len(args) - len(fn.args.defaults)) + [ast.literal_eval(d) for d in fn.args.defaults]
    return [(a.arg, d) for a, d in zip(args, defaults)]


def _callee(call: ast.Call) -> str:
    f = call.func
    return f.attr if isinstance(f, ast.Attribute) else f.id if isinstance(f, ast.Name) else ""


def hccl_construction(fn: ast.FunctionDef) -> dict:
    """How `fn` builds a ProcessGroupHCCL: positional / keyword argument counts, and for a last
    positional argument that is a variable, whether it was made by `ProcessGroupHCCL.Options()`
    and which of its attributes were set."""
    calls = [n for n in ast.walk(fn) if isinstance(n, ast.Call) and _callee(n) == "ProcessGroupHCCL"]
    assert len(calls) == 1, f"{fn.name}: {len(calls)} ProcessGroupHCCL(...) calls"
    call = calls[0]
    last = call.args[-1]
    made_by_options, attrs = False, set()
    if isinstance(last, ast.Name):
        for node in ast.walk(fn):
            if not isinstance(node, ast.Assign):
                continue
            for target in node.targets:
                if isinstance(target, ast.Name) and target.id == last.id and isinstance(node.value, ast.Call):
                    made_by_options |= (_callee(node.value) == "Options" and not node.value.args
                                        and ast.unparse(node.value.func).endswith("ProcessGroupHCCL.Options"))
                if (isinstance(target, ast.Attribute) and isinstance(target.value, ast.Name)
                        and target.value.id == last.id):
                    attrs.add(target.attr)
    return {"positional": len(call.args), "keywords": len(call.keywords), "options_ctor": made_by_options,
            "attrs": attrs}


def test_processgroup_hccl_is_built_as_torch_npu_and_vllm_ascend_build_it(torch_npu_wheel, vllm_ascend_wheel):
    """Vendor callers: torch-npu 2.10.0.post4 `torch_npu/_init/registry/distributed.py`
    (`_new_process_group_hccl_helper`, what dist.init_process_group("hccl") runs) and vllm-ascend
    0.23.0 `vllm_ascend/model_loader/netloader/executor/netloader_pg.py`: both pass
    `ProcessGroupHCCL.Options()` with `_timeout` set as the fourth positional argument. Ours
    (kernels/weight_sync.stateless_group) must do the same and set nothing they do not."""
    version = read_member(torch_npu_wheel, "torch_npu/version.py")
    assert "__version__ = '2.10.0.post4'" in version
    torch_npu_helper = _function(_parse(read_member(torch_npu_wheel, "torch_npu/_init/registry/distributed.py")),
                                 "_new_process_group_hccl_helper")
    netloader = _function(_parse(read_member(
        vllm_ascend_wheel, "vllm_ascend/model_loader/netloader/executor/netloader_pg.py")),
        "stateless_init_process_group")
    ours = hccl_construction(_function(_parse(WEIGHT_SYNC.read_text()), "stateless_group"))
    for vendor in (hccl_construction(torch_npu_helper), hccl_construction(netloader)):
        assert vendor["positional"] == 4 and vendor["keywords"] == 0 and vendor["options_ctor"]
        assert "_timeout" in vendor["attrs"]
        assert ours["positional"] == vendor["positional"] and ours["keywords"] == vendor["keywords"]
        assert ours["options_ctor"] and ours["attrs"] <= vendor["attrs"]
    assert ours["attrs"] == {"_timeout"}
    # Both vendor callers of the raw constructor start the group's sequence numbers; so do we.
    assert "_set_sequence_number_for_group" in ast.unparse(netloader)
    assert "_set_sequence_number_for_group" in WEIGHT_SYNC.read_text()


def test_vllm_ascend_platform_does_not_back_vllms_stateless_group_helper(vllm_ascend_wheel):
    """vLLM's stateless_init_torch_distributed_process_group hands every non-gloo backend to
    current_platform.stateless_init_device_torch_dist_pg (vLLM's base Platform raises
    NotImplementedError). vllm-ascend 0.23.0's NPUPlatform (`vllm_ascend/platform.py`) does not
    define it, so that helper cannot form an hccl group: the project never imports it."""
    platform = _class(_parse(read_member(vllm_ascend_wheel, "vllm_ascend/platform.py")), "NPUPlatform")
    assert "stateless_init_device_torch_dist_pg" not in _methods(platform)
    for path in [*ROOT.joinpath("lmm_r1_ascend").rglob("*.py"), *ROOT.joinpath("kernels").rglob("*.py"),
                 *ROOT.joinpath("backends").rglob("*.py")]:
        for node in ast.walk(_parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom):
                names = {a.name for a in node.names}
                assert "stateless_init_torch_distributed_process_group" not in names, path


def _self_attributes(cls: ast.ClassDef) -> set[str]:
    """Names read as self.<name> (or getattr/hasattr(self, "<name>")) in the class's methods."""
    out = set()
    for node in ast.walk(cls):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "self":
            out.add(node.attr)
        if (isinstance(node, ast.Call) and _callee(node) in ("getattr", "hasattr") and len(node.args) >= 2
                and isinstance(node.args[0], ast.Name) and node.args[0].id == "self"
                and isinstance(node.args[1], ast.Constant)):
            out.add(node.args[1].value)
    return out


def _assigned_self_attributes(cls: ast.ClassDef) -> set[str]:
    return {t.attr for n in ast.walk(cls) if isinstance(n, ast.Assign) for t in n.targets
            if isinstance(t, ast.Attribute) and isinstance(t.value, ast.Name) and t.value.id == "self"}


def test_the_worker_extension_uses_only_what_npu_worker_has(vllm_ascend_wheel):
    """vllm-ascend 0.23.0 `vllm_ascend/worker/worker.py`: NPUWorker derives from vLLM's WorkerBase
    (not the GPU worker) and has no reload_weights; the extension's worker surface is get_model,
    model_runner, device and model_config, each defined or assigned (or, model_config, used) by
    NPUWorker itself. A new worker attribute in the extension fails here until it is checked."""
    worker = _class(_parse(read_member(vllm_ascend_wheel, "vllm_ascend/worker/worker.py")), "NPUWorker")
    assert [ast.unparse(b) for b in worker.bases] == ["WorkerBase"]
    methods, assigned, used = _methods(worker), _assigned_self_attributes(worker), _self_attributes(worker)
    assert "reload_weights" not in methods  # the extension's layerwise-reload branch is NPU's
    assert _signature(methods["get_model"]) == []
    ext = _class(_parse(WORKER_EXT.read_text()), "WeightSyncExtension")
    own = set(_methods(ext)) | _assigned_self_attributes(ext)
    surface = {name for name in _self_attributes(ext) - own if not name.startswith("__")}  # __dict__: Python's
    assert surface == {"get_model", "model_runner", "device", "model_config", "reload_weights"}
    assert {"get_model"} <= set(methods) and {"model_runner", "device"} <= assigned and "model_config" in used
    # Both guarded: reload_weights by hasattr (absent on NPU), device by getattr with a fallback.
    guarded = ast.unparse(ext)
    assert "hasattr(self, 'reload_weights')" in guarded and "getattr(self, 'device', None)" in guarded


def test_layerwise_reload_is_called_as_npu_worker_calls_it(vllm_ascend_wheel):
    """NPUWorker.start_weight_update / finish_weight_update import initialize_layerwise_reload and
    finalize_layerwise_reload from vllm.model_executor.model_loader.reload and call them as
    (model) under `torch.device(self.device)` and (model, self.model_config); our fallback does
    the same (vllm_worker_ext.layerwise_reload and WeightSyncExtension._lmm_reload)."""
    worker = _parse(read_member(vllm_ascend_wheel, "vllm_ascend/worker/worker.py"))
    ours = _parse(WORKER_EXT.read_text())

    def imports(tree):
        return {(n.module, a.name) for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) for a in n.names
                if a.name.endswith("_layerwise_reload")}

    def calls(tree):
        return {(_callee(n), tuple(ast.unparse(a) for a in n.args)) for n in ast.walk(tree)
                if isinstance(n, ast.Call) and _callee(n) in ("initialize", "finalize", "initialize_layerwise_reload",
                                                              "finalize_layerwise_reload")}

    module = "vllm.model_executor.model_loader.reload"
    want = {(module, "initialize_layerwise_reload"), (module, "finalize_layerwise_reload")}
    assert imports(worker) == want and imports(ours) == want
    vendor = calls(_class(worker, "NPUWorker"))
    assert vendor == {("initialize_layerwise_reload", ("model",)),
                      ("finalize_layerwise_reload", ("model", "self.model_config"))}
    assert calls(_function(ours, "_lmm_reload")) == {("initialize", ("model",)),
                                                     ("finalize", ("model", "self.model_config"))}
    assert "with torch.device(self.device)" in ast.unparse(_class(worker, "NPUWorker"))
    assert vllm_worker_ext.layerwise_reload.__name__ == "layerwise_reload"


def test_sleep_mode_and_platform_calls_exist_with_our_arguments(vllm_ascend_wheel):
    """vllm.LLM.sleep(level=1) / wake_up() reach NPUWorker.sleep(level=1) / wake_up(tags=None);
    NPUPlatform reports sleep mode available (the engine asks current_platform) and is an
    out-of-tree platform that does not override is_cpu, so vLLM's base answers False (the engine's
    sampling_generators_rewind takes the accelerator branch)."""
    tree = _parse(read_member(vllm_ascend_wheel, "vllm_ascend/worker/worker.py"))
    methods = _methods(_class(tree, "NPUWorker"))
    assert _signature(methods["sleep"]) == [("level", 1)]
    assert _signature(methods["wake_up"]) == [("tags", None)]
    platform = _class(_parse(read_member(vllm_ascend_wheel, "vllm_ascend/platform.py")), "NPUPlatform")
    pm = _methods(platform)
    assert ast.unparse(pm["is_sleep_mode_available"].body[-1]) == "return True"
    assert "is_cpu" not in pm
    enum = [n for n in platform.body if isinstance(n, ast.Assign) and ast.unparse(n.targets[0]) == "_enum"]
    assert [ast.unparse(n.value) for n in enum] == ["PlatformEnum.OOT"]


def test_nz_weights_are_off_through_vllm_ascends_own_switch_and_its_env_check(vllm_ascend_wheel):
    """`vllm_ascend/ascend_config.py`: weight_nz_mode comes from additional_config["weight_nz_mode"],
    falling back to VLLM_ASCEND_ENABLE_NZ (`vllm_ascend/envs.py`, default 1: NZ for quantized
    weights). `worker.py`: wake_up raises for any nonzero weight_nz_mode; _check_nz_disabled (run by
    start_weight_update) reads the environment variable itself. So the NPU backend sets both:
    additional_config weight_nz_mode=0 and VLLM_ASCEND_ENABLE_NZ=0 in every worker."""
    config = read_member(vllm_ascend_wheel, "vllm_ascend/ascend_config.py")
    read = [n for n in ast.walk(_parse(config)) if isinstance(n, ast.Call) and _callee(n) == "_get_config_value"
            and len(n.args) >= 3 and isinstance(n.args[1], ast.Constant) and n.args[1].value == "weight_nz_mode"]
    assert len(read) == 1 and ast.literal_eval(read[0].args[2]) == "VLLM_ASCEND_ENABLE_NZ"
    assert '"VLLM_ASCEND_ENABLE_NZ": lambda: int(os.getenv("VLLM_ASCEND_ENABLE_NZ", 1))' in read_member(
        vllm_ascend_wheel, "vllm_ascend/envs.py")
    worker = _class(_parse(read_member(vllm_ascend_wheel, "vllm_ascend/worker/worker.py")), "NPUWorker")
    wake = ast.unparse(_methods(worker)["wake_up"])
    assert "nz_mode = get_ascend_config().weight_nz_mode" in wake and "if nz_mode:" in wake
    assert "envs_ascend.VLLM_ASCEND_ENABLE_NZ" in ast.unparse(_methods(worker)["_check_nz_disabled"])
    assert NpuBackend.vllm_additional_config == {"weight_nz_mode": 0}
    assert NpuBackend.worker_env_defaults["VLLM_ASCEND_ENABLE_NZ"] == "0"


def test_no_default_turns_on_expandable_segments_that_the_sleep_pool_refuses(vllm_ascend_wheel):
    """`vllm_ascend/device_allocator/camem.py`: the sleep-mode pool asserts PYTORCH_NPU_ALLOC_CONF
    has no expandable_segments:True; `platform.py` adds it itself only when sleep mode is off. None
    of our NPU defaults (worker env, docker/Dockerfile.npu, scripts/train_npu.sh) set it."""
    camem = read_member(vllm_ascend_wheel, "vllm_ascend/device_allocator/camem.py")
    assert 'assert "expandable_segments:True" not in conf' in camem
    platform = read_member(vllm_ascend_wheel, "vllm_ascend/platform.py")
    assert "if model_config and not model_config.enable_sleep_mode:" in platform
    assert "PYTORCH_NPU_ALLOC_CONF" not in NpuBackend.worker_env_defaults
    dockerfile = (ROOT / "docker" / "Dockerfile.npu").read_text()
    env_block = dockerfile[dockerfile.index("ENV LMM_R1_DEVICE"):]
    assert "PYTORCH_NPU_ALLOC_CONF" not in env_block.split("USER")[0]
    script = (ROOT / "scripts" / "train_npu.sh").read_text()
    assert "export PYTORCH_NPU_ALLOC_CONF" not in script


def test_batch_invariance_is_vllms_own_switch_which_vllm_ascend_reads(vllm_ascend_wheel):
    """`vllm_ascend/batch_invariant.py`: init_batch_invariance turns vllm-ascend's batch-invariant
    kernels on from vLLM's VLLM_BATCH_INVARIANT (no additional_config key in 0.23.0), and then
    forces weight_nz_mode=0 and HCCL_DETERMINISTIC=strict itself. The project keeps it an opt-in
    environment variable (beta, A2/A3 only) that the NPU backend forwards to every worker."""
    text = read_member(vllm_ascend_wheel, "vllm_ascend/batch_invariant.py")
    init = ast.unparse(_function(_parse(text), "init_batch_invariance"))
    assert "if envs.VLLM_BATCH_INVARIANT:" in init
    override = ast.unparse(_function(_parse(text), "override_envs_for_invariance"))
    assert "ascend_config.weight_nz_mode = 0" in override and "os.environ['HCCL_DETERMINISTIC'] = 'strict'" in override
    assert "VLLM_BATCH_INVARIANT" in NpuBackend.forwarded_env_vars
    assert "VLLM_BATCH_INVARIANT" not in NpuBackend.worker_env_defaults
