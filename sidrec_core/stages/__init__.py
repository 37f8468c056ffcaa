"""One module per DVC stage, named exactly as in ``dvc.yaml`` and ``bench/<stage>.py``.

Each module exposes ``run(params) -> metrics``: the only glue between params, the library and
tracking. The shared preamble (configs, seed, threads, device, tracking run) is
:func:`~sidrec_core.stages.context.stage_context`.
"""

import importlib
from collections.abc import Callable
from typing import Any

StageFn = Callable[[dict[str, Any]], dict[str, Any]]


def stage_function(name: str) -> StageFn:
    """``run`` of ``sidrec_core.stages.<name>``; a one-line error for an unknown stage."""
    try:
        module = importlib.import_module(f"sidrec_core.stages.{name}")
    except ModuleNotFoundError as exc:
        if exc.name != f"sidrec_core.stages.{name}":
            raise
        raise KeyError(f"stage '{name}' has no module sidrec_core/stages/{name}.py") from exc
    return module.run


def section_configs() -> dict[str, type]:
    """Every params section -> its frozen config dataclass (defaults live in these classes)."""
    from sidrec_core.config import BaseConfig
    from sidrec_core.data.dataset import DataConfig
    from sidrec_core.data.embeddings import EmbedConfig
    from sidrec_core.etegrec.collab import CollabConfig
    from sidrec_core.etegrec.config import ETEGRecConfig
    from sidrec_core.evaluate import EvalConfig
    from sidrec_core.models.beam import DecodingConfig
    from sidrec_core.models.sasrec import SASRecConfig
    from sidrec_core.models.sidlm import SIDLMConfig
    from sidrec_core.rl.grpo import RLConfig
    from sidrec_core.rpg.model import RPGConfig
    from sidrec_core.sid.config import SIDConfig
    from sidrec_core.stages.report import ReportConfig

    return {
        "base": BaseConfig,
        "data": DataConfig,
        "embed": EmbedConfig,
        "eval": EvalConfig,
        "sid": SIDConfig,
        "sidlm": SIDLMConfig,
        "decoding": DecodingConfig,
        "rl": RLConfig,
        "sasrec": SASRecConfig,
        "report": ReportConfig,
        "etegrec": ETEGRecConfig,
        "collab": CollabConfig,
        "rpg": RPGConfig,
    }


def resolve_params(params: dict[str, Any]) -> dict[str, Any]:
    """``params`` with every section's defaults filled in (validated, strict on keys/types)."""
    from sidrec_core.config import build, check_section, to_dict

    configs = section_configs()
    for key in params:
        check_section(key, "params")
    return {name: to_dict(build(cls, params.get(name), name)) for name, cls in configs.items()}
