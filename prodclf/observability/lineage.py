"""OpenLineage run events of the Spark commands: START, then COMPLETE or FAIL.

Configured the standard way and read by the OpenLineage client itself: ``OPENLINEAGE_URL``
(with ``OPENLINEAGE_API_KEY``, ``OPENLINEAGE_ENDPOINT``), an ``openlineage.yml``
(``OPENLINEAGE_CONFIG``, else the working directory, else ``~/.openlineage/``) or
``OPENLINEAGE__TRANSPORT__*`` variables; ``OPENLINEAGE_DISABLED=true`` turns it off. With none
of them nothing is emitted and the client is not even imported. The job namespace is
``OPENLINEAGE_NAMESPACE`` (default ``prodclf``), the job ``prodclf.<command>``.

Lineage is a side channel: a transport that fails (or a bug here) logs one warning and turns
lineage off for the rest of the command; it never fails the job.
"""

from __future__ import annotations

import logging
import os
import traceback
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import prodclf
from prodclf.config import (
    EvaluateConfig,
    JobConfig,
    MigrateConfig,
    ReportConfig,
    TagConfig,
    TrainConfig,
    VacuumConfig,
)
from prodclf.storage.uris import normalize_location

if TYPE_CHECKING:
    from prodclf.model.bundle import BundleMeta

log = logging.getLogger(__name__)

NAMESPACE_ENV = "OPENLINEAGE_NAMESPACE"
DEFAULT_NAMESPACE = "prodclf"
#: ``producer`` of every event and facet.
PRODUCER = f"urn:prodclf:{prodclf.__version__}"
#: The commodity library's tables, as datasets ``<library>/<table>``.
LIBRARY_TABLES = ("tags_history", "tags_current", "runs")
#: Schemes whose dataset names are object keys (no leading slash) under ``scheme://bucket``.
_OBJECT_STORES = ("s3", "gs", "abfs", "abfss", "wasb", "wasbs")

#: A dataset's ``(namespace, name)``.
Dataset = tuple[str, str]


def job_name(command: str) -> str:
    return f"prodclf.{command}"


def config_file() -> str | None:
    """The ``openlineage.yml`` the client reads, searched where the client searches."""
    for path in (
        os.environ.get("OPENLINEAGE_CONFIG"),
        os.path.join(os.getcwd(), "openlineage.yml"),
        os.path.join(os.path.expanduser("~/.openlineage"), "openlineage.yml"),
    ):
        if path and os.path.isfile(path) and os.access(path, os.R_OK):
            return path
    return None


def configured() -> bool:
    """Whether the standard settings ask for events; without them no client is made."""
    env = os.environ
    if env.get("OPENLINEAGE_DISABLED", "").strip().lower() == "true":
        return False
    if env.get("OPENLINEAGE_URL") or any(k.startswith("OPENLINEAGE__TRANSPORT") for k in env):
        return True
    if config_file():
        return True
    if env.get("OPENLINEAGE_CONFIG"):
        log.warning(
            "OPENLINEAGE_CONFIG=%s is not a readable file: no lineage events",
            env["OPENLINEAGE_CONFIG"],
        )
    return False


def dataset(location: str, *parts: str) -> Dataset:
    """A location as OpenLineage names datasets: ``file`` and the absolute path,
    ``s3://bucket`` and the key (``hdfs://host:port`` and the path)."""
    uri = "/".join([normalize_location(location).rstrip("/"), *parts])
    split = urlsplit(uri)
    if split.scheme == "file":
        return "file", split.path
    if split.scheme and split.netloc:
        name = split.path.lstrip("/") if split.scheme in _OBJECT_STORES else split.path
        return f"{split.scheme}://{split.netloc}", name
    return "file", uri


def library_tables(location: str) -> list[Dataset]:
    return [dataset(location, table) for table in LIBRARY_TABLES]


def datasets(cfg: JobConfig) -> tuple[list[Dataset], list[Dataset]]:
    """A command's (inputs, outputs); a dry run (tag, vacuum without --apply) writes none."""
    if isinstance(cfg, TagConfig):
        outputs = [] if cfg.dry_run else library_tables(cfg.commodity_library)
        return [dataset(cfg.base_library)], outputs
    if isinstance(cfg, VacuumConfig):
        tables = library_tables(cfg.commodity_library)
        return tables, tables if cfg.apply else []
    if isinstance(cfg, MigrateConfig):
        tables = library_tables(cfg.commodity_library)
        # The first layout keeps run_date partitions at the library's root.
        return (tables if cfg.to == "iceberg" else [dataset(cfg.commodity_library)]), tables
    if isinstance(cfg, ReportConfig):
        return library_tables(cfg.commodity_library), []
    if isinstance(cfg, EvaluateConfig):
        inputs = [dataset(cfg.labels)]
        if cfg.model:
            inputs.append(dataset(cfg.model))
        if cfg.commodity_library:
            inputs.append(dataset(cfg.commodity_library, "tags_history"))
        return inputs, [dataset(cfg.out)]
    if isinstance(cfg, TrainConfig):
        inputs = [dataset(cfg.base_library), *([dataset(cfg.labels)] if cfg.labels else [])]
        return inputs, [dataset(cfg.model_out)]
    return [], []


def run_uuid(cfg: JobConfig) -> str | None:
    """tag: a uuid5 of the library and the run id, so that every retry of a run id reports
    to one lineage run; other commands: None (a fresh uuid4 per command)."""
    if isinstance(cfg, TagConfig):
        library = normalize_location(cfg.commodity_library).rstrip("/")
        return str(uuid.uuid5(uuid.NAMESPACE_URL, f"prodclf:tag:{library}/{cfg.run_id}"))
    return None


def make_client() -> Any | None:
    """An ``OpenLineageClient`` from the standard settings, or None when lineage is off."""
    if not configured():
        return None
    saved = dict(os.environ)
    try:
        from openlineage.client import OpenLineageClient

        return OpenLineageClient()
    except Exception as exc:
        log.warning("OpenLineage: no client from the configuration, no lineage events: %s", exc)
        return None
    finally:
        # The client copies OPENLINEAGE_URL into OPENLINEAGE__TRANSPORT__* variables of the
        # process; Spark's workers and later commands in this process must not inherit them.
        for key in set(os.environ) - set(saved):
            del os.environ[key]
        for key, value in saved.items():
            if os.environ.get(key) != value:
                os.environ[key] = value


@dataclass
class LineageRun:
    """One command's lineage run. ``client`` None: lineage is off and every call is a no-op."""

    cfg: JobConfig
    run_id: str
    client: Any = None
    namespace: str = DEFAULT_NAMESPACE
    broken: bool = False

    @property
    def enabled(self) -> bool:
        return self.client is not None and not self.broken

    def start(self, model: BundleMeta | None = None) -> None:
        self._emit("START", model)

    def complete(self, result: Any = None, model: BundleMeta | None = None) -> None:
        self._emit("COMPLETE", model, result=result)

    def fail(self, error: BaseException, model: BundleMeta | None = None) -> None:
        """FAIL with the error's message; ABORT when interrupted (not an ``Exception``)."""
        state = "FAIL" if isinstance(error, Exception) else "ABORT"
        self._emit(state, model, error=error)

    def _emit(
        self,
        state: str,
        model: BundleMeta | None,
        result: Any = None,
        error: BaseException | None = None,
    ) -> None:
        if not self.enabled:
            return
        try:
            event = build_event(self.cfg, self.run_id, self.namespace, state, model, result, error)
            self.client.emit(event)
        except Exception as exc:
            self.broken = True
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
            log.warning(
                "OpenLineage: the %s event of %s was not sent (%s: %s); no more lineage events "
                "from this command",
                state,
                job_name(self.cfg.command),
                type(exc).__name__,
                first,
            )


def start_run(cfg: JobConfig, run_id: str) -> LineageRun:
    """Make the client (when configured) and emit START."""
    namespace = os.environ.get(NAMESPACE_ENV, "").strip() or DEFAULT_NAMESPACE
    run = LineageRun(cfg, run_id, make_client(), namespace)
    run.start()
    return run


def build_event(
    cfg: JobConfig,
    run_id: str,
    namespace: str,
    state: str,
    model: BundleMeta | None = None,
    result: Any = None,
    error: BaseException | None = None,
) -> Any:
    """The ``RunEvent`` of one state of the command's run."""
    from openlineage.client.event_v2 import (
        InputDataset,
        Job,
        OutputDataset,
        Run,
        RunEvent,
        RunState,
    )
    from openlineage.client.facet_v2 import (
        error_message_run,
        job_type_job,
        nominal_time_run,
        output_statistics_output_dataset,
        processing_engine_run,
    )

    from prodclf.observability import facets

    run_facets: dict[str, Any] = {
        "prodclf_run": facets.ProdclfRunFacet(**_run_fields(cfg), producer=PRODUCER),
        "processing_engine": processing_engine_run.ProcessingEngineRunFacet(
            version=_spark_version(),
            name="spark",
            openlineageAdapterVersion=prodclf.__version__,
            producer=PRODUCER,
        ),
    }
    if isinstance(cfg, TagConfig):
        start = f"{cfg.run_date.isoformat()}T00:00:00Z"
        run_facets["nominalTime"] = nominal_time_run.NominalTimeRunFacet(start, producer=PRODUCER)
    if model is not None:
        uri = getattr(cfg, "model", None) or getattr(cfg, "model_out", None)
        run_facets["prodclf_model"] = facets.ProdclfModelRunFacet(
            name=model.model_name,
            version=model.model_version,
            bundleDigest=model.fingerprint,
            uri=normalize_location(uri) if uri else None,
            producer=PRODUCER,
        )
    stats = tag_stats(result) if isinstance(cfg, TagConfig) else None
    if stats is not None:
        run_facets["prodclf_tagStats"] = facets.ProdclfTagStatsRunFacet(**stats, producer=PRODUCER)
    if error is not None:
        trace = "".join(traceback.format_exception(type(error), error, error.__traceback__))
        run_facets["errorMessage"] = error_message_run.ErrorMessageRunFacet(
            message=str(error) or type(error).__name__,
            programmingLanguage="python",
            stackTrace=trace[-20000:],
            producer=PRODUCER,
        )
    rows = _output_rows(result) if stats is not None else {}

    def output(namespace: str, name: str) -> Any:
        table = name.rsplit("/", 1)[-1]
        statistics = output_statistics_output_dataset.OutputStatisticsOutputDatasetFacet
        written: dict[str, Any] = {}
        if table in rows:
            written["outputStatistics"] = statistics(rowCount=rows[table], producer=PRODUCER)
        return OutputDataset(namespace=namespace, name=name, outputFacets=written)

    inputs, outputs = datasets(cfg)
    return RunEvent(
        eventType=getattr(RunState, state),
        eventTime=datetime.now(timezone.utc).isoformat(timespec="milliseconds"),
        run=Run(runId=run_id, facets=run_facets),
        job=Job(
            namespace=namespace,
            name=job_name(cfg.command),
            facets={
                "jobType": job_type_job.JobTypeJobFacet(
                    processingType="BATCH", integration="PRODCLF", jobType="JOB", producer=PRODUCER
                )
            },
        ),
        inputs=[InputDataset(namespace=ns, name=name) for ns, name in inputs],
        outputs=[output(ns, name) for ns, name in outputs],
        producer=PRODUCER,
    )


def tag_stats(result: Any) -> dict[str, Any] | None:
    """A complete tag run's counts from the command's result (None for a dry run)."""
    if not isinstance(result, dict) or result.get("dry_run") or result.get("ok") is None:
        return None
    churn = result.get("churn") or {}
    return {
        "productsIn": int(result.get("products_in") or 0),
        "ok": int(result["ok"]),
        "errorRows": int(result.get("error_rows") or 0),
        "errors": {str(k): int(v) for k, v in (result.get("errors") or {}).items()},
        "needsReview": result.get("needs_review"),
        "imagesPerSecond": result.get("images_per_second"),
        "rowsWritten": result.get("rows_written"),
        "churnCompared": churn.get("compared"),
        "churnChanged": churn.get("changed"),
    }


def _output_rows(result: dict[str, Any]) -> dict[str, int]:
    """Rows the run wrote to each table it reports a count for."""
    rows = {"tags_history": result.get("rows_written"), "tags_current": result.get("current_rows")}
    return {table: int(n) for table, n in rows.items() if n is not None}


def _run_fields(cfg: JobConfig) -> dict[str, Any]:
    fields: dict[str, Any] = {"command": cfg.command, "prodclfVersion": prodclf.__version__}
    if isinstance(cfg, TagConfig):
        fields.update(
            runId=cfg.run_id,
            runDate=cfg.run_date.isoformat(),
            mode=cfg.mode,
            dryRun=cfg.dry_run,
        )
    library = getattr(cfg, "commodity_library", None)
    if library:
        fields["commodityLibrary"] = normalize_location(library)
    table = getattr(cfg, "library", None)
    if library and table is not None:
        fields["tableFormat"] = table.format
    return fields


def _spark_version() -> str:
    try:
        import pyspark

        return str(pyspark.__version__)
    except Exception:  # pragma: no cover - the driver always has pyspark
        return "unknown"
