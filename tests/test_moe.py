"""Qwen3-MoE sparse block and load-balancing loss in JAX against transformers (PyTorch, CPU)."""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx
from safetensors.numpy import load_file

from cogito_jax import sharding
from cogito_jax.convert import export_params, load_params
from cogito_jax.models import moe
from configs.models.qwen3_omni_thinker import get_config
from tests.conftest import bench_module
from tests.hf_tiny_qwen3_omni import rescale_, save_thinker, thinker_config


def hf_block(num_experts, top_k, norm, hidden=32, ffn=16, seed=0):
    from transformers.models.qwen3_omni_moe.modeling_qwen3_omni_moe import Qwen3OmniMoeThinkerTextSparseMoeBlock

    text = thinker_config().text_config
    text.hidden_size, text.moe_intermediate_size = hidden, ffn
    text.num_experts, text.num_experts_per_tok, text.norm_topk_prob = num_experts, top_k, norm
    torch.manual_seed(seed)
    return rescale_(Qwen3OmniMoeThinkerTextSparseMoeBlock(text).eval(), seed), text


def on_disk(state: dict) -> dict:
    """HF's in-memory fused expert tensors -> the per-expert names a checkpoint holds."""
    out = {"gate.weight": state["gate.weight"].numpy()}
    gate_up, down = state["experts.gate_up_proj"].numpy(), state["experts.down_proj"].numpy()
    f = gate_up.shape[1] // 2
    for e in range(gate_up.shape[0]):
        out[f"experts.{e}.gate_proj.weight"] = gate_up[e, :f]
        out[f"experts.{e}.up_proj.weight"] = gate_up[e, f:]
        out[f"experts.{e}.down_proj.weight"] = down[e]
    return out


def ours_from(block, text) -> moe.SparseMoE:
    cfg = moe.MoEConfig(text.hidden_size, text.moe_intermediate_size, text.num_experts, text.num_experts_per_tok,
                        text.norm_topk_prob)
    ours = moe.SparseMoE(cfg, rngs=nnx.Rngs(1))
    load_params(ours, moe.hf_weight_table(""), on_disk(block.state_dict()))
    return ours


def rel_err(out, ref):
    return np.abs(np.asarray(out) - ref).max() / np.abs(ref).max()


@pytest.mark.parametrize("num_experts, top_k, norm, tokens", [
    (8, 2, True, (2, 12)),
    (8, 2, False, (2, 12)),
    (16, 4, True, (1, 3)),  # 12 assignments over 16 experts: several experts get no token
])
def test_block_matches_hf(num_experts, top_k, norm, tokens):
    block, text = hf_block(num_experts, top_k, norm)
    x = np.random.default_rng(0).normal(size=(*tokens, 32)).astype(np.float32)
    with torch.no_grad():
        ref = block(torch.tensor(x)).numpy()
        ref_logits = block.gate(torch.tensor(x).reshape(-1, 32))[0].numpy()
    ours = ours_from(block, text)
    run = nnx.jit(lambda m, x, impl: m(x, impl), static_argnums=2)
    y, logits = run(ours, jnp.asarray(x), "ragged")
    y_dense, _ = run(ours, jnp.asarray(x), "dense")
    no_drop = dataclasses.replace(ours.cfg, capacity_factor=num_experts / top_k)  # buffers hold every assignment
    ours.cfg = no_drop
    y_cap, _ = run(ours, jnp.asarray(x), "capacity")
    assert rel_err(y_cap, np.asarray(y)) <= 1e-5
    assert y.shape == x.shape and logits.shape == (x.shape[0] * x.shape[1], num_experts)
    assert rel_err(y, ref) <= 1e-4
    assert rel_err(logits, ref_logits) <= 1e-5
    assert rel_err(y_dense, np.asarray(y)) <= 1e-5
    if tokens == (1, 3):
        used = np.unique(np.argsort(-np.asarray(logits), axis=-1)[:, :top_k])
        assert len(used) < num_experts


def test_capacity_drops_the_assignments_past_each_experts_buffer():
    n, k, e, d, f = 40, 2, 4, 8, 6
    rng = np.random.default_rng(3)
    x = rng.normal(size=(n, d)).astype(np.float32)
    experts = np.stack([rng.choice(e, size=k, replace=False, p=[0.55, 0.25, 0.1, 0.1]) for _ in range(n)])
    weights = rng.uniform(0.1, 1.0, size=(n, k)).astype(np.float32)
    gate, up = (rng.normal(size=(e, d, f)).astype(np.float32) for _ in range(2))
    down = rng.normal(size=(e, f, d)).astype(np.float32)
    factor = 1.0
    cap = moe.expert_capacity(n, k, e, factor)
    assert cap == 24  # 1.0 x 40 x 2 / 4 = 20, rounded up to a multiple of 8
    # Expected: the first `cap` assignments of each expert in token order run, the rest contribute nothing.
    seen = np.zeros(e, int)
    kept_w = weights.copy()
    for m in range(n * k):
        i, j = divmod(m, k)
        kept_w[i, j] *= seen[experts[i, j]] < cap
        seen[experts[i, j]] += 1
    assert seen.max() > cap and (kept_w == 0).any()  # expert 0 overflows
    args = (jnp.asarray(x), jnp.asarray(experts, jnp.int32))
    w = tuple(map(jnp.asarray, (gate, up, down)))
    got = moe.capacity_experts(*args, jnp.asarray(weights), *w, capacity_factor=factor)
    want = moe.grouped_experts(*args, jnp.asarray(kept_w), *w)
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="moe_capacity_factor=0 must be a finite number > 0"):
        moe.MoEConfig(8, 4, 4, 2, impl="capacity", capacity_factor=0)


def test_aux_loss_matches_hf():
    from transformers.models.qwen3_omni_moe.modeling_qwen3_omni_moe import load_balancing_loss_func

    rng = np.random.default_rng(2)
    b, t, e, k = 2, 5, 8, 2
    layers = [rng.normal(size=(b * t, e)).astype(np.float32) * 2 for _ in range(3)]
    mask = np.ones((b, t), np.int64)
    mask[0, :2] = 0
    for m in (None, mask):
        ref = load_balancing_loss_func(tuple(torch.tensor(x) for x in layers), e, k,
                                       None if m is None else torch.tensor(m)).item()
        stacked = moe.load_balancing_loss(jnp.stack(layers), e, k, None if m is None else jnp.asarray(m))
        listed = moe.load_balancing_loss([jnp.asarray(x).reshape(b, t, e) for x in layers], e, k,
                                         None if m is None else jnp.asarray(m))
        assert abs(float(stacked) - ref) <= 1e-5 * abs(ref) and abs(float(listed) - ref) <= 1e-5 * abs(ref)
    assert abs(float(moe.load_balancing_loss(jnp.stack(layers), e, k, jnp.asarray(mask))) - float(
        moe.load_balancing_loss(jnp.stack(layers), e, k))) > 1e-4  # the mask matters


def test_loads_from_saved_thinker_checkpoint(tmp_path):
    """The weight table reads the names transformers writes to disk (per-expert tensors)."""
    hf = save_thinker(tmp_path)
    tensors = load_file(str(tmp_path / "model.safetensors"))
    text = get_config("tiny").text_config
    cfg = moe.MoEConfig(text.hidden_size, text.moe_intermediate_size, text.num_experts, text.num_experts_per_tok)
    table = moe.hf_weight_table("model.layers.1.mlp.")
    ours = moe.SparseMoE(cfg, rngs=nnx.Rngs(0))
    load_params(ours, table, tensors)
    x = np.random.default_rng(4).normal(size=(2, 7, text.hidden_size)).astype(np.float32)
    with torch.no_grad():
        ref = hf.model.language_model.layers[1].mlp(torch.tensor(x)).numpy()
    assert rel_err(ours(jnp.asarray(x))[0], ref) <= 1e-4
    exported = export_params(ours, table)
    assert set(exported) == {k for k in tensors if k.startswith("model.layers.1.mlp.")}
    for k, v in exported.items():
        np.testing.assert_array_equal(v, tensors[k])


def _sharded_vs_one_device(cpu_devices, cfg, mesh_shape, rules, x):
    """(the block on ``mesh_shape`` under ``rules``, the same parameters on one device): outputs, router logits
    and the compiled sharded program's text."""
    mesh = sharding.make_mesh(mesh_shape, cpu_devices)
    model = sharding.create_sharded(lambda: moe.SparseMoE(cfg, rngs=nnx.Rngs(0)), mesh, rules)
    graphdef, state = nnx.split(model)
    local = nnx.merge(graphdef, jax.tree.map(lambda a: jnp.asarray(np.asarray(a)), state))
    ref = nnx.jit(lambda m, x: m(x))(local, jnp.asarray(x))

    @jax.jit
    def fwd(state, x):
        with sharding.use_rules(rules):
            return nnx.merge(graphdef, state)(sharding.constrain(x, ("batch", "length", "embed")))

    with jax.set_mesh(mesh):
        xs = jax.device_put(x, jax.sharding.NamedSharding(mesh, sharding.logical_to_spec(("batch",), rules, mesh)))
        out = fwd(state, xs)
        hlo = fwd.lower(state, xs).compile().as_text()
    return model, out, ref, hlo


@pytest.mark.parametrize("impl", ["ragged", "capacity", "alltoall", "gmm"])
def test_expert_sharded_mesh_matches_one_device(cpu_devices, impl):
    cfg = moe.MoEConfig(hidden_size=32, moe_intermediate_size=16, num_experts=8, num_experts_per_tok=2, impl=impl,
                        capacity_factor=4.0)
    x = np.random.default_rng(5).normal(size=(8, 6, 32)).astype(np.float32)
    model, (y, logits), (ref, ref_logits), hlo = _sharded_vs_one_device(
        cpu_devices, cfg, dict(fsdp=2, expert=4), sharding.RULE_PRESETS["fsdp_ep"], x)
    assert model.gate_proj[...].sharding.spec[:2] == ("expert", "fsdp")
    assert tuple(model.down_proj[...].sharding.spec) == ("expert", None, "fsdp")
    assert rel_err(y, np.asarray(ref)) <= 1e-5 and rel_err(logits, np.asarray(ref_logits)) <= 1e-5
    if impl in ("alltoall", "gmm"):  # tokens move to their experts' shards by all-to-all
        assert " all-to-all(" in hlo


def _expert_and_width_sharded(cpu_devices, impl, x):
    """The block (8 experts, top-2, capacity factor 1.0) with experts over ``expert=2`` and their hidden width over
    ``tensor=2``, tokens over ``fsdp x expert``: (model, output, the one-device dropless output)."""
    cfg = moe.MoEConfig(hidden_size=32, moe_intermediate_size=16, num_experts=8, num_experts_per_tok=2, impl=impl,
                        capacity_factor=1.0)
    model, (y, _), (dropless, _), hlo = _sharded_vs_one_device(cpu_devices, cfg, dict(fsdp=2, expert=2, tensor=2),
                                                                sharding.RULE_PRESETS["fsdp_ep"], x)
    assert tuple(model.gate_proj[...].sharding.spec) == ("expert", "fsdp", "tensor")
    assert " all-to-all(" in hlo
    return model, y, dropless


def test_alltoall_with_hidden_width_sharded_and_per_shard_capacity(cpu_devices):
    """Experts over ``expert``, their hidden width over ``tensor`` (partial outputs summed), and a capacity small
    enough to drop: each token shard fills its own buffers, so the result is the capacity path run on each
    shard's tokens alone, with its drops; gradients flow through both all-to-alls."""
    x = np.random.default_rng(6).normal(size=(4, 8, 32)).astype(np.float32)
    rules = sharding.RULE_PRESETS["fsdp_ep"]
    model, y, dropless = _expert_and_width_sharded(cpu_devices, "alltoall", x)
    local = nnx.merge(*nnx.split(model))
    w = [jnp.asarray(np.asarray(p[...])) for p in (local.gate_proj, local.up_proj, local.down_proj)]
    router = jnp.asarray(np.asarray(local.router.kernel[...]))
    shards = []
    for part in np.split(x.reshape(-1, 32), 4):  # batch over fsdp x expert: 4 token shards of one row each
        weights, experts = moe.route(jnp.asarray(part) @ router, 2, True)
        shards.append(moe.capacity_experts(jnp.asarray(part), experts, weights, *w, capacity_factor=1.0))
    per_shard = np.concatenate(shards).reshape(x.shape)
    assert rel_err(y, per_shard) <= 1e-5
    assert rel_err(y, np.asarray(dropless)) > 1e-3  # some assignments were dropped


    # Gradients (dropless capacity) through both all-to-alls and the sum over `tensor` equal ragged_dot's.
    mesh = sharding.make_mesh(dict(fsdp=2, expert=2, tensor=2), cpu_devices)
    weights, experts = moe.route(jnp.asarray(x.reshape(-1, 32)) @ router, 2, True)

    def loss(fn, x, *w):
        return jnp.sum(jnp.sin(fn(x, experts, weights, *w)))

    ref = jax.grad(loss, argnums=(1, 2, 3, 4))(moe.grouped_experts, jnp.asarray(x.reshape(-1, 32)), *w)
    for fn in (moe.alltoall_experts, moe.gmm_experts):  # factor 4 drops nothing for either
        experts_fn = functools.partial(fn, capacity_factor=4.0)

        @jax.jit
        def grads(x, *w, experts_fn=experts_fn):
            with sharding.use_rules(rules):
                return jax.grad(loss, argnums=(1, 2, 3, 4))(experts_fn, x, *w)

        with jax.set_mesh(mesh):
            put = lambda a, names: jax.device_put(a, jax.sharding.NamedSharding(  # noqa: E731
                mesh, sharding.logical_to_spec(names, rules, mesh)))
            got = grads(put(x.reshape(-1, 32), ("batch", None)), *(put(a, n) for a, n in zip(w, (
                ("experts", "embed", "expert_mlp"), ("experts", "embed", "expert_mlp"),
                ("experts", "expert_mlp", "embed")), strict=True)))
        for g, r in zip(got, ref, strict=True):
            assert rel_err(g, np.asarray(r)) <= 1e-5, fn.__name__


def _pooled_capacity_reference(x_nd, experts_nk, weights_nk, gate, up, down, shards, cap):
    """NumPy: each (token, choice) in token order kept while its expert's shard (``E / shards`` experts) has had
    fewer than ``cap`` assignments; the kept ones through their expert, weighted. Returns (output, dropped)."""
    per_shard = gate.shape[0] // shards
    used = np.zeros(shards, int)
    out, dropped = np.zeros_like(x_nd), 0
    for t in range(x_nd.shape[0]):
        for e, wt in zip(experts_nk[t], weights_nk[t], strict=True):
            s = e // per_shard
            if used[s] >= cap:
                dropped += 1
                continue
            used[s] += 1
            g, u = x_nd[t] @ gate[e], x_nd[t] @ up[e]
            out[t] += wt * ((g / (1 + np.exp(-g)) * u) @ down[e])
    return out, dropped


def test_gmm_pools_capacity_per_expert_shard_and_drops_in_token_order(cpu_devices):
    """moe_impl="gmm" with experts over `expert` (2 shards of 4) and their hidden width over `tensor`: each token
    shard fills one buffer per expert shard, in token order; what overflows it is dropped. Equal to a NumPy
    reference of that rule, on each token shard; fewer drops than one buffer per expert at the same factor."""
    x = np.random.default_rng(7).normal(size=(4, 64, 32)).astype(np.float32)
    model, y, dropless = _expert_and_width_sharded(cpu_devices, "gmm", x)
    local = nnx.merge(*nnx.split(model))
    w = [np.asarray(p[...]) for p in (local.gate_proj, local.up_proj, local.down_proj)]
    router = np.asarray(local.router.kernel[...])
    shards, drops, per_expert_drops = [], 0, 0
    for part in np.split(x.reshape(-1, 32), 4):  # batch over fsdp x expert: 4 token shards of 64 tokens
        weights, experts = (np.asarray(a) for a in moe.route(jnp.asarray(part @ router), 2, True))
        out, dropped = _pooled_capacity_reference(part, experts, weights, *w, shards=2, cap=64)  # 1.0 x 64 x 2 / 2
        shards.append(out)
        drops += dropped
        per_expert_drops += sum(max(0, c - 16) for c in np.bincount(experts.ravel(), minlength=8))  # 1.0 x 64 x 2 / 8
    assert 0 < drops < per_expert_drops
    assert rel_err(y, np.concatenate(shards).reshape(x.shape)) <= 1e-5
    assert rel_err(y, np.asarray(dropless)) > 1e-3


def _check_against_ragged_dot(mm, seed: int, sizes=(30, 0, 100, 40)):
    """``mm(lhs, rhs, group_sizes)`` on 200 rows of which ``sum(sizes)`` are in groups (an empty group by default):
    output and both gradients equal `ragged_dot`'s, and the rows past the groups and their gradient are zeros."""
    r = np.random.default_rng(seed)
    lhs = jnp.asarray(r.normal(size=(200, 64)), jnp.float32)
    rhs = jnp.asarray(r.normal(size=(4, 64, 48)), jnp.float32)
    sizes = jnp.array(sizes, jnp.int32)
    used = int(sizes.sum())

    def loss(mm, lhs, rhs):
        return jnp.sum(jnp.sin(mm(lhs, rhs, sizes)))

    out = mm(lhs, rhs, sizes)
    np.testing.assert_array_equal(np.asarray(out[used:]), 0)
    assert rel_err(out, np.asarray(jax.lax.ragged_dot(lhs, rhs, sizes))) <= 1e-5
    got = jax.grad(loss, argnums=(1, 2))(mm, lhs, rhs)
    ref = jax.grad(loss, argnums=(1, 2))(jax.lax.ragged_dot, lhs, rhs)
    np.testing.assert_array_equal(np.asarray(got[0][used:]), 0)
    for g, want in zip(got, ref, strict=True):
        assert rel_err(g, np.asarray(want)) <= 1e-5
    return lhs, rhs, sizes


def test_grouped_matmul_through_the_megablox_kernel_equals_ragged_dot():
    """The TPU branch of `grouped_matmul` (the megablox Pallas kernel, run by Pallas' interpreter here): rows not
    a multiple of the kernel's tile, an empty group, rows past the groups (which the kernel leaves unwritten)."""
    lhs, rhs, sizes = _check_against_ragged_dot(functools.partial(moe._megablox, interpret=True), 8)
    # On CPU the platform choice takes the padded tiles.
    np.testing.assert_array_equal(np.asarray(jax.jit(moe.grouped_matmul)(lhs, rhs, sizes)),
                                  np.asarray(jax.jit(moe.tiled_grouped_matmul)(lhs, rhs, sizes)))


@pytest.mark.parametrize("tile", [None, 8, 64])
def test_grouped_matmul_as_padded_tiles_equals_ragged_dot(tile):
    """The branch of `grouped_matmul` off TPU (groups padded to whole tiles, one batched GEMM): tiles smaller and
    larger than the groups, an empty group (a trailing one too), rows past the groups; at both ends of the tile
    bound, every row in one group and every group one row; and no rows at all."""
    tiled = jax.jit(functools.partial(moe.tiled_grouped_matmul, tile=tile))
    for sizes in ((30, 0, 100, 40), (200, 0, 0, 0), (1, 1, 1, 1), (30, 100, 40, 0)):
        _check_against_ragged_dot(tiled, 9, sizes)
    empty = tiled(jnp.zeros((0, 64), jnp.float32), jnp.ones((4, 64, 48), jnp.float32), jnp.zeros((4,), jnp.int32))
    assert empty.shape == (0, 48)


def test_tile_rows_follow_the_mean_group():
    assert moe.tile_rows(4 * 2048 * 8, 128) == 512  # the recipe's step: 512 rows per expert on average
    assert moe.tile_rows(64 * 8, 128) == 8  # a decode step's handful of rows per expert
    assert moe.tile_rows(300, 4) == 128
    assert moe.tile_rows(10**6, 4) == 512


def _lowered_for(platform: str, f, *args) -> str:
    avals = [jax.ShapeDtypeStruct(a.shape, a.dtype) for a in args]
    return jax.export.export(jax.jit(f), platforms=[platform])(*avals).mlir_module()


def test_grouped_experts_lower_per_platform():
    """`gmm` and `ragged` without expert shards, forward and backward, lowered for each platform from this CPU host:
    on GPUs and the CPU both run the batched GEMM over tiles and no `ragged_dot` (lowered there as a masked matmul
    per group); on TPU `gmm` calls the megablox kernel and `ragged` keeps `ragged_dot`."""
    r = np.random.default_rng(10)
    n, d, f, e, k = 32, 16, 8, 8, 2
    args = (jnp.asarray(r.normal(size=(n, d)), jnp.float32),
            *(jnp.asarray(r.normal(size=(e, d, f)), jnp.float32) for _ in range(2)),
            jnp.asarray(r.normal(size=(e, f, d)), jnp.float32))
    experts = jnp.asarray(r.integers(0, e, size=(n, k)), jnp.int32)
    weights = jnp.full((n, k), 0.5, jnp.float32)

    def step(experts_fn):
        loss = lambda x, gate, up, down: jnp.sum(experts_fn(x, experts, weights, gate, up, down) ** 2)  # noqa: E731
        return jax.value_and_grad(loss, argnums=(0, 1, 2, 3))

    gmm = step(functools.partial(moe.gmm_experts, capacity_factor=1.0))
    ragged = step(functools.partial(moe.grouped_experts, matmul=moe.ragged_matmul))
    ragged_dot = step(moe.grouped_experts)
    ragged_op = 'stablehlo.composite "chlo.ragged_dot"'
    for platform in ("cuda", "rocm", "cpu"):
        for name, fn in (("gmm", gmm), ("ragged", ragged)):
            text = _lowered_for(platform, fn, *args)
            assert ragged_op not in text and "batching_dims = [0] x [0]" in text, (platform, name)
    assert "tpu_custom_call" in _lowered_for("tpu", gmm, *args)
    assert ragged_op in _lowered_for("tpu", ragged, *args)
    assert ragged_op in _lowered_for("cuda", ragged_dot, *args)
    # On CPU `ragged_dot` is a masked matmul per expert: every assignment times all E = 8 experts.
    flops = [jax.jit(fn).lower(*args).compile().cost_analysis()["flops"] for fn in (ragged, ragged_dot)]
    assert flops[0] < flops[1] / 2


def test_moe_layer_bench_sizes_each_implementation(tmp_path):
    """bench/moe_layer.py at toy size: every implementation compiles, runs and is sized; `ragged_dot` computes every
    row with every expert (E = 8 times the useful FLOPs here; at least 4x asserted), the padded tiles far less."""
    bench = bench_module("moe_layer")
    rows = {r["impl"]: r for r in bench.layer_costs(64, ["tiled", "capacity:1.25", "ragged_dot"], 1, hidden=32,
                                                    width=16, experts=8, top_k=2)}
    for r in rows.values():
        assert r["step_ms"] > 0 and r["temp_gib"] >= 0 and r["xla_tflop"] > 0
    assert rows["ragged_dot"]["xla_tflop"] >= 4 * rows["ragged_dot"]["useful_tflop"]
    assert rows["tiled"]["xla_tflop"] < rows["ragged_dot"]["xla_tflop"] / 2
    with pytest.raises(SystemExit, match="unknown implementation 'grouped'"):
        bench.main(["--impls", "grouped"])


def test_moe_generation_bench_samples_the_same_tokens_both_ways():
    """bench/moe_generation.py at toy size: generation's dropless experts and `ragged_dot` draw the same tokens,
    and the module's settings are restored afterwards."""
    from cogito_jax.models import decoder

    bench = bench_module("moe_generation")
    before = (decoder.GENERATION_MOE_IMPL, moe.ragged_matmul)
    r = bench.main(["--experts", "8", "--top-k", "2", "--hidden", "32", "--prompts", "2", "--samples", "2",
                    "--prompt-len", "8", "--new", "4", "--repeats", "1"])
    assert r["same_tokens"] and len(r["seconds"]["dropless"]) == 1
    assert (decoder.GENERATION_MOE_IMPL, moe.ragged_matmul) == before


def test_config_validation():
    with pytest.raises(ValueError, match="num_experts_per_tok"):
        moe.MoEConfig(8, 4, num_experts=4, num_experts_per_tok=5)
    with pytest.raises(ValueError, match="impl"):
        moe.MoEConfig(8, 4, 4, 2, impl="megablocks")


def test_parameter_count_matches_hf_real_size():
    from transformers.models.qwen3_omni_moe.modeling_qwen3_omni_moe import Qwen3OmniMoeThinkerTextSparseMoeBlock

    text = thinker_config("30b_a3b").text_config
    with torch.device("meta"):
        ref = sum(p.numel() for p in Qwen3OmniMoeThinkerTextSparseMoeBlock(text).parameters())
    cfg = moe.MoEConfig(text.hidden_size, text.moe_intermediate_size, text.num_experts, text.num_experts_per_tok)
    abstract = nnx.eval_shape(lambda: moe.SparseMoE(cfg, rngs=nnx.Rngs(0)))
    ours = sum(x.size for x in jax.tree.leaves(nnx.state(abstract, nnx.Param)))
    assert ours == ref == 128 * 3 * 2048 * 768 + 128 * 2048


@pytest.mark.parametrize("coef", [0.5, 0.0])
def test_grad_accum_with_the_aux_loss_equals_one_whole_batch(coef):
    """4 micro-batches of 2 rows give the loss and the update of one 8-row batch, load-balancing loss included:
    its statistics are the whole batch's (a forward pass over every micro-batch first), not a sum of
    per-micro-batch products of means. Padded rows and masked loss tokens make the micro-batches unequal."""
    import optax

    from cogito_jax.models import registry
    from cogito_jax.train.step import TrainState, make_train_step

    mcfg = registry.config_for({"family": "qwen3_omni_thinker", "size": "tiny"})
    mcfg = dataclasses.replace(mcfg, text=dataclasses.replace(mcfg.text, router_aux_loss_coef=coef))
    graphdef, params, rest = nnx.split(registry.build(mcfg, 0), nnx.Param, ...)
    rng = np.random.default_rng(0)
    b, t = 8, 24
    ids = rng.integers(1, mcfg.text.vocab_size, (b, t)).astype(np.int32)
    attn = np.ones((b, t), np.int32)
    for i, pad in enumerate((0, 5, 0, 11, 2, 0, 17, 3)):
        attn[i, :pad] = 0
    loss_mask = attn * (rng.random((b, t)) < 0.7)
    batch = {"input_ids": jnp.asarray(ids), "targets": jnp.asarray(np.roll(ids, -1, 1)),
             "loss_mask": jnp.asarray(loss_mask, jnp.float32), "attention_mask": jnp.asarray(attn)}
    tx = optax.sgd(1.0)
    out = {}
    for n in (1, 4):
        state = TrainState(params, tx.init(params), jnp.int32(0))
        out[n] = jax.jit(make_train_step(graphdef, tx, grad_accum=n))(state, rest, batch)
    (s1, m1), (s4, m4) = out[1], out[4]
    np.testing.assert_allclose(float(m4["loss"]), float(m1["loss"]), rtol=1e-5)
    delta = lambda s: jax.tree.map(lambda a, p: np.asarray(a) - np.asarray(p), s.params, params)  # noqa: E731
    for d4, d1 in zip(jax.tree.leaves(delta(s4)), jax.tree.leaves(delta(s1)), strict=True):
        np.testing.assert_allclose(d4, d1, rtol=1e-4, atol=1e-4 * np.abs(d1).max() + 1e-12)


@pytest.mark.parametrize("tokens", [5, 16, 40, 200])
def test_dropless_experts_equal_ragged_dot_in_both_forms(tokens, monkeypatch):
    """Generation's experts, 16 of them: expert buffers of every token up to 16 tokens, padded row tiles past 128
    (8 per expert), between the two the buffers on accelerators and the tiles on CPU. Each equals the dropless
    result, skewed routing included (every token's first choice the same expert, which a buffer of the mean load
    would overflow)."""
    r = np.random.default_rng(tokens)
    n, d, f, e, k = tokens, 24, 12, 16, 4
    x = jnp.asarray(r.normal(size=(n, d)), jnp.float32)
    others = np.delete(np.arange(e), 3)  # expert 3 every token's first choice
    experts = jnp.asarray([[3, *r.permutation(others)[:k - 1]] for _ in range(n)], jnp.int32)
    weights = jnp.asarray(r.dirichlet(np.ones(k), size=n), jnp.float32)
    gate, up = (jnp.asarray(r.normal(size=(e, d, f)), jnp.float32) for _ in range(2))
    down = jnp.asarray(r.normal(size=(e, f, d)), jnp.float32)
    args = (x, experts, weights, gate, up, down)
    forms = []
    monkeypatch.setattr(moe, "capacity_experts", functools.partial(_recorded, forms, "buffers", moe.capacity_experts))
    monkeypatch.setattr(moe, "grouped_experts", functools.partial(_recorded, forms, "tiles", moe.grouped_experts))
    got = moe.dropless_experts(*args)
    assert forms == (["buffers"] if n <= e else ["tiles"])  # on CPU, the tiles past one token per expert
    assert rel_err(got, np.asarray(moe.dense_experts(*args))) <= 1e-5
    if e < n <= 8 * e:  # on accelerators the buffers, chosen when the program is lowered for the platform
        buffer_dot = f"tensor<{e}x{n}x{d}xf32>"
        assert buffer_dot in _lowered_for("cuda", moe.dropless_experts, *args)
        assert buffer_dot not in _lowered_for("cpu", moe.dropless_experts, *args)


def _recorded(log: list, name: str, fn, *args, **kwargs):
    log.append(name)
    return fn(*args, **kwargs)


def test_generation_runs_the_experts_dropless_whatever_moe_impl_says():
    """A thinker trained with a capacity path (here a buffer of a quarter of the mean load, which drops most
    assignments) samples as the dropless model does: same tokens and log-probs; its training forward differs."""
    from cogito_jax.models import registry
    from cogito_jax.sampling.engine import Engine

    mcfg = registry.config_for({"family": "qwen3_omni_thinker", "size": "tiny"})
    dropless = registry.build(mcfg, 0)
    text = dataclasses.replace(mcfg.text, moe_impl="capacity", moe_capacity_factor=0.25)
    capped = registry.build(dataclasses.replace(mcfg, text=text), 0)
    ids = np.random.default_rng(0).integers(10, mcfg.text.vocab_size, (2, 40)).astype(np.int32)
    assert rel_err(capped(jnp.asarray(ids)), np.asarray(dropless(jnp.asarray(ids)))) > 1e-3
    kw = dict(num_samples=2, max_new_tokens=6, temperature=1.0, eos_token_id=[1], pad_token_id=0, seed=4)
    a, b = Engine(dropless).generate(ids, **kw), Engine(capped).generate(ids, **kw)
    np.testing.assert_array_equal(np.asarray(a.tokens), np.asarray(b.tokens))
    np.testing.assert_allclose(np.asarray(a.logprobs), np.asarray(b.logprobs), rtol=1e-5, atol=1e-6)
