"""The package's layering, as pyproject.toml states it: import-linter contracts, and app.py's one door.

Each package imports only the layers below it, nothing in mmbm imports gradio, the
pipeline runs on requirements.txt alone, and app.py and mmbm.demo.views reach
the package only through mmbm.pipeline (docs/architecture.md draws the picture).
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
APP_MAY_IMPORT = {"mmbm.pipeline", "mmbm.demo", "mmbm.demo.views"}


def mmbm_imports(path: Path) -> set[str]:
    """Every mmbm module a file imports, at any depth of its code."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found |= {f"{node.module}.{alias.name}" for alias in node.names if node.module == "mmbm"}
    return {name for name in found if name == "mmbm" or name.startswith("mmbm.")}


def test_the_import_contracts_in_pyproject_hold() -> None:
    # A child process, as `make lint` runs it: in this one, import-linter's logging set-up would
    # silence every logger the later tests read through caplog.
    command = [str(Path(sys.executable).with_name("lint-imports")), "--no-cache", "--config", "pyproject.toml"]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-1000:]


def test_app_imports_only_the_pipeline_and_the_demo_views() -> None:
    imported = mmbm_imports(REPO / "app.py")
    assert "mmbm.pipeline" in imported
    assert imported <= APP_MAY_IMPORT, sorted(imported - APP_MAY_IMPORT)
