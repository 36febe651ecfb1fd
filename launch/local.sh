#!/usr/bin/env bash
# Start N processes of CMD on this machine that join one JAX job over localhost.
#
#   launch/local.sh N CMD [ARGS...]
#
# Each process gets COGITO_NUM_PROCESSES / COGITO_PROCESS_ID / COGITO_COORDINATOR (read by
# cogito_jax.sharding.maybe_initialize_distributed) and, on CPU, its own simulated devices
# (COGITO_LOCAL_DEVICES, default 8 / N). Logs go to ${COGITO_LOG_DIR:-logs/local}/process_<i>.log;
# process 0 is also echoed to this terminal. Exit code: the first non-zero one, else 0.
set -euo pipefail

if [ $# -lt 2 ] || ! [[ "$1" =~ ^[1-9][0-9]*$ ]]; then
  echo "usage: launch/local.sh N CMD [ARGS...]   (N = number of processes, >= 1)" >&2
  exit 2
fi
n=$1; shift
port=${COGITO_PORT:-$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')}
per=${COGITO_LOCAL_DEVICES:-$(( 8 / n > 0 ? 8 / n : 1 ))}
logdir=${COGITO_LOG_DIR:-logs/local}
mkdir -p "$logdir"

pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup INT TERM

for ((i = 0; i < n; i++)); do
  (
    export COGITO_NUM_PROCESSES=$n COGITO_PROCESS_ID=$i COGITO_COORDINATOR="localhost:$port"
    export JAX_PLATFORMS=${JAX_PLATFORMS:-cpu}
    export XLA_FLAGS="${XLA_FLAGS:-} --xla_force_host_platform_device_count=$per"
    if [ "$i" = 0 ]; then
      exec "$@" > >(tee "$logdir/process_$i.log") 2>&1
    else
      exec "$@" > "$logdir/process_$i.log" 2>&1
    fi
  ) &
  pids+=($!)
done

rc=0
for p in "${pids[@]}"; do
  code=0
  wait "$p" || code=$?
  if [ "$code" != 0 ]; then
    [ "$rc" = 0 ] && rc=$code
    cleanup  # one process failed: the others would hang in collectives
  fi
done
exit "$rc"
