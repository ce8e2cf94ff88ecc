"""``slidecell evaluate CONFIG``: every backend on the same labelled images, side by side.

For each set and backend: mSA, SA@0.5, F1@0.5, PQ, AJI (see :mod:`slidecell.metrics`) and
seconds per megapixel (native pixels of the evaluated images, slide-level calibration included,
each image treated as its own slide). A backend may list a ``sweep`` of parameter values (e.g.
Cellpose's diameter); each value is tried on the first ``sweep_images`` images of a set, the
best by mSA is then run on the whole set and reported with the value chosen.
"""

from __future__ import annotations

import itertools
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .errors import ConfigError


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class EvalSet(_Strict):
    label: str
    name: str
    where: dict[str, str] = Field(default_factory=dict)
    mpp: float | None = None
    #: resample images and labels to this µm/px before scoring (None: score at native resolution)
    eval_mpp: float | None = Field(None, gt=0)
    note: str = ""


class EvalBackend(_Strict):
    label: str
    backend: str
    params: dict[str, Any] = Field(default_factory=dict)
    sweep: dict[str, list[Any]] = Field(default_factory=dict)
    #: skip (with a note) instead of failing when the backend cannot be built here
    optional: bool = False


class EvalConfig(_Strict):
    data_root: str = "../shared/data/nuclei"
    sets: list[EvalSet]
    backends: list[EvalBackend]
    sweep_images: int = Field(12, ge=1)


def load_eval_config(path: str | Path) -> EvalConfig:
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text()) or {}
        return EvalConfig.model_validate(data)
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such evaluation config") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from None
    except ValidationError as err:
        from .config import _format_errors

        raise ConfigError(_format_errors(str(path), err)) from None


def load_set(root: Path, s: EvalSet) -> list[dict]:
    """Images of a set at native resolution: dicts with id, image, labels, mpp, modality."""
    from .train.data import load_pair, read_index, resample_pair, row_modality, row_mpp, select

    folder = root / s.name
    rows = select(read_index(folder), s.where)
    if not rows:
        raise ConfigError(f"evaluation set {s.label!r}: the filter {s.where} selects no image in {folder}")
    out = []
    for row in rows:
        img, lab = load_pair(folder, row)
        mpp = row_mpp(row, s.mpp)
        if s.eval_mpp is not None:
            img, lab = resample_pair(img, lab, mpp / s.eval_mpp)
            mpp = s.eval_mpp
        out.append({"id": row["image_id"], "image": img, "labels": lab, "mpp": mpp,
                    "modality": row_modality(row)})
    return out


def run_backend(b: EvalBackend, params: dict, items: list[dict]) -> tuple[dict, list[np.ndarray]]:
    from .metrics import SetScore
    from .segment import get_segmenter

    segmenters: dict[tuple, Any] = {}
    score = SetScore()
    seconds = 0.0
    pixels = 0
    preds = []
    for it in items:
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
        score.add(it["labels"], pred)
        preds.append(pred)
    res = score.summary()
    res["s_per_MP"] = seconds / (pixels / 1e6) if pixels else float("nan")
    return res, preds


def evaluate(config_path: str | Path, out: str | Path | None = None, data_root: str | Path | None = None,
             only: list[str] | None = None, append: bool = False, log=print) -> dict:
    """Score the backends of a config (or ``only`` those labels). With ``append``, results of other
    backends already in ``out/evaluation.json`` for the same sets are kept, so peers that live in
    their own environment can be run separately and still land in one table."""
    from .segment import get_segmenter

    cfg = load_eval_config(config_path)
    root = Path(data_root or cfg.data_root)
    if not root.is_dir():
        raise ConfigError(f"data_root {root}: no such folder")
    backends = [b for b in cfg.backends if not only or b.label in only]
    if only and len(backends) != len(set(only)):
        known = [b.label for b in cfg.backends]
        raise ConfigError(f"--backend {only}: not all in the config's backends {known}")
    sets = {s.label: load_set(root, s) for s in cfg.sets}
    results: dict = {"config": cfg.model_dump(mode="json"), "results": {}, "skipped": {}}
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
        for s in cfg.sets:
            items = sets[s.label]
            params = dict(b.params)
            chosen = {}
            if b.sweep:
                keys = list(b.sweep)
                best = None
                tried = []
                for values in itertools.product(*(b.sweep[k] for k in keys)):
                    trial = {**params, **dict(zip(keys, values))}
                    r, _ = run_backend(b, trial, items[: cfg.sweep_images])
                    tried.append({**dict(zip(keys, values)), "mSA": r["mSA"]})
                    if best is None or r["mSA"] > best[0]:
                        best = (r["mSA"], dict(zip(keys, values)))
                chosen = best[1]
                params.update(chosen)
            r, _ = run_backend(b, params, items)
            if chosen:
                r["chosen"] = chosen
                r["sweep"] = tried
            per_set[s.label] = r
            log(f"{b.label:>18} on {s.label:<28} mSA {r['mSA']:.3f}  F1@0.5 {r['F1_50']:.3f}  "
                f"PQ {r['PQ']:.3f}  AJI {r['AJI']:.3f}  {r['s_per_MP']:.2f} s/MP" + (f"  {chosen}" if chosen else ""))
        results["results"][b.label] = per_set
    if out is not None and append and (Path(out) / "evaluation.json").exists():
        old = json.loads((Path(out) / "evaluation.json").read_text())
        if old["config"]["sets"] != results["config"]["sets"]:
            raise ConfigError(f"{out}/evaluation.json was made on other sets; cannot append")
        merged = {k: v for k, v in old["results"].items() if k not in results["results"]}
        merged.update(results["results"])
        order = [b.label for b in cfg.backends]
        results["results"] = dict(sorted(merged.items(), key=lambda kv: order.index(kv[0]) if kv[0] in order else 99))
        results["skipped"] = {k: v for k, v in {**old.get("skipped", {}), **results["skipped"]}.items()
                              if k not in results["results"]}
    if out is not None:
        from .io.writers import atomic_path

        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        with atomic_path(out / "evaluation.json") as tmp:
            Path(tmp).write_text(json.dumps(results, indent=1))
        with atomic_path(out / "evaluation.md") as tmp:
            Path(tmp).write_text(markdown_table(results, cfg))
    return results


def markdown_table(results: dict, cfg: EvalConfig) -> str:
    lines = ["| set | images | nuclei | backend | mSA | F1@0.5 | PQ | AJI | s/MP | chosen |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for s in cfg.sets:
        for label, per_set in results["results"].items():
            r = per_set.get(s.label)
            if not r:
                continue
            chosen = ", ".join(f"{k}={v}" for k, v in r.get("chosen", {}).items())
            lines.append(f"| {s.label} | {r['images']} | {r['nuclei_true']} | {label} | {r['mSA']:.3f} | "
                         f"{r['F1_50']:.3f} | {r['PQ']:.3f} | {r['AJI']:.3f} | {r['s_per_MP']:.2f} | {chosen} |")
    for label, why in results.get("skipped", {}).items():
        lines.append(f"\n{label}: skipped ({why})")
    return "\n".join(lines) + "\n"
