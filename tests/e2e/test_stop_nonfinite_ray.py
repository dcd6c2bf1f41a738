"""A non-finite weight found at save time in Ray mode (issue 32, the faults issue's leftover): the
run stops with the same message as in local mode (tests/e2e/test_nonfinite.py): what is wrong and
the last good checkpoint with how to resume, not Ray's wrapper with the remote traceback."""

from __future__ import annotations

import pytest

ray = pytest.importorskip("ray", reason="distributed.mode=ray needs Ray (pip install 'lmm-r1-ascend[dist]')")

from lmm_r1_ascend.config import load_config  # noqa: E402
from lmm_r1_ascend.demo.data import prepare_demo_data  # noqa: E402
from lmm_r1_ascend.engines.base import NonFiniteError  # noqa: E402
from lmm_r1_ascend.trainer import checkpoint as ckpt  # noqa: E402
from lmm_r1_ascend.trainer.ppo import PPOTrainer  # noqa: E402

SMALL = ["stage=fre", "device=cpu", "model.pretrain=tiny-qwen2", "data.prompt_data=[demo:arithmetic]",
         "rollout.rollout_batch_size=2", "rollout.max_new_tokens=8", "reward.workers=1",
         "algorithm.n_samples_per_prompt=4", "trainer.train_batch_size=8", "trainer.save_steps=1",
         "trainer.max_steps=2", "trainer.tensorboard=false", "trainer.save_hf=false", "trainer.eval_steps=0",
         "trainer.eval_before_train=false", "distributed.mode=ray"]


class _PoisonAfterFirstStep(PPOTrainer):
    """After step 1 (checkpointed), a NaN in rank 0's actor weights: step 2's save must refuse it."""

    def train_step(self):
        metrics = super().train_step()
        if self.step == 2:
            def poison(rank):
                import torch

                with torch.no_grad():
                    next(rank.actor.model.parameters()).view(-1)[0] = float("nan")

            ray.get(self.parts.cluster.group.actors[0].__ray_call__.remote(poison))
        return metrics


@pytest.mark.slow  # a Ray start and 2 steps (~25 s on 2 idle cores): over the default suite's budget
def test_a_nonfinite_weight_at_save_in_ray_mode_names_the_last_good_checkpoint(tmp_path, ray_cluster):
    cfg = prepare_demo_data(load_config("demo_fre", overrides=[*SMALL, f"output_dir={tmp_path}"]))
    with pytest.raises(NonFiniteError) as err:
        _PoisonAfterFirstStep(cfg, log=lambda _: None).fit(progress=False)
    msg = str(err.value)
    assert msg.startswith("refusing to save") and "non-finite (NaN/inf) weights" in msg, msg
    assert "Traceback" not in msg and "ray::" not in msg and "\n" not in msg, msg
    assert msg.endswith(f"last good checkpoint: {ckpt.checkpoint_dir(tmp_path) / 'step_1'} (step 1); run the same "
                        "command again to resume from it"), msg
    assert [p.name for p in ckpt.list_checkpoints(tmp_path)] == ["step_1"]
