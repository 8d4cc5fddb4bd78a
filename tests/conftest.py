import importlib
import os
import pkgutil

import jaxtyping
import pytest
import torch

# Shape annotations are checked at run time in the whole suite: jaxtyping's import hook wraps every annotated
# coopinterp function in beartype, so a tensor of the wrong shape or dtype fails the test that passes it. Every
# module is imported here, inside the hook, since the package imports some of them lazily.
with jaxtyping.install_import_hook("coopinterp", "beartype.beartype"):
    import coopinterp as ci

    for module in pkgutil.walk_packages(ci.__path__, "coopinterp."):
        if not module.name.endswith("__main__"):  # that one runs the CLI
            importlib.import_module(module.name)

torch.set_num_threads(1)
# analyze() spreads checkpoints over the cores by default; tests that want worker processes ask for them, the rest
# stay in this process (seconds of start-up per worker, and monkeypatches reach only this process)
os.environ["COOPINTERP_WORKERS"] = "1"


@pytest.fixture(scope="session")
def tiny_config() -> ci.RunConfig:
    return ci.preset("tiny")


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory, tiny_config) -> ci.Run:
    """One tiny training run shared by the whole session (read-only)."""
    return ci.train(tiny_config, tmp_path_factory.mktemp("runs") / "tiny", progress=False, device="cpu")
