#!/usr/bin/env bash
# Entrypoint of the lmm-r1-ascend images (docker/Dockerfile.cuda, docker/Dockerfile.npu).
#
#   docker run IMAGE [train args]   check the device with `doctor`, then
#                                   exec python -m lmm_r1_ascend.train [train args]
#   docker run IMAGE doctor [args]  only the device report (python -m lmm_r1_ascend.doctor)
#   docker run IMAGE parity ARGS    python -m lmm_r1_ascend.parity ARGS (run / compare)
#   docker run IMAGE shell|bash     an interactive shell; no device check
#   docker run IMAGE python ARGS    python itself; no device check
#
# Environment:
#   LMM_R1_DEVICE       device for doctor and for training (the image sets cuda or npu);
#                       `--device X` or `device=X` among the train args wins over it.
#   LMM_R1_SKIP_DOCTOR  1: skip the device check (e.g. a CPU dry run inside a GPU image).
#   PYTHON              the interpreter (default python3).
#   ASCEND_HOME         where CANN lives (default /usr/local/Ascend); its set_env.sh files
#                       are sourced when present, so the same script serves both images.
set -euo pipefail

python_bin=${PYTHON:-python3}
device=${LMM_R1_DEVICE:-auto}

source_cann() {
  local ascend_home=${ASCEND_HOME:-/usr/local/Ascend} env_file
  for env_file in "$ascend_home/ascend-toolkit/set_env.sh" "$ascend_home/nnal/atb/set_env.sh"; do
    if [ -f "$env_file" ]; then
      # CANN's scripts read unset variables and may end on a false test: relax strict mode for them.
      set +eu
      # shellcheck disable=SC1090
      source "$env_file"
      local status=$?
      set -eu
      if [ "$status" -ne 0 ]; then echo "lmm-r1-entrypoint: warning: $env_file returned $status" >&2; fi
    fi
  done
}

run_doctor() {
  if [ "${LMM_R1_SKIP_DOCTOR:-0}" = "1" ]; then
    echo "lmm-r1-entrypoint: LMM_R1_SKIP_DOCTOR=1, skipping the device check" >&2
    return 0
  fi
  if ! "$python_bin" -m lmm_r1_ascend.doctor --device "$device"; then
    echo "lmm-r1-entrypoint: device '$device' is not usable (doctor's message above)." >&2
    echo "  GPUs: docker run --gpus all ...; Ascend: pass the /dev/davinci* devices and mount the driver (docs/docker.md)." >&2
    echo "  Another device: -e LMM_R1_DEVICE=cpu. Skip this check: -e LMM_R1_SKIP_DOCTOR=1." >&2
    exit 2
  fi
}

source_cann

case "${1-}" in
  shell | bash | sh)
    shift
    exec bash "$@"
    ;;
  python | python3)
    shift
    exec "$python_bin" "$@"
    ;;
  doctor)
    shift
    exec "$python_bin" -m lmm_r1_ascend.doctor "$@"
    ;;
  parity)
    shift
    exec "$python_bin" -m lmm_r1_ascend.parity "$@"
    ;;
esac

# The device training will use: `--device X`, `--device=X` or `device=X` in the args, else LMM_R1_DEVICE.
wants_help=0
has_device=0
previous=""
for arg in "$@"; do
  case "$arg" in
    -h | --help) wants_help=1 ;;
    --device=* | device=*) has_device=1; device=${arg#*=} ;;
  esac
  if [ "$previous" = "--device" ]; then has_device=1; device=$arg; fi
  previous=$arg
done

if [ "$wants_help" = "1" ]; then
  exec "$python_bin" -m lmm_r1_ascend.train "$@"
fi
run_doctor
if [ "$has_device" = "0" ] && [ "$device" != "auto" ]; then
  set -- --device "$device" "$@"
fi
exec "$python_bin" -m lmm_r1_ascend.train "$@"
