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
