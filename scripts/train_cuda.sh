#!/usr/bin/env bash
# Run one LMM-R1 stage on NVIDIA GPUs.
#   scripts/train_cuda.sh RECIPE [key=value ...]
#   scripts/train_cuda.sh fre_text model.pretrain=/models/Qwen2.5-VL-3B-Instruct data.prompt_data=/data/deepscaler_message.jsonl
#   scripts/train_cuda.sh mgt_geo model.init_from=outputs/fre_text data.prompt_data=/data/mathv_geo_message.jsonl
# Recipes: python -m lmm_r1_ascend.train --help. Environment: PYTHON (default python3).
set -euo pipefail
if [ $# -lt 1 ]; then sed -n '2,6p' "$0"; exit 2; fi
recipe=$1; shift
case "$recipe" in fre_*) stage=fre ;; mgt_*) stage=mgt ;; *) echo "unknown recipe '$recipe' (fre_* or mgt_*)" >&2; exit 2 ;; esac
# Expandable segments by default, sleep mode included: vLLM >= 0.20.1 (PR 40812; requirements-cuda.txt
# pins 0.23.0) turns them off inside its sleep-mode pool only, reading PYTORCH_CUDA_ALLOC_CONF. Set
# only when the caller chose neither name: two allocator variables could disagree.
if [ -z "${PYTORCH_CUDA_ALLOC_CONF:-}" ] && [ -z "${PYTORCH_ALLOC_CONF:-}" ]; then
  export PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True
fi
export NCCL_DEBUG=${NCCL_DEBUG:-WARN}
export DS_ACCELERATOR=cuda
"${PYTHON:-python3}" -m lmm_r1_ascend.doctor --device cuda
exec "${PYTHON:-python3}" -m lmm_r1_ascend.train --stage "$stage" --device cuda --recipe "$recipe" "$@"
