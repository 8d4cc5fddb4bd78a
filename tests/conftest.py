import pytest
import torch

import coopinterp as ci

torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_config() -> ci.RunConfig:
    return ci.preset("tiny")


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory, tiny_config) -> ci.Run:
    """One tiny training run shared by the whole session (read-only)."""
    return ci.train(tiny_config, tmp_path_factory.mktemp("runs") / "tiny", progress=False, device="cpu")
