"""Parity runs on the committed rollout: goldens reproduce, the CPU-runnable backends and
attention implementations agree, and planted or convention-breaking attention bugs fail.

Each run replays 3 recorded steps of the 3.5 MB demo model (a few seconds); runs are shared
through a module-scoped cache. Tolerances are `compare`'s fp32 defaults (see
lmm_r1_ascend/parity/compare.py) unless a test says otherwise.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lmm_r1_ascend.backends import BackendUnavailable, get_backend
from lmm_r1_ascend.backends.registry import backend_names
from lmm_r1_ascend.parity.__main__ import main
from lmm_r1_ascend.parity.plants import PLANTS
from lmm_r1_ascend.parity.record import TRAINER_METRICS
from lmm_r1_ascend.parity.replay import METRICS
from lmm_r1_ascend.parity.rollout_file import file_sha256
from lmm_r1_ascend.parity.stamp import attention_implementations

GOLDEN = Path(__file__).resolve().parents[1] / "golden"
ROLLOUT = GOLDEN / "parity-rollout.pt"
GOLDEN_CPU = GOLDEN / "parity-cpu.json"
GOLDEN_NPU_EMULATED = GOLDEN / "parity-npu-emulated.json"


def cpu_runnable_attention() -> list[tuple[str, str]]:
    """(backend, attention implementation) for every backend usable here on CPU tensors, and
    every implementation it reports usable: the list grows with the backends' candidates."""
    pairs = []
    for name in sorted(backend_names()):
        try:
            backend = get_backend(name)
        except BackendUnavailable:
            continue
        if backend.device_type == "cpu":
            pairs += [(name, impl) for impl, (ok, _) in attention_implementations(backend).items() if ok]
    return pairs


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """run(device, attention=None, plant=None) -> path of a parity result (cached per module)."""
    root = tmp_path_factory.mktemp("parity")
    cache: dict[tuple, Path] = {}

    def get(device: str, attention: str | None = None, plant: str | None = None) -> Path:
        impl = attention or get_backend(device).select_kernels().attention.name
        key = (device, impl, plant)
        if key not in cache:
            out = root / f"{device}-{impl}-{plant or 'clean'}.json"
            args = ["run", "--device", device, "--rollout", str(ROLLOUT), "--out", str(out), "--attention", impl]
            assert main(args + (["--plant", plant] if plant else [])) == 0
            cache[key] = out
        return cache[key]

    return get


def compare(a: Path, b: Path, *extra: str) -> int:
    return main(["compare", str(a), str(b), *extra])


def load(path: Path) -> dict:
    return json.loads(Path(path).read_text())


# ----------------------------------------------------------------- the committed files

def test_rollout_file_is_small_plain_and_complete():
    assert ROLLOUT.stat().st_size < 1 << 20
    data = torch.load(ROLLOUT, weights_only=True)  # plain tensors and containers only
    assert len(data["steps"]) == 3
    for step in data["steps"]:
        assert len(step["response_ids"]) == len(step["prompt_ids"]) == step["rewards"].shape[0] == 16
        for mask, resp in zip(step["action_mask"], step["response_ids"]):
            assert mask.dtype == torch.bool and mask.shape == resp.shape
        assert all(lp.shape == r.shape for lp, r in zip(step["log_probs"], step["response_ids"]))
    assert len(data["trainer_metrics"]) == 3


@pytest.mark.parametrize("golden, backend", [(GOLDEN_CPU, "cpu"), (GOLDEN_NPU_EMULATED, "npu-emulated")])
def test_goldens_are_stamped_without_personal_data(golden, backend):
    data = load(golden)
    assert data["rollout"]["sha256"] == file_sha256(ROLLOUT)
    env = data["environment"]
    assert env["backend"] == backend and env["dtype"] == "float32" and env["plant"] is None
    assert {"python", "torch", "transformers"} <= set(env["versions"])
    assert env["date_utc"].endswith("+00:00")
    assert env["kernels"]["attention"]["name"] == ("reference" if backend == "cpu" else "npu_fusion")
    assert ("not the Ascend hardware" in env.get("note", "")) == (backend == "npu-emulated")
    text = golden.read_text()
    assert socket.gethostname() not in text
    assert str(Path.home()) not in text and str(Path(__file__).resolve().parents[2]) not in text
    assert list(data["metrics"]) == list(METRICS)


# ----------------------------------------------------------------- reproducibility and agreement

def test_cpu_replay_is_the_recording_trainers_computation(run):
    """The rollout file holds the metrics PPOTrainer.train_step logged while recording; the CPU
    replay of the same tokens must give them back. Same kernels; only the machine may change
    summation order (fp32: ~1e-7 relative per op), hence rtol 1e-4 / atol 1e-6."""
    steps = load(run("cpu"))["steps"]
    trainer = torch.load(ROLLOUT, weights_only=True)["trainer_metrics"]
    for row, want in zip(steps, trainer):
        for key, metric in TRAINER_METRICS.items():
            assert row[metric] == pytest.approx(want[key], rel=1e-4, abs=1e-6), (row["step"], metric)


def test_cpu_rerun_reproduces_the_golden(run):
    assert compare(GOLDEN_CPU, run("cpu")) == 0


def test_npu_path_through_the_emulation_matches_cpu_and_goldens(run):
    npu = run("npu-emulated")
    assert load(npu)["environment"]["kernels"]["attention"]["name"] == "npu_fusion"
    assert load(npu)["environment"]["kernels"]["fused_ops"]["name"] == "npu_fused"
    assert compare(run("cpu"), npu) == 0
    assert compare(GOLDEN_NPU_EMULATED, npu) == 0
    assert compare(GOLDEN_CPU, npu) == 0


def test_attention_discovery_covers_the_known_cpu_paths():
    pairs = cpu_runnable_attention()
    assert {("cpu", "batched"), ("cpu", "reference"), ("npu-emulated", "npu_fusion"),
            ("npu-emulated", "reference")} <= set(pairs)


@pytest.mark.parametrize("backend, impl", cpu_runnable_attention())
def test_every_cpu_runnable_attention_matches_the_golden(run, backend, impl):
    result = run(backend, impl)
    assert load(result)["environment"]["kernels"]["attention"]["name"] == impl
    assert compare(GOLDEN_CPU, result) == 0


# ----------------------------------------------------------------- the harness catches bugs

@pytest.mark.parametrize("plant", sorted(PLANTS))
def test_planted_divergence_fails_against_the_golden(run, capsys, plant):
    result = run("cpu", plant=plant)
    assert load(result)["environment"]["plant"] == plant
    capsys.readouterr()
    assert compare(GOLDEN_CPU, result) == 1
    out = capsys.readouterr().out
    # an attention bug shows before any update: the step-0 log-probs already disagree
    assert "FAIL logprob_diff_mean at step 0" in out
    # and it is gross, not marginal: even bf16's tolerance catches it
    assert compare(GOLDEN_CPU, result, "--rtol", "0.02", "--atol", "0.01") == 1


def _break_npu_op(monkeypatch, rewrite) -> list[int]:
    """Rewrite the arguments kernels/attention_npu.py's npu_fusion wrapper passes to
    ops.npu_fusion_attention, as a wrapper with the bug would pass them (test-only patch of the
    emulated op namespace the npu-emulated backend calls). Returns a call counter."""
    from lmm_r1_ascend.kernels import npu_emulation

    real, calls = npu_emulation.npu_fusion_attention, []

    def broken(*args, **kwargs):
        calls.append(1)
        return real(*args, **rewrite(dict(kwargs)))

    monkeypatch.setattr(npu_emulation, "npu_fusion_attention", broken)
    return calls


def _inclusive_ends(kw):  # end offsets as the index of each sequence's last token (off by one)
    ends = kw["actual_seq_qlen"]
    kw["actual_seq_qlen"] = kw["actual_seq_kvlen"] = tuple(e - 1 for e in ends[:-1]) + (ends[-1],)
    return kw


def _sdpa_mask_general_mode(kw):  # an SDPA-style keep-mask (True = attend) in the general-mask mode
    kw["atten_mask"], kw["sparse_mode"] = ~kw["atten_mask"], 0
    return kw


def _no_mask(kw):  # atten_mask dropped: sparse_mode is then ignored and attention is not causal
    kw["atten_mask"] = None
    return kw


@pytest.mark.parametrize("rewrite", [_inclusive_ends, _no_mask], ids=["lengths-off-by-one", "mask-missing"])
def test_broken_npu_convention_fails_the_parity_check(tmp_path, monkeypatch, capsys, rewrite):
    calls = _break_npu_op(monkeypatch, rewrite)
    out = tmp_path / "broken.json"
    assert main(["run", "--device", "npu-emulated", "--rollout", str(ROLLOUT), "--out", str(out)]) == 0
    assert calls  # the NPU path really ran through the broken call
    capsys.readouterr()
    assert compare(GOLDEN_NPU_EMULATED, out) == 1
    assert "FAIL logprob_diff_mean at step 0" in capsys.readouterr().out


def _leading_zero(kw):  # flash-attn's cu_seqlens (with the leading 0) passed as actual_seq_qlen
    kw["actual_seq_qlen"] = kw["actual_seq_kvlen"] = (0, *kw["actual_seq_qlen"])
    return kw


def _sdpa_mask_causal_mode(kw):  # the keep-mask where sparse_mode=3 expects the compressed True=masked one
    kw["atten_mask"] = ~kw["atten_mask"]
    return kw


@pytest.mark.parametrize("rewrite, message", [(_leading_zero, "WITHOUT the leading zero"),
                                              (_sdpa_mask_causal_mode, "compressed causal mask"),
                                              # the wheel's docs: a varlen mask is SS, exactly (max Sq, max Skv)
                                              (_sdpa_mask_general_mode, r"must be SS with S = \(max Sq")],
                         ids=["lengths-leading-zero", "mask-sdpa-convention-causal-mode", "mask-sdpa-convention"])
def test_npu_convention_breaks_the_emulation_rejects_fail_the_run(tmp_path, monkeypatch, rewrite, message):
    """These breaks violate the op's documented argument contract, which the emulation enforces:
    the parity run itself fails (louder than a comparison would)."""
    calls = _break_npu_op(monkeypatch, rewrite)
    with pytest.raises(ValueError, match=message):
        main(["run", "--device", "npu-emulated", "--rollout", str(ROLLOUT), "--out", str(tmp_path / "x.json")])
    assert calls


# ----------------------------------------------------------------- the CLI

@pytest.mark.parametrize("args, message", [
    (["--device", "cpu", "--rollout", "missing.pt"], "rollout file not found"),
    (["--device", "npu"], "device 'npu' is not usable here"),
    (["--device", "cpu", "--attention", "no_such_kernel"], "unknown attention implementation 'no_such_kernel'"),
    (["--device", "cpu", "--rollout", "FOREIGN"], "is not a parity rollout"),
    (["--device", "cpu", "--threads", "0"], "threads must be an int >= 1"),
])
def test_run_rejects_unusable_input_with_exit_2(tmp_path, capsys, args, message):
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(2)}, foreign)
    args = [str(foreign) if a == "FOREIGN" else str(tmp_path / a) if a.endswith(".pt") else a for a in args]
    if "--rollout" not in args:
        args += ["--rollout", str(ROLLOUT)]
    assert main(["run", *args, "--out", str(tmp_path / "out.json")]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out.json").exists()


def test_record_rejects_zero_steps(tmp_path, capsys):
    assert main(["record", "--out", str(tmp_path / "r.pt"), "--steps", "0"]) == 2
    assert "--steps must be an int >= 1" in capsys.readouterr().err


def test_cli_dtype_choices_are_the_replay_dtypes():
    from lmm_r1_ascend.parity.__main__ import DTYPE_CHOICES
    from lmm_r1_ascend.parity.replay import DTYPES

    assert set(DTYPE_CHOICES) == set(DTYPES)


def test_module_help_runs_as_a_subprocess():
    proc = subprocess.run([sys.executable, "-m", "lmm_r1_ascend.parity", "--help"], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert all(cmd in proc.stdout for cmd in ("record", "run", "compare"))


# ----------------------------------------------------------------- hardware (skipped without it)

HARDWARE = [pytest.param("cuda", marks=pytest.mark.cuda), pytest.param("npu", marks=pytest.mark.npu)]


@pytest.mark.parametrize("device", HARDWARE)
def test_hardware_float32_matches_the_cpu_golden(tmp_path, device):
    """fp32 with the reference attention isolates the device's kernels from bf16 rounding;
    the fp32 default tolerance applies. Not yet run on hardware: no GPU or NPU here."""
    out = tmp_path / f"{device}-fp32.json"
    assert main(["run", "--device", device, "--attention", "reference", "--rollout", str(ROLLOUT),
                 "--out", str(out)]) == 0
    assert load(out)["environment"]["device_type"] == device
    assert compare(GOLDEN_CPU, out) == 0


@pytest.mark.parametrize("device", HARDWARE)
def test_hardware_bf16_matches_its_golden(tmp_path, device):
    """The device's own kernels (flash_attn / npu_fusion) in bf16 against the golden recorded
    on that hardware (docs/parity.md), with the bf16 tolerance."""
    golden = GOLDEN / f"parity-{device}.json"
    if not golden.exists():
        pytest.skip(f"{golden.name} has not been recorded yet (docs/parity.md: recording a CUDA or NPU golden)")
    out = tmp_path / f"{device}-bf16.json"
    assert main(["run", "--device", device, "--dtype", "bfloat16", "--rollout", str(ROLLOUT), "--out", str(out)]) == 0
    assert compare(golden, out) == 0


# ----------------------------------------------------------------- slow: recording and bf16

@pytest.mark.slow
def test_recording_is_the_trainer_and_is_reproducible(tmp_path):
    """record_rollout's self-check replays the new file and requires the trainer's own metrics
    back (it raises otherwise); the first rollout, sampled with a fixed seed from the shipped
    model, repeats the committed one token for token on the machine that recorded it."""
    from lmm_r1_ascend.parity.record import record_rollout

    path = record_rollout(tmp_path / "r.pt", steps=2, log=lambda msg: None)
    new, old = torch.load(path, weights_only=True), torch.load(ROLLOUT, weights_only=True)
    for key in ("prompt_ids", "response_ids"):
        assert all(torch.equal(a, b) for a, b in zip(new["steps"][0][key], old["steps"][0][key])), key
    assert torch.equal(new["critic_value_head"], old["critic_value_head"])


@pytest.mark.slow
def test_bfloat16_run_uses_the_low_precision_defaults(run, tmp_path, capsys):
    out = tmp_path / "bf16.json"
    assert main(["run", "--device", "cpu", "--dtype", "bfloat16", "--rollout", str(ROLLOUT), "--out", str(out)]) == 0
    assert load(out)["environment"]["dtype"] == "bfloat16"
    capsys.readouterr()
    compare(GOLDEN_CPU, out)
    assert "defaults rtol=0.02 atol=0.01" in capsys.readouterr().out
