"""Session fixtures of the trainer tests, loaded with ``pytest_plugins = ("train_fixtures",)``."""

from pathlib import Path

import pytest
from train_support import write_image_folder


@pytest.fixture(scope="session")
def image_folder(tmp_path_factory) -> Path:
    return write_image_folder(tmp_path_factory.mktemp("images"))


@pytest.fixture(scope="session")
def jax_cache_dir(tmp_path_factory) -> Path:
    """A persistent compilation cache shared by the test subprocesses (they compile the same steps)."""
    return tmp_path_factory.mktemp("jax_cache")
