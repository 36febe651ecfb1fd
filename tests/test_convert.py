"""HF safetensors <-> NNX: exact round trips, transformers reloads our exports, sharded files and placement."""

import copy
import json
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx
from safetensors.numpy import load_file, save_file

from cogito_jax import sharding
from cogito_jax.convert import load_hf, save_hf
from tests.hf_tiny import hf_logits, make_batch, rel_err, tiny_qwen2_audio


@pytest.fixture(scope="session")
def hf_dir(tmp_path_factory):
    return tiny_qwen2_audio(tmp_path_factory)


@pytest.fixture(scope="session")
def hf_bf16_sharded(tmp_path_factory, hf_dir):
    """The tiny model saved by transformers in bfloat16, in several safetensors shards with an index."""
    from transformers import Qwen2AudioForConditionalGeneration

    path = tmp_path_factory.mktemp("qwen2_audio_bf16")
    copy.deepcopy(hf_dir[1]).to(torch.bfloat16).save_pretrained(str(path), max_shard_size="40KB")
    assert len(json.loads((path / "model.safetensors.index.json").read_text())["weight_map"]) > 1
    return path, Qwen2AudioForConditionalGeneration.from_pretrained(str(path), dtype=torch.float32).eval()


def tensors(path):
    """Every tensor of a checkpoint folder, whether one file or shards."""
    out = {}
    for f in sorted(path.glob("*.safetensors")):
        out.update(load_file(str(f)))
    return out


def assert_bitwise_equal(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].dtype == b[k].dtype and a[k].shape == b[k].shape, k
        np.testing.assert_array_equal(a[k].view(np.uint8), b[k].view(np.uint8), err_msg=k)


def jax_logits(model, ids, feats, fmask, am):
    return np.asarray(nnx.jit(lambda m, *a: m(*a))(model, *(jnp.asarray(x) for x in (ids, feats, fmask, am))))


def test_fp32_roundtrip_is_bitwise_and_transformers_loads_the_export(hf_dir, tmp_path):
    from transformers import Qwen2AudioForConditionalGeneration

    path, hf = hf_dir
    model, cfg = load_hf(path)
    out_dir = save_hf(model, cfg, tmp_path / "exported")
    assert_bitwise_equal(tensors(path), tensors(out_dir))
    assert json.loads((out_dir / "config.json").read_text())["dtype"] == "float32"
    reloaded = Qwen2AudioForConditionalGeneration.from_pretrained(str(out_dir)).eval()
    batch = make_batch(seed=2)
    np.testing.assert_array_equal(hf_logits(reloaded, *batch), hf_logits(hf, *batch))


def test_bf16_sharded_checkpoint_roundtrip_is_bitwise(hf_bf16_sharded, tmp_path):
    path, _ = hf_bf16_sharded
    model, cfg = load_hf(path, dtype=jnp.bfloat16)
    assert model.llm.embed_tokens.embedding[...].dtype == jnp.bfloat16
    out_dir = save_hf(model, cfg, tmp_path / "bf16", max_shard_bytes=30_000)
    index = json.loads((out_dir / "model.safetensors.index.json").read_text())
    files = set(index["weight_map"].values())
    assert len(files) > 1 and files == {f.name for f in out_dir.glob("*.safetensors")}
    assert_bitwise_equal(tensors(path), tensors(out_dir))
    assert index["metadata"]["total_size"] == sum(t.nbytes for t in tensors(out_dir).values())


def test_bf16_checkpoint_in_fp32_matches_transformers(hf_bf16_sharded, tmp_path):
    """bf16 weights read into fp32 give transformers' fp32 logits on the same weights; our sharded bf16
    export loads in transformers with the same logits."""
    from transformers import Qwen2AudioForConditionalGeneration

    path, hf = hf_bf16_sharded
    model, cfg = load_hf(path, dtype=jnp.float32)
    batch = make_batch(seed=3)
    ref = hf_logits(hf, *batch)
    assert rel_err(jax_logits(model, *batch), ref, batch[3]) <= 1e-4
    out_dir = save_hf(model, cfg, tmp_path / "export", dtype=jnp.bfloat16, max_shard_bytes=20_000)
    reloaded = Qwen2AudioForConditionalGeneration.from_pretrained(str(out_dir), dtype=torch.float32).eval()
    np.testing.assert_array_equal(hf_logits(reloaded, *batch), ref)


def test_tie_word_embeddings_true_keeps_a_separate_head(tmp_path_factory, tmp_path):
    """transformers' Qwen2-Audio never ties its LM head; a checkpoint saying tie_word_embeddings=True still
    holds one, and we follow transformers."""
    path, hf = tiny_qwen2_audio(tmp_path_factory, tie_word_embeddings=True)
    model, cfg = load_hf(path)
    assert not cfg.text.tie_embeddings and hasattr(model.llm, "lm_head")
    batch = make_batch(seed=4)
    assert rel_err(jax_logits(model, *batch), hf_logits(hf, *batch), batch[3]) <= 1e-4
    out_dir = save_hf(model, cfg, tmp_path / "tied")
    assert_bitwise_equal(tensors(path), tensors(out_dir))
    assert json.loads((out_dir / "config.json").read_text())["text_config"]["tie_word_embeddings"] is True


@pytest.mark.parametrize("mesh_cfg, rules", [(dict(data=2, fsdp=2, tensor=2), "fsdp_tp"),
                                             (dict(data=1, fsdp=2, expert=4), "fsdp_ep")])
def test_load_onto_mesh_equals_single_device(hf_dir, hf_bf16_sharded, mesh_cfg, rules, cpu_devices, tmp_path):
    path, _ = hf_dir
    single, _ = load_hf(path)
    batch = make_batch(seed=4, lengths=(32, 19, 25, 9), left_pad=(0, 3, 1, 2))
    ref = jax_logits(single, *batch)
    mesh, r = sharding.make_mesh(mesh_cfg), sharding.resolve_rules(rules)
    model, cfg = load_hf(path, mesh=mesh, rules=r)
    kernel = model.llm.layers.mlp.up_proj.kernel[...]
    assert len(kernel.sharding.device_set) == 8 and not kernel.sharding.is_fully_replicated
    for (p, a), b in zip(jax.tree_util.tree_flatten_with_path(nnx.state(model))[0],
                         jax.tree.leaves(nnx.state(single)), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=jax.tree_util.keystr(p))
    graphdef, state = nnx.split(model)

    @jax.jit
    def fwd(state, *batch):
        with sharding.use_rules(r):
            return nnx.merge(graphdef, state)(*batch)

    with jax.set_mesh(mesh):
        out = np.asarray(fwd(state, *(jnp.asarray(x) for x in batch)))
    np.testing.assert_allclose(out, ref, atol=1e-5 * np.abs(ref).max(), rtol=0)
    if rules == "fsdp_tp":  # exporting sharded arrays writes the same files
        assert_bitwise_equal(tensors(path), tensors(save_hf(model, cfg, tmp_path / "from_mesh")))
        # sharded bf16 files straight into sharded bf16 arrays
        bf16, _ = load_hf(hf_bf16_sharded[0], jnp.bfloat16, mesh=mesh, rules=r)
        emb = bf16.llm.embed_tokens.embedding[...]
        assert emb.dtype == jnp.bfloat16 and not emb.sharding.is_fully_replicated
        ref16 = load_hf(hf_bf16_sharded[0], jnp.bfloat16)[0].llm.embed_tokens.embedding[...]
        np.testing.assert_array_equal(np.asarray(emb), np.asarray(ref16))


def test_broken_checkpoints_name_the_problem(hf_dir, tmp_path):
    path, _ = hf_dir
    (tmp_path / "llama").mkdir()
    (tmp_path / "llama" / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(ValueError, match="model_type='llama' is not supported"):
        load_hf(tmp_path / "llama")
    original = load_file(str(path / "model.safetensors"))

    def broken(name, tensors):
        d = tmp_path / name
        d.mkdir()
        shutil.copy(path / "config.json", d / "config.json")
        save_file(tensors, str(d / "model.safetensors"), metadata={"format": "pt"})
        return d

    key = "language_model.model.layers.1.self_attn.k_proj.bias"
    missing = broken("missing", {k: v for k, v in original.items() if k != key})
    with pytest.raises(ValueError, match=f"'{key}'.*not in the checkpoint"):
        load_hf(missing)
    wrong = broken("wrong", {**original, key: np.zeros(3, np.float32)})
    with pytest.raises(ValueError, match=f"'{key}' has shape \\(3,\\)"):
        load_hf(wrong)
    extra = broken("extra", {**original, "language_model.model.rotary.inv_freq": np.zeros(4, np.float32)})
    with pytest.raises(ValueError, match="rotary.inv_freq"):
        load_hf(extra)
    assert load_hf(extra, strict=False)[0] is not None
    (tmp_path / "empty").mkdir()
    shutil.copy(path / "config.json", tmp_path / "empty" / "config.json")
    with pytest.raises(FileNotFoundError, match="no model.safetensors"):
        load_hf(tmp_path / "empty")
