"""Launchers: TPU gcloud invocations (dry run), SLURM environment mapping, sweep expansion and summary."""

import json
import os
import pathlib
import subprocess
import sys

import pytest

from cogito_jax.sweeps import product, run_name, sweep, zip_

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
    sys.path.insert(0, str(REPO / "launch"))
    import sweep as sweep_mod

    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "metrics.jsonl").write_text(json.dumps({"step": 1, "loss": 2.0}) + "\n" +
                                                  json.dumps({"step": 2, "loss": 1.25}) + "\n")
    table = sweep_mod.summarize(str(tmp_path), ["a", "missing"])
    assert "| a | 2 | 1.25 | - |" in table and "| missing | - | - | - |" in table
