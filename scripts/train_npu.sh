#!/usr/bin/env bash
# Run one LMM-R1 stage on Ascend NPUs (CANN + torch_npu; see requirements-npu.txt / docker/Dockerfile.npu).
#   scripts/train_npu.sh RECIPE [key=value ...]
#   scripts/train_npu.sh fre_text model.pretrain=/models/Qwen2.5-VL-3B-Instruct data.prompt_data=/data/deepscaler_message.jsonl
#   scripts/train_npu.sh mgt_geo model.init_from=outputs/fre_text data.prompt_data=/data/mathv_geo_message.jsonl
# Environment: ASCEND_HOME (default /usr/local/Ascend), PYTHON (default python3).
set -euo pipefail
if [ $# -lt 1 ]; then sed -n '2,6p' "$0"; exit 2; fi
recipe=$1; shift
case "$recipe" in fre_*) stage=fre ;; mgt_*) stage=mgt ;; *) echo "unknown recipe '$recipe' (fre_* or mgt_*)" >&2; exit 2 ;; esac
ascend_home=${ASCEND_HOME:-/usr/local/Ascend}
for env_file in "$ascend_home/ascend-toolkit/set_env.sh" "$ascend_home/nnal/atb/set_env.sh"; do
  if [ -f "$env_file" ]; then
    # CANN's scripts read unset variables: strict mode is relaxed while they run (as in docker/entrypoint.sh).
    set +eu
    # shellcheck disable=SC1090
    source "$env_file"
    set -eu
  fi
done
# HCCL: generous timeouts for colocated / multi-node start-up (pain point 1 in ASCEND.md), the same
# as distributed.timeout_s; HCCL takes a connect timeout of 120-7200 s (verl's NPU recipes use 3600).
# The backend passes these variables on to every Ray worker (NpuBackend.forwarded_env_vars).
export HCCL_CONNECT_TIMEOUT=${HCCL_CONNECT_TIMEOUT:-1800}
export HCCL_EXEC_TIMEOUT=${HCCL_EXEC_TIMEOUT:-1800}
# HCCL socket ports: several HCCL processes on one NPU (a colocated vLLM engine, vLLM's engine-core
# process next to a training rank) collide on HCCL's fixed default ports; "auto" lets the OS pick
# them, as CANN advises. An exported range wins; an exported empty value turns the default off
# (CANN refuses these variables with MC2 fused MoE ops on Atlas A2): docs/docker.md, "NPU settings".
export HCCL_HOST_SOCKET_PORT_RANGE=${HCCL_HOST_SOCKET_PORT_RANGE-auto}
export HCCL_NPU_SOCKET_PORT_RANGE=${HCCL_NPU_SOCKET_PORT_RANGE-auto}
[ -n "$HCCL_HOST_SOCKET_PORT_RANGE" ] || unset HCCL_HOST_SOCKET_PORT_RANGE
[ -n "$HCCL_NPU_SOCKET_PORT_RANGE" ] || unset HCCL_NPU_SOCKET_PORT_RANGE
export VLLM_ASCEND_ENABLE_NZ=0   # weight updates fail on NZ-reshaped weights
# PYTORCH_NPU_ALLOC_CONF is left as the caller has it (unset: torch_npu's default, no expandable
# segments). The vLLM rollout runs with sleep mode by default (rollout.vllm_enable_sleep), and
# vllm-ascend's sleep-mode memory pool does not work with expandable segments (ASCEND.md, "More
# facts"); with rollout.vllm_enable_sleep=false they may be turned on by exporting
# PYTORCH_NPU_ALLOC_CONF=expandable_segments:True. Opt-in, never defaulted here (docs/docker.md,
# "NPU settings"): HCCL_OP_EXPANSION_MODE=AIV, TASK_QUEUE_ENABLE=2, CPU_AFFINITY_CONF.
if [[ "${PYTORCH_NPU_ALLOC_CONF:-}" == *expandable_segments:True* && " $* " != *" rollout.vllm_enable_sleep=false "* ]]; then
  echo "train_npu.sh: warning: PYTORCH_NPU_ALLOC_CONF turns expandable segments on; with rollout.engine=vllm," \
       "vLLM's sleep mode (on by default) does not support them on NPU: unset it or add rollout.vllm_enable_sleep=false" >&2
fi
export DS_ACCELERATOR=npu
"${PYTHON:-python3}" -m lmm_r1_ascend.doctor --device npu
exec "${PYTHON:-python3}" -m lmm_r1_ascend.train --stage "$stage" --device npu --recipe "$recipe" "$@"
