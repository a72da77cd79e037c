"""Test-wide settings. The suite works on tiny tensors, where one intra-op thread is faster than several
(and immune to oversubscription when other processes share the cores)."""
import pytest
import torch

torch.set_num_threads(1)


@pytest.fixture(scope="session")
def paper_data_root(tmp_path_factory):
    """A data root holding every dataset of configs/paper/ in its real on-disk layout (tiny random images,
    written once per session; see paper_fixtures.py). Tests reading CIFAR-10 or CelebA from it also need
    ``paper_fixtures.accept_tiny_files(monkeypatch)``."""
    from paper_fixtures import write_paper_data
    return write_paper_data(tmp_path_factory.mktemp("paper") / "data")
