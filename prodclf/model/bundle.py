"""The model bundle: a SavedModel plus the metadata the tagging job needs to use it.

Layout (a local directory or an ``s3://`` prefix)::

    bundle.json        name, version, labels in output order (name, taxonomy id and path),
                       preprocessing, metrics
    saved_model/       tf.saved_model export with a ``serve`` endpoint (a graph: loading
                       it runs no Python from the bundle; no pickles, no Lambda layers)
    model.tflite       optional: the same endpoint for LiteRT's CPU kernels, uint8 pixels
                       in (``prodclf.model.lite``); its sha256 is in bundle.json

Reading the metadata never imports TensorFlow, so the driver can validate a bundle
before any Spark work starts.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from prodclf.errors import ModelBundleError
from prodclf.images import PreprocessSpec
from prodclf.storage import objects

FORMAT_VERSION = 1
META_FILE = "bundle.json"
SAVED_MODEL_DIR = "saved_model"
OUTPUTS = ("probabilities", "logits")


@dataclass(frozen=True)
class Label:
    """One model output: the label name, its taxonomy id and (optionally) the id's path.

    ``path`` is the taxonomy path text (``"Apparel & Accessories > Shoes"``) so the
    tagging job can write it without reading the taxonomy; bundles written before it
    existed load with ``path=""``.
    """

    name: str
    id: str
    path: str = ""


@dataclass(frozen=True)
class BundleMeta:
    model_name: str
    model_version: str
    labels: tuple[Label, ...]
    preprocessing: PreprocessSpec
    output: str = "probabilities"
    endpoint: str = "serve"
    metrics: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)
    created_at: str = ""
    format_version: int = FORMAT_VERSION
    # {"temperature": T, ...}: temperature scaling applied to the outputs at tag time
    # (``calibrate``). Bundles without it are used as they are (T = 1).
    calibration: dict[str, Any] | None = field(default=None, hash=False)
    # {"file": "model.tflite", "sha256": ...}: the converted model (``prodclf.model.lite``);
    # bundles without it run on TensorFlow.
    lite_model: dict[str, str] | None = field(default=None, hash=False)

    @property
    def temperature(self) -> float:
        return float((self.calibration or {}).get("temperature", 1.0))

    @property
    def num_classes(self) -> int:
        return len(self.labels)

    def to_json(self) -> str:
        data = asdict(self)
        return json.dumps(data, indent=2, sort_keys=True)

    @property
    def fingerprint(self) -> str:
        """A digest of the whole metadata: two reads of one bundle version agree."""
        return hashlib.sha256(self.to_json().encode()).hexdigest()[:16]

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str) -> BundleMeta:
        def need(key: str) -> Any:
            if key not in data:
                raise ModelBundleError(f"model bundle {where}: {META_FILE} has no {key!r}")
            return data[key]

        try:
            labels = tuple(_label(x) for x in need("labels"))
            spec = PreprocessSpec(**need("preprocessing"))
            spec.validate()
            meta = cls(
                model_name=str(need("model_name")),
                model_version=str(need("model_version")),
                labels=labels,
                preprocessing=spec,
                output=str(data.get("output", "probabilities")),
                endpoint=str(data.get("endpoint", "serve")),
                metrics=dict(data.get("metrics") or {}),
                created_at=str(data.get("created_at", "")),
                format_version=int(data.get("format_version", FORMAT_VERSION)),
                calibration=_calibration(data.get("calibration")),
                lite_model=_lite_model(data.get("lite_model")),
            )
        except ModelBundleError:
            raise
        except (TypeError, ValueError, KeyError) as exc:
            raise ModelBundleError(f"model bundle {where}: invalid {META_FILE} ({exc})") from None
        if meta.format_version > FORMAT_VERSION:
            raise ModelBundleError(
                f"model bundle {where}: format_version {meta.format_version} is newer than "
                f"this prodclf understands ({FORMAT_VERSION})"
            )
        if len(labels) < 2:
            raise ModelBundleError(f"model bundle {where}: needs at least 2 labels")
        if len({lb.name for lb in labels}) != len(labels):
            raise ModelBundleError(f"model bundle {where}: label names are not unique")
        if meta.output not in OUTPUTS:
            raise ModelBundleError(f"model bundle {where}: output must be one of {OUTPUTS}")
        return meta


def _calibration(entry: Any) -> dict[str, Any] | None:
    if entry is None:
        return None
    if not isinstance(entry, dict):
        raise TypeError(f"calibration must be an object {{temperature}}, not {entry!r}")
    t = entry.get("temperature", 1.0)
    if isinstance(t, bool) or not isinstance(t, int | float) or not (0 < t < float("inf")):
        raise ValueError(f"calibration temperature must be a positive number, not {t!r}")
    return dict(entry)


def _lite_model(entry: Any) -> dict[str, str] | None:
    if entry is None:
        return None
    if not isinstance(entry, dict) or not all(
        isinstance(entry.get(k), str) and entry.get(k) for k in ("file", "sha256")
    ):
        raise TypeError(f"lite_model must be an object {{file, sha256}}, not {entry!r}")
    if "/" in entry["file"] or entry["file"].startswith("."):
        raise ValueError(f"lite_model file must be a file name in the bundle: {entry['file']!r}")
    return {"file": entry["file"], "sha256": entry["sha256"]}


def calibrate(probs: Any, meta: BundleMeta) -> Any:
    """The bundle's calibration applied to its model's probabilities (as is without one)."""
    if meta.temperature == 1.0:
        return probs
    from prodclf.model.calibration import apply_temperature

    return apply_temperature(probs, meta.temperature)


def _label(entry: Any) -> Label:
    if not isinstance(entry, dict):
        raise TypeError(f"a label must be an object {{name, id, path}}, not {entry!r}")
    path = entry.get("path") or ""
    if not isinstance(path, str):
        raise TypeError(f"label {entry.get('name')!r}: path must be a string")
    return Label(name=str(entry["name"]), id=str(entry["id"]), path=path)


def read_meta(uri: str) -> BundleMeta:
    """Read and check a bundle's metadata and layout; a ``ModelBundleError`` says what is wrong."""
    root = uri.rstrip("/")
    try:
        raw = objects.read_bytes(f"{root}/{META_FILE}")
    except OSError as exc:
        raise ModelBundleError(f"model bundle {uri}: cannot read {META_FILE} ({exc})") from None
    try:
        data = json.loads(raw)
    except ValueError as exc:
        raise ModelBundleError(f"model bundle {uri}: {META_FILE} is not JSON ({exc})") from None
    if not isinstance(data, dict):
        raise ModelBundleError(f"model bundle {uri}: {META_FILE} must hold a JSON object")
    meta = BundleMeta.from_dict(data, uri)
    try:
        has_model = objects.exists(f"{root}/{SAVED_MODEL_DIR}/saved_model.pb")
    except OSError as exc:
        raise ModelBundleError(f"model bundle {uri}: cannot list it ({exc})") from None
    if not has_model:
        raise ModelBundleError(f"model bundle {uri}: no {SAVED_MODEL_DIR}/saved_model.pb")
    return meta


def export_bundle(
    model: Any,
    meta: BundleMeta,
    dest_uri: str,
    extra_files: dict[str, bytes] | None = None,
    lite: bool = True,
) -> BundleMeta:
    """Export a Keras model as a bundle at ``dest_uri`` (imports TensorFlow).

    With ``lite``, the endpoint is also converted for LiteRT's CPU kernels when the
    converted model answers like the SavedModel (``prodclf.model.lite``).
    """
    if not meta.created_at:
        meta = BundleMeta(
            **{
                **asdict(meta),
                "labels": meta.labels,
                "preprocessing": meta.preprocessing,
                "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            }
        )
    with tempfile.TemporaryDirectory(prefix="prodclf-bundle-") as tmp:
        root = Path(tmp) / "bundle"
        root.mkdir()
        model.export(str(root / SAVED_MODEL_DIR), format="tf_saved_model", verbose=False)
        if lite:
            from prodclf.model.lite import LITE_FILE, lite_entry, lite_model_for

            data = lite_model_for(str(root / SAVED_MODEL_DIR), meta.preprocessing, meta.endpoint)
            if data is not None:
                (root / LITE_FILE).write_bytes(data)
                meta = replace(meta, lite_model=lite_entry(data))
        (root / META_FILE).write_text(meta.to_json())
        for name, data in (extra_files or {}).items():
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            (root / name).write_bytes(data)
        objects.copy_tree_from_local(root, dest_uri)
    return meta
