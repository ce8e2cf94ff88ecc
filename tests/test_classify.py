"""The object classifier (slidecell.analysis.classify): trained on QuPath labels; its files never run code."""

from __future__ import annotations

import json

import anndata as ad
import numpy as np
import pandas as pd
import pytest

from slidecell.analysis.config import AnalysisConfig


# -- the H&E object classifier ----------------------------------------------------------------------
def _he_cells(n, rng, offset=0.0):
    """Two classes with separable morphology and colour: small round dark lymphocytes and large
    elongated paler tumour nuclei (with overlapping spreads)."""
    kind = rng.random(n) < 0.4
    area = np.where(kind, rng.normal(25, 6, n), rng.normal(55, 12, n)).clip(8)
    ecc = np.where(kind, rng.normal(0.45, 0.12, n), rng.normal(0.75, 0.1, n)).clip(0, 0.99)
    major = np.sqrt(4 * area / np.pi / np.sqrt(1 - ecc ** 2))
    minor = major * np.sqrt(1 - ecc ** 2)
    rgb = np.where(kind[:, None], rng.normal([80, 60, 140], 15, (n, 3)), rng.normal([130, 90, 170], 15, (n, 3)))
    x, y = rng.uniform(0, 20000, n) + offset, rng.uniform(0, 20000, n)
    obs = pd.DataFrame({"x": x, "y": y, "area_um2": area, "perimeter_um": np.pi * (major + minor) / 2,
                        "eccentricity": ecc, "solidity": rng.uniform(0.85, 1.0, n), "major_axis_um": major,
                        "minor_axis_um": minor}, index=[f"c{offset:.0f}_{i}" for i in range(n)])
    a = ad.AnnData(rgb.clip(0, 255).astype(np.float32), obs=obs)
    a.var_names = ["Red", "Green", "Blue"]
    return a, np.where(kind, "Lymphocyte", "Tumor")


def test_he_classifier_from_qupath_labels(tmp_path):
    """Cells labelled in QuPath (classified detections drawn around 400 cells, in QuPath's
    coordinates) train a classifier that reaches ≥ 90% on held-out cells."""
    import shapely

    from slidecell.analysis.classify import apply_classifier, labels_from_geojson, train_classifier

    rng = np.random.default_rng(7)
    train, truth = _he_cells(3000, rng)
    pick = rng.choice(len(train), 400, replace=False)
    feats = []
    for i in pick:  # QuPath coordinates = level-0 minus the bounds offset (100, 50)
        poly = shapely.Point(train.obs["x"].iloc[i] - 100, train.obs["y"].iloc[i] - 50).buffer(4)
        feats.append({"type": "Feature", "geometry": shapely.geometry.mapping(poly),
                      "properties": {"objectType": "detection", "classification": {"name": truth[i]}}})
    (tmp_path / "labels.geojson").write_text(json.dumps({"type": "FeatureCollection", "features": feats}))
    lab = labels_from_geojson(train, tmp_path / "labels.geojson", offset=(100, 50))
    assert lab.notna().sum() == 400 and (lab.dropna() == pd.Series(truth, index=train.obs_names)[lab.notna()]).all()
    info = train_classifier(train, lab, tmp_path / "model.skops")
    assert info["labelled_cells"] == 400 and info["oob_accuracy"] > 0.85
    test, truth_test = _he_cells(2000, np.random.default_rng(8), offset=50000)
    apply_classifier(test, tmp_path / "model.skops", "phenotype")
    acc = (test.obs["phenotype"].astype(str).to_numpy() == truth_test).mean()
    assert acc >= 0.90, acc
    # the analysis records what the classifier file held, not just where it was
    import hashlib

    from slidecell.analysis.analyze import analysis_inputs

    model = tmp_path / "model.skops"
    cfg = AnalysisConfig.model_validate({"phenotype": {"method": "classifier", "model": str(model)}})
    assert analysis_inputs(cfg) == {f"phenotype.model:{model}": hashlib.sha256(model.read_bytes()).hexdigest()}


class NotAForest:
    """An arbitrary class: skops would have to import and build it to load it."""

    def __init__(self):
        self.x = 1


def test_classifier_files_never_run_code(tmp_path):
    """A shared classifier file is data: a pickle (joblib) whose loading would run a command is
    refused without running it, as is a skops file holding types that are not a random forest."""
    import os
    import pickle

    import skops.io as sio

    from slidecell.analysis.classify import apply_classifier
    from slidecell.errors import InputError

    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    cells, _ = _he_cells(50, np.random.default_rng(1))
    for name in ("evil.joblib", "evil.skops", "evil.bin"):
        (tmp_path / name).write_bytes(pickle.dumps({"model": Evil(), "features": [], "classes": []}))
        with pytest.raises(InputError, match="skops format"):
            apply_classifier(cells, tmp_path / name)
    assert not marker.exists()
    sio.dump({"model": NotAForest(), "features": [], "classes": []}, tmp_path / "odd.skops")
    with pytest.raises(InputError, match="not part of a random forest"):
        apply_classifier(cells, tmp_path / "odd.skops")
    from sklearn.linear_model import LogisticRegression  # safe to load, but not our classifier

    sio.dump({"model": LogisticRegression(), "features": [], "classes": []}, tmp_path / "lr.skops")
    with pytest.raises(InputError, match="not a slidecell classifier"):
        apply_classifier(cells, tmp_path / "lr.skops")
    (tmp_path / "broken.skops").write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(InputError, match="not a readable classifier"):
        apply_classifier(cells, tmp_path / "broken.skops")
