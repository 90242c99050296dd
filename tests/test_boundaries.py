"""Architecture rules: app/ never imports torch or funasr, nor benchmarks/; engine/ never imports the web stack; the
engine's API-side modules (everything outside engine/model/, engine/worker/ and engine/training/) never import
torch or funasr, even lazily; wire formats live in app/."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _imports(package: str) -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for path in (ROOT / package).rglob("*.py"):
        names: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names.add(node.module.split(".")[0])
        found[str(path.relative_to(ROOT))] = names
    return found


def test_app_never_imports_torch_or_funasr() -> None:
    for path, names in _imports("app").items():
        assert not names & {"torch", "funasr", "torchaudio"}, path


def test_app_never_imports_benchmarks() -> None:
    for path, names in _imports("app").items():
        assert "benchmarks" not in names, path


# The modules that run in the model host and the workers, where torch and funasr belong.
MODEL_SIDE = ("engine/model/", "engine/worker/", "engine/training/")


def test_api_side_engine_modules_never_import_torch_or_funasr() -> None:
    api_side = {path: names for path, names in _imports("engine").items() if not path.startswith(MODEL_SIDE)}
    assert "engine/service.py" in api_side and "engine/placement.py" in api_side
    for path, names in api_side.items():
        assert not names & {"torch", "funasr", "torchaudio", "onnxruntime"}, path


def test_engine_never_imports_the_web_stack() -> None:
    for path, names in _imports("engine").items():
        assert not names & {"fastapi", "starlette", "sse_starlette", "uvicorn"}, path


def test_the_api_process_loads_no_torch_at_runtime() -> None:
    """Importing and building the app pulls in the engine's API-side modules; none may drag torch in."""
    code = (
        "import sys, app.main, app.cli, app.demo, engine.service;"
        "app.main.create_app();"
        "bad = [m for m in ('torch', 'funasr') if m in sys.modules];"
        "print(bad); sys.exit(1 if bad else 0)"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
