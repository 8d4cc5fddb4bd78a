"""coopinterp: watch in-context learning and in-weights circuits form, compete and cooperate across training."""
__version__ = "0.1.0"

from .checkpoints import Run, load_run  # noqa: E402
from .config import ModelConfig, RunConfig, TaskConfig, TrainConfig, preset  # noqa: E402
from .errors import CheckpointError, ConfigError, CoopError  # noqa: E402
from .model import CoopModel  # noqa: E402
from .task import EVALUATORS, Batch, make_batch  # noqa: E402
from .train import train  # noqa: E402
from .analysis import analyze  # noqa: E402
from .legacy import import_tl_checkpoints  # noqa: E402
from .minimal import run_minimal, summarize_minimal  # noqa: E402
from .multiseed import train_seeds  # noqa: E402

__all__ = ["Run", "load_run", "RunConfig", "TaskConfig", "ModelConfig", "TrainConfig", "preset", "CoopError",
           "ConfigError", "CheckpointError", "CoopModel", "EVALUATORS", "Batch", "make_batch", "train",
           "analyze", "import_tl_checkpoints", "run_minimal", "summarize_minimal", "train_seeds"]
