"""Config validation and presets."""

from __future__ import annotations

import pytest

from slidecell.config import PRESET_DIR, Config, load_config
from slidecell.errors import ConfigError


def test_presets_are_valid():
    names = sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))
    assert {"he-brightfield", "multiplex-fluorescence"} <= set(names)
    for n in names:
        cfg = load_config(n)
        assert cfg.name == n
    assert load_config("he-brightfield").tissue.modality == "brightfield"
    assert load_config(None) == Config()


def test_unknown_key_and_bad_value_are_named(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("tiling:\n  tile_sise: 512\n  mpp: -0.5\nsegmentation:\n  backend: stardust\n")
    with pytest.raises(ConfigError) as err:
        load_config(p)
    msg = str(err.value)
    assert str(p) in msg
    assert "unknown key 'tiling.tile_sise' (value 512)" in msg
    assert "'tiling.mpp' = -0.5: Input should be greater than 0" in msg
    assert "'segmentation.backend' = 'stardust': unknown segmentation backend" in msg


def test_bad_yaml_and_missing_file(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("tiling: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(p)
    p.write_text("- just\n- a list\n")
    with pytest.raises(ConfigError, match="expected a mapping"):
        load_config(p)
    with pytest.raises(ConfigError, match="file not found.*presets: .*he-brightfield"):
        load_config(tmp_path / "missing.yaml")
    p.write_text("roi: [0, 0, -5, 10]\n")
    with pytest.raises(ConfigError, match="'roi'.*positive width"):
        load_config(p)


def test_fingerprint_ignores_parallelism():
    a = Config()
    b = load_config(None, {"reader": {"workers": 7}, "output": {"geojson": False}})
    c = load_config(None, {"tiling": {"tile_size": 512}})
    assert a.fingerprint() == b.fingerprint() != c.fingerprint()
