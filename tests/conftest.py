"Shared fixtures: the tiny example dataset with its cache built once per test session."
import background
import pytest

from longcat_nb.caching import build_cache
from longcat_nb.config import load_config
from longcat_nb.tiny import make_example_dataset, tiny_checkpoint


@pytest.fixture(scope="session")
def example(tmp_path_factory):
    "config.json of the example dataset (2 T2V + 2 I2V clips, 64×64, 9 frames), its caches built. Tests must not modify it."
    root = tmp_path_factory.mktemp("example")
    path = make_example_dataset(root / "example", n_clips=2, checkpoint=tiny_checkpoint())
    build_cache(load_config(path), progress=False)
    return path


def pytest_sessionfinish(session):
    "Background commands no test waited for (a deselected test's) are killed, not left running."
    background.kill_unfinished()
