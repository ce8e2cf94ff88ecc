"""Channel names from a markers file: MCMICRO's ``markers.csv`` or steinbock's ``panel.csv``."""

from __future__ import annotations

import csv
from pathlib import Path

from ..errors import SlideOpenError, short_repr
from .base import SlideReader, dedupe_names

#: a markers file beside the image renames its channels (MCMICRO convention)
MARKERS_NAME = "markers.csv"


def read_markers(path) -> tuple[str, list[dict]]:
    """Read a markers file: MCMICRO's ``markers.csv`` (a ``marker_name`` column, one row per
    channel in image order; rows with ``remove`` set to TRUE are kept but flagged) or steinbock's
    ``panel.csv`` (``channel`` = metal and ``name`` columns). Returns ``(kind, rows)``."""
    path = Path(path)
    if path.suffix.lower() not in (".csv", ".tsv") or not path.is_file():
        raise SlideOpenError(f"{path}: not a markers file (expected a .csv file, e.g. MCMICRO markers.csv or "
                             "steinbock panel.csv)")
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            raw = list(csv.DictReader(fh))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise SlideOpenError(f"{path}: cannot read the markers file: {exc}") from exc
    extra = [i + 2 for i, r in enumerate(raw) if None in r]  # more fields than the header
    if extra:
        raise SlideOpenError(f"{path}: line(s) {extra[:5]} have more fields than the header (quote names "
                             'that contain commas, e.g. "HLA class 1 A, B, and C")')
    rows = [{(k or "").strip(): (v or "").strip() for k, v in r.items()} for r in raw]
    cols = set(rows[0]) if rows else set()
    if "marker_name" in cols:
        kind = "mcmicro"
    elif {"channel", "name"} <= cols:
        kind = "steinbock"
    else:
        raise SlideOpenError(f"{path}: a markers file needs a 'marker_name' column (MCMICRO markers.csv) or "
                             f"'channel' and 'name' columns (steinbock panel.csv); found {len(cols)} other column(s)"
                             + (f" {short_repr(sorted(cols))}" if all(c.isprintable() and len(c) < 40 for c in cols) else ""))
    key = "marker_name" if kind == "mcmicro" else "name"
    empty = [i + 2 for i, r in enumerate(rows) if not r.get(key)]
    if empty:
        raise SlideOpenError(f"{path}: empty {key} on line(s) {empty[:5]}")
    return kind, rows


def apply_markers(reader: SlideReader, path) -> None:
    """Rename ``reader``'s channels from a markers file (see :func:`read_markers`). An MCMICRO
    file must have one row per channel; a steinbock panel matches channels by metal (the IMC
    reader's ``metal``, or the current name)."""

    kind, rows = read_markers(path)
    names = list(reader.channel_names)
    meta = [dict(m) for m in (reader.channel_meta or [{} for _ in names])]
    if kind == "mcmicro":
        if len(rows) != len(names):
            raise SlideOpenError(f"{path}: lists {len(rows)} markers but {reader.path} has {len(names)} channels "
                                 f"({names})")
        new = [r["marker_name"] for r in rows]
        for m, r, old in zip(meta, rows, names):
            m.setdefault("label", old)
            for extra in ("cycle", "channel_number", "exposure", "remove"):
                if r.get(extra):
                    m[extra] = r[extra]
    else:
        by_metal = {r["channel"]: r["name"] for r in rows}
        keys = [m.get("metal") or n for m, n in zip(meta, names)]
        missing = [k for k in keys if k not in by_metal]
        if missing:
            raise SlideOpenError(f"{path}: no panel row for channel(s) {missing} of {reader.path}")
        new = [by_metal[k] for k in keys]
        for m, old in zip(meta, names):
            m.setdefault("label", old)
    reader.channel_names = tuple(dedupe_names(new))
    reader.channel_meta = tuple(meta)
    reader.markers_file = str(Path(path).resolve())


__all__ = ["read_markers", "apply_markers", "MARKERS_NAME"]
