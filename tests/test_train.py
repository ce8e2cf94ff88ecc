"""`slidecell train` on a tiny synthetic annotated set: outputs, logging, reproducibility, resume,
and the guard against training on a test split."""

import json

import numpy as np
import pytest
import tifffile
import yaml
from PIL import Image

from slidecell.cli import main
from slidecell.errors import ConfigError
from slidecell.segment.builtin.model import Predictor, load_weights
from slidecell.train import load_train_config, train


def make_set(root, n=6, size=64, radius=5, centres=None):
    """A toy annotated set: ``n`` images of dark disks of ``radius`` px on a light background, at
    random places (or near ``centres``, jittered by up to 6 px), labels beside them."""
    rng = np.random.default_rng(0)
    folder = root / "toy"
    (folder / "images").mkdir(parents=True)
    (folder / "labels").mkdir()
    rows = ["image_id,kind,split"]
    yy, xx = np.mgrid[:size, :size]
    for i in range(n):
        lab = np.zeros((size, size), np.uint16)
        places = [rng.integers(8, size - 8, 2) for _ in range(5)] if centres is None else \
            [(cy + rng.integers(-6, 7), cx + rng.integers(-6, 7)) for cy, cx in centres]
        for k, (cy, cx) in enumerate(places, 1):
            lab[((yy - cy) ** 2 + (xx - cx) ** 2 <= radius**2) & (lab == 0)] = k
        img = np.full((size, size, 3), 230, np.uint8)
        img[lab > 0] = (90, 60, 140)
        img = np.clip(img + rng.normal(0, 8, img.shape), 0, 255).astype(np.uint8)
        Image.fromarray(img).save(folder / "images" / f"im{i}.png")
        tifffile.imwrite(folder / "labels" / f"im{i}.tif", lab)
        rows.append(f"im{i},histology_color,{['train', 'val', 'test'][i % 3] if i > 2 else 'train'}")
    (folder / "index.csv").write_text("\n".join(rows) + "\n")
    return root


def write_config(path, root, **over):
    cfg = {
        "name": "toy", "seed": 3, "data_root": str(root), "channels": [4, 8],
        "sets": [{"name": "toy", "mpp": 0.5, "train": {"split": "train"}, "val": {"split": "val"}}],
        "augment": {"patch": 32}, "epochs": 2, "steps_per_epoch": 3, "batch_size": 2, "threads": 1,
    }
    cfg.update(over)
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_train_tiny_run_logs_and_is_reproducible_and_resumable(tmp_path):
    root = make_set(tmp_path / "data")
    cfg = write_config(tmp_path / "toy.yaml", root)
    assert main(["train", str(cfg), "--out", str(tmp_path / "a")]) == 0
    lines = [json.loads(x) for x in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in lines] == [1, 2]
    assert all(np.isfinite(r["loss"]) and "val_mSA" in r for r in lines)
    assert yaml.safe_load((tmp_path / "a" / "config.yaml").read_text())["seed"] == 3
    _, meta = load_weights(tmp_path / "a" / "model.safetensors")
    assert meta.name == "toy" and meta.mpp == 0.5

    # interrupted after the first epoch, then the same command again: same final weights
    class Stop(Exception):
        pass

    def stop_after_first(msg):
        if msg.startswith("{") and json.loads(msg)["epoch"] == 1:
            raise Stop

    with pytest.raises(Stop):
        train(cfg, tmp_path / "b", log=stop_after_first)
    assert len((tmp_path / "b" / "metrics.jsonl").read_text().splitlines()) == 1
    train(cfg, tmp_path / "b", log=lambda m: None)
    ck_a = (tmp_path / "a" / "checkpoint.safetensors").read_bytes()
    ck_b = (tmp_path / "b" / "checkpoint.safetensors").read_bytes()
    assert ck_a == ck_b

    # the trained file runs through the predictor
    pred = Predictor.load(tmp_path / "a" / "model.safetensors")
    maps = pred.maps(np.zeros((1, 40, 40, 3), np.float32))
    assert maps.shape == (1, 3, 40, 40)


def test_train_refuses_test_split_and_config_change(tmp_path):
    root = make_set(tmp_path / "data")
    bad = write_config(tmp_path / "bad.yaml", root,
                       sets=[{"name": "toy", "mpp": 0.5, "train": {"split": "train|test"}}])
    with pytest.raises(ConfigError, match="test split"):
        load_train_config(bad)
    cfg = write_config(tmp_path / "toy.yaml", root, epochs=1)
    train(cfg, tmp_path / "run", log=lambda m: None)
    cfg2 = write_config(tmp_path / "toy2.yaml", root, epochs=1, seed=4)
    with pytest.raises(ConfigError, match="different config"):
        train(cfg2, tmp_path / "run", log=lambda m: None)
    assert main(["train", str(tmp_path / "missing.yaml"), "--out", str(tmp_path / "x")]) == 2


def test_train_bf16_channels_last_and_init_chain(tmp_path):
    """precision: bf16 trains with autocast + channels-last (as on CUDA, here on the CPU), starts from
    an earlier stage's weights, and the model card lists the stages to reproduce it."""
    import torch

    from slidecell.train.ship import init_chain, model_card

    root = make_set(tmp_path / "data")
    first = write_config(tmp_path / "first.yaml", root, name="first", epochs=1)
    train(first, tmp_path / "runs" / "first", log=lambda m: None)
    second = write_config(tmp_path / "second.yaml", root, name="second", epochs=1, precision="bf16",
                          init=str(tmp_path / "runs" / "first" / "model.safetensors"))
    train(second, tmp_path / "runs" / "second", log=lambda m: None)
    rec = json.loads((tmp_path / "runs" / "second" / "metrics.jsonl").read_text())
    assert np.isfinite(rec["loss"])
    net_a, _ = load_weights(tmp_path / "runs" / "first" / "model.safetensors")
    net_b, meta = load_weights(tmp_path / "runs" / "second" / "model.safetensors")
    # the weights moved from the initial ones and are stored as plain fp32 tensors
    a, b = net_a.state_dict(), net_b.state_dict()
    assert all(b[k].dtype == a[k].dtype for k in a)
    assert any(not torch.equal(a[k], b[k]) for k in a if a[k].is_floating_point())
    with pytest.raises(ConfigError, match="precision"):
        load_train_config(write_config(tmp_path / "bad.yaml", root, precision="fp8"))

    cfg = yaml.safe_load((tmp_path / "runs" / "second" / "config.yaml").read_text())  # resolved
    assert cfg["precision"] == "bf16"
    assert init_chain(cfg, configs=tmp_path) == ["first"]
    card = model_card(meta, cfg, [], None)
    assert "slidecell train configs/train/first.yaml --out runs/first" in card
