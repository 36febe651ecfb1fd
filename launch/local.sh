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
# Interrupted or terminated: pass SIGTERM on (a trainer saves a checkpoint and exits 143, preempted).
stopping=0
cleanup() { stopping=1; for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; }
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

# React to whichever process ends first. After a failure the others are killed: they would wait for the failed
# one in a collective, and SIGTERM does not stop them there (JAX's preemption handler takes it).
index_of() { for i in "${!pids[@]}"; do [ "${pids[$i]}" = "$1" ] && echo "$i"; done; }
rc=0
running=("${pids[@]}")
while [ ${#running[@]} -gt 0 ]; do
  code=0 ended=""
  wait -n -p ended "${running[@]}" 2>/dev/null || code=$?
  [ -n "${ended:-}" ] || continue  # the wait was interrupted by a signal, which the trap passed on
  still=()
  for p in "${running[@]}"; do [ "$p" = "$ended" ] || still+=("$p"); done
  running=("${still[@]}")
  if [ "$code" != 0 ] && [ "$rc" = 0 ]; then
    rc=$code
    [ "$stopping" = 1 ] && continue  # the others are saving after the SIGTERM
    echo "launch/local.sh: process $(index_of "$ended") exited with status $code; stopping the others" >&2
    for p in "${running[@]}"; do kill -KILL "$p" 2>/dev/null || true; done
  fi
done
exit "$rc"
