"""Build the VL demo's starting model: a tiny Qwen2.5-VL that reads the demo's rendered problems, sloppily.

The two-stage demos (issue 33) run FRE on the arithmetic problems as text, then MGT on the same
problems drawn as images (``render_problem_image``: 224x56, ``23 + 58 = ?``), on ONE model. This
script makes that model: transformers' ``Qwen2_5_VLForConditionalGeneration`` of the real
architecture (a 2-block vision tower with window attention and the 2x2 patch merger, mRoPE in
the language model) with the tokenizer and chat template of lmm_r1_ascend/models/tiny.py.

- The language model starts as the shipped text warm-up model ``demo-fre``
  (scripts/build_demo_model.py; hidden 128, 4 layers). Qwen2.5-VL's language model is Qwen2's
  with mRoPE, and on text every mRoPE axis carries the same position, so the copied weights
  give the text model's logits exactly (checked below); its sloppy text habits come with them.
- The vision tower starts random and learns to read, in two phases, on the arithmetic generator's
  train split only (the held-out eval split is never seen):
  1. ``read_steps``: image rows with the demo's prompt, right targets (worked
     ``read_worked_frac`` of the time, else hasty). A training-only probe on the merged tokens
     (ReadingProbe, not saved) also predicts the character centred in each patch column, from
     where render_problem_image draws them: a dense target that makes the tower see the
     characters within a few hundred steps (the language-model loss alone had not after 400).
  2. ``steps``: the demo's own prompts, ``image_frac`` of each batch images, the rest text,
     targets in the exact LMM-R1 format. A *worked* target writes the step out and is right; a
     *hasty* one copies the expression and boxes a noisy answer (build_demo_model.warmup_target).
     Image targets are mostly hasty (``image_worked_frac``); text targets are worked
     ``text_worked_frac`` of the time. The think part always transcribes the expression right.
- The vision tower and probe train at ``lr_vision``; the language model at ``read_lr_text`` in
  phase 1 and ``lr_text`` in phase 2.

Sampled at temperature 1 the result answers images in the right format, reads most of them, and
is mostly hasty there, so image pass@1 is low and pass@8 high; text is as sloppy as demo-fre's.
RL can turn either into pass@1 by working the step out (FRE on text; MGT on images).

    python scripts/build_demo_vl_model.py            # writes lmm_r1_ascend/demo/assets/vl-warmup/
    python scripts/build_demo_vl_model.py --out /tmp/vl --read-steps 2 --steps 2 --eval-prompts 4 --samples 2

Deterministic for a given machine: seeded weights, seeded targets, one thread.
"""

from __future__ import annotations

import json
import random
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import build_demo_model as text_builder  # noqa: E402  (the text warm-up's targets, tokenizer and scoring)

from lmm_r1_ascend.demo.arithmetic import (  # noqa: E402
    DEFAULT_LEVEL, Problem, generate_problems, image_layout, problem_messages, render_problem_image, split_size,
)
from lmm_r1_ascend.rewards import MathReward, extract_response  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
ASSET_DIR = ROOT / "lmm_r1_ascend" / "demo" / "assets" / "vl-warmup"
TEXT_WARMUP_DIR = ROOT / "lmm_r1_ascend" / "demo" / "assets" / "fre-warmup"
MAX_BYTES = 5 * 1024 * 1024  # the whole asset folder
IMAGE_PAD, IMAGE_REF = "<|image_pad|>", "image.png"


@dataclass
class VLWarmupConfig:
    level: int = DEFAULT_LEVEL
    seed: int = 0
    init_text: str = "demo-fre"  # "demo-fre": the language model starts as the text warm-up; "scratch": random
    vision_hidden: int = 64
    vision_intermediate: int = 128
    vision_heads: int = 2
    read_steps: int = 1200  # phase 1: image rows only, right targets (learning to read; at 400 the probe read
    #   every column but the language model transcribed only ~7% of held-out images whole, at 1200 ~80%)
    read_batch: int = 24
    read_worked_frac: float = 0.5  # phase 1's share of worked targets (the others hasty and right)
    read_lr_text: float = 1e-3
    steps: int = 150  # phase 2: the demo's prompts, text and image rows, LMM-R1 targets
    batch: int = 16
    image_frac: float = 0.5  # share of image rows in each phase-2 batch
    lr_vision: float = 3e-3
    lr_text: float = 3e-4
    warmup_steps: int = 30
    aux_weight: float = 1.0  # the reading probe's loss (both phases)
    image_worked_frac: float = 0.1  # share of worked image targets
    image_hasty_correct: float = 0.3  # share of right hasty image targets
    text_worked_frac: float = 0.2  # text targets: worked like the text warm-up's last phase
    text_hasty_correct: float = 0.3
    eval_prompts: int = 64
    samples: int = 8
    max_new_tokens: int = 48


def _text_targets_cfg(cfg: VLWarmupConfig, image: bool) -> text_builder.WarmupConfig:
    """The text builder's target settings for one modality (warmup_target reads only these)."""
    worked, correct = ((cfg.image_worked_frac, cfg.image_hasty_correct) if image
                       else (cfg.text_worked_frac, cfg.text_hasty_correct))
    return text_builder.WarmupConfig(worked_frac=worked, hasty_correct=correct)


def build_model(tokenizer, cfg: VLWarmupConfig):
    """A Qwen2_5_VLForConditionalGeneration whose language model has demo-fre's shape (and, with
    init_text=demo-fre, its weights); the vision tower seeded from cfg.seed."""
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration, Qwen2ForCausalLM

    text_cfg = json.loads((TEXT_WARMUP_DIR / "config.json").read_text())
    if text_cfg["vocab_size"] != len(tokenizer):
        raise SystemExit(f"error: demo-fre's vocabulary ({text_cfg['vocab_size']}) is not the tiny tokenizer's "
                         f"({len(tokenizer)}); rebuild it with scripts/build_demo_model.py")
    head_dim = text_cfg["hidden_size"] // text_cfg["num_attention_heads"]
    half = head_dim // 2  # rotary frequencies, split temporal / height / width as mRoPE requires
    section = [half - 2 * (3 * half // 8), 3 * half // 8, 3 * half // 8]
    ids = {t: tokenizer.convert_tokens_to_ids(t)
           for t in ("<|image_pad|>", "<|video_pad|>", "<|vision_start|>", "<|vision_end|>")}
    text = dict(
        vocab_size=len(tokenizer), hidden_size=text_cfg["hidden_size"],
        intermediate_size=text_cfg["intermediate_size"], num_hidden_layers=text_cfg["num_hidden_layers"],
        num_attention_heads=text_cfg["num_attention_heads"], num_key_value_heads=text_cfg["num_key_value_heads"],
        max_position_embeddings=1024, rms_norm_eps=text_cfg["rms_norm_eps"], tie_word_embeddings=True,
        bos_token_id=None, eos_token_id=text_cfg["eos_token_id"], pad_token_id=text_cfg["pad_token_id"],
        rope_parameters={"rope_type": "default", "rope_theta": text_cfg["rope_parameters"]["rope_theta"],
                         "mrope_section": section},
    )
    config = Qwen2_5_VLConfig(
        text_config=text,
        vision_config=dict(
            depth=2, hidden_size=cfg.vision_hidden, intermediate_size=cfg.vision_intermediate,
            num_heads=cfg.vision_heads, in_channels=3, patch_size=14, spatial_merge_size=2, temporal_patch_size=2,
            out_hidden_size=text["hidden_size"], window_size=112, fullatt_block_indexes=[1], tokens_per_second=2,
        ),
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
        eos_token_id=text["eos_token_id"], pad_token_id=text["pad_token_id"], tie_word_embeddings=True,
    )
    torch.manual_seed(cfg.seed)
    model = Qwen2_5_VLForConditionalGeneration(config)
    if cfg.init_text == "demo-fre":
        src = Qwen2ForCausalLM.from_pretrained(TEXT_WARMUP_DIR, dtype=torch.float32)
        state = {("model.language_model." + k[len("model."):] if k.startswith("model.") else k): v
                 for k, v in src.state_dict().items()}
        missing, unexpected = model.load_state_dict(state, strict=False)
        if unexpected or any(not k.startswith("model.visual.") for k in missing):
            raise SystemExit(f"error: demo-fre's weights do not fit: missing {missing}, unexpected {unexpected}")
        probe = torch.tensor([tokenizer("What is 3 + 4? <think> 3 + 4 = 7", add_special_tokens=False)["input_ids"]])
        with torch.no_grad():
            gap = (src(input_ids=probe).logits - model(input_ids=probe).logits).abs().max().item()
        if gap > 1e-4:
            raise SystemExit(f"error: the VL language model differs from demo-fre on text by {gap}")
    elif cfg.init_text != "scratch":
        raise SystemExit(f"error: --init-text must be demo-fre or scratch, got {cfg.init_text!r}")
    eos = text["eos_token_id"]
    model.generation_config.eos_token_id = eos
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model


def image_processor():
    """The Qwen2-VL image processor with tiny-qwen2.5-vl's settings (torchvision-free PIL flavour)."""
    from transformers import Qwen2VLImageProcessorPil

    from lmm_r1_ascend.models.tiny import _image_processor_config

    settings = {k: v for k, v in _image_processor_config().items() if k != "image_processor_type"}
    return Qwen2VLImageProcessorPil(**settings)


class Encoder:
    """Prompts as the trainer templates them: token ids with each image's pad expanded to its
    merged-patch count, and the image's pixel patches (P, 3*2*14*14) float32 and grid (1, 3) int64.
    Rendered images are cached per problem."""

    def __init__(self, tokenizer, processor):
        self.tokenizer, self.processor = tokenizer, processor
        self.pad_id = tokenizer.convert_tokens_to_ids(IMAGE_PAD)
        self._images: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    def pixels(self, problem: Problem) -> tuple[torch.Tensor, torch.Tensor]:
        key = problem.expression
        if key not in self._images:
            out = self.processor(images=[render_problem_image(problem)], return_tensors="pt")
            self._images[key] = (out["pixel_values"].to(torch.float32), out["image_grid_thw"].to(torch.int64))
        return self._images[key]

    def prompt(self, problem: Problem, image: bool) -> list[int]:
        text = self.tokenizer.apply_chat_template(
            problem_messages(problem, image=IMAGE_REF if image else None), add_generation_prompt=True, tokenize=False)
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        if not image:
            return ids
        grid = self.pixels(problem)[1]
        pads = int(grid.prod()) // self.processor.merge_size ** 2
        return [x for t in ids for x in ([t] * pads if t == self.pad_id else [t])]

    def token_types(self, ids: torch.Tensor) -> dict:
        """mm_token_type_ids (B, T) int64, 1 on image pads: without it transformers' Qwen2.5-VL gives
        image tokens 1-D positions instead of mRoPE's 3-D ones (what the trainer and rollouts use)."""
        return {"mm_token_type_ids": (ids == self.pad_id).long()}

    def images(self, problems: list[Problem]) -> dict:
        """pixel_values (sum P, D) and image_grid_thw (N, 3) of the problems' images, in order."""
        if not problems:
            return {}
        pix, grids = zip(*(self.pixels(p) for p in problems))
        return {"pixel_values": torch.cat(pix), "image_grid_thw": torch.cat(grids)}


READ_CHARS = " 0123456789+-*=?"  # the reading probe's classes (" ": no character centred in the patch column)


class ReadingProbe(torch.nn.Module):
    """A training-only head on the vision tower's merged tokens (not saved): each merged token
    (2x2 patches) predicts the character centred in each of its two patch columns, taken from
    where render_problem_image draws them. This dense target teaches the tower to see the
    characters in a few hundred steps, where the language-model loss alone took many more."""

    def __init__(self, width: int):
        super().__init__()
        self.head = torch.nn.Linear(width, 2 * len(READ_CHARS))
        self._targets: dict[str, list[int]] = {}
        self.last_accuracy = float("nan")

    def targets(self, problem: Problem, grid_w: int, patch: int = 14) -> list[int]:
        """Class per patch column (grid_w of them), from the drawn characters' centres."""
        key = problem.expression
        if key not in self._targets:
            from PIL import Image, ImageDraw

            text, (x0, _), font = image_layout(problem)
            draw = ImageDraw.Draw(Image.new("RGB", (1, 1)))
            out = [0] * grid_w
            for i, ch in enumerate(text):
                if ch != " ":
                    centre = x0 + draw.textlength(text[:i], font=font) + draw.textlength(ch, font=font) / 2
                    out[min(grid_w - 1, int(centre // patch))] = READ_CHARS.index(ch)
            self._targets[key] = out
        return self._targets[key]

    def loss(self, merged: torch.Tensor, problems: list[Problem], grids: torch.Tensor) -> torch.Tensor:
        """merged: (sum of merged tokens, width) float32 in raster order per image; grids: (N, 3) int64."""
        logits, labels, at = [], [], 0
        for problem, (_, h, w) in zip(problems, grids.tolist()):
            n = (h // 2) * (w // 2)
            cols = torch.tensor(self.targets(problem, w)).view(1, w // 2, 2).expand(h // 2, w // 2, 2)
            logits.append(self.head(merged[at:at + n]).view(n * 2, len(READ_CHARS)))
            labels.append(cols.reshape(-1))
            at += n
        logits, labels = torch.cat(logits), torch.cat(labels)
        self.last_accuracy = (logits.argmax(-1) == labels).float().mean().item()  # logged: is the tower reading?
        return torch.nn.functional.cross_entropy(logits, labels)


def sft_loss(model, enc: Encoder, prompts: list[list[int]], targets: list[str], image_problems: list[Problem],
             probe: ReadingProbe | None = None, aux_weight: float = 0.0) -> torch.Tensor:
    """Mean token cross-entropy of one right-padded batch (labels on the responses only), plus
    aux_weight x the reading probe's loss on its images; image rows' pixels go in order of appearance."""
    ids, mask, labels = text_builder.sft_batch(enc.tokenizer, prompts, targets)
    extra = {**enc.images(image_problems), **enc.token_types(ids)}
    captured = {}
    hook = None
    if probe is not None and image_problems:
        hook = model.model.visual.register_forward_hook(lambda m, i, o: captured.__setitem__("merged", o.pooler_output))
    try:
        loss = model(input_ids=ids, attention_mask=mask, labels=labels, **extra).loss
    finally:
        if hook is not None:
            hook.remove()
    if captured:
        loss = loss + aux_weight * probe.loss(captured["merged"], image_problems, extra["image_grid_thw"])
    return loss


def train(model, enc: Encoder, problems: list[Problem], cfg: VLWarmupConfig, log=print) -> list[float]:
    """Phase 1 (read_steps): image rows with the demo's prompt, right targets, worked
    read_worked_frac of the time. Phase 2 (steps): the demo's prompts, image_frac of each batch images, LMM-R1 targets (mostly
    hasty on images). AdamW per phase (vision tower and probe at lr_vision, language model at
    read_lr_text / lr_text), warm-up then cosine; returns the losses."""
    rng = random.Random(f"vl-targets|{cfg.seed}")
    probe = ReadingProbe(model.config.text_config.hidden_size)
    vision = [p for n, p in model.named_parameters() if n.startswith("model.visual.")] + list(probe.parameters())
    text = [p for n, p in model.named_parameters() if not n.startswith("model.visual.")]
    targets = {False: _text_targets_cfg(cfg, image=False), True: _text_targets_cfg(cfg, image=True)}
    read_targets = text_builder.WarmupConfig(worked_frac=cfg.read_worked_frac, hasty_correct=1.0)
    losses, order = [], []

    def draw(k: int) -> list[Problem]:
        nonlocal order
        while len(order) < k:
            perm = list(range(len(problems)))
            rng.shuffle(perm)
            order += perm
        idx, order = order[:k], order[k:]
        return [problems[i] for i in idx]

    model.train()
    for phase, steps, lr_text in (("read", cfg.read_steps, cfg.read_lr_text), ("answer", cfg.steps, cfg.lr_text)):
        opt = torch.optim.AdamW([{"params": vision, "lr": cfg.lr_vision}, {"params": text, "lr": lr_text}],
                                betas=(0.9, 0.95), weight_decay=0.0)
        sched = text_builder.cosine_schedule(opt, min(cfg.warmup_steps, steps), steps)
        for step in range(steps):
            if phase == "read":
                batch = draw(cfg.read_batch)
                tgts = [text_builder.warmup_target(p, rng, read_targets) for p in batch]
                loss = sft_loss(model, enc, [enc.prompt(p, True) for p in batch], tgts, batch, probe, cfg.aux_weight)
            else:
                batch = draw(cfg.batch)
                n_image = round(cfg.batch * cfg.image_frac)
                images = batch[:n_image]
                prompts = [enc.prompt(p, k < n_image) for k, p in enumerate(batch)]
                tgts = [text_builder.warmup_target(p, rng, targets[k < n_image]) for k, p in enumerate(batch)]
                loss = sft_loss(model, enc, prompts, tgts, images, probe, cfg.aux_weight)
            text_builder.optimizer_step(model, opt, sched, loss)
            losses.append(loss.item())
            if step % 25 == 0 or step == steps - 1:
                log(f"{phase} step {step:4d}  loss {loss.item():.4f}  probe accuracy {probe.last_accuracy:.3f}")
    model.eval()
    return losses


@torch.no_grad()
def sample(model, enc: Encoder, problems: list[Problem], image: bool, n: int, max_new_tokens: int,
           greedy: bool = False) -> list[str]:
    """``n`` responses per problem (problem-major), as extracted for the reward."""
    tok = enc.tokenizer
    prompts = [enc.prompt(p, image) for p in problems]
    width = max(len(p) for p in prompts)
    ids = torch.tensor([[tok.pad_token_id] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    sampling = {} if greedy else {"temperature": 1.0, "top_k": 0, "top_p": 1.0}
    out = model.generate(
        input_ids=ids, attention_mask=mask, **({**enc.images(problems), **enc.token_types(ids)} if image else {}),
        do_sample=not greedy,
        max_new_tokens=max_new_tokens, num_return_sequences=n, pad_token_id=tok.pad_token_id,
        eos_token_id=tok.convert_tokens_to_ids("<|im_end|>"), **sampling,
    )
    texts = tok.batch_decode(out[:, width:], skip_special_tokens=False)
    return [extract_response(t) for t in texts]


def evaluate(model, enc: Encoder, problems: list[Problem], image: bool, n: int, max_new_tokens: int) -> dict:
    """Format rate and pass@1 / pass@n at temperature 1, greedy accuracy, share of worked
    responses, share whose think part transcribes the expression right, mean response length."""
    with MathReward(workers=0) as reward:
        responses = sample(model, enc, problems, image, n, max_new_tokens)
        fmt, acc = text_builder.score(reward, problems, responses, n)
        greedy = sample(model, enc, problems, image, 1, max_new_tokens, greedy=True)
        _, gacc = text_builder.score(reward, problems, greedy, 1)
    per_problem = [acc[i * n:(i + 1) * n] for i in range(len(problems))]
    think = [r.split("</think>")[0].replace("<think>", "").strip() for r in responses]
    exprs = [p.expression for p in problems for _ in range(n)]
    return {
        "format_rate": sum(fmt) / len(fmt),
        "pass@1": sum(acc) / len(acc),
        f"pass@{n}": sum(max(a) for a in per_problem) / len(problems),
        "greedy_accuracy": sum(gacc) / len(gacc),
        "worked_share": sum(" = " in t for t in think) / len(think),
        "read_right": sum(t.split(" = ")[0].strip() == e for t, e in zip(think, exprs)) / len(think),
        "mean_response_chars": sum(len(r) for r in responses) / len(responses),
        "prompts": len(problems), "samples_per_prompt": n,
    }


def measure(model, enc: Encoder, cfg: VLWarmupConfig) -> dict:
    """Figures for text and image prompts on the held-out eval split and on train problems."""
    figures = {}
    for split in ("eval", "train"):
        problems = generate_problems(min(cfg.eval_prompts, split_size(split, cfg.level)), split=split,
                                     level=cfg.level, seed=cfg.seed + 1)
        for image in (False, True):
            torch.manual_seed(cfg.seed)
            figures[f"{split}_{'image' if image else 'text'}"] = evaluate(
                model, enc, problems, image, cfg.samples, cfg.max_new_tokens)
    return figures


def save_checkpoint(model, tokenizer, processor, out: Path) -> int:
    """Write config, fp32 safetensors, tokenizer and image-processor files; returns the folder's
    size in bytes (SystemExit if over the 5 MB budget)."""
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    processor.save_pretrained(out)
    (out / "model.safetensors").chmod(0o644)  # the writer leaves it owner-only; it ships in the package
    size = sum(f.stat().st_size for f in out.iterdir() if f.is_file())
    if size > MAX_BYTES:
        raise SystemExit(f"error: {out} holds {size} bytes, over the 5 MB budget; shrink --vision-hidden")
    return size


def write_provenance(out: Path, cfg: VLWarmupConfig, figures: dict, size: int, seconds: float,
                     train_seconds: float) -> None:
    """warmup.json (settings and measured figures) and a README for the checkpoint folder."""
    meta = {"made_by": "scripts/build_demo_vl_model.py", "config": asdict(cfg),
            "train_problems": split_size("train", cfg.level), "eval": figures, "sft_seconds": round(train_seconds, 1),
            "build_seconds": round(seconds, 1), "asset_bytes": size, "torch": torch.__version__}
    (out / "warmup.json").write_text(json.dumps(meta, indent=2) + "\n")
    lines = []
    for name, fig in figures.items():
        lines.append(f"| {name} | {fig['format_rate']:.3f} | {fig['pass@1']:.3f} | {fig[f'pass@{cfg.samples}']:.3f} | "
                     f"{fig['greedy_accuracy']:.3f} | {fig['worked_share']:.3f} | {fig['read_right']:.3f} | "
                     f"{fig['mean_response_chars']:.1f} |")
    (out / "README.md").write_text(
        "# vl-warmup: the two-stage demos' starting policy (`model.pretrain: demo-vl`)\n\n"
        "A tiny Qwen2.5-VL (transformers' Qwen2_5_VLForConditionalGeneration: 2-block vision tower with window "
        "attention and the patch merger, mRoPE; the tokenizer and chat template of lmm_r1_ascend/models/tiny.py). "
        f"Its language model started as {cfg.init_text}. It was trained on the train split of the arithmetic "
        f"problems (level {cfg.level}) drawn as 224x56 images (16 image tokens each): {cfg.read_steps} steps to read "
        f"them (right targets, worked {cfg.read_worked_frac:.0%} of the time, plus a training-only per-column "
        "character probe), then "
        f"{cfg.steps} steps on the demo's prompts, {cfg.image_frac:.0%} images and the rest text, in the exact LMM-R1 "
        f"format. Image targets are mostly *hasty* (worked {cfg.image_worked_frac:.0%}; hasty answers right "
        f"{cfg.image_hasty_correct:.0%}); text targets are worked {cfg.text_worked_frac:.0%} of the time. RL has room on "
        "both: working the step out is what makes answers right.\n\n"
        "Rebuild: `python scripts/build_demo_vl_model.py` (deterministic on one machine; settings in warmup.json). "
        f"Figures at temperature 1 over {cfg.eval_prompts} prompts x {cfg.samples} samples, scored with "
        "MathReward (read_right: the think part starts with the expression as written):\n\n"
        f"| prompts | format | pass@1 | pass@{cfg.samples} | greedy | worked | read_right | chars |\n"
        "|---|---|---|---|---|---|---|---|\n" + "\n".join(lines) + "\n")


def parse_args(argv: list[str] | None) -> tuple[Path, VLWarmupConfig]:
    return text_builder.parse_args(argv, VLWarmupConfig, ASSET_DIR, description=__doc__.split("\n\n")[0])


def main(argv: list[str] | None = None) -> dict:
    out, cfg = parse_args(argv)
    torch.set_num_threads(1)
    start = time.monotonic()
    tokenizer = text_builder.load_tokenizer()
    processor = image_processor()
    model = build_model(tokenizer, cfg)
    enc = Encoder(tokenizer, processor)
    train_set = generate_problems(split_size("train", cfg.level), split="train", level=cfg.level, seed=cfg.seed)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"model: {n_params} parameters; {len(train_set)} train problems at level {cfg.level}", flush=True)
    train(model, enc, train_set, cfg, log=lambda s: print(s, flush=True))
    trained = time.monotonic() - start
    size = save_checkpoint(model, tokenizer, processor, out)
    figures = measure(model, enc, cfg)
    write_provenance(out, cfg, figures, size, time.monotonic() - start, trained)
    size = sum(f.stat().st_size for f in out.iterdir() if f.is_file())
    if size > MAX_BYTES:
        raise SystemExit(f"error: {out} holds {size} bytes, over the 5 MB budget")
    print(json.dumps({**figures, "asset_bytes": size, "sft_seconds": round(trained, 1), "out": str(out)}, indent=1),
          flush=True)
    return figures


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
