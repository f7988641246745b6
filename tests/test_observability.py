"""What a platform watches prodclf by, through real commands and real receivers.

* OpenLineage: events POSTed by the real client to an HTTP receiver on loopback, checked
  against a transcription of the OpenLineage spec's JSON Schema (``SPEC``, below) and
  prodclf's own facet schema (``FACETS_SCHEMA``).
* Metrics: a real Pushgateway (Debian's ``prometheus-pushgateway``) on a free loopback port,
  read back from its ``/metrics``.
* Logs: ``--log-format json`` lines of a real run, parsed one by one.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import date
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import jsonschema
import pandas as pd
import pytest
from conftest import COLORS, png_bytes
from jobproc import job_env, running_job, write_config
from prometheus_client.parser import text_string_to_metric_families
from pyspark.sql import SparkSession
from referencing import Registry, Resource
from support.library import commit, staged

from prodclf.cli import main
from prodclf.config import TagConfig
from prodclf.errors import ErrorCode
from prodclf.library.table import CommodityLibrary
from prodclf.model.bundle import read_meta
from prodclf.observability import lineage, logs, metrics
from prodclf.observability.facets import FACETS_SCHEMA
from prodclf.observability.logs import LOG_FORMAT_ENV

# --- the OpenLineage JSON Schema --------------------------------------------------------------
#
# The spec's own OpenLineage.json (2-0-2, the version openlineage-python 1.52.0 declares in
# every event's schemaURL) is not in any PyPI or npm package: the client's wheel and sdist,
# openlineage-integration-common and the Airflow provider ship none of it. So this is a
# transcription of what it requires of a RunEvent (and of the standard facets prodclf sends),
# keyed by the URLs the events name; a facet whose schema is registered here is validated
# against it, a facet added by the client's own configuration (tags, ...) only as a facet.

_OL = "https://openlineage.io/spec/2-0-2/OpenLineage.json"
_BASE_FACET = {
    "type": "object",
    "properties": {
        "_producer": {"type": "string", "format": "uri"},
        "_schemaURL": {"type": "string", "format": "uri"},
    },
    "additionalProperties": True,
    "required": ["_producer", "_schemaURL"],
}


def _facets(ref: str) -> dict[str, Any]:
    return {"type": "object", "additionalProperties": {"$ref": f"#/$defs/{ref}"}}


SPEC: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "$id": _OL,
    "$defs": {
        "BaseEvent": {
            "type": "object",
            "properties": {
                "eventTime": {"type": "string", "format": "date-time"},
                "producer": {"type": "string", "format": "uri"},
                "schemaURL": {"type": "string", "format": "uri"},
            },
            "required": ["eventTime", "producer", "schemaURL"],
        },
        "BaseFacet": _BASE_FACET,
        "RunFacet": {"allOf": [{"$ref": "#/$defs/BaseFacet"}]},
        "JobFacet": {
            "allOf": [
                {"$ref": "#/$defs/BaseFacet"},
                {"type": "object", "properties": {"_deleted": {"type": "boolean"}}},
            ]
        },
        "DatasetFacet": {
            "allOf": [
                {"$ref": "#/$defs/BaseFacet"},
                {"type": "object", "properties": {"_deleted": {"type": "boolean"}}},
            ]
        },
        "InputDatasetFacet": {"allOf": [{"$ref": "#/$defs/BaseFacet"}]},
        "OutputDatasetFacet": {"allOf": [{"$ref": "#/$defs/BaseFacet"}]},
        "Run": {
            "type": "object",
            "properties": {
                "runId": {"type": "string", "format": "uuid"},
                "facets": _facets("RunFacet"),
            },
            "required": ["runId"],
        },
        "Job": {
            "type": "object",
            "properties": {
                "namespace": {"type": "string"},
                "name": {"type": "string"},
                "facets": _facets("JobFacet"),
            },
            "required": ["namespace", "name"],
        },
        "Dataset": {
            "type": "object",
            "properties": {
                "namespace": {"type": "string"},
                "name": {"type": "string"},
                "facets": _facets("DatasetFacet"),
            },
            "required": ["namespace", "name"],
        },
        "InputDataset": {
            "allOf": [
                {"$ref": "#/$defs/Dataset"},
                {"type": "object", "properties": {"inputFacets": _facets("InputDatasetFacet")}},
            ]
        },
        "OutputDataset": {
            "allOf": [
                {"$ref": "#/$defs/Dataset"},
                {"type": "object", "properties": {"outputFacets": _facets("OutputDatasetFacet")}},
            ]
        },
        "RunEvent": {
            "allOf": [
                {"$ref": "#/$defs/BaseEvent"},
                {
                    "type": "object",
                    "properties": {
                        "eventType": {
                            "type": "string",
                            "enum": ["START", "RUNNING", "COMPLETE", "ABORT", "FAIL", "OTHER"],
                        },
                        "run": {"$ref": "#/$defs/Run"},
                        "job": {"$ref": "#/$defs/Job"},
                        "inputs": {"type": "array", "items": {"$ref": "#/$defs/InputDataset"}},
                        "outputs": {"type": "array", "items": {"$ref": "#/$defs/OutputDataset"}},
                    },
                    "required": ["run", "job"],
                },
            ]
        },
    },
}


def _standard_facet(url: str, kind: str, properties: dict[str, Any], required: list[str]) -> Any:
    name = url.rsplit("/", 1)[-1].removesuffix(".json")
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": url,
        "$defs": {
            name: {
                "allOf": [
                    {"$ref": f"{_OL}#/$defs/{kind}"},
                    {"type": "object", "properties": properties, "required": required},
                ],
                "type": "object",
            }
        },
    }


_STR = {"type": "string"}
_F = "https://openlineage.io/spec/facets"
STANDARD_FACETS = [
    _standard_facet(
        f"{_F}/1-0-1/ErrorMessageRunFacet.json",
        "RunFacet",
        {"message": _STR, "programmingLanguage": _STR, "stackTrace": _STR},
        ["message", "programmingLanguage"],
    ),
    _standard_facet(
        f"{_F}/1-0-1/NominalTimeRunFacet.json",
        "RunFacet",
        {
            "nominalStartTime": {"type": "string", "format": "date-time"},
            "nominalEndTime": {"type": "string", "format": "date-time"},
        },
        ["nominalStartTime"],
    ),
    _standard_facet(
        f"{_F}/1-1-1/ProcessingEngineRunFacet.json",
        "RunFacet",
        {"version": _STR, "name": _STR, "openlineageAdapterVersion": _STR},
        ["version"],
    ),
    _standard_facet(
        f"{_F}/2-0-4/JobTypeJobFacet.json",
        "JobFacet",
        {"processingType": _STR, "integration": _STR, "jobType": _STR},
        ["processingType", "integration"],
    ),
    _standard_facet(
        f"{_F}/1-0-2/OutputStatisticsOutputDatasetFacet.json",
        "OutputDatasetFacet",
        {"rowCount": {"type": "integer"}, "size": {"type": "integer"}},
        [],
    ),
]

REGISTRY: Registry = Registry().with_resources(
    (schema["$id"], Resource.from_contents(schema))
    for schema in [SPEC, FACETS_SCHEMA, *STANDARD_FACETS]
)


def validate(event: dict[str, Any]) -> None:
    """The event against the spec's RunEvent, and each of prodclf's facets against its own
    schema (by its ``_schemaURL``)."""

    def check(instance: Any, ref: str) -> None:
        validator = jsonschema.Draft202012Validator(
            {"$ref": ref},
            registry=REGISTRY,
            format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER,
        )
        validator.validate(instance)

    check(event, f"{_OL}#/$defs/RunEvent")
    facets = [
        *event["run"].get("facets", {}).values(),
        *event["job"].get("facets", {}).values(),
        *(f for d in event.get("outputs", []) for f in d.get("outputFacets", {}).values()),
    ]
    for facet in facets:
        if facet["_producer"] != lineage.PRODUCER:
            continue  # the client's own (tags, environment variables)
        url = facet["_schemaURL"]
        assert REGISTRY.get(url.split("#")[0]) is not None, f"no schema for {url}"
        check(facet, url)


# --- an OpenLineage receiver ------------------------------------------------------------------


@dataclass
class Receiver:
    url: str
    events: list[dict[str, Any]] = field(default_factory=list)
    auth: list[str | None] = field(default_factory=list)

    def of(self, job: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e["job"]["name"] == job]


@contextlib.contextmanager
def lineage_backend() -> Iterator[Receiver]:
    """An HTTP server on loopback taking what a lineage backend takes: POST /api/v1/lineage."""
    got = Receiver(url="")

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            if self.path != "/api/v1/lineage":
                self.send_response(404)
            else:
                got.events.append(json.loads(body))
                got.auth.append(self.headers.get("Authorization"))
                self.send_response(201)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *_: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    got.url = f"http://127.0.0.1:{server.server_port}"
    try:
        yield got
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with lineage_backend() as got:
        yield got


@pytest.fixture
def lineage_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> pytest.MonkeyPatch:
    """No OpenLineage settings from this machine: no variables, no openlineage.yml found."""
    for key in list(os.environ):
        if key.startswith("OPENLINEAGE") or key == metrics.PUSHGATEWAY_ENV:
            monkeypatch.delenv(key)
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(tmp_path)
    return monkeypatch


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def library_tables(lib: Path) -> list[dict[str, str]]:
    return [{"namespace": "file", "name": f"{lib}/{t}"} for t in lineage.LIBRARY_TABLES]


def ids(datasets: list[dict[str, Any]]) -> list[dict[str, str]]:
    return [{"namespace": d["namespace"], "name": d["name"]} for d in datasets]


# --- lineage ----------------------------------------------------------------------------------


@pytest.mark.spark4
@pytest.mark.slow
def test_commands_report_start_then_complete_or_fail_to_the_lineage_backend(
    spark: SparkSession, tmp_path: Path, lineage_env: pytest.MonkeyPatch, receiver: Receiver
) -> None:
    """vacuum (in-process, on the tests' session) on a one-run library, then a report of a
    run that does not exist: START + COMPLETE, then START + FAIL with its error."""
    lib = tmp_path / "lib"
    library = CommodityLibrary(str(lib))
    commit(spark, library, staged(spark, library, "r1", {"p1": "red", "p2": None}), 2)
    lineage_env.setenv("OPENLINEAGE_URL", receiver.url)
    lineage_env.setenv("OPENLINEAGE_API_KEY", "lineage-key")
    arrow = "spark.sql.execution.arrow.maxRecordsPerBatch"
    batch = spark.conf.get(arrow)
    try:
        assert main(["vacuum", "--commodity-library", str(lib), "--keep-days", "9", "--apply"]) == 0
        lineage_env.setenv("OPENLINEAGE_NAMESPACE", "team-catalog")
        assert main(["report", "no-such-run", "--commodity-library", str(lib)]) == 2
    finally:
        spark.conf.set(arrow, batch)

    assert not [k for k in os.environ if k.startswith("OPENLINEAGE__")], "client env leaked"
    assert receiver.auth == ["Bearer lineage-key"] * 4
    for event in receiver.events:
        validate(event)
    vacuum = receiver.of("prodclf.vacuum")
    assert [e["eventType"] for e in vacuum] == ["START", "COMPLETE"]
    assert {e["job"]["namespace"] for e in vacuum} == {"prodclf"}
    run_ids = {e["run"]["runId"] for e in vacuum}
    assert len(run_ids) == 1 and uuid.UUID(run_ids.pop()).version == 4
    for event in vacuum:
        assert ids(event["inputs"]) == library_tables(lib) == ids(event["outputs"])
        assert event["run"]["facets"]["prodclf_run"]["command"] == "vacuum"
        assert event["run"]["facets"]["prodclf_run"]["commodityLibrary"] == f"file://{lib}"
        assert event["job"]["facets"]["jobType"]["processingType"] == "BATCH"

    report = receiver.of("prodclf.report")
    assert [e["eventType"] for e in report] == ["START", "FAIL"]
    assert {e["job"]["namespace"] for e in report} == {"team-catalog"}
    assert report[0]["run"]["runId"] == report[1]["run"]["runId"]
    assert ids(report[0]["inputs"]) == library_tables(lib) and report[0]["outputs"] == []
    error = report[1]["run"]["facets"]["errorMessage"]
    assert (
        error["message"] == (f"run no-such-run: no manifest in {lib}; not a complete run")
        and error["programmingLanguage"] == "python"
    )
    assert "InputError" in error["stackTrace"]
    assert "errorMessage" not in report[0]["run"]["facets"]


@pytest.mark.spark4
def test_a_tag_run_is_one_lineage_run_per_run_id_with_its_model_and_counts(
    tmp_path: Path, color_bundle: Path
) -> None:
    """The events of a tag run, built as the command builds them (no Spark): retries of a run
    id share its lineage run id, the model and the run's counts ride along as facets."""
    from openlineage.client.serde import Serde

    def cfg(run_id: str, library: str = str(tmp_path / "lib")) -> TagConfig:
        return TagConfig(
            base_library="s3://catalog/base",
            commodity_library=library,
            model=str(color_bundle),
            run_date=date(2026, 11, 20),
            run_id=run_id,
        )

    first = lineage.run_uuid(cfg("r1"))
    assert first is not None and uuid.UUID(first).version == 5
    assert lineage.run_uuid(cfg("r1")) == first
    assert lineage.run_uuid(cfg("r2")) != first
    assert lineage.run_uuid(cfg("r1", str(tmp_path / "other"))) != first

    meta = read_meta(str(color_bundle))
    result = {
        "run_id": "r1",
        "products_in": 5,
        "ok": 3,
        "error_rows": 2,
        "errors": {"not_found": 1, "undecodable_image": 1},
        "needs_review": 1,
        "images_per_second": 12.5,
        "rows_written": 5,
        "current_rows": 5,
        "churn": {"compared": 4, "changed": 1},
    }
    start = lineage.build_event(cfg("r1"), first, "prodclf", "START", meta)
    done = lineage.build_event(cfg("r1"), first, "prodclf", "COMPLETE", meta, result)
    events = [json.loads(Serde.to_json(e)) for e in (start, done)]
    for event in events:
        validate(event)
        assert event["job"] == {**event["job"], "namespace": "prodclf", "name": "prodclf.tag"}
        assert ids(event["inputs"]) == [{"namespace": "s3://catalog", "name": "base"}]
        assert ids(event["outputs"]) == library_tables(tmp_path / "lib")
        facets = event["run"]["facets"]
        assert facets["prodclf_run"]["runId"] == "r1"
        assert facets["prodclf_model"] == {
            **facets["prodclf_model"],
            "name": "color",
            "version": "1",
            "bundleDigest": meta.fingerprint,
        }
    stats = events[1]["run"]["facets"]["prodclf_tagStats"]
    assert stats == {
        **stats,
        "productsIn": 5,
        "ok": 3,
        "errorRows": 2,
        "errors": {"not_found": 1, "undecodable_image": 1},
        "needsReview": 1,
        "imagesPerSecond": 12.5,
        "churnCompared": 4,
        "churnChanged": 1,
    }
    assert "prodclf_tagStats" not in events[0]["run"]["facets"]
    written = events[1]["outputs"][0]["outputFacets"]["outputStatistics"]
    assert written["rowCount"] == 5


@pytest.mark.spark4
def test_without_configuration_no_client_is_made(
    lineage_env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    assert not lineage.configured() and lineage.make_client() is None
    run = lineage.start_run(TagConfig("b", "c", "m", date(2026, 11, 20), "r1"), str(uuid.uuid4()))
    assert not run.enabled
    config = tmp_path / "ol.yml"
    config.write_text("transport:\n  type: console\n")
    lineage_env.setenv("OPENLINEAGE_CONFIG", str(config))
    assert lineage.configured()
    lineage_env.setenv("OPENLINEAGE_DISABLED", "true")
    assert not lineage.configured()


@pytest.mark.spark4
def test_a_failing_lineage_transport_warns_once_and_never_fails_the_command(
    lineage_env: pytest.MonkeyPatch, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """An openlineage.yml (the standard file) pointing at a closed port, without retries."""
    config = tmp_path / "openlineage.yml"
    config.write_text(
        "transport:\n  type: http\n"
        f"  url: http://127.0.0.1:{free_port()}\n  timeout: 2\n  retry:\n    total: 0\n"
    )
    lineage_env.setenv("OPENLINEAGE_CONFIG", str(config))
    cfg = TagConfig("b", "c", "m", date(2026, 11, 20), "r1")
    with caplog.at_level(logging.WARNING, logger="prodclf"):
        run = lineage.start_run(cfg, str(lineage.run_uuid(cfg)))
        run.complete({"ok": 1})
        run.fail(RuntimeError("boom"))
    warnings = [r for r in caplog.records if r.name == "prodclf.observability.lineage"]
    assert len(warnings) == 1, [r.getMessage() for r in warnings]
    assert "START event of prodclf.tag was not sent" in warnings[0].getMessage()
    assert not run.enabled


# --- metrics ----------------------------------------------------------------------------------


@pytest.mark.spark4
def test_a_failing_push_warns_once_and_reports_not_pushed(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.delenv(metrics.PUSHGATEWAY_ENV, raising=False)
    assert metrics.push_tag_success("/lib", {"ok": 1}, 1.0) is False  # not configured
    monkeypatch.setenv(metrics.PUSHGATEWAY_ENV, f"http://127.0.0.1:{free_port()}")
    with caplog.at_level(logging.WARNING, logger="prodclf"):
        assert metrics.push_tag_success("/lib", {"ok": 1}, 1.0) is False
    assert [r.name for r in caplog.records] == ["prodclf.observability.metrics"]


@dataclass
class Gateway:
    url: str

    def samples(self, library: str) -> dict[tuple[str, str], float]:
        """(metric, code label) -> value, for the group of ``library``."""
        with urllib.request.urlopen(f"{self.url}/metrics", timeout=10) as resp:
            text = resp.read().decode()
        found = {}
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                if s.labels.get("job") == metrics.JOB and s.labels.get("library") == library:
                    found[(s.name, s.labels.get("code", ""))] = s.value
        return found


def pushgateway_binary() -> str | None:
    return shutil.which("prometheus-pushgateway") or (
        "/usr/bin/prometheus-pushgateway"
        if os.access("/usr/bin/prometheus-pushgateway", os.X_OK)
        else None
    )


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway | None]:
    """The real Pushgateway on a free loopback port, persistence off; None where the Debian
    package is missing (``make pushgateway`` installs it; CI must have it)."""
    binary = pushgateway_binary()
    if binary is None:
        if os.environ.get("CI"):
            pytest.fail("prometheus-pushgateway is missing: `make pushgateway` installs it")
        yield None
        return
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = tmp_path_factory.mktemp("pushgateway") / "log.txt"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [binary, f"--web.listen-address=127.0.0.1:{port}"], stdout=out, stderr=out
        )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"{url}/-/ready", timeout=2) as resp:
                    if resp.status == 200:
                        break
            except OSError:
                pass
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)
        yield Gateway(url)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# --- one real tag run, watched by all three ---------------------------------------------------


@dataclass
class TagRuns:
    """A complete tag run (r1), then one that fails (r2), each in its own process."""

    out: Path
    result: dict[str, Any]
    stderr: str
    events: list[dict[str, Any]]
    before: float
    after: float
    samples_after_success: dict[tuple[str, str], float] | None
    failed_at: float
    failed_stderr: str


def write_catalog(tmp_path: Path) -> Path:
    """Four products: three photos (two red, one blue) and one whose photo is missing."""
    images = tmp_path / "images"
    images.mkdir()
    rows = []
    for pid, color in (("p1", "red"), ("p2", "blue"), ("p3", "red"), ("p4", None)):
        if color:
            (images / f"{pid}.png").write_bytes(png_bytes(COLORS[color]))
        rows.append({"product_id": pid, "image_uri": f"file://{images / pid}.png"})
    base = tmp_path / "base"
    base.mkdir()
    pd.DataFrame(rows).to_parquet(base / "part-0.parquet", index=False)
    return base


@pytest.fixture(scope="module")
def tag_runs(
    tmp_path_factory: pytest.TempPathFactory,
    color_bundle: Path,
    gateway: Gateway | None,
) -> Iterator[TagRuns]:
    tmp = tmp_path_factory.mktemp("observed")
    base = write_catalog(tmp)
    out = tmp / "commodity"
    config = write_config(tmp / "job.yaml")
    with lineage_backend() as got:
        env = {
            k: v
            for k, v in job_env().items()
            if not k.startswith("OPENLINEAGE")
            and k not in (metrics.PUSHGATEWAY_ENV, LOG_FORMAT_ENV)
        }
        env["OPENLINEAGE_URL"] = got.url
        if gateway is not None:
            env[metrics.PUSHGATEWAY_ENV] = gateway.url

        def argv(run_id: str, model: Path, *flags: str) -> list[str]:
            return [
                sys.executable,
                "-m",
                "prodclf",
                *flags,
                "tag",
                "--base-library",
                str(base),
                "--commodity-library",
                str(out),
                "--model",
                str(model),
                "--run-date",
                "2026-11-20",
                "--run-id",
                run_id,
                "--master",
                "local[2]",
                "--config",
                str(config),
            ]

        before = time.time()
        with running_job(
            argv("r1", color_bundle, "--log-format", "json"), env, tmp / "logs-r1"
        ) as job:
            assert job.wait() == 0, job.tail()
            result = job.manifest_printed()
            stderr = job.stderr.read_text(errors="replace")
        after = time.time()
        samples = gateway.samples(f"file://{out}") if gateway else None
        failed_at = time.time()
        # r2 asks for JSON lines the spark-submit entries' way: by the environment.
        failing = {**env, LOG_FORMAT_ENV: "json"}
        with running_job(argv("r2", tmp / "no-such-model"), failing, tmp / "logs-r2") as job:
            assert job.wait() == 2, job.tail()
            failed_stderr = job.stderr.read_text(errors="replace")
    yield TagRuns(out, result, stderr, got.events, before, after, samples, failed_at, failed_stderr)


@pytest.fixture(scope="module")
def live_gateway(gateway: Gateway | None) -> Gateway:
    """``gateway``, or a skip before the tag runs are started for nothing."""
    if gateway is None:
        pytest.skip("prometheus-pushgateway is not installed (`make pushgateway`)")
    return gateway


@pytest.mark.slow
def test_a_tag_run_pushes_its_numbers_and_a_failed_one_keeps_the_last_success(
    live_gateway: Gateway, tag_runs: TagRuns
) -> None:
    got = tag_runs.samples_after_success
    assert got is not None
    result = tag_runs.result
    assert result["products_in"] == 4 and result["ok"] == 3 and result["errors"] == {"not_found": 1}
    assert got[("prodclf_tag_products_selected", "")] == 4
    assert got[("prodclf_tag_products_ok", "")] == 3
    assert got[("prodclf_tag_needs_review", "")] == result["needs_review"]
    assert got[("prodclf_tag_images_per_second", "")] == pytest.approx(result["images_per_second"])
    assert 0 < got[("prodclf_tag_duration_seconds", "")] <= tag_runs.after - tag_runs.before
    by_code = {code: v for (name, code), v in got.items() if name == metrics.ERRORS}
    assert by_code == {**{c.value: 0 for c in ErrorCode}, "not_found": 1}
    # The report succeeded: the run's churn against the (empty) library before it.
    assert "churn" in result, result
    assert got[("prodclf_tag_churn_compared", "")] == result["churn"]["compared"]
    assert got[("prodclf_tag_churn_changed", "")] == result["churn"]["changed"]
    success = got[(metrics.LAST_SUCCESS, "")]
    assert tag_runs.before <= success <= tag_runs.after
    assert got[(metrics.LAST_FAILED, "")] == 0
    assert (metrics.LAST_FAILURE, "") not in got

    # Run r2 failed (no model bundle): its failure is pushed, the success stays.
    now = live_gateway.samples(f"file://{tag_runs.out}")
    assert now[(metrics.LAST_SUCCESS, "")] == success
    assert tag_runs.failed_at <= now[(metrics.LAST_FAILURE, "")] <= time.time()
    assert now[(metrics.LAST_FAILED, "")] == 1
    kept = {k: v for k, v in got.items() if k[0].startswith("prodclf_tag_")}
    assert {k: now[k] for k in kept} == kept


@pytest.mark.slow
def test_a_tag_run_is_one_lineage_run_and_a_failed_one_carries_its_error(
    tag_runs: TagRuns, color_bundle: Path
) -> None:
    library = f"file://{tag_runs.out}"
    for event in tag_runs.events:
        validate(event)
    runs: dict[str, list[dict[str, Any]]] = {}
    for event in tag_runs.events:
        runs.setdefault(event["run"]["runId"], []).append(event)
    r1 = str(uuid.uuid5(uuid.NAMESPACE_URL, f"prodclf:tag:{library}/r1"))
    r2 = str(uuid.uuid5(uuid.NAMESPACE_URL, f"prodclf:tag:{library}/r2"))
    assert set(runs) == {r1, r2}
    assert [e["eventType"] for e in runs[r1]] == ["START", "COMPLETE"]
    assert [e["eventType"] for e in runs[r2]] == ["START", "FAIL"]
    done = runs[r1][1]
    assert done["job"]["namespace"] == "prodclf" and done["job"]["name"] == "prodclf.tag"
    assert ids(done["inputs"]) == [{"namespace": "file", "name": str(tag_runs.out.parent / "base")}]
    assert ids(done["outputs"]) == library_tables(tag_runs.out)
    facets = done["run"]["facets"]
    assert facets["prodclf_run"]["runId"] == "r1"
    model = facets["prodclf_model"]
    assert (model["name"], model["version"]) == ("color", "1")
    assert model["bundleDigest"] == read_meta(str(color_bundle)).fingerprint
    stats = facets["prodclf_tagStats"]
    result = tag_runs.result
    assert stats["productsIn"] == 4 and stats["ok"] == 3 and stats["errorRows"] == 1
    assert stats["errors"] == {"not_found": 1}
    assert stats["needsReview"] == result["needs_review"]
    assert stats["imagesPerSecond"] == result["images_per_second"]
    assert done["outputs"][0]["outputFacets"]["outputStatistics"]["rowCount"] == 4
    error = runs[r2][1]["run"]["facets"]["errorMessage"]
    assert "no-such-model" in error["message"] and error["programmingLanguage"] == "python"


#: A line of the text log format (``--log-format text``).
TEXT_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} [A-Z]+ \S+: ")
KEYS = {"ts", "level", "logger", "message", "command", "run_id"}


@pytest.mark.slow
def test_json_log_lines_carry_the_command_and_the_run_id(tag_runs: TagRuns) -> None:
    """Every log line of the driver is one JSON object; the JVM's own lines are log4j's."""
    lines = tag_runs.stderr.splitlines()
    assert not [line for line in lines if TEXT_LINE.match(line)]
    records = [json.loads(line) for line in lines if line.startswith("{")]
    ours = [r for r in records if r["logger"].startswith("prodclf")]
    assert any(r["message"].startswith("tag finished in ") for r in ours), records
    assert any(r["message"].startswith("report: ") for r in ours), records
    for record in records:
        assert set(record) >= KEYS, record
        assert (record["command"], record["run_id"]) == ("tag", "r1"), record
    # The failed run (JSON by the environment) never started Spark: every line of it is JSON,
    # its refusal included.
    failed = [json.loads(line) for line in tag_runs.failed_stderr.splitlines()]
    assert failed[-1]["level"] == "ERROR" and failed[-1]["run_id"] == "r2"
    assert failed[-1]["message"].startswith("prodclf: error: ")


@pytest.fixture
def restore_logging() -> Iterator[None]:
    """``main`` configures the root logger: put it back (``setup_logging`` binds stderr)."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    saved = logs.context()
    yield
    for handler in [h for h in root.handlers if h not in handlers]:
        root.removeHandler(handler)
    root.setLevel(level)
    logs.set_context(saved.command, saved.run_id)


@pytest.mark.spark4
def test_json_lines_hold_the_exception_as_a_field_and_the_refusal_as_a_record(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    restore_logging: None,
) -> None:
    monkeypatch.delenv(LOG_FORMAT_ENV, raising=False)
    logs.setup_logging("INFO", "json")
    logs.set_context("vacuum", "4b9a3c1e-0000-4000-8000-000000000000")
    try:
        raise ValueError("bad value")
    except ValueError:
        logging.getLogger("prodclf.test").exception("it failed")
    record = json.loads(capsys.readouterr().err.strip())
    assert set(record) == KEYS | {"exception"}
    assert record["message"] == "it failed" and record["level"] == "ERROR"
    assert "ValueError: bad value" in record["exception"]

    argv = ["tag", "--base-library", str(tmp_path / "none"), "--commodity-library"]
    argv += [str(tmp_path / "out"), "--model", str(tmp_path / "m"), "--run-date", "2026-11-20"]
    argv += ["--run-id", "j1"]
    assert main(["--log-format", "json", *argv]) == 2
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1
    refusal = json.loads(lines[0])
    assert refusal["message"].startswith("prodclf: error: base library")
    assert (refusal["command"], refusal["run_id"], refusal["level"]) == ("tag", "j1", "ERROR")
    # Text, the default, is unchanged: the refusal's one plain line.
    assert main(argv) == 2
    assert capsys.readouterr().err.splitlines() == [refusal["message"]]
