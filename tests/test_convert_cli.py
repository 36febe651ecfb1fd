"""``python -m cogito_jax.convert hf-to-orbax|orbax-to-hf``: bitwise round trips, dtypes, clear errors."""

import dataclasses
import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
import torch
from flax import nnx

from cogito_jax import convert, sharding
from cogito_jax.models import registry
from tests.hf_tiny import hf_logits, make_batch, rel_err, tiny_qwen2_audio
from tests.test_convert import assert_bitwise_equal, jax_logits, tensors


def cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "cogito_jax.convert", *map(str, args)], capture_output=True,
                          text=True, timeout=300, env={**os.environ}, cwd=cwd)


def ok(*args):
    r = cli(*args)
    assert r.returncode == 0, r.stderr[-3000:]
    return r


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    return tiny_qwen2_audio(tmp_path_factory)


@pytest.fixture(scope="module")
def orbax_dir(hf_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "orbax"
    ok("hf-to-orbax", "--hf", hf_dir[0], "--out", out)
    return out


def test_hf_orbax_hf_round_trip_is_bitwise_and_transformers_loads_it(hf_dir, orbax_dir, tmp_path):
    from transformers import Qwen2AudioForConditionalGeneration

    path, hf = hf_dir
    assert (orbax_dir / "params").is_dir()
    assert json.loads((orbax_dir / "config.json").read_text())["dtype"] == "float32"
    ok("orbax-to-hf", "--ckpt", orbax_dir, "--out", tmp_path / "hf")
    assert_bitwise_equal(tensors(tmp_path / "hf"), tensors(path))
    reloaded = Qwen2AudioForConditionalGeneration.from_pretrained(str(tmp_path / "hf")).eval()
    batch = make_batch(seed=1)
    np.testing.assert_array_equal(hf_logits(reloaded, *batch), hf_logits(hf, *batch))


def run_main(*args):
    assert convert.main([str(a) for a in args]) == 0


def test_dtype_flags(hf_dir, tmp_path):
    path, _ = hf_dir
    run_main("hf-to-orbax", "--hf", path, "--out", tmp_path / "bf16", "--dtype", "bfloat16")
    assert json.loads((tmp_path / "bf16" / "config.json").read_text())["dtype"] == "bfloat16"
    run_main("orbax-to-hf", "--ckpt", tmp_path / "bf16", "--out", tmp_path / "hf_bf16")
    got = tensors(tmp_path / "hf_bf16")
    want = {k: torch.from_numpy(v).to(torch.bfloat16).view(torch.uint16).numpy() for k, v in tensors(path).items()}
    assert got.keys() == want.keys()
    for k in want:
        assert str(got[k].dtype) == "bfloat16", k
        np.testing.assert_array_equal(got[k].view(np.uint16), want[k], err_msg=k)
    # a bf16 checkpoint stays bf16 by default; --dtype float32 on the way out widens it exactly
    run_main("hf-to-orbax", "--hf", tmp_path / "hf_bf16", "--out", tmp_path / "bf16_again")
    assert json.loads((tmp_path / "bf16_again" / "config.json").read_text())["dtype"] == "bfloat16"
    run_main("orbax-to-hf", "--ckpt", tmp_path / "bf16_again", "--out", tmp_path / "hf_f32", "--dtype", "float32")
    wide = tensors(tmp_path / "hf_f32")
    for k in want:
        np.testing.assert_array_equal(wide[k], got[k].astype(np.float32), err_msg=k)


def test_orbax_folder_loads_sharded_and_configures_a_run(hf_dir, orbax_dir):
    path, _ = hf_dir
    ref, ref_cfg = convert.load_hf(path)
    mesh = jax.sharding.Mesh(np.asarray(jax.devices()).reshape(1, 4, 1, 2), sharding.MESH_AXES)
    # as the trainer's load_init calls load_hf: parameter dtype, compute dtype, mesh, rules, run-time settings
    model, cfg = convert.load(orbax_dir, "float32", compute_dtype="float32", mesh=mesh,
                              rules=sharding.resolve_rules("fsdp_tp"), remat="full")
    assert cfg.text.remat == "full"
    same = lambda c: dataclasses.replace(c, remat="none")  # noqa: E731
    assert (same(cfg.audio), same(cfg.text), cfg.audio_token_id) == (ref_cfg.audio, ref_cfg.text,
                                                                     ref_cfg.audio_token_id)
    k = nnx.state(model, nnx.Param)["llm"]["layers"]["mlp"]["up_proj"]["kernel"][...]
    assert len(k.sharding.device_set) == 8  # restored straight into its sharded layout
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)),
                 nnx.state(model, nnx.Param), nnx.state(ref, nnx.Param))
    batch = make_batch(seed=2)
    assert rel_err(jax_logits(model, *batch), jax_logits(ref, *batch), batch[3]) <= 1e-5
    # a run's model section can point at the folder (its config.json)
    run_cfg = registry.config_for({"checkpoint": str(orbax_dir)})
    assert (run_cfg.text, run_cfg.audio) == (ref_cfg.text, ref_cfg.audio)


def test_bad_input_exits_2_with_one_line(hf_dir, orbax_dir, tmp_path, capsys):
    path, _ = hf_dir
    (tmp_path / "bert").mkdir()
    (tmp_path / "bert" / "config.json").write_text(json.dumps({"model_type": "bert"}))
    cases = [
        (("hf-to-orbax", "--hf", tmp_path / "missing", "--out", tmp_path / "o1"), "does not exist"),
        (("hf-to-orbax", "--hf", tmp_path / "bert", "--out", tmp_path / "o2"), "model_type='bert' is not supported"),
        (("orbax-to-hf", "--ckpt", tmp_path / "missing", "--out", tmp_path / "o3"), "does not exist"),
        (("orbax-to-hf", "--ckpt", tmp_path / "bert", "--out", tmp_path / "o4"), "model_type='bert'"),
        (("orbax-to-hf", "--ckpt", path, "--out", tmp_path / "o5"), "no Orbax parameters"),
        (("hf-to-orbax", "--hf", path, "--out", orbax_dir), "already exists"),
        (("hf-to-orbax", "--hf", path), "required: --out"),
    ]
    for args, message in cases:
        with pytest.raises(SystemExit) as e:
            convert.main([str(a) for a in args])
        lines = capsys.readouterr().err.strip().splitlines()
        assert e.value.code == 2 and len(lines) == 1 and "error: " in lines[0] and message in lines[0], (args, lines)
    assert not any((tmp_path / f"o{i}").exists() for i in range(1, 6))
    r = cli("hf-to-orbax", "--hf", tmp_path / "bert", "--out", tmp_path / "o6")  # the same through `python -m`
    assert r.returncode == 2 and r.stderr.strip().splitlines() == [
        "cogito_jax.convert: error: config.json model_type='bert' is not supported; supported: "
        f"{sorted(f.model_type for f in registry.FAMILIES.values())}"]
