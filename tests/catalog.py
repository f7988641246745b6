"""Builders for tiny test catalogs: image objects plus a base library Parquet dataset."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
from conftest import COLORS, jpeg_bytes, png_bytes


@dataclass
class Catalog:
    base: Path
    images: Path
    #: product_id -> (status, error_code, category) the tagging job must produce
    expected: dict[str, tuple[str, str | None, str | None]] = field(default_factory=dict)


def build_catalog(root: Path, n_ok: int = 12) -> Catalog:
    """Red/blue products, one corrupt, one missing, one null URI, one duplicated product."""
    images = root / "store" / "images"
    images.mkdir(parents=True)
    rows: list[dict[str, object]] = []
    cat = Catalog(base=root / "base", images=images)
    for i in range(n_ok):
        color = "red" if i % 2 else "blue"
        ext, data = (
            ("jpg", jpeg_bytes(COLORS[color])) if i % 3 else ("png", png_bytes(COLORS[color]))
        )
        path = images / f"p{i:03d}.{ext}"
        path.write_bytes(data)
        rows.append({"product_id": f"p{i:03d}", "image_uri": f"file://{path}", "title": color})
        cat.expected[f"p{i:03d}"] = ("ok", None, color)
    (images / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    rows.append(
        {"product_id": "corrupt", "image_uri": f"file://{images}/corrupt.jpg", "title": "x"}
    )
    cat.expected["corrupt"] = ("error", "undecodable_image", None)
    rows.append({"product_id": "missing", "image_uri": f"file://{images}/gone.png", "title": "x"})
    cat.expected["missing"] = ("error", "not_found", None)
    rows.append({"product_id": "no-uri", "image_uri": None, "title": "x"})
    cat.expected["no-uri"] = ("error", "invalid_uri", None)
    # A duplicate row of p001 (same product listed twice): one output row, counted.
    rows.append(dict(rows[1]))
    cat.base.mkdir()
    frame = pd.DataFrame(rows)
    frame.iloc[: len(frame) // 2].to_parquet(cat.base / "part-0.parquet", index=False)
    frame.iloc[len(frame) // 2 :].to_parquet(cat.base / "part-1.parquet", index=False)
    return cat


def tree_digest(root: Path) -> dict[str, str]:
    """sha256 of every file below ``root``, by relative path: 'byte-identical' made checkable."""
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }
