"""The report's review section: reviewers judge a tag by its photo.

A bounded sample of the run's rows (``review_rows``: the lowest-confidence ok tags, and
error rows spread over their codes) is collected to the driver, where each photo is
fetched with prodclf's own object fetching and allowlist (``thumbnail``), decoded by
``prodclf.images`` (EXIF, CMYK, alpha, the decompression-bomb guard) and shrunk to a
small inline JPEG. A photo that cannot be shown is a placeholder naming why: for an
error row, often its error seen again now. The bounds keep the page small (a few KB a
thumbnail) and quick whatever the run's size.
"""

from __future__ import annotations

import base64
import html
import io
import logging
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace

from PIL import Image
from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F

from prodclf.config import StorageConfig
from prodclf.errors import ErrorCode, RowError
from prodclf.images import PreprocessSpec, decode_to_uint8
from prodclf.schemas import STATUS_OK
from prodclf.storage import objects
from prodclf.storage.uris import check_allowed, parse_uri

log = logging.getLogger(__name__)

#: Messages longer than this are cut (with an ellipsis) on the page.
MESSAGE_CHARS = 200


def clip(text: str, limit: int = MESSAGE_CHARS) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "\u2026"


#: The ok rows shown, lowest confidence first.
REVIEW_OK = 24
#: The error rows shown, spread over their codes.
REVIEW_ERRORS = 24
#: A thumbnail's longer edge, in pixels (never enlarged).
THUMB_EDGE = 128
THUMB_QUALITY = 80
#: The driver fetches with these: a slow store must not hold the report (or the run's
#: exit) for the run's own ``fetch_deadline_s`` per photo.
FETCH_DEADLINE_S = 15.0
FETCH_ATTEMPTS = 2
FETCH_THREADS = 8
#: Error codes whose photo was fetched and decoded fine: worth showing.
PHOTO_INTACT = (ErrorCode.INFERENCE_FAILED.value, ErrorCode.INTERNAL_ERROR.value)

REVIEW_COLUMNS = (
    "product_id",
    "image_uri",
    "status",
    "category",
    "confidence",
    "top_k",
    "error_code",
    "error_message",
)


@dataclass
class ReviewItem:
    """One product on the review section; ``thumbnail`` is base64 JPEG, else ``problem``."""

    product_id: str
    image_uri: str | None
    status: str
    category: str | None = None
    confidence: float | None = None
    top_k: list[tuple[str, float]] = field(default_factory=list)
    error_code: str | None = None
    error_message: str | None = None
    thumbnail: str | None = None
    problem: str | None = None


def review_rows(
    run_rows: DataFrame, ok_limit: int = REVIEW_OK, error_limit: int = REVIEW_ERRORS
) -> DataFrame:
    """The sample: at most ``ok_limit`` ok rows, lowest confidence first, then at most
    ``error_limit`` error rows taking each code's first product in turn (by product id), so
    one flood of ``not_found`` does not hide the rarer codes. Ordered as shown."""
    ok = F.col("status") == F.lit(STATUS_OK)
    low = (
        run_rows.where(ok)
        .orderBy(F.col("confidence").asc_nulls_first(), "product_id")
        .limit(ok_limit)
        .select(*REVIEW_COLUMNS, F.lit(0).alias("_part"), F.lit(0).alias("_turn"))
    )
    turn = F.row_number().over(Window.partitionBy("error_code").orderBy("product_id"))
    errors = (
        run_rows.where(~ok)
        .withColumn("_turn", turn)
        .orderBy("_turn", F.col("error_code").asc_nulls_last(), "product_id")
        .limit(error_limit)
        .select(*REVIEW_COLUMNS, F.lit(1).alias("_part"), "_turn")
    )
    order: list[str | Column] = [
        "_part",
        F.col("confidence").asc_nulls_first(),
        "_turn",
        F.col("error_code").asc_nulls_last(),
        "product_id",
    ]
    return low.unionByName(errors).orderBy(*order).select(*REVIEW_COLUMNS)


def review_items(rows: DataFrame) -> list[ReviewItem]:
    """``review_rows`` on the driver, in order (thumbnails not made yet)."""
    items = []
    for r in rows.collect():
        top = [(str(t["category"]), float(t["score"] or 0.0)) for t in r["top_k"] or []]
        conf = r["confidence"]
        items.append(
            ReviewItem(
                str(r["product_id"]),
                r["image_uri"],
                str(r["status"]),
                r["category"],
                float(conf) if conf is not None else None,
                top,
                r["error_code"],
                r["error_message"],
            )
        )
    return items


def thumbnail_jpeg(data: bytes, max_pixels: int, edge: int = THUMB_EDGE) -> bytes:
    """A JPEG of at most ``edge`` pixels on its longer side, aspect kept (EXIF-rotated
    photos too); decoding is ``prodclf.images``'s, so it fails with the run's ``RowError``."""
    width = height = edge  # when the header cannot be read, the decode below says why
    try:
        with Image.open(io.BytesIO(data)) as probe:
            width, height = probe.size
            if probe.getexif().get(0x0112) in (5, 6, 7, 8):  # rotated a quarter turn
                width, height = height, width
    except Exception:
        pass
    scale = min(1.0, edge / max(width, height, 1))
    spec = PreprocessSpec(max(1, round(height * scale)), max(1, round(width * scale)))
    pixels = decode_to_uint8(data, spec, max_pixels)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="JPEG", quality=THUMB_QUALITY)
    return buf.getvalue()


def thumbnail(uri: str | None, storage: StorageConfig) -> tuple[str | None, str | None]:
    """(base64 JPEG, None), or (None, why there is no picture): never raises."""
    try:
        ref = parse_uri(uri)
        check_allowed(ref, storage.allowed_schemes, storage.allowed_buckets)
        data = objects.fetch_image_bytes(ref, storage)
        jpeg = thumbnail_jpeg(data, storage.max_pixels)
    except RowError as err:
        return None, f"{err.code.value}: {err.message}"
    except Exception as exc:
        return None, f"{type(exc).__name__}: {exc}"[:300]
    return base64.b64encode(jpeg).decode("ascii"), None


def add_thumbnails(items: list[ReviewItem], storage: StorageConfig) -> None:
    """Each item's thumbnail (or problem), fetched on the driver a few at a time."""
    quick = replace(
        storage,
        fetch_deadline_s=min(storage.fetch_deadline_s, FETCH_DEADLINE_S),
        max_attempts=min(storage.max_attempts, FETCH_ATTEMPTS),
    )
    # An error row whose photo the run could not fetch or decode is not fetched again: the
    # store answered already, and a stalled or huge object must not hold the report.
    wanted = [it for it in items if it.error_code in (None, *PHOTO_INTACT)]
    for item in items:
        if item not in wanted:
            item.thumbnail, item.problem = None, f"{item.error_code}: not fetched again"
    with ThreadPoolExecutor(FETCH_THREADS) as pool:
        made = list(pool.map(lambda it: thumbnail(it.image_uri, quick), wanted))
    for item, (jpeg, problem) in zip(wanted, made, strict=True):
        item.thumbnail, item.problem = jpeg, problem
    missing = sum(1 for it in items if it.thumbnail is None)
    if missing:
        log.info("report: %d of %d review photos could not be shown", missing, len(items))


REVIEW_CSS = """
.cards{display:flex;flex-wrap:wrap;gap:.6em}
.card{width:172px;border:1px solid #ccc;padding:6px;font-size:.8em;overflow-wrap:anywhere}
.card.err{border-color:#c8553d} .card.doubt{border-color:#e0a100}
.thumb{width:128px;height:128px;display:block;margin:0 auto 4px;object-fit:contain;
background:#f6f6f6}
.noimg{width:128px;height:128px;margin:0 auto 4px;background:#eee;color:#666;
font-size:.85em;overflow:hidden;padding:4px;box-sizing:border-box}
.pid{font-family:monospace;font-weight:bold} .topk{color:#555}
"""


def _text(value: object, limit: int = MESSAGE_CHARS) -> str:
    return html.escape(clip(str(value), limit))


def _card(item: ReviewItem, threshold: float) -> str:
    if item.thumbnail is not None:
        picture = (
            f"<img class='thumb' alt='photo of {_text(item.product_id, 80)}' "
            f"src='data:image/jpeg;base64,{item.thumbnail}'>"
        )
    elif item.error_code and (item.problem or "").startswith(f"{item.error_code}: "):
        # The run's error, seen again now: the card says it once, below.
        picture = f"<div class='noimg'>no photo: still {_text(item.error_code)}</div>"
    else:
        picture = f"<div class='noimg'>no photo: {_text(item.problem or 'unknown')}</div>"
    lines = [f"<div class='pid'>{_text(item.product_id, 120)}</div>"]
    if item.status == STATUS_OK:
        conf = item.confidence
        doubt = conf is not None and conf < threshold
        shown = f"{conf:.3f}" if conf is not None else "?"
        lines.append(f"<div><b>{_text(item.category)}</b> {shown}</div>")
        top = ", ".join(f"{_text(c, 60)} {s:.2f}" for c, s in item.top_k)
        lines.append(f"<div class='topk'>top-k: {top or 'none'}</div>")
        cls = "card doubt" if doubt else "card"
    else:
        lines.append(f"<div><b>{_text(item.error_code or 'no code')}</b></div>")
        lines.append(f"<div class='topk'>{_text(item.error_message or '')}</div>")
        cls = "card err"
    return f"<div class='{cls}'>{picture}{''.join(lines)}</div>"


def render_review(
    items: Iterable[ReviewItem], threshold: float, ok_rows: int, error_rows: int
) -> str:
    """The review section's body: the cards, ok tags first (lowest confidence first)."""
    items = list(items)
    shown_ok = sum(1 for it in items if it.status == STATUS_OK)
    shown_err = len(items) - shown_ok
    intro = (
        f"<p>The {shown_ok} ok tags with the lowest confidence (of {ok_rows}; yellow: under "
        f"the review threshold {threshold}) and {shown_err} of {error_rows} error rows (red), "
        "with their photos as stored when this report was made.</p>"
    )
    if not items:
        return "<p>The run wrote no rows to review.</p>"
    return intro + "<div class='cards'>" + "".join(_card(it, threshold) for it in items) + "</div>"
