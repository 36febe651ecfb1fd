"""Print a run's resolved config and mesh: `python -m cogito_jax.show_config --config configs/tiny.py`."""

from absl import flags

from cogito_jax import cli, config as cfglib, sharding

cli.define_config_flag()
_OUT = flags.DEFINE_string("out", None, "Also write the resolved config to this JSON file.")


def main(cfg) -> int:
    import jax

    mesh = sharding.make_mesh(cfg.mesh)
    print(cfg.to_json_best_effort(indent=2, sort_keys=True))
    print(f"mesh: {sharding.describe(mesh)}; backend: {jax.default_backend()}; processes: {jax.process_count()}")
    if _OUT.value:
        cfglib.dump(cfg, _OUT.value)
    return 0


if __name__ == "__main__":
    cli.run_main(main)
