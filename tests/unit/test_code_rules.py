"""Lint, types, and the import rules that keep the data path one-way."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PACKAGE = REPO / "serving"


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def test_ruff_is_clean():
    ruff = shutil.which("ruff", path=str(Path(sys.executable).parent))
    if ruff is None:
        pytest.skip("ruff not installed")
    folders = [name for name in ("serving", "tests", "model_artifacts", "loadtest", "docker") if (REPO / name).is_dir()]
    result = subprocess.run([ruff, "check", *folders], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_mypy_is_clean():
    result = subprocess.run([sys.executable, "-m", "mypy", "serving"], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("module", ["classifier.py", "results.py", "corpus.py", "tools/evaluation.py", "errors.py"])
def test_framework_free_modules(module):
    assert not imported_modules(PACKAGE / module) & {"flask", "torch", "gunicorn", "transformers"}


def test_the_folders_show_which_process_runs_what():
    """The data path runs one way: the engine never imports the HTTP side, the front end never the engine's
    batching or device code, and neither imports the offline tools; the supervisor needs no model runtime."""
    def imports(path: Path) -> set[str]:
        tree = ast.parse(path.read_text())
        found = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module:
                found.add(node.module)
            elif isinstance(node, ast.Import):
                found.update(alias.name for alias in node.names)
        return found

    for path in (PACKAGE / "engine").glob("*.py"):
        bad = {m for m in imports(path) if m.startswith(("serving.frontend", "serving.tools", "flask", "uvicorn"))}
        assert not bad, f"{path.name} imports {bad}"
    for path in (PACKAGE / "frontend").glob("*.py"):
        bad = {m for m in imports(path) if m.startswith(("serving.engine.batching", "serving.engine.device",
                                                         "serving.engine.precision", "serving.tools", "torch.cuda"))}
        assert not bad, f"{path.name} imports {bad}"
    supervisor = imports(PACKAGE / "supervisor.py")
    assert not {m for m in supervisor if m.startswith(("torch", "serving.models", "serving.frontend"))}, supervisor


@pytest.mark.parametrize("family", ["roberta", "rnn"])
def test_a_front_end_tokenises_without_torch(demo_dir, family):
    """A front end (one per CPU core) loads its folder's text side without importing torch or transformers:
    each import cost seconds of start and hundreds of MB per process, for nothing a front end uses."""
    code = (
        "import sys; from pathlib import Path; from serving.config import Settings; "
        "from serving.frontend.asgi import load_text_side; "
        f"text = load_text_side(Path({str(demo_dir / family)!r}), Settings()); "
        "assert text.encode(['hello, world'])[0].length > 0; "
        "print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]", result.stdout
