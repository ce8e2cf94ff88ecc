"""Nuclear and membrane channels found by name (slidecell.segment.channels)."""

from __future__ import annotations


def test_nuclear_channels_found_by_name():
    from slidecell.segment.channels import nuclear_channel_indices

    names = ["HH3", "dsDNA", "DNA1", "DNA_2", "Ir191", "DNA1(Ir193Di)", "Histone H3", "Hoechst 33342".replace(" ", ""),
             "DAPI", "CD3", "CD45", "NaKATPase", "Keratin-pan", "HLA-DR", "PD1"]
    assert [names[i] for i in nuclear_channel_indices(names, [])] == names[:9]


def test_membrane_channels_found_by_name():
    """Markers that outline (nearly) every cell of a kind are found, IMC metal tags dropped;
    nuclear and lineage markers of few cells are not; naming them overrides; none found is an
    error that says what to set."""
    import pytest

    from slidecell.errors import ConfigError
    from slidecell.segment.channels import membrane_channel_indices

    membrane = ["NaKATPase", "Na-K-ATPase", "Membrane", "E-cadherin", "ECad", "CDH1", "PanCK", "Keratin-pan",
                "pan-Cytokeratin", "CD45", "CD45RO", "HLA-Class-1", "HLA-ABC", "beta-catenin", "CD44", "CD98",
                "Vimentin", "EpCAM", "CD45(Sm152Di)", "Ecad_Nd143"]
    other = ["HH3", "DAPI", "DNA1(Ir191Di)", "CD3", "CD20", "CD68", "Ki67", "SMA", "HLA-DR", "PD1", "FoxP3"]
    names = membrane + other
    assert [names[i] for i in membrane_channel_indices(names, [])] == membrane
    assert membrane_channel_indices(names, ["CD3", "SMA"]) == [names.index("CD3"), names.index("SMA")]
    with pytest.raises(ConfigError, match="membrane_channels"):
        membrane_channel_indices(other, [])


def test_membrane_channels_weigh_alike_whatever_their_scale():
    """Each channel's slide-level scale is the 99th percentile of its non-zero pixels over the
    calibration windows; the combined signal is the mean of the channels each divided by it, so a
    marker counted 100× higher does not drown the others (Cellpose's membrane input and the
    membrane growth both read it)."""
    import numpy as np

    from slidecell.segment.channels import channel_scales, scaled_mean

    rng = np.random.default_rng(0)
    a = rng.integers(1, 101, (64, 64)).astype(np.float32)  # counts 1-100
    img = np.stack([a, 100 * a[::-1], np.zeros_like(a)], axis=2)  # second marker 100× higher, third empty
    windows = [img[:32], img[32:]]
    scales = channel_scales(windows, [0, 1, 2])
    assert scales[0] == np.percentile(a, 99) and scales[1] == np.percentile(100 * a, 99) and scales[2] == 1.0
    combined = scaled_mean(img, [0, 1], scales[:2])
    assert np.allclose(combined, (a / scales[0] + 100 * a[::-1] / scales[1]) / 2, rtol=1e-6)
    assert abs(combined.mean() - 0.5 * (a.mean() / scales[0] + 100 * a.mean() / scales[1])) < 1e-3
    assert np.allclose(scaled_mean(img[:, :, 0], [0], scales[:1]), a / scales[0], rtol=1e-6)
