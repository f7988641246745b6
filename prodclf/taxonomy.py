"""The product taxonomy, and the mapping from a model's label names to taxonomy categories.

A classifier's labels are whatever names the training data used ("Oat-Milk", "Sneaker");
downstream tables want a stable category from a shared taxonomy, by id and by path. The
taxonomy file is the Google Product Taxonomy in its with-ids format::

    # Google_Product_Taxonomy_Version: 2021-09-21
    1 - Animals & Pet Supplies
    3237 - Animals & Pet Supplies > Live Animals

A label map is a YAML/JSON mapping ``{label name: taxonomy id}``; a value may also be a
category's full path text. Checking the map against the taxonomy turns a typo into a
refusal before training, instead of a wrong id in every tagged row.

Nothing here imports Spark or TensorFlow: the driver checks these files before any work.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import yaml

from prodclf.errors import ConfigError
from prodclf.model.bundle import Label
from prodclf.storage import objects

SEPARATOR = " > "
_LINE = re.compile(r"(\d+) - (\S.*)")


@dataclass(frozen=True)
class Category:
    """One taxonomy category; ``path`` is empty when the id was not checked against a taxonomy."""

    id: str
    path: tuple[str, ...] = ()

    @property
    def name(self) -> str:
        return self.path[-1] if self.path else ""

    @property
    def path_text(self) -> str:
        return SEPARATOR.join(self.path)


class Taxonomy(Mapping[str, Category]):
    """Categories by id (the mapping) and by full path text (``by_path``)."""

    def __init__(self, categories: Mapping[str, Category], source: str, version: str = "") -> None:
        self._by_id = dict(categories)
        self._by_path = {c.path_text: c for c in self._by_id.values()}
        self.source = source
        self.version = version

    def __getitem__(self, category_id: str) -> Category:
        return self._by_id[category_id]

    def __iter__(self) -> Iterator[str]:
        return iter(self._by_id)

    def __len__(self) -> int:
        return len(self._by_id)

    def by_path(self, path_text: str) -> Category | None:
        """The category whose full path is ``path_text`` (parts joined by ``" > "``)."""
        return self._by_path.get(SEPARATOR.join(p.strip() for p in path_text.split(">")))

    def resolve(self, value: str) -> Category | None:
        """A category given by its id or by its full path text; None when there is none."""
        return self._by_id.get(value.strip()) or self.by_path(value)

    def __repr__(self) -> str:
        return f"Taxonomy({self.source!r}, {len(self)} categories)"


def parse_google_taxonomy(text: str, where: str) -> Taxonomy:
    """Parse the with-ids format; any malformed line, duplicate or orphan is a ``ConfigError``."""
    categories: dict[str, Category] = {}
    line_of: dict[str, int] = {}  # id -> line number
    id_of_path: dict[tuple[str, ...], str] = {}
    version = ""
    for number, raw in enumerate(text.removeprefix("\ufeff").splitlines(), start=1):
        line = raw.strip()
        if line.startswith("#"):
            if not version and "Version:" in line:
                version = line.split("Version:", 1)[1].strip()
            continue
        if not line:
            continue
        match = _LINE.fullmatch(line)
        path = tuple(p.strip() for p in match.group(2).split(">")) if match else ()
        if match is None or not all(path):
            raise ConfigError(
                f"taxonomy {where}: line {number} is not 'ID - Top > Sub > ...' "
                f"(found {line[:80]!r})"
            )
        cid = match.group(1)
        if cid in categories:
            raise ConfigError(
                f"taxonomy {where}: line {number} repeats id {cid} (first on line {line_of[cid]})"
            )
        if path in id_of_path:
            first = line_of[id_of_path[path]]
            raise ConfigError(
                f"taxonomy {where}: line {number} repeats category "
                f"{SEPARATOR.join(path)!r} (first on line {first})"
            )
        categories[cid] = Category(cid, path)
        line_of[cid] = number
        id_of_path[path] = cid
    for cid, cat in categories.items():
        if len(cat.path) > 1 and cat.path[:-1] not in id_of_path:
            raise ConfigError(
                f"taxonomy {where}: line {line_of[cid]} ({cid}) has no parent category "
                f"{SEPARATOR.join(cat.path[:-1])!r}"
            )
    if not categories:
        raise ConfigError(f"taxonomy {where}: holds no categories")
    return Taxonomy(categories, where, version)


def load_taxonomy(location: str) -> Taxonomy:
    """Read and parse a with-ids taxonomy file (local path, ``file://`` or ``s3://``)."""
    raw = _read(location, "taxonomy")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"taxonomy {location}: not UTF-8 text ({exc.reason})") from None
    return parse_google_taxonomy(text, location)


def load_mapping(
    location: str, taxonomy: Taxonomy | None = None, *, what: str = "label map"
) -> dict[str, Category]:
    """Read a ``{label name: taxonomy id}`` YAML/JSON file.

    Without a taxonomy the ids are kept as given (``path`` empty). With one, every value
    must be one of its ids or full paths, and all unknown values are named in one error.
    ``what`` starts every message (e.g. ``"--label-map"``).
    """
    raw = _read(location, what)
    try:
        data: Any = yaml.safe_load(raw)
    except yaml.YAMLError as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ConfigError(f"{what} {location}: not valid YAML/JSON ({first})") from None
    if not isinstance(data, dict) or not data:
        raise ConfigError(f"{what} {location}: must be a non-empty mapping {{label: id}}")
    bad = [repr(k) for k, v in data.items() if not (_scalar(k) and _scalar(v) and str(v).strip())]
    if bad:
        raise ConfigError(
            f"{what} {location}: every entry must map a label to a string or integer id "
            f"(bad entries: {', '.join(bad[:5])})"
        )
    given = {str(k): str(v).strip() for k, v in data.items()}
    if taxonomy is None:
        paths = [label for label, value in given.items() if ">" in value]
        if paths:
            raise ConfigError(
                f"{what} {location}: label(s) {', '.join(map(repr, paths))} name a taxonomy "
                "path; resolving a path needs the taxonomy file"
            )
        return {label: Category(value) for label, value in given.items()}

    found: dict[str, Category] = {}
    unknown: dict[str, list[str]] = {}  # value -> labels using it, in file order
    for label, value in given.items():
        cat = taxonomy.resolve(value)
        if cat is None:
            unknown.setdefault(value, []).append(label)
        else:
            found[label] = cat
    if unknown:
        listed = ", ".join(
            f"{value if value.isdigit() else repr(value)} "
            f"({'label' if len(labels) == 1 else 'labels'} {', '.join(map(repr, labels))})"
            for value, labels in unknown.items()
        )
        raise ConfigError(
            f"{what} {location}: unknown taxonomy id(s) {listed} (taxonomy {taxonomy.source})"
        )
    return found


def labels_for(
    names: list[str], mapping: Mapping[str, Category] | None, where: str
) -> tuple[Label, ...]:
    """The bundle labels for ``names`` in output order, with their taxonomy id and path.

    Without a mapping a label's id is its name. With one, every name must be in it (extra
    entries are fine); ``where`` starts the error, e.g. ``"--label-map labels.yaml"``.
    """
    if mapping is None:
        return tuple(Label(name=n, id=n) for n in names)
    missing = [n for n in names if n not in mapping]
    if missing:
        raise ConfigError(f"{where}: no id for label(s) {', '.join(repr(m) for m in missing)}")
    return tuple(Label(name=n, id=mapping[n].id, path=mapping[n].path_text) for n in names)


def _scalar(value: object) -> bool:
    return isinstance(value, (str, int)) and not isinstance(value, bool)


def _read(location: str, what: str) -> bytes:
    try:
        return objects.read_bytes(location)
    except OSError as exc:
        raise ConfigError(f"{what} {location}: cannot be read ({exc})") from None
