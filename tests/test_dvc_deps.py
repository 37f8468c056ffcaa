"""Every stage's ``dvc.yaml`` deps name the library code it runs: a module its command imports
(at module level, transitively) that changes what it writes must be a dep, or DVC would keep an
output the changed code no longer produces."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from sidrec_core.studies.pipeline import inside, load_pipeline

ROOT = Path(__file__).resolve().parent.parent
# they parse the command line, log, track and report progress: they change no output byte
NEUTRAL = {
    f"sidrec_core/{name}.py"
    for name in ("__init__", "cli", "tracking", "lifecycle", "perf", "progress")
}


def _module_file(name: str) -> Path | None:
    path = ROOT / Path(*name.split("."))
    for candidate in (path / "__init__.py", path.with_suffix(".py")):
        if candidate.exists():
            return candidate
    return None


def _imports(path: Path) -> set[str]:
    """The sidrec_core modules ``path`` imports at module level (function-level imports run
    only where that function is called, and are the caller's dep)."""
    package = path.relative_to(ROOT).with_suffix("").parts[:-1]
    found = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            parts = [*package[: len(package) - node.level + 1]] if node.level else []
            base = ".".join(parts + ([node.module] if node.module else []))
            found |= {base} | {f"{base}.{a.name}" for a in node.names}
    return {m for m in found if m.split(".")[0] == "sidrec_core"}


def _closure(script: Path) -> set[str]:
    seen: set[Path] = set()
    todo = [script]
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        for module in _imports(path):
            parts = module.split(".")
            todo += [
                f for i in range(1, len(parts) + 1) if (f := _module_file(".".join(parts[:i])))
            ]
    return {str(p.relative_to(ROOT)) for p in seen}


@pytest.mark.parametrize("name", list(load_pipeline()))
def test_a_stage_lists_the_library_modules_its_command_imports(name):
    stage = load_pipeline()[name]
    files = _closure(ROOT / "bench" / f"{name}.py")
    code = {f for f in files if f.startswith("sidrec_core/") and f not in NEUTRAL}
    missing = sorted(f for f in code if not any(inside(f, d) for d in stage.deps))
    assert not missing, f"dvc.yaml stage {name}: add to deps {missing}"
