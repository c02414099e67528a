"""The HTTP app for a run (minimal: the exploration page only; the /v1 API joins it on merge).

Endpoints find the loaded run on `app.state.run` and hold `app.state.model_lock` around every
model call: FastAPI runs plain endpoints in worker threads, and one model serves them all.
"""

from __future__ import annotations

import threading
from pathlib import Path

from fastapi import FastAPI

from gptlab.runs import load_run
from gptlab.serve.explore import router as explore_router


def create_app(run_dir: str | Path) -> FastAPI:
    """An app serving the run in run_dir (loaded now, on the CPU: a bad run fails before serving)."""
    app = FastAPI(title="gptlab", docs_url=None, redoc_url=None)
    app.state.run = load_run(run_dir)
    app.state.model_lock = threading.Lock()
    app.include_router(explore_router)
    return app
