"""Launchers: TPU gcloud invocations (dry run), SLURM environment mapping, sweep expansion and summary."""

import json
import os
import pathlib
import subprocess
import sys

import pytest

from cogito_jax.sweeps import product, run_name, sweep, zip_
from tests.prereq import require

REPO = pathlib.Path(__file__).resolve().parents[1]


def _tpu(*args):
    args = list(args)
    cut = args.index("--") if "--" in args else len(args)
    args.insert(cut, "--dry_run")
    r = subprocess.run([sys.executable, str(REPO / "launch/tpu.py"), *args], capture_output=True, text=True, cwd=REPO)
    return r.returncode, [ln for ln in r.stdout.splitlines() if ln and not ln.startswith("#")], r.stderr


LOC = ["--name", "job", "--zone", "us-east5-a", "--project", "proj"]


def test_tpu_create_vm_and_queued_multislice():
    rc, out, _ = _tpu("create", *LOC, "--accelerator", "v5p-64", "--spot")
    assert rc == 0 and out == [
        "gcloud compute tpus tpu-vm create job --zone=us-east5-a --project=proj --accelerator-type=v5p-64 "
        "--version=v2-alpha-tpuv5 --spot"]
    rc, out, _ = _tpu("create", *LOC, "--accelerator", "v6e-64", "--num_slices", "2", "--reserved")
    assert rc == 0 and out == [
        "gcloud compute tpus queued-resources create job --zone=us-east5-a --project=proj "
        "--accelerator-type=v6e-64 --runtime-version=v2-alpha-tpuv6e --node-count=2 --node-prefix=job --reserved"]


def test_tpu_run_delete_and_babysit():
    rc, out, _ = _tpu("run", *LOC, "--", "python", "-m", "cogito_jax.train", "--config", "configs/tiny.py")
    assert rc == 0 and out == [
        "gcloud compute tpus tpu-vm ssh job --zone=us-east5-a --project=proj --worker=all "
        "'--command=cd cogito-jax && python -m cogito_jax.train --config configs/tiny.py'"]
    rc, out, _ = _tpu("delete", *LOC, "--queued")
    assert out == ["gcloud compute tpus queued-resources delete job --zone=us-east5-a --project=proj --force --quiet"]
    rc, out, _ = _tpu("babysit", *LOC, "--accelerator", "v5p-8", "--repo", "https://example.org/r.git", "--",
                      "python", "-m", "cogito_jax.train", "--workdir", "gs://b/run")
    assert rc == 0
    assert out[0].startswith("gcloud compute tpus tpu-vm describe job") and "--format=value(state)" in out[0]
    assert out[1].startswith("gcloud compute tpus tpu-vm create job")
    assert "git clone -q https://example.org/r.git cogito-jax" in out[2] and "--worker=all" in out[2]
    assert out[3].endswith("'--command=cd cogito-jax && python -m cogito_jax.train --workdir gs://b/run'")


def test_tpu_errors():
    rc, _, err = _tpu("run", *LOC)
    assert rc == 2 and "'run' needs a command after --" in err
    rc, _, err = _tpu("create", *LOC, "--accelerator", "v9-8")
    assert rc != 0 and "unknown accelerator type 'v9-8'" in err


FAKE_GCLOUD = """#!/usr/bin/env bash
# gcloud stand-in: the slice is always READY; `ssh --command=C` runs C here, in $FAKE_HOME.
case "$*" in
  *describe*) echo READY ;;
  *ssh*) for arg in "$@"; do case "$arg" in --command=*) cmd="${arg#--command=}" ;; esac; done
         cd "$FAKE_HOME" && exec bash -c "$cmd" ;;
esac
"""
# The babysat command: counts its runs, then exits with the status of that attempt ($STATUSES, one per run).
COUNTED = 'n=$(($(cat runs 2>/dev/null || echo 0) + 1)); echo $n > runs; set -- $STATUSES; shift $((n - 1)); exit $1'


def _babysit(tmp_path, statuses):
    (tmp_path / "bin").mkdir(parents=True)
    (tmp_path / "bin" / "gcloud").write_text(FAKE_GCLOUD)
    (tmp_path / "bin" / "gcloud").chmod(0o755)
    (tmp_path / "cogito-jax").mkdir()
    env = {**os.environ, "PATH": f"{tmp_path / 'bin'}:{os.environ['PATH']}", "FAKE_HOME": str(tmp_path),
           "STATUSES": " ".join(map(str, statuses))}
    r = subprocess.run([sys.executable, str(REPO / "launch/tpu.py"), "babysit", *LOC, "--retry_seconds", "0",
                        "--max_restarts", "3", "--", "bash", "-c", COUNTED], capture_output=True, text=True,
                       cwd=REPO, env=env, timeout=120)
    return r, int((tmp_path / "cogito-jax" / "runs").read_text())


def test_babysit_reruns_a_preempted_run_and_stops_on_bad_input(tmp_path):
    from cogito_jax.errors import EXIT_PREEMPTED

    r, runs = _babysit(tmp_path / "preempted", [EXIT_PREEMPTED, 1, 0])
    assert r.returncode == 0 and runs == 3, r.stdout + r.stderr
    assert "# babysit: the run was preempted; running it again" in r.stdout
    assert "# babysit: the run exited with status 1; running it again" in r.stdout
    r, runs = _babysit(tmp_path / "usage", [2, 0])
    assert r.returncode == 2 and runs == 1, r.stdout + r.stderr
    assert r.stderr.strip() == "tpu.py: error: the command exited with status 2 (bad input); not running it again"


def _sweep_module():
    sys.path.insert(0, str(REPO / "launch"))
    try:
        import sweep as sweep_mod
    finally:
        sys.path.remove(str(REPO / "launch"))
    return sweep_mod


def test_sweep_stops_at_a_preempted_run(tmp_path, monkeypatch, capsys):
    """The second of three runs is preempted: the sweep exits with the preemption status without starting the
    third or writing a summary, so a rerun of the same command continues the sweep."""
    from cogito_jax.errors import EXIT_PREEMPTED

    sweep_mod = _sweep_module()
    runs = [(name, [sys.executable, "-c", f"open({str(tmp_path / name)!r}, 'w'); raise SystemExit({rc})"])
            for name, rc in (("a", 0), ("b", EXIT_PREEMPTED), ("c", 0))]
    monkeypatch.setattr(sweep_mod, "commands", lambda *args, **kw: runs)
    rc = sweep_mod.main(["--sweep", "s.py", "--config", "c.py", "--workdir", str(tmp_path)])
    assert rc == EXIT_PREEMPTED
    assert (tmp_path / "a").exists() and (tmp_path / "b").exists() and not (tmp_path / "c").exists()
    assert not (tmp_path / "sweep_summary.md").exists()
    err = capsys.readouterr().err
    assert "sweep: run b was preempted (exit 143); stopping: rerun the same command to continue" in err


def test_sweep_passes_sigterm_on_to_the_run(tmp_path):
    import signal
    import threading
    import time

    sweep_mod = _sweep_module()
    ready = tmp_path / "ready"
    child = ("import signal, sys, time; signal.signal(signal.SIGTERM, lambda *a: sys.exit(143)); "
             f"open({str(ready)!r}, 'w'); time.sleep(60)")

    def terminate_when_ready():
        while not ready.exists():
            time.sleep(0.05)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=terminate_when_ready, daemon=True).start()
    assert sweep_mod.run_one([sys.executable, "-c", child]) == 143  # the run saw SIGTERM; the sweep did not die


def _slurm_env(env):
    fake_bin = REPO / "tests" / "scripts"
    script = f'source {REPO}/launch/slurm_env.sh; echo "$COGITO_COORDINATOR|$COGITO_NUM_PROCESSES|' \
             '$COGITO_PROCESS_ID|$CUDA_VISIBLE_DEVICES"'
    full = {"PATH": f"{fake_bin}:/usr/bin:/bin", **env}
    return subprocess.run(["bash", "-c", script], capture_output=True, text=True, env=full).stdout.strip()


def test_slurm_env_mapping_and_syntax():
    for f in ("launch/slurm.sbatch", "launch/slurm_env.sh", "launch/local.sh"):
        assert subprocess.run(["bash", "-n", str(REPO / f)]).returncode == 0, f
    out = _slurm_env({"SLURM_JOB_ID": "7", "SLURM_JOB_NODELIST": "gpu[03-04]", "SLURM_NTASKS": "2",
                      "SLURM_PROCID": "1", "SLURM_GPUS_ON_NODE": "4"})
    assert out == "gpu03:12355|2|1|0,1,2,3"
    assert _slurm_env({}) == "|||"  # outside SLURM nothing is set


def test_sweep_helpers():
    runs = product(sweep("optim.lr", [1, 2]), zip_(sweep("train.steps", [10, 20]), sweep("seed", [0, 1])))
    assert runs == [{"optim.lr": 1, "train.steps": 10, "seed": 0}, {"optim.lr": 1, "train.steps": 20, "seed": 1},
                    {"optim.lr": 2, "train.steps": 10, "seed": 0}, {"optim.lr": 2, "train.steps": 20, "seed": 1}]
    assert run_name(runs[1]) == "lr=1,steps=20,seed=1"
    with pytest.raises(ValueError, match="equal length"):
        zip_(sweep("a", [1]), sweep("b", [1, 2]))


def test_sweep_print_only_and_summary(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    r = subprocess.run([sys.executable, "launch/sweep.py", "--sweep", "configs/sweeps/tiny_lr.py", "--config",
                        "configs/tiny.py", "--workdir", str(tmp_path), "--print_only"], capture_output=True,
                       text=True, cwd=REPO, env=env)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.strip().splitlines()
    assert len(lines) == 4 and all("-m cogito_jax.train --config configs/tiny.py" in ln for ln in lines)
    assert f"--workdir {tmp_path}/lr=0.001,warmup_steps=2" in lines[1]
    sweep_mod = _sweep_module()

    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "metrics.jsonl").write_text(json.dumps({"step": 1, "loss": 2.0}) + "\n" +
                                                  json.dumps({"step": 2, "loss": 1.25}) + "\n")
    table = sweep_mod.summarize(str(tmp_path), ["a", "missing"])
    assert "| a | 2 | 1.25 | - |" in table and "| missing | - | - | - |" in table


def test_sweep_summary_names_a_bad_metrics_line(tmp_path, monkeypatch, capsys):
    """A metrics file with a bad line before its last one is reported in one line naming it (exit 2); a torn last
    line alone is left out of the summary."""
    from cogito_jax.errors import EXIT_USAGE

    sweep_mod = _sweep_module()
    runs = [(name, [sys.executable, "-c", "pass"]) for name in ("a", "b")]
    monkeypatch.setattr(sweep_mod, "commands", lambda *args, **kw: runs)
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
    (tmp_path / "a" / "metrics.jsonl").write_text('{"step": 1, "loss": 2.0}\n{"step": 2, "lo')
    assert sweep_mod.summarize(str(tmp_path), ["a"]).endswith("| a | 1 | 2 | - |\n")
    (tmp_path / "b" / "metrics.jsonl").write_text('{"step": 1, "loss": 2.0}\n{"step": 2, "lo\n{"step": 3}\n')
    rc = sweep_mod.main(["--sweep", "s.py", "--config", "c.py", "--workdir", str(tmp_path)])
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert rc == EXIT_USAGE and len(err) == 1, err
    assert err[0].startswith("sweep: error: ") and "b/metrics.jsonl:2: not a JSON line" in err[0]
    assert not (tmp_path / "sweep_summary.md").exists()


@pytest.mark.slow
def test_sweep_runs_tiny_runs_and_summarises(tmp_path):
    """Two runs of a sweep (configs/sweeps/tiny_lr.py's grid is checked by test_sweep_print_only_and_summary)
    train with their own settings and are summarised."""
    from cogito_jax import cli
    from cogito_jax.data import prepare

    spec = tmp_path / "two.py"
    spec.write_text("from cogito_jax.sweeps import sweep, zip_\n\n\ndef get_sweep(arg=None):\n"
                    "    return zip_(sweep('optim.lr', [1e-3, 3e-3]), sweep('optim.warmup_steps', [2, 0]))\n")
    # One generated corpus and tokenizer for the runs (the sweep passes extra flags to every run).
    paths = prepare.ensure_data(cli.load_config("configs/tiny.py", ["data.num_train=32", "data.num_heldout=0"]),
                                tmp_path / "shared")
    env = {**os.environ, "PYTHONPATH": str(REPO), "XLA_FLAGS": "--xla_force_host_platform_device_count=8",
           "JAX_COMPILATION_CACHE_DIR": str(tmp_path / "jax_cache"), "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0"}
    runs = tmp_path / "runs"
    r = subprocess.run([sys.executable, "launch/sweep.py", "--sweep", str(spec), "--config",
                        "configs/tiny.py", "--workdir", str(runs), "--config.train.steps=3",
                        "--config.data.source=records", f"--config.data.dir={paths['train']}",
                        f"--config.data.tokenizer={paths['tokenizer']}", "--config.checkpoint.every=100"],
                       capture_output=True, text=True, cwd=REPO, env=env, timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    names = ["lr=0.001,warmup_steps=2", "lr=0.003,warmup_steps=0"]
    table = (runs / "sweep_summary.md").read_text()
    assert table in r.stdout
    rows = [ln.strip("| ").split(" | ") for ln in table.splitlines()[2:]]
    assert [row[0] for row in rows] == names
    finals = {}
    for name, step, loss, eval_loss in rows:
        last = [json.loads(ln) for ln in (runs / name / "metrics.jsonl").read_text().splitlines()][-1]
        assert step == "3" and last["step"] == 3 and eval_loss == "-"
        assert loss == f"{last['loss']:.4g}"
        finals[name] = last["loss"]
    assert len(set(finals.values())) == 2  # each run trained with its own settings
    assert finals["lr=0.003,warmup_steps=0"] < finals["lr=0.001,warmup_steps=2"]


def _aot(*args):
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    return subprocess.run([sys.executable, "launch/aot_compile.py", "--config", "configs/tiny.py", *args],
                          capture_output=True, text=True, cwd=REPO, env=env, timeout=600)


@pytest.mark.slow
def test_aot_compile_reports_memory_and_fails_when_it_does_not_fit():
    # The TPU check needs libtpu (opt-in); cpu:N runs the same code path on local CPU devices.
    r = _aot("--topology", "cpu:8", "--hbm_gib", "1")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "mesh data=8 x fsdp=1 x expert=1 x tensor=1 (8 devices)" in r.stdout
    assert "parameters: 251,520 (238,720 trainable, train.trainable=full)" in r.stdout
    line = next(ln for ln in r.stdout.splitlines() if ln.startswith("peak per chip"))
    peak = float(line.split(" = ")[-1].split()[0])
    assert 0 < peak < 1 and r.stdout.rstrip().endswith("fits")
    r = _aot("--topology", "cpu:8", "--hbm_gib", "0.001", "--config.train.trainable=lora", "--config.mesh.data=2",
             "--config.mesh.fsdp=4")
    assert r.returncode == 1, r.stdout + r.stderr
    assert "mesh data=2 x fsdp=4 x expert=1 x tensor=1 (8 devices)" in r.stdout
    assert "train.trainable=lora" in r.stdout and "DOES NOT FIT" in r.stderr
    r = _aot("--topology", "cpu:8", "--hbm_gib", "1", "--config.train.batch_size=4")
    assert r.returncode == 2 and "not divisible by the 8 data-parallel shards" in r.stderr
    r = _aot("--topology", "v9:2x2")
    assert r.returncode == 2 and "no HBM size known for 'v9:2x2'" in r.stderr


LIBTPU = REPO / ".venv" / "libtpu"  # `make test` unpacks libtpu here, outside the venv's site-packages


def _libtpu_env():
    """libtpu on the path; several test workers may load it at once (its lock file would refuse a second)."""
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "JAX_PLATFORMS")}
    return {**env, "PYTHONPATH": os.pathsep.join([str(LIBTPU), str(REPO)]), "ALLOW_MULTIPLE_LIBTPU_LOAD": "1"}


def _tpu_kernel_calls(tmp_path, config: str, topology: str,
                      variants: dict[str, list[str]]) -> tuple[dict[str, int], dict[str, str]]:
    """Each variant's train step (config overrides) compiled ahead of time for ``topology``: its Mosaic kernel
    calls (``tpu_custom_call`` ops in the compiled program), and what the compile printed."""
    require((LIBTPU / "libtpu").is_dir(), "libtpu is not unpacked in .venv/libtpu (make test does it)")
    env = _libtpu_env()
    counts, stdout = {}, {}
    for name, overrides in variants.items():
        hlo = tmp_path / f"{name}.hlo"
        r = subprocess.run([sys.executable, "launch/aot_compile.py", "--config", config, "--topology", topology,
                            *overrides, "--hlo_out", str(hlo)], capture_output=True, text=True, cwd=REPO, env=env,
                           timeout=600)
        assert r.returncode == 0, r.stdout + r.stderr
        assert f"topology {topology}: " in r.stdout and " x TPU v5" in r.stdout
        counts[name] = hlo.read_text().count("tpu_custom_call")
        stdout[name] = r.stdout
    return counts, stdout


@pytest.mark.slow
def test_splash_attention_compiles_for_a_tpu_topology(tmp_path):
    """The train step with attn_impl=splash, compiled ahead of time for a v5e 2x2 slice (libtpu, no TPU): the
    splash kernel lowers through Mosaic (fwd, dq and dkv for the encoder and the decoder), not interpret mode."""
    counts, _ = _tpu_kernel_calls(tmp_path, "configs/tiny.py", "v5e:2x2",
                               {impl: [f"--config.model.attn_impl={impl}"] for impl in ("splash", "xla")})
    assert counts == {"splash": 6, "xla": 0}


@pytest.mark.slow
def test_moe_on_a_tpu_topology_megablox_kernels_step_cost_and_roofline(tmp_path):
    """configs/tiny_moe.py with experts over `expert=2`, compiled for a v5p 2x2x1 slice: with moe_impl=gmm the
    experts' grouped matmuls are megablox Mosaic kernels, 9 per layer stack (gate, up, down forward, and each one's
    input gradient and weight gradient), where moe_impl=alltoall has none; `--cost` on the all-to-all run gives
    XLA's cost analysis of the whole step, the all-to-all traffic among the collectives, and a roofline."""
    counts, out = _tpu_kernel_calls(tmp_path, "configs/tiny_moe.py", "v5p:2x2x1", {
        impl: [f"--config.model.moe_impl={impl}", "--config.mesh.data=2", "--config.mesh.expert=2"]
        + (["--cost"] if impl == "alltoall" else []) for impl in ("gmm", "alltoall")})
    assert counts == {"gmm": 9, "alltoall": 0}
    assert "cost per chip per step" not in out["gmm"]
    cost = next(ln for ln in out["alltoall"].splitlines() if ln.startswith("cost per chip per step"))
    tflop, hbm, comm = (float(cost.split(": ", 1)[1].split(", ")[i].split()[0]) for i in range(3))
    assert tflop > 0 and hbm > 0 and comm > 0
    assert float(cost.split("all-to-all ")[1].split(",")[0].rstrip(")")) > 0
    line = next(ln for ln in out["alltoall"].splitlines()
                if ln.startswith("roofline step time (v5p spec: 459 TFLOP/s"))
    parts = {k: float(line.split(f"{k} ")[1].split(" s")[0]) for k in ("compute", "HBM", "ICI")}
    assert float(line.split("-> ")[1].split(" s")[0]) == max(parts.values()) > 0
    assert 0 < float(line.split("at best ")[1].split(" %")[0]) <= 100
    assert "model FLOPs per chip per step (the MFU count, 8 x 192 tokens)" in out["alltoall"]


def test_step_cost_counts_every_layer_that_xla_counts_once(cpu_devices):
    """XLA's cost analysis counts a scanned stack's body once; `step_cost` (depths 1 and 2, unrolled) gives what
    the program unrolled at full depth costs, FLOPs, bytes and collectives."""
    import dataclasses

    import launch.aot_compile as aot
    from cogito_jax import cli, sharding
    from cogito_jax.models import layers, registry
    from cogito_jax.train import trainer
    from cogito_jax.train.step import lm_loss

    cfg = cli.load_config("configs/tiny_moe.py", [])
    mesh, rules = sharding.make_mesh(cfg.mesh, cpu_devices), sharding.resolve_rules(cfg.sharding.rules)
    mcfg = registry.config_for(cfg.model)
    mcfg = dataclasses.replace(mcfg, text=dataclasses.replace(mcfg.text, num_layers=3))
    batch = aot.abstract_batch(cfg, mcfg)
    cost = aot.step_cost(cfg, mcfg, mesh, rules, batch)
    with sharding.use_rules(rules):
        model = trainer.abstract_sharded(lambda: trainer.for_training(cfg, registry.build(mcfg, 0)), mesh, rules)
    p = trainer.prepare(cfg, model, mesh, rules)
    scanned = aot._cost_of(trainer.compile_train_step(p, batch, lm_loss, 1))
    with layers.unrolled_stacks():
        unrolled = aot._cost_of(trainer.compile_train_step(p, batch, lm_loss, 1))
    for k in ("flops", "bytes", "comm"):
        assert cost[k] == pytest.approx(unrolled[k], rel=1e-2), k  # fusion differs a little with depth
    assert scanned["flops"] < 0.7 * unrolled["flops"]


def test_collective_bytes_from_program_text():
    from launch.aot_compile import collective_bytes

    hlo = """
  %all-gather-start = (bf16[4,64]{1,0}, bf16[16,64]{1,0}) all-gather-start(bf16[4,64]{1,0} %p0), dimensions={0}
  %all-gather-done = bf16[16,64]{1,0} all-gather-done((bf16[4,64]{1,0}, bf16[16,64]{1,0}) %all-gather-start)
  %all-reduce.1 = f32[8]{0} all-reduce(f32[8]{0} %g), replica_groups={{0,1}}, to_apply=%add
  ROOT %all-to-all.2 = bf16[2,3,8,16]{3,2,1,0} all-to-all(bf16[2,3,8,16]{3,2,1,0} %buf), dimensions={0}
  %reduce-scatter = f32[2,5]{1,0} reduce-scatter(f32[8,5]{1,0} %x), dimensions={0}, to_apply=%add
  %not-a-collective = f32[8]{0} add(f32[8]{0} %a, f32[8]{0} %b)
"""
    assert collective_bytes(hlo) == {"all-gather": (4 + 16) * 64 * 2, "all-reduce": 2 * 8 * 4,
                                     "all-to-all": 2 * 3 * 8 * 16 * 2, "reduce-scatter": 8 * 5 * 4}


@pytest.fixture
def fake_gcs(monkeypatch):
    """`gs://` paths served by fsspec's in-memory file system through epath's fsspec backend (no network)."""
    import importlib

    from etils.epath import backend
    from fsspec.implementations.memory import MemoryFileSystem

    class FakeGCS(MemoryFileSystem):
        protocol = ("gs", "gcs")
        store: dict = {}
        pseudo_dirs = [""]

    monkeypatch.setitem(importlib.import_module("fsspec.registry")._registry, "gcs", FakeGCS)
    backend.fsspec_backend._get_filesystem.cache_clear()
    yield FakeGCS
    backend.fsspec_backend._get_filesystem.cache_clear()


def test_metrics_writer_on_a_gs_workdir(fake_gcs):
    from etils import epath

    from cogito_jax.metrics import MetricsWriter, is_remote, read_jsonl

    work = epath.Path("gs://bucket/run")
    assert is_remote(work) and not is_remote(epath.Path("/tmp/run"))
    w = MetricsWriter(work, tensorboard=False, remote_flush_s=3600)
    w.write(1, {"loss": 2.0})
    w.write(2, {"loss": 1.5})  # step 1 is emitted, but the object is rewritten at most hourly here
    assert not (work / "metrics.jsonl").exists()
    w.flush(durable=True)  # the trainer's call before a checkpoint
    assert [r["loss"] for r in read_jsonl(work / "metrics.jsonl")] == [2.0, 1.5]
    w.write(3, {"loss": 1.25})
    w.close()
    assert [r["step"] for r in read_jsonl(work / "metrics.jsonl")] == [1, 2, 3]
    # A resumed run keeps the lines already there (a torn last line is cut off, not glued to the next one).
    (work / "metrics.jsonl").write_text((work / "metrics.jsonl").read_text() + '{"step": 4, "lo')
    with MetricsWriter(work, tensorboard=False) as w:
        w.write(4, {"loss": 1.0})
    assert [r["step"] for r in read_jsonl(work / "metrics.jsonl")] == [1, 2, 3, 4]
    assert "gs://bucket/run/metrics.jsonl" in fake_gcs.store  # it went through the (fake) gs:// file system
    # A run resumed from its step-2 checkpoint drops steps 3 and 4 (rewriting the object), then logs them again.
    with MetricsWriter(work, tensorboard=False, resume_step=2) as w:
        assert [r["step"] for r in read_jsonl(work / "metrics.jsonl")] == [1, 2]
        w.write(3, {"loss": 0.5})
    assert [(r["step"], r["loss"]) for r in read_jsonl(work / "metrics.jsonl")] == [(1, 2.0), (2, 1.5), (3, 0.5)]
