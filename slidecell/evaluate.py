"""``slidecell evaluate CONFIG``: every backend on the same labelled images, side by side.

Two protocols, chosen per set:

``run`` (the default: what a user gets)
    every image goes through :func:`slidecell.run` as a slide of its own, with the set's run
    config (a preset) and the backend as its ``segmentation``: reader, tissue mask, tile engine
    at the preset's working resolution, ownership, outlines. The outlines from ``cells.parquet``
    are filled into a label image **at the labels' native resolution** (exactly the pixels whose
    centres lie inside) and scored there. ``scan_mpp`` first resamples the image (area average)
    to another scan resolution, e.g. a 40× set as a 20× slide gives it; the labels stay native.
``downsampled`` (secondary, named as such in the tables)
    images *and labels* resampled to ``eval_mpp`` and segmented by the backend directly, as
    slidecell's tables did before; it spares the model resampling and can flatter it.

For each set and backend: mSA, SA@0.5, F1@0.5, precision, recall, PQ, AJI (see
:mod:`slidecell.metrics`) and seconds per megapixel (native pixels; in ``run`` the whole
:func:`slidecell.run` call, reading and writing included). A backend may list a ``sweep`` of
parameter values (e.g. Cellpose's diameter); each value is tried on the first ``sweep_images``
images of a set, the best by mSA is then run on the whole set and reported with the value chosen.
"""

from __future__ import annotations

import itertools
import json
import tempfile
import time
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import Field, model_validator

from .errors import ConfigError
from .schema import Strict, deep_merge, read_yaml, validate


class EvalSet(Strict):
    label: str
    #: folder under ``data_root``: an annotated set (index.csv, images/, labels/) or a folder of
    #: ImageJ-ROI zips (CryoNuSeg: each zip holds the tile and ``RoiSet.zip``)
    name: str
    where: dict[str, str] = Field(default_factory=dict)
    mpp: float | None = None
    protocol: Literal["run", "downsampled"] = "run"
    #: run: the run config each image goes through (preset name or YAML path); default
    #: ``he-brightfield`` for brightfield images, ``multiplex-fluorescence`` with no cell
    #: expansion for fluorescence ones
    config: str | None = None
    #: run: deep-merged into the run config (e.g. ``{tiling: {mpp: 0.25}}``)
    overrides: dict[str, Any] = Field(default_factory=dict)
    #: run: resample the image to this µm/px before the run, as a scanner at that resolution
    #: would give it (labels stay native); None: as scanned
    scan_mpp: float | None = Field(None, gt=0)
    #: downsampled: resample images and labels to this µm/px before scoring
    eval_mpp: float | None = Field(None, gt=0)
    note: str = ""

    @model_validator(mode="after")
    def _protocol_keys(self):
        if self.protocol == "run" and self.eval_mpp is not None:
            raise ValueError("eval_mpp belongs to protocol 'downsampled'; in 'run' use scan_mpp")
        if self.protocol == "downsampled" and (self.scan_mpp is not None or self.config or self.overrides):
            raise ValueError("scan_mpp, config and overrides belong to protocol 'run'")
        return self


class EvalBackend(Strict):
    label: str
    backend: str
    params: dict[str, Any] = Field(default_factory=dict)
    sweep: dict[str, list[Any]] = Field(default_factory=dict)
    #: protocol run: deep-merged into every set's run config (e.g. ``{tiling: {mpp: 0.25}}`` to
    #: segment at another working resolution)
    overrides: dict[str, Any] = Field(default_factory=dict)
    #: skip (with a note) instead of failing when the backend cannot be built here
    optional: bool = False


class EvalConfig(Strict):
    data_root: str = "../shared/data/nuclei"
    sets: list[EvalSet]
    backends: list[EvalBackend]
    sweep_images: int = Field(12, ge=1)


def load_eval_config(path: str | Path) -> EvalConfig:
    return validate(EvalConfig, read_yaml(path, "evaluation config") or {}, str(path), "evaluation config")


def load_set(root: Path, s: EvalSet) -> list[dict]:
    """Images of a set: dicts with id, image, labels (native resolution, or ``eval_mpp`` in the
    downsampled protocol), mpp, modality."""
    from .datasets import load_pair, load_roi_zip, read_index, resample_pair, row_modality, row_mpp, select

    folder = root / s.name
    if not (folder / "index.csv").is_file() and folder.is_dir() and any(folder.glob("*.zip")):
        rows = select([{"image_id": z.stem, "path": str(z)} for z in sorted(folder.glob("*.zip"))], s.where)
        pairs = ((row, *load_roi_zip(Path(row["path"]))) for row in rows)
    else:
        rows = select(read_index(folder), s.where)
        pairs = ((row, *load_pair(folder, row), None) for row in rows)
    if not rows:
        raise ConfigError(f"evaluation set {s.label!r}: the filter {s.where} selects no image in {folder}")
    out = []
    for row, img, lab, region in pairs:
        mpp = row_mpp(row, s.mpp)
        if s.protocol == "downsampled" and s.eval_mpp is not None:
            f = mpp / s.eval_mpp
            if region is not None:
                _, region = resample_pair(img, region.astype(np.int32), f)
            img, lab = resample_pair(img, lab, f)
            mpp = s.eval_mpp
        out.append({"id": row["image_id"], "image": img, "labels": lab, "mpp": mpp,
                    "modality": row_modality(row), "region": region})
    return out


def restrict_to_region(pred: np.ndarray, region: np.ndarray | None) -> np.ndarray:
    """Predictions whose centroid lies outside ``region`` (where the labels are complete) are
    left out of the score."""
    if region is None or not pred.any():
        return pred
    flat = pred.ravel()
    n = int(flat.max()) + 1
    area = np.bincount(flat, minlength=n)
    yy, xx = np.indices(pred.shape)
    cy = np.bincount(flat, yy.ravel(), n) / np.maximum(area, 1)
    cx = np.bincount(flat, xx.ravel(), n) / np.maximum(area, 1)
    keep = region[np.clip(cy.astype(int), 0, pred.shape[0] - 1), np.clip(cx.astype(int), 0, pred.shape[1] - 1)]
    keep[0] = False
    return np.where(keep[pred], pred, 0)


def run_config(s: EvalSet, modality: str, backend: str, params: dict, overrides: dict | None = None):
    """The run config an image of set ``s`` goes through with ``backend``: the set's preset
    (the backend's parameters merged into the preset's when it names the same backend), only
    the GeoParquet written, no analysis."""
    from .config import config_from_dict, load_config

    if s.config:
        base = load_config(s.config)
    elif modality == "fluorescence":
        base = load_config("multiplex-fluorescence", {"segmentation": {"cell_expansion_um": 0.0},
                                                     "output": {"zarr": False},
                                                     "measure": {"compartments": ["cell"]}})
    else:
        base = load_config("he-brightfield")
    data = deep_merge(deep_merge(base.model_dump(mode="json"), s.overrides), overrides or {})
    seg = data["segmentation"]
    merged = {**seg["params"], **params} if seg["backend"] == backend else dict(params)
    data["segmentation"] = {**seg, "backend": backend, "params": merged}
    data["output"] = {**data["output"], "geojson": False, "geojson_gzip": False, "h5ad": False, "zarr": False,
                      "csv": False, "label_image": False, "parquet": True}
    data["analysis"] = None
    return config_from_dict(data, f"evaluation set {s.label}")


def run_outlines(item: dict, s: EvalSet, backend: str, params: dict, work: Path, overrides: dict | None = None,
                 columns: tuple[str, ...] = ()):
    """One labelled image through :func:`slidecell.run` (as scanned at ``s.scan_mpp``, else
    natively). Returns the outlines (level-0 pixels of the run's image), the table's
    ``columns``, the run's native pixels per run pixel, and the seconds the run took."""
    import pyarrow.parquet as pq
    import shapely
    import tifffile

    from .engine import run
    from .datasets import resample_pair

    image = item["image"]
    h, w = image.shape[:2]
    scan = s.scan_mpp or item["mpp"]
    factor = item["mpp"] / scan  # run pixels per native pixel
    img = image
    if abs(factor - 1) > 1e-3:
        img, _ = resample_pair(image, np.zeros((h, w), np.int32), factor)
    else:
        factor = 1.0
    path = work / "image.tif"
    tifffile.imwrite(path, np.ascontiguousarray(img), photometric="rgb" if img.ndim == 3 else "minisblack")
    cfg = run_config(s, item["modality"], backend, params, overrides)
    t0 = time.perf_counter()
    res = run(path, cfg, work / "run", mpp=scan, overwrite=True, progress=False)
    seconds = time.perf_counter() - t0
    table = pq.read_table(res.outputs["parquet"], columns=["geometry", *columns])
    polys = shapely.from_wkb(table.column("geometry").to_numpy(zero_copy_only=False))
    cols = {c: table.column(c).to_numpy() for c in columns}
    return polys, cols, factor, seconds


def outlines_to_labels(polys: np.ndarray, shape: tuple[int, int], factor: float) -> np.ndarray:
    """Outlines in run pixels filled into a label image of ``shape`` (native pixels; ``factor``
    run pixels per native pixel): exactly the pixels whose centres lie inside, label k for the
    k-th outline."""
    from .io.label_image import rasterize_outlines

    labels = np.zeros(shape, np.int32)
    if len(polys):
        rasterize_outlines(labels, np.arange(1, len(polys) + 1), polys, 0.0, 0.0, factor)
    return labels


def segment_as_run(item: dict, s: EvalSet, backend: str, params: dict, work: Path,
                   overrides: dict | None = None) -> tuple[np.ndarray, float]:
    """:func:`run_outlines` filled into a label image at the image's native resolution.
    Returns (labels, seconds the run took)."""
    polys, _, factor, seconds = run_outlines(item, s, backend, params, work, overrides)
    return outlines_to_labels(polys, item["image"].shape[:2], factor), seconds


def run_backend(b: EvalBackend, params: dict, items: list[dict], s: EvalSet,
                work: Path | None = None) -> tuple[dict, list[np.ndarray]]:
    """Scores of one backend with ``params`` on a set's ``items`` under the set's protocol."""
    from .metrics import SetScore
    from .segment import get_segmenter

    segmenters: dict[tuple, Any] = {}
    score = SetScore()
    seconds = 0.0
    pixels = 0
    preds = []
    for it in items:
        if s.protocol == "run":
            if work is None:
                raise ValueError("protocol 'run' needs a work folder")
            pred, sec = segment_as_run(it, s, b.backend, params, work, b.overrides)
            seconds += sec
        else:
            key = (it["mpp"], it["modality"])
            if key not in segmenters:
                segmenters[key] = get_segmenter(b.backend, params, ("Red", "Green", "Blue"), it["modality"], it["mpp"])
            seg = segmenters[key]
            seg.state = {}
            t0 = time.perf_counter()
            seg.calibrate([it["image"]])
            pred = seg.segment(it["image"])
            seconds += time.perf_counter() - t0
        pixels += it["labels"].size
        score.add(it["labels"], restrict_to_region(pred, it.get("region")))
        preds.append(pred)
    res = score.summary()
    res["s_per_MP"] = seconds / (pixels / 1e6) if pixels else float("nan")
    return res, preds


def evaluate(config_path: str | Path, out: str | Path | None = None, data_root: str | Path | None = None,
             only: list[str] | None = None, append: bool = False, log=print,
             only_sets: list[str] | None = None) -> dict:
    """Score the backends of a config (or ``only`` those labels, on ``only_sets`` of its sets).
    With ``append``, results already in ``out/evaluation.json`` for the same sets are kept for
    every (backend, set) not scored now, so peers that live in their own environment can be run
    separately and still land in one table."""

    cfg = load_eval_config(config_path)
    root = Path(data_root or cfg.data_root)
    if not root.is_dir():
        raise ConfigError(f"data_root {root}: no such folder")
    backends = [b for b in cfg.backends if not only or b.label in only]
    if only and len(backends) != len(set(only)):
        known = [b.label for b in cfg.backends]
        raise ConfigError(f"--backend {only}: not all in the config's backends {known}")
    if only_sets:
        unknown = [x for x in only_sets if x not in [s.label for s in cfg.sets]]
        if unknown:
            raise ConfigError(f"--set {unknown}: not among the config's sets {[s.label for s in cfg.sets]}")
    chosen_sets = [s for s in cfg.sets if not only_sets or s.label in only_sets]
    sets = {s.label: load_set(root, s) for s in chosen_sets}
    results: dict = {"config": cfg.model_dump(mode="json"), "results": {}, "skipped": {}}
    with tempfile.TemporaryDirectory(prefix="slidecell-eval-") as tmp:
        _score_backends(cfg, chosen_sets, backends, sets, Path(tmp), results, log)
    if out is not None and append and (Path(out) / "evaluation.json").exists():
        old = json.loads((Path(out) / "evaluation.json").read_text())
        if old["config"]["sets"] != results["config"]["sets"]:
            raise ConfigError(f"{out}/evaluation.json was made on other sets; cannot append")
        merged = {k: dict(v) for k, v in old["results"].items()}
        for k, per_set in results["results"].items():
            merged.setdefault(k, {}).update(per_set)
        order = [b.label for b in cfg.backends]
        results["results"] = dict(sorted(merged.items(), key=lambda kv: order.index(kv[0]) if kv[0] in order else 99))
        results["skipped"] = {k: v for k, v in {**old.get("skipped", {}), **results["skipped"]}.items()
                              if k not in results["results"]}
    if out is not None:
        from .io.atomic import atomic_path

        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        with atomic_path(out / "evaluation.json") as tmp:
            Path(tmp).write_text(json.dumps(results, indent=1))
        with atomic_path(out / "evaluation.md") as tmp:
            Path(tmp).write_text(markdown_table(results, cfg))
    return results


def _score_backends(cfg: EvalConfig, chosen_sets: list[EvalSet], backends: list[EvalBackend], sets: dict,
                    work: Path, results: dict, log) -> None:
    from .segment import get_segmenter

    for b in backends:
        try:
            # building the backend once up front: a missing package or weights file shows here
            get_segmenter(b.backend, b.params, ("Red", "Green", "Blue"), "brightfield", 0.5)
        except ConfigError as err:
            if b.optional:
                results["skipped"][b.label] = str(err)
                log(f"{b.label}: skipped ({err})")
                continue
            raise
        per_set = {}
        for s in chosen_sets:
            items = sets[s.label]
            params = dict(b.params)
            chosen = {}
            if b.sweep:
                keys = list(b.sweep)
                best = None
                tried = []
                for values in itertools.product(*(b.sweep[k] for k in keys)):
                    trial = {**params, **dict(zip(keys, values))}
                    r, _ = run_backend(b, trial, items[: cfg.sweep_images], s, work)
                    tried.append({**dict(zip(keys, values)), "mSA": r["mSA"]})
                    if best is None or r["mSA"] > best[0]:
                        best = (r["mSA"], dict(zip(keys, values)))
                chosen = best[1]
                params.update(chosen)
            r, _ = run_backend(b, params, items, s, work)
            if chosen:
                r["chosen"] = chosen
                r["sweep"] = tried
            per_set[s.label] = r
            log(f"{b.label:>18} on {s.label:<34} mSA {r['mSA']:.3f}  F1@0.5 {r['F1_50']:.3f}  "
                f"P {r['precision']:.3f}  R {r['recall']:.3f}  PQ {r['PQ']:.3f}  AJI {r['AJI']:.3f}  "
                f"{r['s_per_MP']:.2f} s/MP" + (f"  {chosen}" if chosen else ""))
        results["results"][b.label] = per_set


def markdown_table(results: dict, cfg: EvalConfig) -> str:
    lines = ["| set | protocol | images | nuclei | backend | objects | mSA | F1@0.5 | precision | recall | PQ | AJI "
             "| s/MP | chosen |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for s in cfg.sets:
        for label, per_set in results["results"].items():
            r = per_set.get(s.label)
            if not r:
                continue
            chosen = ", ".join(f"{k}={v}" for k, v in r.get("chosen", {}).items())
            proto = s.protocol + (f" as {s.scan_mpp} µm/px" if s.scan_mpp else "") + \
                (f" {s.eval_mpp} µm/px" if s.eval_mpp else "")
            lines.append(f"| {s.label} | {proto} | {r['images']} | {r['nuclei_true']} | {label} | {r['nuclei_pred']} | "
                         f"{r['mSA']:.3f} | {r['F1_50']:.3f} | {r['precision']:.3f} | {r['recall']:.3f} | "
                         f"{r['PQ']:.3f} | {r['AJI']:.3f} | {r['s_per_MP']:.2f} | {chosen} |")
    for label, why in results.get("skipped", {}).items():
        lines.append(f"\n{label}: skipped ({why})")
    return "\n".join(lines) + "\n"
