"""What an operator needs to see at start: where the engine listens, its directories, the flows it
found (with each one's problems) and its stores. Never a secret: store params are shown by name."""

from __future__ import annotations

import logging

from flowengine import version
from flowengine.persistence import redacted
from flowengine.runtime.catalog import LIBRARY_DIR
from flowengine.runtime.engine import Engine

log = logging.getLogger("flowengine")
SHOWN_PARAMS = ("endpoint", "bucket", "region", "prefix", "secure")  # never access_key / secret_key


async def log_overview(engine: Engine) -> None:
    config = engine.config
    log.info("flowengine %s on http://%s:%d", version(), config.host, config.port)
    log.info("data dir: %s", config.data_dir)
    log.info("database: %s", redacted(config.database_url))
    log.info("stores: default (local, in the data dir)%s", "".join(
        f", {s.name} ({s.type}: {', '.join(f'{k}={s.params[k]}' for k in SHOWN_PARAMS if k in s.params)})"
        for s in config.stores
    ))  # fmt: skip
    if not config.flows_path.is_dir():
        log.warning("flows dir: %s does not exist: only inline flows can run", config.flows_dir)
        return
    try:
        entries = await engine.catalog.entries()
    except Exception:
        log.exception("flows dir: %s: checking the flow files failed", config.flows_dir)
        return
    names = ", ".join(entry.name for entry in entries) or "none"
    log.info("flows dir: %s: %d flow(s): %s", config.flows_dir, len(entries), names)
    library = await engine.catalog.library()
    log.info("task library: %d task(s): %s", len(library.tasks), ", ".join(sorted(library.tasks)) or "none")
    for file in library.files:
        for problem in file.problems:
            log.warning("  %s", problem.line(f"{LIBRARY_DIR}/{file.path.name}"))
    for entry in entries:
        if entry.problems:
            log.warning("flow %s (%s) cannot run, %d problem(s):", entry.name, entry.path.name, len(entry.problems))
        for problem in entry.problems:
            log.warning("  %s", problem.line(entry.path.name))
