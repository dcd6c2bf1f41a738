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
export PYTORCH_CUDA_ALLOC_CONF=${PYTORCH_CUDA_ALLOC_CONF:-expandable_segments:True}
export NCCL_DEBUG=${NCCL_DEBUG:-WARN}
export DS_ACCELERATOR=cuda
"${PYTHON:-python3}" -m lmm_r1_ascend.doctor --device cuda
exec "${PYTHON:-python3}" -m lmm_r1_ascend.train --stage "$stage" --device cuda --recipe "$recipe" "$@"
