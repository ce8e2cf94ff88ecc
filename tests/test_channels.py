"""Nuclear and membrane channels found by name (slidecell.segment.channels)."""

from __future__ import annotations


def test_nuclear_channels_found_by_name():
    from slidecell.segment.channels import nuclear_channel_indices

    names = ["HH3", "dsDNA", "DNA1", "DNA_2", "Ir191", "DNA1(Ir193Di)", "Histone H3", "Hoechst 33342".replace(" ", ""),
             "DAPI", "CD3", "CD45", "NaKATPase", "Keratin-pan", "HLA-DR", "PD1"]
    assert [names[i] for i in nuclear_channel_indices(names, [])] == names[:9]
