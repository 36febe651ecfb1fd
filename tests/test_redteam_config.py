"""Bad input to `python -m cogito_jax.train` (and the other run folders' CLIs) through the real command line: each
case ends in one line on stderr naming the bad value, exit code 2, no traceback and no checkpoint."""

import os
import pathlib
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
ENV = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8", "JAX_PLATFORMS": "cpu"}


def _start(module, *args):
    return subprocess.Popen([sys.executable, "-m", module, *args], cwd=REPO, env=ENV, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _one_line_error(proc, expected: str):
    out, err = proc.communicate(timeout=600)
    lines = [x for x in err.splitlines() if "error:" in x]
    assert proc.returncode == 2, (out[-2000:], err[-3000:])
    assert "Traceback" not in err and len(lines) == 1 and expected in lines[0], err[-3000:]


@pytest.fixture(scope="module")
def mel128(tmp_path_factory):
    """A small dataset of 128-bin log-mel (the tiny qwen2_audio model takes 80 bins) and one of 80 bins."""
    from cogito_jax.data.synthetic import build_dataset

    root = tmp_path_factory.mktemp("redteam_data")
    return (build_dataset(root / "m128", 8, n_mels=128, max_seconds=4.0),
            build_dataset(root / "m80", 8, n_mels=80, max_seconds=4.0))


def test_bad_training_input_is_one_line_and_exit_2(tmp_path, mel128):
    a_file = tmp_path / "a_file"
    a_file.write_text("not a folder")
    d128, d80 = mel128
    base = ["--config", "configs/tiny.py", "--config.data.num_heldout=0"]
    records = lambda d: ["--config.data.source=records", f"--config.data.dir={d}"]  # noqa: E731
    cases = {
        "--workdir is a file": (["--workdir", str(a_file)], f"--workdir {str(a_file)!r} is not a folder"),
        "--workdir cannot be made": (["--workdir", str(a_file / "sub")], "is not writable"),
        "checkpoint.every=0": (["--config.checkpoint.every=0"], "checkpoint.every=0 must be >= 1"),
        "checkpoint.every=-1": (["--config.checkpoint.every=-1"], "checkpoint.every=-1 must be >= 1"),
        "eval_every=-1": (["--config.train.eval_every=-1"], "train.eval_every=-1 must be >= 0"),
        "num_train=0": (["--config.data.num_train=0"], "data.num_train=0 must be an integer >= 1"),
        "seed=-1": (["--config.seed=-1"], "seed=-1 must be in [0, 2**32)"),
        "lr=nan": (["--config.optim.lr=nan"], "optim.lr=nan must be a finite number > 0"),
        "weight_decay=inf": (["--config.optim.weight_decay=inf"], "optim.weight_decay=inf must be a finite number"),
        "128-bin data, 80-bin model": (records(d128), "holds 128-bin log-mel but the model takes 80 bins"),
        "every example over-long": (records(d80) + ["--config.data.max_len=1", "--config.train.steps=2"],
                                    "no supervised token in the 2 steps run: 16 of 16 rows on this process"),
    }
    procs = {}
    for name, (args, _) in cases.items():
        workdir = [] if "--workdir" in args else ["--workdir", str(tmp_path / name.replace(" ", "_"))]
        procs[name] = _start("cogito_jax.train", *base, *workdir, *args)
    for name, proc in procs.items():
        _one_line_error(proc, cases[name][1])
    assert not list(tmp_path.rglob("checkpoints/[0-9]*")), "a rejected run saved a checkpoint"


def test_distill_and_demo_refuse_a_file_as_workdir(tmp_path):
    a_file = tmp_path / "a_file"
    a_file.write_text("")
    procs = [_start("cogito_jax.distill", "--config", "configs/distill_tiny.py", "--workdir", str(a_file)),
             _start("cogito_jax.demo", "--quick", "--workdir", str(a_file))]
    for proc in procs:
        _one_line_error(proc, f"--workdir {str(a_file)!r} is not a folder")
