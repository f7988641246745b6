"""One Spark command as the platform sees it: log context, lineage run, and tag metrics.

``observe`` wraps a command's preflight and run (``prodclf.cli``): it names the run id on the
log lines, emits the lineage START and then COMPLETE or FAIL, and after a tag run pushes its
metrics. Nothing here can fail the command: each channel logs one warning when it fails.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from prodclf.config import JobConfig, TagConfig
from prodclf.model.bundle import BundleMeta
from prodclf.observability import lineage, logs, metrics

log = logging.getLogger(__name__)


@dataclass
class Observation:
    """What the command tells ``observe``: the model bundle it used, its result."""

    cfg: JobConfig
    model: BundleMeta | None = None
    result: Any = None
    started: float = field(default_factory=time.monotonic)

    def preflight(self, check: Callable[[Any], Any]) -> Callable[[Any], Any]:
        """``check`` that also keeps the model bundle's metadata it returns (tag, evaluate)."""

        def checked(cfg: Any) -> Any:
            value = check(cfg)
            if isinstance(value, BundleMeta):
                self.model = value
            return value

        return checked


@contextmanager
def observe(cfg: JobConfig) -> Iterator[Observation]:
    """Around a command's preflight and run; re-raises what it raised."""
    obs = Observation(cfg)
    run_id = lineage.run_uuid(cfg) or logs.context().run_id or str(uuid.uuid4())
    # The log lines of a tag run carry prodclf's run id, the others the lineage run's.
    logs.set_context(cfg.command, cfg.run_id if isinstance(cfg, TagConfig) else run_id)
    run = lineage.start_run(cfg, run_id)
    # Nothing at INFO before the run: a refused command prints one line, its refusal.
    if run.enabled:
        log.debug("lineage: run %s of job %s", run_id, lineage.job_name(cfg.command))
    # Metrics are a tag run's (a dry run is none).
    library = cfg.commodity_library if isinstance(cfg, TagConfig) and not cfg.dry_run else None
    try:
        yield obs
    except BaseException as exc:
        run.fail(exc, obs.model)
        if library:
            metrics.push_tag_failure(library)
        raise
    duration = time.monotonic() - obs.started
    run.complete(obs.result, obs.model)
    if library and isinstance(obs.result, dict):
        metrics.push_tag_success(library, obs.result, duration)
    log.info("%s finished in %.1f s", cfg.command, duration)
