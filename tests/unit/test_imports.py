"""Import direction: a client process stays light (no torch, no workers, no celery).

Each check runs in a fresh interpreter, because this test process has long imported everything.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
HEAVY = ("torch", "workers", "celery")


def _imported_after(statement: str, roots: tuple[str, ...] = HEAVY) -> list[str]:
    """Top-level packages among ``roots`` that ``statement`` leaves in ``sys.modules``."""
    code = (
        f"import sys\n{statement}\n"
        f"print(','.join(sorted({{m.split('.')[0] for m in sys.modules}} & {set(roots)!r})))"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                          timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    return [name for name in done.stdout.strip().split(",") if name]


def test_kernel_imports_without_the_client_side() -> None:
    loaded = _imported_after("import aidist, aidist.config, aidist.jobs, aidist.errors, "
                             "aidist.codec", (*HEAVY, "producers", "models", "db"))
    assert loaded == []


def test_client_does_not_import_workers_or_celery() -> None:
    loaded = _imported_after("import aidist, producers\nfrom aidist import Client")
    assert "workers" not in loaded
    assert "celery" not in loaded


def test_models_registry_does_not_import_torch() -> None:
    # DESIGN: "The registry never imports torch: a client validates submissions against it".
    # Importing models.registry runs models/__init__, which imports models.builtin.
    assert "torch" not in _imported_after("import models.registry")


def test_client_import_is_light() -> None:
    command = (
        "import sys, aidist, producers; from aidist import Client; "
        "assert 'torch' not in sys.modules and 'workers' not in sys.modules "
        "and 'celery' not in sys.modules, "
        "sorted(m for m in sys.modules if m.split('.')[0] in ('torch','workers','celery'))"
    )
    done = subprocess.run([sys.executable, "-c", command], cwd=REPO, capture_output=True,
                          text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
