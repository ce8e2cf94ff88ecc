"""An object classifier for slides without markers (H&E): trained from cells a user labelled
in QuPath, applied to every cell, as QuPath users do with *Train object classifier*.

Labels come from a QuPath GeoJSON export: classified detections/cells (each labels the run's
cell whose centroid lies inside it, or the nearest within ``max_distance_px``), and classified
annotations (every cell whose centroid lies inside). Features are the cell table's morphology
and colour: per-channel means and, for RGB, optical densities and the haematoxylin / eosin /
DAB stains (colour deconvolution of the mean colour). The model is scikit-learn's random forest,
saved with its feature names and classes in skops' format (``.skops``), which cannot run code
when loaded: only the types a random forest is made of are accepted, anything else (and any
pickle or joblib file, which could run arbitrary code) is refused with a message.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import InputError
from ..table import MORPHOLOGY as TABLE_MORPHOLOGY

#: the shape features of the classifier: the table's first six shape columns (a trained model
#: lists its features, so adding the newer ones, circularity and calipers, would change what new
#: models learn from, not break older ones; not done: measured on nothing yet)
MORPHOLOGY = TABLE_MORPHOLOGY[:6]


def cell_features(adata) -> pd.DataFrame:
    """Per-cell features from an AnnData of a run: morphology, channel means, and for RGB the
    optical densities and H/E/DAB of the mean colour; plus derived shape ratios."""
    obs = adata.obs
    f = pd.DataFrame(index=adata.obs_names)
    for c in MORPHOLOGY:
        if c in obs:
            f[c] = obs[c].to_numpy(np.float64)
    if {"area_um2", "perimeter_um"} <= set(f.columns):
        f["circularity"] = 4 * np.pi * f["area_um2"] / np.maximum(f["perimeter_um"] ** 2, 1e-9)
    if {"major_axis_um", "minor_axis_um"} <= set(f.columns):
        f["aspect_ratio"] = f["major_axis_um"] / np.maximum(f["minor_axis_um"], 1e-9)
    X = np.asarray(adata.X.toarray() if hasattr(adata.X, "toarray") else adata.X, np.float64)
    names = list(adata.var_names)
    for j, n in enumerate(names):
        f[f"mean:{n}"] = X[:, j]
    for layer in adata.layers:
        L = np.asarray(adata.layers[layer], np.float64)
        for j, n in enumerate(names):
            f[f"{layer}:{n}"] = L[:, j]
    if names[:3] == ["Red", "Green", "Blue"]:
        from skimage.color import rgb2hed

        rgb = np.clip(X[:, :3] / 255.0, 1e-4, 1)
        od = -np.log10(rgb)
        for j, n in enumerate(["Red", "Green", "Blue"]):
            f[f"od:{n}"] = od[:, j]
        f["od:sum"] = od.sum(axis=1)
        hed = rgb2hed(rgb[None])[0]
        f["hematoxylin"], f["eosin"], f["dab"] = hed[:, 0], hed[:, 1], hed[:, 2]
    return f.replace([np.inf, -np.inf], np.nan).fillna(0.0)


def labels_from_geojson(adata, path, offset=(0, 0), max_distance_px: float = 10.0) -> pd.Series:
    """Each run cell's class from a QuPath GeoJSON of classified objects (None where
    unlabelled). Cells are matched by their level-0 centroid (``obs['x']``, ``obs['y']``)."""
    import shapely

    from ..io.qupath import read_qupath_geojson

    objs = read_qupath_geojson(path, offset)
    objs = objs[objs["classification"].notna()]
    if objs.empty:
        raise InputError(f"{path}: no classified objects to learn from")
    if not {"x", "y"} <= set(adata.obs.columns):
        raise InputError("the cells have no level-0 centroids (obs x, y): use a slidecell run's AnnData")
    xy = adata.obs[["x", "y"]].to_numpy(np.float64)
    pts = shapely.points(xy)
    tree = shapely.STRtree(pts)
    label = np.full(adata.n_obs, None, dtype=object)
    # annotations first (areas), then detections/cells on top (one cell each)
    for kind in ("annotation", "other"):
        sel = objs["object_type"].eq("annotation") if kind == "annotation" else ~objs["object_type"].eq("annotation")
        part = objs[sel]
        if part.empty:
            continue
        geoms = np.asarray(part["geometry"].to_numpy(), dtype=object)
        inside = tree.query(geoms, predicate="contains")  # (object index, cell index)
        classes = part["classification"].to_numpy()
        if kind == "annotation":
            label[inside[1]] = classes[inside[0]]
            continue
        hit = np.zeros(len(part), bool)
        hit[inside[0]] = True
        label[inside[1]] = classes[inside[0]]
        miss = np.flatnonzero(~hit)
        if len(miss):  # a labelled object holding no centroid: the nearest cell, if close
            cent = shapely.centroid(geoms[miss])
            idx, dist = tree.query_nearest(cent, return_distance=True, all_matches=False)
            ok = dist <= max_distance_px
            label[idx[1][ok]] = classes[miss[idx[0][ok]]]
    return pd.Series(label, index=adata.obs_names, name="label")


#: the only types a classifier file may hold beyond skops' own safe defaults
TRUSTED_TYPES = ("sklearn.tree._tree.Tree",)


def train_classifier(adata, labels: pd.Series, out, seed: int = 0, n_estimators: int = 300) -> dict:
    """Train a random forest on the labelled cells; save ``{model, features, classes}`` in skops'
    format at ``out``. Returns the out-of-bag accuracy and counts."""
    import skops.io as sio
    from sklearn.ensemble import RandomForestClassifier

    from ..io.atomic import atomic_path

    feats = cell_features(adata)
    known = labels.notna().to_numpy()
    if known.sum() < 10 or labels[known].nunique() < 2:
        raise InputError(f"need at least 10 labelled cells of 2 classes, got {int(known.sum())} of "
                         f"{labels[known].nunique()}")
    model = RandomForestClassifier(n_estimators=n_estimators, random_state=seed, oob_score=True, n_jobs=-1,
                                   class_weight="balanced")
    model.fit(feats.to_numpy()[known], labels[known].astype(str).to_numpy())
    bundle = {"model": model, "features": list(feats.columns), "classes": [str(c) for c in model.classes_]}
    with atomic_path(out) as tmp:
        sio.dump(bundle, tmp)
    return {"labelled_cells": int(known.sum()), "classes": {str(k): int(v) for k, v in labels[known].value_counts().items()},
            "oob_accuracy": float(model.oob_score_)}


def apply_classifier(adata, model_path, key: str = "phenotype") -> None:
    """``obs[key]`` (and ``obs[key + '_probability']``) from a saved classifier."""
    bundle = load_classifier(model_path)
    path = Path(model_path)
    feats = cell_features(adata)
    missing = [c for c in bundle["features"] if c not in feats.columns]
    if missing:
        raise InputError(f"{path}: the cells lack features the model was trained on: {missing[:5]}")
    X = feats[bundle["features"]].to_numpy()
    proba = bundle["model"].predict_proba(X)
    adata.obs[key] = pd.Categorical(np.asarray(bundle["classes"])[proba.argmax(axis=1)], categories=bundle["classes"])
    adata.obs[key + "_probability"] = proba.max(axis=1)


CLASSIFIED_NAME = "cells_classified.geojson"


def finished_run(run_dir: Path):
    """The record of a finished run that wrote ``cells.h5ad`` (what the classifier reads)."""
    from ..records import RunDir

    run = RunDir(run_dir)
    if not run.finished or not (run_dir / "cells.h5ad").is_file():
        raise InputError(f"{run_dir}: not a finished slidecell run with cells.h5ad (run `slidecell run` first, "
                         "or `slidecell export RUN --to h5ad`)")
    return run.record()


def classify_run(run_dir, model_path, out=None, overwrite: bool = False) -> tuple[Path, dict]:
    """Apply a classifier (:func:`train_classifier`) to a finished run's cells and write them as
    QuPath GeoJSON with their class (``classification {name, color}``) and the class probability
    (``Classification probability``), streamed from the run's cells; ``out`` defaults to
    ``RUN/cells_classified.geojson``. Returns the file and the count per class."""
    import anndata as ad

    from ..export import export

    run_dir = Path(run_dir)
    finished_run(run_dir)
    adata = ad.read_h5ad(run_dir / "cells.h5ad")
    apply_classifier(adata, model_path, "class")
    out = Path(out) if out is not None else run_dir / CLASSIFIED_NAME
    extra = pd.DataFrame({"class": adata.obs["class"].astype(str).to_numpy(),
                          "class_probability": adata.obs["class_probability"].to_numpy(np.float32)},
                         index=adata.obs_names)
    written = export(run_dir, "geojson", out, overwrite=overwrite, extra=extra)
    return written, {str(k): int(v) for k, v in adata.obs["class"].value_counts().items()}


def load_classifier(model_path) -> dict:
    """A classifier file written by :func:`train_classifier`, loaded without running any code
    from it: a pickle/joblib file, a damaged file or one holding other types is refused."""
    import zipfile

    import skops.io as sio

    path = Path(model_path)
    if not path.is_file():
        raise InputError(f"{path}: classifier model not found")
    with open(path, "rb") as fh:
        head = fh.read(4)
    if not head.startswith(b"PK"):
        kind = "a pickle/joblib file" if head[:1] == b"\x80" or path.suffix in (".joblib", ".pkl", ".pickle") \
            else "not a classifier file"
        raise InputError(f"{path}: {kind}; slidecell loads classifiers only in skops format (.skops), which "
                         "cannot run code when opened; train again with `slidecell classify train ... -o model.skops`")
    try:
        untrusted = sio.get_untrusted_types(file=path)
        unknown = [t for t in untrusted if t not in TRUSTED_TYPES]
        if unknown:
            raise InputError(f"{path}: refusing to load a classifier file holding types that are not part of a "
                             f"random forest: {unknown[:5]}")
        bundle = sio.load(path, trusted=untrusted)
    except (zipfile.BadZipFile, KeyError, ValueError, TypeError, OSError) as err:
        raise InputError(f"{path}: not a readable classifier file ({type(err).__name__})") from None
    from sklearn.ensemble import RandomForestClassifier

    if not isinstance(bundle, dict) or not {"model", "features", "classes"} <= set(bundle) or \
            not isinstance(bundle["model"], RandomForestClassifier):
        raise InputError(f"{path}: not a slidecell classifier (expected a random forest with its features and "
                         "classes)")
    return bundle


__all__ = ["cell_features", "labels_from_geojson", "train_classifier", "apply_classifier", "load_classifier"]
