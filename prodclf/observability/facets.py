"""prodclf's custom OpenLineage facets, as attrs classes like the client's generated ones.

Their JSON Schema is ``FACETS_SCHEMA`` (each facet's ``_schemaURL`` points into it by
``$id``); it ships with the code rather than at a web address, so a consumer that validates
facets registers it under ``FACETS_SCHEMA_ID``. Imported only when lineage is configured:
the OpenLineage client is not loaded otherwise.
"""

from __future__ import annotations

from typing import Any

import attr
from openlineage.client.generated.base import RunFacet

#: The ``$id`` of ``FACETS_SCHEMA`` (a URN: the schema is not published at a web address).
FACETS_SCHEMA_ID = "urn:prodclf:openlineage:facets:1-0-0"
_RUN_FACET = "https://openlineage.io/spec/2-0-2/OpenLineage.json#/$defs/RunFacet"


def _schema_url(name: str) -> str:
    return f"{FACETS_SCHEMA_ID}#/$defs/{name}"


@attr.define
class ProdclfRunFacet(RunFacet):
    """The command and, for ``tag``, prodclf's own run id (the lineage run id derives from it)."""

    command: str
    prodclfVersion: str
    runId: str | None = attr.field(default=None)
    runDate: str | None = attr.field(default=None)
    mode: str | None = attr.field(default=None)
    dryRun: bool | None = attr.field(default=None)
    commodityLibrary: str | None = attr.field(default=None)
    tableFormat: str | None = attr.field(default=None)

    @staticmethod
    def _get_schema() -> str:
        return _schema_url("ProdclfRunFacet")


@attr.define
class ProdclfModelRunFacet(RunFacet):
    """The model bundle a run used or wrote; ``bundleDigest`` is ``BundleMeta.fingerprint``."""

    name: str
    version: str
    bundleDigest: str
    uri: str | None = attr.field(default=None)

    @staticmethod
    def _get_schema() -> str:
        return _schema_url("ProdclfModelRunFacet")


@attr.define
class ProdclfTagStatsRunFacet(RunFacet):
    """A complete tag run's counts, as its manifest records them."""

    productsIn: int
    ok: int
    errorRows: int
    errors: dict[str, int] = attr.field(factory=dict)
    needsReview: int | None = attr.field(default=None)
    imagesPerSecond: float | None = attr.field(default=None)
    rowsWritten: int | None = attr.field(default=None)
    churnCompared: int | None = attr.field(default=None)
    churnChanged: int | None = attr.field(default=None)

    @staticmethod
    def _get_schema() -> str:
        return _schema_url("ProdclfTagStatsRunFacet")


def _facet(required: list[str], properties: dict[str, Any], description: str) -> dict[str, Any]:
    return {
        "description": description,
        "allOf": [
            {"$ref": _RUN_FACET},
            {"type": "object", "properties": properties, "required": required},
        ],
        "type": "object",
    }


_INT = {"type": "integer", "minimum": 0}
_STR = {"type": "string"}

#: The JSON Schema of the facets above (draft 2020-12, the OpenLineage spec's own draft).
FACETS_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "$id": FACETS_SCHEMA_ID,
    "$defs": {
        "ProdclfRunFacet": _facet(
            ["command", "prodclfVersion"],
            {
                "command": _STR,
                "prodclfVersion": _STR,
                "runId": _STR,
                "runDate": {"type": "string", "format": "date"},
                "mode": _STR,
                "dryRun": {"type": "boolean"},
                "commodityLibrary": _STR,
                "tableFormat": _STR,
            },
            "the prodclf command; for tag, prodclf's run id (the lineage run id is "
            "uuid5(NAMESPACE_URL, 'prodclf:tag:<library>/<run id>'))",
        ),
        "ProdclfModelRunFacet": _facet(
            ["name", "version", "bundleDigest"],
            {"name": _STR, "version": _STR, "bundleDigest": _STR, "uri": _STR},
            "the model bundle: its name, version and metadata digest (BundleMeta.fingerprint)",
        ),
        "ProdclfTagStatsRunFacet": _facet(
            ["productsIn", "ok", "errorRows"],
            {
                "productsIn": _INT,
                "ok": _INT,
                "errorRows": _INT,
                "errors": {"type": "object", "additionalProperties": _INT},
                "needsReview": _INT,
                "imagesPerSecond": {"type": "number", "minimum": 0},
                "rowsWritten": _INT,
                "churnCompared": _INT,
                "churnChanged": _INT,
            },
            "a complete tag run's counts: products selected, ok, error rows (and by code), "
            "needs_review, throughput and category churn against the previous tags",
        ),
    },
}
