"""slidecell.analysis.auto: phenotypes with no analysis config, from what the channels allow."""

from __future__ import annotations

from slidecell.analysis.auto import choose, find_lineage_markers, gating_rules, marker_channels, tumor_immune_applicable


def test_lineage_markers_are_found_by_their_usual_names():
    names = ["DAPI", "Pan-Keratin", "E-cadherin", "CD45RO", "CD3e", "CD8a", "CD4", "CD20", "CD68", "HLA-DR", "αSMA",
             "HH3", "Ir191", "FoxP3"]
    found = find_lineage_markers(names)
    assert found == {"epithelial": ["Pan-Keratin", "E-cadherin"], "immune": ["CD45RO"], "t": ["CD3e"], "cd8": ["CD8a"],
                     "cd4": ["CD4"], "b": ["CD20"], "macrophage": ["CD68"], "stroma": ["αSMA"]}
    assert marker_channels(names) == [n for n in names if n not in ("DAPI", "HH3", "Ir191")]
    rules = {r.name: r for r in gating_rules(found)}
    assert set(rules) == {"Tumor", "Immune", "T cell", "CD8 T", "CD4 T", "B cell", "Macrophage", "Stroma"}
    assert rules["Tumor"].anypos == ["Pan-Keratin", "E-cadherin"] and rules["Tumor"].neg == ["CD45RO"]
    assert rules["CD8 T"].parent == "T cell" and rules["T cell"].parent == "Immune"
    assert rules["B cell"].neg == ["CD3e"]  # a B-cell marker on a T cell does not make it a B cell
    # no CD45: immune kinds hang from the top
    assert {r.name: r.parent for r in gating_rules(find_lineage_markers(["CD3", "CD20"]))} == {"T cell": "all",
                                                                                              "B cell": "all"}


def test_what_the_channels_allow():
    assert choose(["Red", "Green", "Blue"], False)[0] == "morphology"
    method, _, _, why = choose(["DAPI"], True)
    assert method == "morphology" and "Cell" in why
    method, rules, markers, why = choose(["DAPI", "FITC", "Cy3"], False)
    assert method == "leiden" and markers == ["FITC", "Cy3"] and not rules
    method, rules, markers, _ = choose(["DAPI", "PanCK", "CD45", "CD3"], False)
    assert method == "gating" and [r.name for r in rules] == ["Tumor", "Immune", "T cell"]


def test_tumour_immune_statistics_need_both_kinds():
    ok, why = tumor_immune_applicable(["Tumor", "T cell", "Stroma"], ["Tumor"], ["T cell"])
    assert ok and why == ""
    ok, why = tumor_immune_applicable(["Nucleus"] * 3, ["Tumor"], [])
    assert not ok and "no tumour phenotype" in why and "no immune phenotype" in why and "Nucleus" in why
    ok, why = tumor_immune_applicable(["Tumor", "Stroma"], ["Tumor"], [])
    assert not ok and "no immune phenotype" in why and "no tumour" not in why
