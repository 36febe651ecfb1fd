"""Shared test set-up: 8 simulated CPU devices, Grain's absl flag workaround, common fixtures."""

import os

os.environ.setdefault("XLA_FLAGS", "")
if "xla_force_host_platform_device_count" not in os.environ["XLA_FLAGS"]:
    os.environ["XLA_FLAGS"] += " --xla_force_host_platform_device_count=8"
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# One persistent compilation cache for the suite and the processes it starts: the tests build the same tiny models
# again and again (in this process and in CLI subprocesses); a program compiled once is loaded after that.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR",
                      os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), ".jax_test_cache"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import pathlib  # noqa: E402

import pytest  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parents[1]


def bench_module(name: str):
    """``bench/<name>.py`` loaded as a module (the bench scripts are files, not a package)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"bench_{name}", REPO / "bench" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def pytest_configure(config):
    # Grain multi-worker loading reads absl flags; mark them parsed when not under absl.app.
    from absl import flags

    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()


@pytest.fixture(scope="session")
def repo_root() -> pathlib.Path:
    return REPO


@pytest.fixture(scope="session")
def cpu_devices():
    import jax

    devices = jax.devices()
    assert len(devices) == 8, f"expected 8 simulated CPU devices, got {len(devices)}"
    return devices
