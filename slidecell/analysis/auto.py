"""Phenotypes with no analysis config (``phenotype.method: auto``): what a run's channels allow.

* **Lineage markers found by name** (:data:`LINEAGE`, matched whole, ignoring case, ``-``,
  ``_`` and spaces): gating rules built from the markers present, in the usual hierarchy
  (Tumor = epithelial marker and not CD45; Immune = CD45; T cell = CD3 within Immune, CD8 T / CD4
  T within T cells; B cell, Macrophage, NK cell, Neutrophil within Immune; Stroma = a stromal
  marker and neither epithelial nor CD45). Gates are found per marker as in any gating.
* **Markers, none of them known**: Leiden clusters of the non-nuclear channels, each named by
  the markers it is high in (``FITC+``, ``FITC+Cy3+``) or ``<markers>−`` when it is low in all.
* **No markers** (H&E / brightfield RGB, or nuclear channels only): every object is one class,
  ``Nucleus`` (``Cell`` for whole cells). The analysis then reports density, morphology and
  spatial structure, and says why the tumour–immune statistics do not apply.

Nothing here invents a class the data cannot support: tumour–immune statistics are computed only
when a tumour phenotype and at least one immune phenotype are both present
(:func:`tumor_immune_applicable`).
"""

from __future__ import annotations

import re

import numpy as np

from ..segment.channels import NUCLEAR_NAME
from .phenotype import PhenotypeRule

#: lineage → channel names taken as its marker (documented in the README)
LINEAGE: dict[str, list[str]] = {
    "epithelial": ["panck", "pancytokeratin", "keratinpan", "pankeratin", "cytokeratin", "ck", "krt", "ecad",
                   "ecadherin", "cdh1", "epcam", "ck7", "ck8", "ck18", "ck19", "keratin"],
    "immune": ["cd45", "ptprc", "cd45ra", "cd45ro"],
    "t": ["cd3", "cd3e", "cd2", "cd5", "cd7"],
    "cd8": ["cd8", "cd8a"],
    "cd4": ["cd4"],
    "b": ["cd20", "ms4a1", "cd19", "cd79a", "pax5"],
    "macrophage": ["cd68", "cd163", "cd14", "cd11b", "cd206", "iba1"],
    "nk": ["cd56", "ncam1", "nkp46", "cd57"],
    "neutrophil": ["mpo", "cd15", "cd66b"],
    "stroma": ["sma", "asma", "acta2", "vimentin", "collagen", "collageni", "cd31", "pdgfrb", "fap", "podoplanin"],
}
#: brightfield colour channels: not markers
RGB = {"red", "green", "blue", "r", "g", "b"}


def _norm(name: str) -> str:
    return re.sub(r"[\s_\-–.()/]+", "", str(name).lower()).replace("α", "a")


def find_lineage_markers(names) -> dict[str, list[str]]:
    """{lineage: channel names} of :data:`LINEAGE` present among ``names``."""
    found: dict[str, list[str]] = {}
    for n in names:
        key = _norm(n)
        for lineage, aliases in LINEAGE.items():
            if key in aliases:
                found.setdefault(lineage, []).append(str(n))
    return found


def marker_channels(names) -> list[str]:
    """Channels that can carry a phenotype: neither nuclear (DAPI, HH3, Ir191...) nor RGB."""
    return [str(n) for n in names if not NUCLEAR_NAME.match(str(n).strip()) and _norm(n) not in RGB]


def gating_rules(found: dict[str, list[str]]) -> list[PhenotypeRule]:
    """The usual hierarchy over the lineages in ``found`` (empty when none is usable)."""
    rules: list[dict] = []
    epi, imm, strom = found.get("epithelial", []), found.get("immune", []), found.get("stroma", [])
    if epi:
        rules.append({"name": "Tumor", "anypos": epi, "neg": imm[:1]})
    parent = "all"
    if imm:
        rules.append({"name": "Immune", "pos": imm[:1]})
        parent = "Immune"
    immune_kinds = [("t", "T cell"), ("b", "B cell"), ("macrophage", "Macrophage"), ("nk", "NK cell"),
                    ("neutrophil", "Neutrophil")]
    t_markers = found.get("t", [])
    for lineage, name in immune_kinds:
        markers = found.get(lineage, [])
        if markers:
            neg = t_markers[:1] if lineage != "t" and t_markers else []
            rules.append({"name": name, "parent": parent, "anypos": markers, "neg": neg})
    if t_markers:
        cd8, cd4 = found.get("cd8", [])[:1], found.get("cd4", [])[:1]
        if cd8:
            rules.append({"name": "CD8 T", "parent": "T cell", "pos": cd8, "neg": cd4})
        if cd4:
            rules.append({"name": "CD4 T", "parent": "T cell", "pos": cd4, "neg": cd8})
    if strom:
        rules.append({"name": "Stroma", "anypos": strom, "neg": imm[:1] + epi[:1]})
    for r in rules:
        r["anypos"] = list(dict.fromkeys(r.get("anypos", [])))
    return [PhenotypeRule.model_validate(r) for r in rules]


def choose(names, whole_cells: bool) -> tuple[str, list[PhenotypeRule], list[str], str]:
    """(method, gating rules, clustering markers, why) for channels ``names``: ``gating`` with
    rules from known lineage markers, ``leiden`` on the other markers, or ``morphology`` (one
    class) when there are no markers."""
    found = find_lineage_markers(names)
    rules = gating_rules(found)
    markers = marker_channels(names)
    if rules:
        used = sorted({m for r in rules for m in r.markers()})
        return "gating", rules, [], f"gating on the lineage markers found by name: {', '.join(used)}"
    if markers:
        return "leiden", [], markers, (f"no known lineage marker among {list(map(str, names))}: Leiden clusters of "
                                       f"{', '.join(markers)}, named by the markers each is high in")
    kind = "Cell" if whole_cells else "Nucleus"
    return "morphology", [], [], (f"no marker channels ({', '.join(map(str, names)) or 'none'}): every object is "
                                  f"one class, {kind}; density, morphology and spatial structure only")


#: the immune phenotypes :func:`gating_rules` makes
IMMUNE = ["Immune", "T cell", "CD8 T", "CD4 T", "B cell", "Macrophage", "NK cell", "Neutrophil"]


def tumor_immune_applicable(labels, tumor: list[str], immune: list[str]) -> tuple[bool, str]:
    """Whether tumour–immune statistics mean something for these phenotypes, and why not."""
    present = set(map(str, np.unique(np.asarray(labels, dtype=str))))
    has_t = sorted(present & set(tumor))
    has_i = sorted(present & set(immune))
    if has_t and has_i:
        return True, ""
    missing = []
    if not has_t:
        missing.append(f"no tumour phenotype ({', '.join(tumor) or 'none named'} in tumor.tumor)")
    if not has_i:
        missing.append("no immune phenotype")
    return False, "not applicable: " + " and ".join(missing) + " among the phenotypes " + ", ".join(sorted(present))


__all__ = ["LINEAGE", "IMMUNE", "find_lineage_markers", "marker_channels", "gating_rules", "choose", "tumor_immune_applicable"]
