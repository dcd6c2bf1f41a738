"""The ablation's variants as data: variant -> (stage, recipe, overrides, the variant it starts from).

Each trained variant is one `python -m lmm_r1_ascend.train --stage S --recipe R key=value ...`
run in DIR/<variant>/run; `init_from` names another variant, whose run the MGT stage continues
(`model.init_from=DIR/<that variant>/run`), or "pretrain" (MGT straight from the base model).
Swapping a recipe is a one-word edit of the tables below.

`resolve(...)` turns a table and the experiment's settings into `VariantRun`s: the exact train
and eval command lines of every variant, in an order where a variant comes after the one it
starts from. Those command lines are what the done-markers fingerprint (runner.py).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Variant:
    """label: the table's row name. stage None: not trained (the base model, evaluated as is).
    data: which of the experiment's data paths feeds it (paper scale: "text", "multi", "mgt",
    "sft"; None: the recipe's own data)."""

    label: str
    stage: str | None
    recipe: str | None = None
    overrides: tuple[str, ...] = ()
    init_from: str | None = None
    data: str | None = None


# Demo scale: the VL warm-up demo model (demo-vl) on the demo's arithmetic, as text and drawn as images.
DEMO_MODEL = "demo-vl"
DEMO_VARIANTS: dict[str, Variant] = {
    "base": Variant("base", None),
    "fre_text": Variant("FRE-Text", "fre", "demo_fre_vl"),
    "fre_multi": Variant("FRE-Multi", "fre", "demo_fre_multi"),  # half text, half image rows
    "sft_text": Variant("SFT-Text", "sft", "demo_sft_vl"),
    "mgt_direct": Variant("MGT from base", "mgt", "demo_mgt", init_from="pretrain"),
    "mgt_after_fre": Variant("MGT after FRE-Text", "mgt", "demo_mgt", init_from="fre_text"),
    "mgt_after_sft": Variant("MGT after SFT-Text", "mgt", "demo_mgt", init_from="sft_text"),
}
DEMO_EVAL = {"text": "demo:arithmetic-eval", "image": "demo:arithmetic-images-eval"}
DEMO_EVAL_OVERRIDES = ("data.max_prompt_len=1024",)  # image prompts of the tiny VL model run to ~600 tokens

# Paper scale (RECIPE.md): Qwen2.5-VL-3B on N devices, the paper's recipes, in the paper's order.
PAPER_MODEL = "Qwen/Qwen2.5-VL-3B-Instruct"
SFT_TEXT = ("algorithm.advantage_estimator=reinforce", "algorithm.n_samples_per_prompt=1",
            "algorithm.init_kl_coef=0", "optim.actor_lr=1e-5")  # docs/two_stage.md: a choice, not the paper's
PAPER_VARIANTS: dict[str, Variant] = {
    "base": Variant("Qwen2.5-VL-3B", None),
    "fre_text": Variant("FRE-Text", "fre", "fre_text", data="text"),
    "mgt_after_fre": Variant("MGT-Geo after FRE-Text", "mgt", "mgt_geo", init_from="fre_text", data="mgt"),
    "mgt_direct": Variant("MGT-Geo from base", "mgt", "mgt_geo", init_from="pretrain", data="mgt"),
    "fre_multi": Variant("FRE-Multi", "fre", "fre_multi", data="multi"),
    "sft_text": Variant("SFT-Text", "sft", "fre_text", SFT_TEXT, data="sft"),
    "mgt_after_sft": Variant("MGT-Geo after SFT-Text", "mgt", "mgt_geo", init_from="sft_text", data="mgt"),
}
# the paper's placement on N devices (README "Scaling out"): ZeRO-3, models and a vLLM engine colocated per rank
PAPER_PLACEMENT = ("distributed.mode=ray", "distributed.train_engine=deepspeed", "distributed.zero_stage=3",
                   "distributed.rollout_engines=0", "distributed.colocate_rollout=true", "rollout.engine=vllm")
PAPER_DATA = {"text": "deepscaler_message.jsonl (DeepScaleR-40K)", "multi": "mathv60k_message.jsonl (VerMulti-65K)",
              "mgt": "mathv_geo_message.jsonl (VerMulti geo, ~15K)",
              "sft": "DeepScaleR-40K with a reference solution per row (field response)"}


class VariantError(ValueError):
    """A user error in choosing variants (unknown name, a variant without the one it starts from)."""


@dataclass
class VariantRun:
    """One variant, resolved: where it lives, its exact commands, and its fingerprint (which
    covers the variant it starts from, so a rerun of that one reruns this one too)."""

    name: str
    variant: Variant
    folder: Path
    train_argv: list[str] | None          # arguments of `python -m lmm_r1_ascend.train` (None: base)
    eval_argvs: dict[str, list[str]]      # "text" / "image" -> arguments of `python -m lmm_r1_ascend.eval`
    needs: str | None                     # the variant whose run this one starts from
    fingerprint: str = ""

    @property
    def run_dir(self) -> Path:
        return self.folder / "run"

    def eval_dir(self, kind: str) -> Path:
        return self.folder / f"eval_{kind}"


def select(table: dict[str, Variant], names: list[str] | None) -> list[str]:
    """The chosen variant names in the table's order, with base first; one-line errors."""
    if not names:
        return list(table)
    unknown = [n for n in names if n not in table]
    if unknown:
        raise VariantError(f"unknown variant(s) {', '.join(unknown)}: choose from {', '.join(table)}")
    chosen = set(names) | {"base"}
    for n in names:
        need = table[n].init_from
        if need not in (None, "pretrain") and need not in chosen:
            raise VariantError(f"variant {n} starts from {need}: add {need} to --variants")
    return [n for n in table if n in chosen]


def _fingerprint(parts: object) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


def resolve(table: dict[str, Variant], names: list[str], out: Path, *, model: str, steps: int | None,
            train_common: list[str], sets: dict[str, list[str]], data: dict[str, str],
            eval_data: dict[str, str], eval_args: list[str]) -> list[VariantRun]:
    """The runs of `names` (table order) under `out`: train_common and sets["*"] go to every
    training run, sets[name] to that variant's; data[v.data] feeds v; every model is evaluated on
    each of eval_data ({"text": path, "image": path}) with the same eval_args."""
    runs: dict[str, VariantRun] = {}
    for name in names:
        v = table[name]
        folder = out / name
        train = None
        if v.stage is not None:
            train = ["--stage", v.stage, "--recipe", v.recipe, "--no-progress", f"model.pretrain={model}",
                     *train_common, *v.overrides]
            if steps is not None:
                train.append(f"trainer.max_steps={steps}")
            if v.init_from is not None:
                src = "pretrain" if v.init_from == "pretrain" else str(runs[v.init_from].run_dir)
                train.append(f"model.init_from={src}")
            if v.data is not None and v.data in data:
                train.append(f"data.prompt_data=[{data[v.data]}]")
            train += [*sets.get("*", []), *sets.get(name, []), f"output_dir={folder / 'run'}"]
        evaluated = model if train is None else str(folder / "run" / "hf")
        evals = {kind: ["--model", evaluated, "--data", path, *eval_args, "--no-progress",
                        "--out", str(folder / f"eval_{kind}")] for kind, path in eval_data.items()}
        needs = v.init_from if v.init_from not in (None, "pretrain") else None
        run = VariantRun(name, v, folder, train, evals, needs)
        run.fingerprint = _fingerprint({"train": train, "eval": evals,
                                        "needs": runs[needs].fingerprint if needs else None})
        runs[name] = run
    return list(runs.values())
