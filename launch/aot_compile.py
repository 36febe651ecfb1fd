"""Ahead-of-time compile check: does a config's train step fit a TPU slice's HBM?

    python launch/aot_compile.py --config configs/audio_cogito.py --topology v5p:4x4x4 [--config.a.b=v ...]

Compiles the train step exactly as the trainer does (``cogito_jax.train.trainer.prepare`` and
``compile_train_step``: same LoRA wrapping, trainable split, optimizer state, shardings, donation) for
the devices of a TPU topology, on any machine with libtpu installed and no TPU attached: the model is
abstract (``nnx.eval_shape``, no weights), the mesh is the run's ``mesh`` config over the topology's
chips. Prints XLA's ``memory_analysis()`` of the compiled SPMD program (every chip runs the same
program, so the numbers are per chip) and exits 1 if the peak does not fit the chip's HBM (``HBM_GIB``,
or ``--hbm_gib``), 0 if it fits.

libtpu is not a dependency of the project: ``pip install 'libtpu==0.0.42.*'`` (the version jax 0.10.2's
``tpu`` extra pins; other jax versions pin their own), or put an unpacked wheel on ``PYTHONPATH``.
``--topology cpu:N`` compiles for N local CPU devices instead (no libtpu; a check of this script).
``--cost`` adds XLA's cost analysis of one step and a roofline step time. XLA counts a loop's body once, whatever
its trip count, so the step is also compiled with each layer stack unrolled at depths (1, 1), (2, 1) and (1, 2)
(text, audio): the differences are one text and one audio layer, and the step at the config's depths is the
(1, 1) program plus (depth - 1) layers of each (FLOPs, HBM bytes, collective bytes per chip). The roofline
takes the largest of compute (FLOPs / the bf16 spec peak), HBM (bytes / spec bandwidth) and interconnect
(collective bytes / spec ICI bandwidth), i.e. it assumes they overlap perfectly: a lower bound on the step
time, and the model FLOPs (the MFU count, ``cogito_jax.models.flops``) over it the best MFU such a step could reach.
``--hlo_out FILE`` writes the compiled program: with ``--config.model.attn_impl=splash`` it calls the splash
kernel as ``tpu_custom_call`` ops (Mosaic), which shows the kernel lowers for that TPU.
Topology names: ``v5p:2x4x4`` is a v5p-64 slice (32 chips, v5p accelerator types count TensorCores),
``v5p:4x4x4`` a v5p-128 (64 chips), ``v6e:8x8`` a v6e-64, ``v5e:8x8`` a v5litepod-64.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
import sys
import time

# HBM per chip, GiB.
HBM_GIB = {"v4": 32.0, "v5e": 16.0, "v5litepod": 16.0, "v5p": 95.0, "v6e": 32.0}
# Vendor spec bandwidths per chip, GB/s: HBM, and the chip's inter-chip interconnect (ICI) in all (4800 Gbit/s on
# v5p, 1600 on v5e, 3584 on v6e, 2400 on v4).
HBM_GBPS = {"v4": 1200.0, "v5e": 819.0, "v5litepod": 819.0, "v5p": 2765.0, "v6e": 1640.0}
ICI_GBPS = {"v4": 300.0, "v5e": 200.0, "v5litepod": 200.0, "v5p": 600.0, "v6e": 448.0}


def _parse(argv: list[str] | None) -> tuple[argparse.Namespace, list[str]]:
    p = argparse.ArgumentParser(prog="launch/aot_compile.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--config", required=True, help="config file, path.py[:arg]")
    p.add_argument("--topology", required=True, help="TPU topology (v5p:4x4x4, v6e:8x8, ...) or cpu:N")
    p.add_argument("--hbm_gib", type=float, default=None, help="memory per chip to check against (default: table)")
    p.add_argument("--cost", action="store_true", help="also XLA's cost analysis and a roofline step time (compiles "
                   "three more, shallow programs; needs a TPU topology)")
    p.add_argument("--hlo_out", default=None, help="write the compiled program's HLO text here (e.g. to see which "
                   "custom kernels it calls)")
    a, rest = p.parse_known_args(argv)
    bad = [x for x in rest if not x.startswith("--config.") or "=" not in x]
    if bad:
        p.error(f"unrecognised arguments {bad}; config overrides look like --config.a.b=value")
    if a.topology.startswith("cpu:"):
        if not a.topology[4:].isdigit():
            p.error(f"--topology {a.topology!r}: use cpu:N with N devices")
    elif a.hbm_gib is None and a.topology.split(":")[0] not in HBM_GIB:
        p.error(f"no HBM size known for {a.topology!r} (known: {sorted(HBM_GIB)}); pass --hbm_gib")
    if a.topology.startswith("cpu:") and a.hbm_gib is None:
        p.error("--topology cpu:N needs --hbm_gib")
    if a.cost and a.topology.split(":")[0] not in HBM_GBPS:
        p.error(f"--cost: no bandwidths known for {a.topology!r} (known: {sorted(HBM_GBPS)})")
    return a, rest


def devices_for(topology: str) -> list:
    """The devices of ``topology``: a TPU topology description's (needs libtpu) or N local CPU devices."""
    import jax

    if topology.startswith("cpu:"):
        n = int(topology[4:])
        devices = jax.devices("cpu")
        if len(devices) < n:
            raise SystemExit(f"aot_compile: error: {n} CPU devices asked for, {len(devices)} present")
        return devices[:n]
    from jax.experimental import topologies

    try:
        return list(topologies.get_topology_desc(topology, "tpu").devices)
    except Exception as e:
        why = f"{type(e).__name__}: {str(e).splitlines()[0][:300]}"
        raise SystemExit(f"aot_compile: error: no TPU topology {topology!r} ({why}); is libtpu installed "
                         "(pip install 'libtpu==0.0.42.*')?") from e


def abstract_batch(cfg, mcfg) -> dict:
    """ShapeDtypeStructs of the largest global batch ``cogito_jax.data.pipeline`` makes for the run: padded
    rows, or packed rows (``data.packing``: segment ids, positions and ``max_clips_per_row`` clips per row);
    audio at the encoder's full window (the last audio bucket)."""
    import jax
    import jax.numpy as jnp

    b, t = cfg.train.batch_size, cfg.data.max_len
    mels, frames = mcfg.audio.num_mel_bins, mcfg.audio.num_frames
    sds = jax.ShapeDtypeStruct
    batch = {"input_ids": sds((b, t), jnp.int32), "targets": sds((b, t), jnp.int32),
             "loss_mask": sds((b, t), jnp.float32), "attention_mask": sds((b, t), jnp.int32),
             "input_features": sds((b, mels, frames), jnp.float32),
             "feature_attention_mask": sds((b, frames), jnp.int32)}
    if cfg.data.get("packing"):
        c = cfg.data.max_clips_per_row
        batch.update(segment_ids=sds((b, t), jnp.int32), positions=sds((b, t), jnp.int32),
                     input_features=sds((b, c, mels, frames), jnp.float32),
                     feature_attention_mask=sds((b, c, frames), jnp.int32))
    return batch


_BYTES = {"pred": 1, "s8": 1, "u8": 1, "f8e4m3fn": 1, "f8e5m2": 1, "s16": 2, "u16": 2, "f16": 2, "bf16": 2,
          "s32": 4, "u32": 4, "f32": 4, "s64": 8, "u64": 8, "f64": 8}
_SHAPE = re.compile(r"\b([a-z]+[0-9]*[a-z0-9]*)\[([0-9,]*)\]")
_COLLECTIVE = re.compile(r"= (.*?) (all-gather|all-reduce|all-to-all|reduce-scatter|collective-permute|"
                         r"ragged-all-to-all)(-start)?\((.*)$")


def _bytes(types: str) -> int:
    return sum(_BYTES.get(dt, 4) * max(1, _elements(dims)) for dt, dims in _SHAPE.findall(types))


def _elements(dims: str) -> int:
    n = 1
    for d in filter(None, dims.split(",")):
        n *= int(d)
    return n


def collective_bytes(hlo: str) -> dict[str, int]:
    """Bytes each chip sends per collective kind in a compiled SPMD program's text (``-done`` halves of async
    pairs are skipped): the larger of an op's operands and results (an all-gather receives its result, a
    reduce-scatter sends about its operand), twice the operand for an all-reduce (reduce-scatter + all-gather).
    Ops inside loops count once, like XLA's cost analysis."""
    out: dict[str, int] = {}
    for line in hlo.splitlines():
        m = _COLLECTIVE.search(line)
        if not m:
            continue
        result, kind, operands = m.group(1), m.group(2), m.group(4).split("), ")[0]
        n = 2 * _bytes(operands) if kind == "all-reduce" else max(_bytes(result), _bytes(operands))
        out[kind] = out.get(kind, 0) + n
    return out


def _cost_of(compiled) -> dict[str, float]:
    ca = compiled.cost_analysis()
    ca = ca[0] if isinstance(ca, (list, tuple)) else ca
    comm = collective_bytes(compiled.as_text())
    return {"flops": float(ca.get("flops", 0.0)), "bytes": float(ca.get("bytes accessed", 0.0)),
            "comm": float(sum(comm.values())), **{f"comm {k}": float(v) for k, v in comm.items()}}


def prepared(cfg, mcfg, mesh, rules):
    """The trainer's ``Prepared`` step of model config ``mcfg`` under ``cfg``, from an abstract model (no arrays):
    the same LoRA wrapping, trainable split, optimizer state and shardings as a run."""
    from cogito_jax import sharding
    from cogito_jax.models import registry
    from cogito_jax.train import trainer

    with sharding.use_rules(rules):
        model = trainer.abstract_sharded(lambda: trainer.for_training(cfg, registry.build(mcfg, cfg.seed)), mesh,
                                         rules)
    return trainer.prepare(cfg, model, mesh, rules)


def step_cost(cfg, mcfg, mesh, rules, batch) -> dict[str, float]:
    """Per chip FLOPs, HBM bytes and collective bytes of one train step at the config's depths, from the step
    compiled with unrolled stacks at depths (1, 1), (2, 1), (1, 2) (see the module docstring)."""
    from cogito_jax.models import layers
    from cogito_jax.train import trainer
    from cogito_jax.train.step import lm_loss

    def at(text_layers: int, audio_layers: int) -> dict[str, float]:
        m = dataclasses.replace(mcfg, text=dataclasses.replace(mcfg.text, num_layers=text_layers),
                                audio=dataclasses.replace(mcfg.audio, num_layers=audio_layers))
        p = prepared(cfg, m, mesh, rules)
        with layers.unrolled_stacks():
            return _cost_of(trainer.compile_train_step(p, batch, lm_loss, cfg.train.grad_accum))

    base, text2, audio2 = at(1, 1), at(2, 1), at(1, 2)
    lt, la = mcfg.text.num_layers, mcfg.audio.num_layers
    keys = sorted(set(base) | set(text2) | set(audio2))
    g = lambda c, k: c.get(k, 0.0)  # noqa: E731
    return {k: g(base, k) + (lt - 1) * (g(text2, k) - g(base, k)) + (la - 1) * (g(audio2, k) - g(base, k))
            for k in keys}


def roofline(cost: dict[str, float], generation: str, device_kind: str) -> dict[str, float]:
    """Seconds per step for compute, HBM and interconnect at the chip's spec figures, and their maximum."""
    from cogito_jax.models.flops import peak_flops

    peak = peak_flops(device_kind)
    times = {"compute": cost["flops"] / peak, "hbm": cost["bytes"] / (HBM_GBPS[generation] * 1e9),
             "ici": cost["comm"] / (ICI_GBPS[generation] * 1e9)}
    return {**times, "step": max(times.values()), "peak_flops": peak}


def main(argv: list[str] | None = None) -> int:
    a, overrides = _parse(argv)
    if a.topology.startswith("cpu:"):
        flag = f"--xla_force_host_platform_device_count={a.topology[4:]}"
        os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {flag}"
        os.environ.setdefault("JAX_PLATFORMS", "cpu")
    import jax

    from cogito_jax import cli, errors, log, sharding
    from cogito_jax.models import registry
    from cogito_jax.train import trainer
    from cogito_jax.train.step import lm_loss

    log.setup()
    try:
        cfg = cli.load_config(a.config, overrides)
        devices = devices_for(a.topology)
        cli.validate_devices(cfg, len(devices))
    except errors.ConfigError as e:
        print(f"aot_compile: error: {e}", file=sys.stderr)
        return 2
    hbm = a.hbm_gib if a.hbm_gib is not None else HBM_GIB[a.topology.split(":")[0]]
    mesh = sharding.make_mesh(cfg.mesh, devices)
    rules = sharding.resolve_rules(cfg.sharding.rules)
    mcfg = registry.config_for(cfg.model)
    print(f"topology {a.topology}: {len(devices)} x {devices[0].device_kind}, mesh {sharding.describe(mesh)}, "
          f"rules {cfg.sharding.rules}", flush=True)

    t0 = time.time()
    p = prepared(cfg, mcfg, mesh, rules)
    n_train = sum(x.size for x in jax.tree.leaves(p.state.params))
    n_all = n_train + sum(x.size for x in jax.tree.leaves(p.frozen))
    print(f"parameters: {n_all:,} ({n_train:,} trainable, train.trainable={cfg.train.trainable}); "
          f"abstract model and optimizer state in {time.time() - t0:.1f} s", flush=True)
    batch = abstract_batch(cfg, mcfg)
    print("batch: " + ", ".join(f"{k} {tuple(v.shape)} {v.dtype}" for k, v in batch.items()), flush=True)
    t0 = time.time()
    compiled = trainer.compile_train_step(p, batch, lm_loss, cfg.train.grad_accum)
    print(f"lowered and compiled the train step in {time.time() - t0:.1f} s", flush=True)
    if a.hlo_out:
        text = compiled.as_text()
        with open(a.hlo_out, "w") as f:
            f.write(text)
        print(f"HLO: {a.hlo_out} ({text.count('tpu_custom_call')} Pallas/Mosaic TPU kernel calls)", flush=True)

    mem = compiled.memory_analysis()
    if mem is None:
        print("aot_compile: error: this backend reports no memory analysis", file=sys.stderr)
        return 2
    gib = 2.0**30
    fields = ("argument", "output", "alias", "temp", "generated_code")
    sizes = {f: getattr(mem, f"{f}_size_in_bytes") / gib for f in fields}
    peak = sizes["argument"] + sizes["output"] - sizes["alias"] + sizes["temp"] + sizes["generated_code"]
    print("memory_analysis() per chip (GiB): " + ", ".join(f"{f} {v:.3f}" for f, v in sizes.items()))
    print(f"peak per chip = arguments + outputs - aliased (donated) + temporaries + code = {peak:.2f} GiB "
          f"of {hbm:g} GiB HBM ({100 * peak / hbm:.0f} %)")
    if peak > hbm:
        print(f"DOES NOT FIT: {peak:.2f} GiB > {hbm:g} GiB per chip", file=sys.stderr)
        return 1
    if a.cost:
        t0 = time.time()
        cost = step_cost(cfg, mcfg, mesh, rules, batch)
        gen = a.topology.split(":")[0]
        r = roofline(cost, gen, devices[0].device_kind)
        comm = ", ".join(f"{k[5:]} {v / 1e9:.4g}" for k, v in cost.items() if k.startswith("comm "))
        print(f"cost per chip per step (XLA cost analysis, layers unrolled; {time.time() - t0:.0f} s): "
              f"{cost['flops'] / 1e12:.4g} TFLOP, {cost['bytes'] / 1e9:.4g} GB HBM, "
              f"{cost['comm'] / 1e9:.4g} GB collectives ({comm})")
        from cogito_jax.models.flops import step_flops

        b, t = cfg.train.batch_size, cfg.data.max_len
        model = step_flops(mcfg, b * t, t, clips=b) / len(devices)
        print(f"model FLOPs per chip per step (the MFU count, {b} x {t} tokens): {model / 1e12:.4g} TFLOP; the "
              f"program does {cost['flops'] / model:.2f} x that")
        bound = max(("compute", "hbm", "ici"), key=lambda k: r[k])
        print(f"roofline step time ({gen} spec: {r['peak_flops'] / 1e12:.0f} TFLOP/s bf16, {HBM_GBPS[gen]:.0f} GB/s "
              f"HBM, {ICI_GBPS[gen]:.0f} GB/s ICI): compute {r['compute']:.4g} s, HBM {r['hbm']:.4g} s, ICI "
              f"{r['ici']:.4g} s -> {r['step']:.4g} s ({bound}-bound); MFU at that step time at best "
              f"{100 * model / r['peak_flops'] / r['step']:.1f} %")
    print("fits")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
