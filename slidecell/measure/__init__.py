"""Per-cell measurements from a label image and its tile: vectorized, no Python loop per cell.
:class:`MeasureSpec` says what is measured; :mod:`.shape`, :mod:`.intensity` and :mod:`.stains`
measure it.

Moments and areas come from ``np.bincount`` over the label image's foreground, intensities
(per compartment and statistic) from :func:`intensity_stats`; perimeter and solidity come with
the outlines (slidecell.polygons).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .intensity import (COMPARTMENTS, STATISTICS, compartment_labels, expand_nuclei,  # noqa: F401
                        grow_along_membrane, intensity_stats, membrane_ring, percentile_name, split_means)
from .shape import (calipers, circularity, ellipse_axes, label_moments, nucleus_shape_columns,  # noqa: F401
                    shape_columns)
from .stains import DEFAULT_STAINS, estimate_stains, stain_matrix, stain_od  # noqa: F401


@dataclass(frozen=True)
class MeasureSpec:
    """What is measured per cell (made from the ``measure`` config for one slide): the channels
    (indices into the tile and their names), how whole cells are formed and which compartment ×
    statistic layers are computed. Picklable; travels with the engine's tile context."""

    channel_index: tuple[int, ...]
    channel_names: tuple[str, ...]
    expand_px: float = 0.0
    membrane_px: float = 1.0
    compartments: tuple[str, ...] = ("cell",)
    statistics: tuple[str, ...] = ("mean",)
    percentiles: tuple[float, ...] = ()
    #: the objects' ids mean something (a given label image): kept as ``mask_label``
    source_labels: bool = False
    #: what the segmentation's objects are: "nuclei" (grown into cells when ``expand_px``),
    #: "cells" (a whole-cell mask; no nucleus compartment) or "cells+nuclei" (a whole-cell
    #: backend that also finds the nuclei)
    objects: str = "nuclei"
    #: the segmentation scores its objects: kept as ``confidence``
    confidence: bool = False
    #: brightfield stains measured as mean optical density (the tile's first three channels are
    #: R, G, B): ``((name, (r, g, b)), ...)`` and the background RGB
    stain_vectors: tuple = ()
    stain_background: tuple[float, float, float] = (255.0, 255.0, 255.0)
    #: how nuclei grow into cells (``expand_px``): "distance" or "membrane" (along the membrane
    #: channels ``membrane_index``, each divided by its slide-level ``membrane_scale``, smoothed by
    #: ``membrane_sigma_px``, skimage's ``compactness``)
    growth: str = "distance"
    membrane_index: tuple[int, ...] = ()
    membrane_names: tuple[str, ...] = ()
    membrane_scale: tuple[float, ...] = ()
    membrane_sigma_px: float = 0.0
    compactness: float = 0.0

    @classmethod
    def from_config(cls, measure, channel_names, expansion_um: float, mpp: float,
                    source_labels: bool = False, objects: str = "nuclei", confidence: bool = False,
                    modality: str | None = None, growth=None) -> "MeasureSpec":
        """From a :class:`slidecell.config.MeasureConfig` (and the segmentation's
        :class:`~slidecell.config.CellGrowthConfig`); errors name the offending key."""
        from ..errors import ConfigError
        from ..io.base import channel_indices

        names = list(channel_names)
        rgb = tuple(names[:3]) == ("Red", "Green", "Blue")
        stains = measure.stains
        if stains == "auto":
            stains = "H&E" if rgb and modality == "brightfield" else "none"
        if stains == "estimate":  # H&E until the slide's own are estimated (with_stains)
            stains = "H&E"
        if stains != "none" and not rgb:
            raise ConfigError(f"measure.stains: stain optical densities need an RGB brightfield image; this one has "
                              f"channels {names}")
        vectors = () if stains == "none" else DEFAULT_STAINS[stains] if isinstance(stains, str) else \
            tuple((k, tuple(v)) for k, v in stains.items())
        stain_kw = {}
        if vectors:
            stain_kw = {"stain_vectors": tuple((k, tuple(map(float, v))) for k, v in vectors),
                        "stain_background": tuple(map(float, measure.stain_background or (255, 255, 255)))}
        wanted = list(measure.channels) or names
        channel_indices(wanted, names, "measure.channels")
        if objects != "nuclei" and expansion_um > 0:
            raise ConfigError("segmentation.cell_expansion_um: the objects are already cells "
                              f"(segmentation objects: {objects}); set it to 0")
        whole = expansion_um > 0 or objects != "nuclei"
        comps = []
        for comp in measure.compartments:
            if comp in ("cytoplasm", "nucleus") and objects == "cells":
                raise ConfigError(f"measure.compartments: '{comp}' needs nuclei; the objects are cells "
                                  "(segmentation.objects: cells)")
            if not whole and comp == "cytoplasm":
                raise ConfigError("measure.compartments: 'cytoplasm' needs whole cells; set "
                                  "segmentation.cell_expansion_um (e.g. 3)")
            comps.append("nucleus" if not whole and comp == "cell" else comp)
        grow_kw = {}
        if growth is not None and growth.method == "membrane" and expansion_um > 0 and objects == "nuclei":
            from ..segment.channels import membrane_channel_indices

            idx = membrane_channel_indices(names, growth.membrane_channels)
            grow_kw = {"growth": "membrane", "membrane_index": tuple(idx), "membrane_names": tuple(names[i] for i in idx),
                       "membrane_scale": (1.0,) * len(idx), "membrane_sigma_px": growth.smooth_um / mpp,
                       "compactness": float(growth.compactness)}
        return cls(tuple(names.index(c) for c in wanted), tuple(wanted), expansion_um / mpp, measure.membrane_um / mpp,
                   tuple(dict.fromkeys(comps)), tuple(dict.fromkeys(measure.statistics)),
                   tuple(measure.percentiles), source_labels, objects, confidence, **stain_kw, **grow_kw)

    @classmethod
    def means(cls, channel_names) -> "MeasureSpec":
        """The mean of every channel over each object, nothing else."""
        return cls(tuple(range(len(channel_names))), tuple(channel_names), compartments=())

    def grow(self, nuclei: np.ndarray, image: np.ndarray) -> np.ndarray:
        """The whole cells of a window's nuclei (the nuclei when nothing grows them)."""
        if self.expand_px <= 0:
            return nuclei
        if self.growth != "membrane":
            return expand_nuclei(nuclei, self.expand_px)
        return grow_along_membrane(nuclei, self.membrane_signal(image), self.expand_px, self.membrane_sigma_px,
                                   self.compactness)

    def membrane_signal(self, image: np.ndarray) -> np.ndarray:
        """The mean of the membrane channels of an H×W×C window, each divided by its slide-level scale."""
        from ..segment.channels import scaled_mean

        return scaled_mean(image, self.membrane_index, self.membrane_scale)

    def membrane_scales(self, samples) -> list[float]:
        """The membrane channels' slide-level scales (:func:`slidecell.segment.channels.channel_scales`
        over the calibration windows ``samples``; [] without membrane growth)."""
        if self.growth != "membrane":
            return []
        from ..segment.channels import channel_scales

        return channel_scales(samples, self.membrane_index)

    def with_membrane_scales(self, scales) -> "MeasureSpec":
        import dataclasses

        return dataclasses.replace(self, membrane_scale=tuple(max(float(v), 1e-6) for v in scales))

    def describe_growth(self, mpp: float) -> dict | None:
        """How nuclei became cells (run.json): the method and distance, and the membrane channels
        followed with their slide-level scales; None without growth."""
        if self.expand_px <= 0:
            return None
        out = {"method": self.growth, "distance_um": round(self.expand_px * mpp, 6)}
        if self.growth == "membrane":
            out.update(membrane_channels=list(self.membrane_names), membrane_scales=list(self.membrane_scale),
                       smooth_um=round(self.membrane_sigma_px * mpp, 6), compactness=self.compactness)
        return out

    @property
    def whole_cells(self) -> bool:
        """The objects are cells (grown from nuclei, or segmented as cells)."""
        return self.expand_px > 0 or self.objects != "nuclei"

    @property
    def with_nuclei(self) -> bool:
        """Cells with their nuclei: both outlines and the nucleus/cytoplasm compartments exist."""
        return self.expand_px > 0 or self.objects == "cells+nuclei"

    @property
    def primary(self) -> str:
        """The compartment whose mean is ``X``: the cell, or the nucleus without whole cells."""
        return "cell" if self.whole_cells else "nucleus"

    def _plan(self) -> dict[str, tuple[list[str], list[float]]]:
        plan = {self.primary: (["mean"], [])}
        for comp in self.compartments:
            stats, pcts = plan.setdefault(comp, ([], []))
            stats.extend(s for s in self.statistics if s not in stats)
            pcts.extend(q for q in self.percentiles if q not in pcts)
        return plan

    def layers(self) -> list[str]:
        """``<compartment>_<statistic>`` for every measured pair except the primary mean (X)."""
        out = []
        for comp, (stats, pcts) in self._plan().items():
            out += [f"{comp}_{s}" for s in stats + [percentile_name(q) for q in pcts] if (comp, s) != (self.primary, "mean")]
        return out

    def with_stains(self, vectors) -> "MeasureSpec":
        """This spec measuring the stains ``((name, (r, g, b)), ...)`` (e.g. estimated on the slide)."""
        import dataclasses

        return dataclasses.replace(self, stain_vectors=tuple((k, tuple(map(float, v))) for k, v in vectors))

    @property
    def stains(self) -> tuple[str, ...]:
        """The names of the stains measured."""
        return tuple(k for k, _ in self.stain_vectors)

    def od_compartments(self) -> tuple[str, ...]:
        """Where the stains' optical densities are measured: the nucleus, and with whole cells
        its cytoplasm and the cell (as QuPath's cell detection)."""
        if not self.stains:
            return ()
        return ("nucleus", "cytoplasm", "cell") if self.with_nuclei else (self.primary,)

    def od_columns(self) -> list[str]:
        return [f"{comp}_od_{stain}" for comp in self.od_compartments() for stain in self.stains]

    def schema(self):
        from ..table import CellSchema

        return CellSchema(self.channel_names, tuple(self.layers()), self.with_nuclei, self.source_labels,
                          self.confidence, tuple(self.od_columns()))

    def measure_stains(self, nuclei: np.ndarray, cells: np.ndarray | None, image: np.ndarray, ids: np.ndarray) -> dict:
        """``{<compartment>_od_<stain>: values}``: each stain's mean optical density."""
        if not self.stains:
            return {}
        inverse = stain_matrix([v for _, v in self.stain_vectors])
        od = stain_od(image, inverse, self.stain_background, len(self.stains))
        if self.with_nuclei:
            split = split_means(nuclei, cells, od, ids)
            means = {comp: split[(comp, "mean")] for comp in self.od_compartments()}
        else:
            means = {self.primary: intensity_stats(nuclei, od, ids, ("mean",))["mean"]}
        return {f"{comp}_od_{stain}": values[:, k] for comp, values in means.items()
                for k, stain in enumerate(self.stains)}

    def measure(self, nuclei: np.ndarray, cells: np.ndarray | None, image: np.ndarray, ids: np.ndarray) -> dict:
        """``{column: values}`` for cells ``ids``: ``mean:<ch>`` and every layer's columns."""
        if image.ndim == 2:
            image = image[:, :, None]
        stains = self.measure_stains(nuclei, cells, image, ids)
        if self.channel_index != tuple(range(image.shape[2])):
            image = image[:, :, list(self.channel_index)]
        plan = self._plan()
        # cell, nucleus and cytoplasm sums/means come from one pass over the cells' pixels
        split = {c for c, (st, pc) in plan.items() if self.with_nuclei and c in ("cell", "nucleus", "cytoplasm")
                 and set(st) <= {"mean", "sum"} and not pc}
        fast = split_means(nuclei, cells, image, ids) if split else {}
        rest = [c for c in plan if c not in split]
        labels = compartment_labels(nuclei, cells if self.with_nuclei else None, rest, self.membrane_px)
        out = {}
        for comp, (stats, pcts) in plan.items():
            if comp in split:
                res = {st: fast[(comp, st)] for st in stats}
            else:
                res = intensity_stats(labels[comp], image, ids, stats, pcts)
            for stat, values in res.items():
                prefix = "mean" if (comp, stat) == (self.primary, "mean") else f"{comp}_{stat}"
                for c, name in enumerate(self.channel_names):
                    out[f"{prefix}:{name}"] = values[:, c]
        out.update(stains)
        return out
