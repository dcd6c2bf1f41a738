"""Backend parity harness: replay one recorded rollout on every backend and compare per-step losses.

    python -m lmm_r1_ascend.parity record  --out ROLLOUT.pt            # once, on CPU
    python -m lmm_r1_ascend.parity run     --device DEV --out FILE.json  # per backend
    python -m lmm_r1_ascend.parity compare A.json B.json               # exit 0 / 1 / 2

Modules (nothing runs at import): ``rollout_file`` (the recorded rollout's layout, loader,
fingerprint), ``record`` (the recording: a seeded PPOTrainer run on CPU), ``replay`` (the
trainer's training computation on the recorded tokens, on one backend), ``plants``
(deliberate attention bugs that check the harness), ``stamp`` (the environment written
into each result), ``compare`` (tolerances, the report). User guide: docs/parity.md.
"""
