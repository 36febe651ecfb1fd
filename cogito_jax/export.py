"""Export a trained run for transformers: `python -m cogito_jax.export --config CONFIG.py --workdir RUN --out DIR`.

Reads the newest intact checkpoint of the run trained with ``CONFIG.py`` (and the same ``--config.a.b=v``
overrides) in ``RUN`` and writes ``DIR``:

* a LoRA run (``train.trainable="lora"``): ``DIR/adapter``, a PEFT LoRA adapter (``adapter_config.json`` +
  ``adapter_model.safetensors``; MoE experts as PEFT ``target_parameters``) for ``peft.PeftModel.from_pretrained``.
  Its base is ``model.checkpoint`` when the run started from one; a run initialised from its config has a base
  that exists nowhere else, so it is written too, as ``DIR/base`` (HF safetensors, config.json and the run's
  tokenizer), and the adapter names it.
* any other run: ``DIR/model``, the trained model as an HF checkpoint folder with the run's tokenizer.

The files are written into a temporary folder beside ``DIR`` and moved into place at the end, so an
interrupted export leaves no ``DIR`` that looks finished. ``DIR`` must not exist yet. Bad input exits with
code 2 and one line on stderr.
"""

from __future__ import annotations

import pathlib
import shutil
from typing import Any

from absl import flags

from cogito_jax import cli, errors
from cogito_jax.convert import save_hf
from cogito_jax.log import logger as log
from cogito_jax.models.lora import LoRA, save_peft
from cogito_jax.train import trained

_WORKDIR = flags.DEFINE_string("workdir", None, "The run's folder (checkpoints/, tokenizer/).")
_OUT = flags.DEFINE_string("out", None, "New output folder.")
cli.define_config_flag()


def export(cfg: Any, workdir: str | pathlib.Path, out: str | pathlib.Path) -> pathlib.Path:
    """Writes the export of the run in ``workdir`` (trained with ``cfg``) to the new folder ``out`` (see the
    module docstring) and returns it."""
    workdir, out = pathlib.Path(workdir), pathlib.Path(out)
    if not (workdir / "checkpoints").is_dir():
        raise errors.ConfigError(f"--workdir {str(workdir)!r} has no checkpoints/ folder; give the workdir of a "
                                 "run trained with python -m cogito_jax.train")
    if out.exists():
        raise errors.ConfigError(f"--out {str(out)!r} already exists; choose a new folder")
    errors.writable_dir(out.parent if str(out.parent) else ".", "--out's parent folder")
    model, tok, mcfg = trained.load(cfg, workdir, merge=False)
    tmp = out.with_name(f".{out.name}.partial")
    shutil.rmtree(tmp, ignore_errors=True)
    if isinstance(model, LoRA):
        base = cfg.model.get("checkpoint") or ""
        if not base:
            save_hf(model.base, mcfg, tmp / "base")
            tok.save_pretrained(str(tmp / "base"))
        save_peft(model, mcfg, tmp / "adapter", base_model_name_or_path=base or str(out.resolve() / "base"))
    else:
        save_hf(model, mcfg, tmp / "model")
        tok.save_pretrained(str(tmp / "model"))
    tmp.rename(out)
    return out


def main(cfg: Any) -> int:
    if not _WORKDIR.value:
        errors.usage_error("--workdir is required (the folder of a run trained with python -m cogito_jax.train)")
    if not _OUT.value:
        errors.usage_error("--out is required (a new folder)")
    out = export(cfg, _WORKDIR.value, _OUT.value)
    log.info("wrote %s: %s", out, ", ".join(sorted(p.name for p in out.iterdir())))
    return 0


if __name__ == "__main__":
    cli.run_main(main, uses_devices=False)
