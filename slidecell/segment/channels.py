"""Which channels a backend reads: nuclear channels are chosen by name, never by position."""

from __future__ import annotations

import re

import numpy as np

from ..errors import ConfigError
from ..io.base import channel_indices

#: channel names taken as nuclear when ``segmentation.nuclear_channels`` is empty (matched whole,
#: ignoring case): DAPI, Hoechst, DRAQ5, SYTOX, TO-PRO, PI; DNA, DNA1/DNA2, DNA_1, dsDNA; histone
#: H3 and its marks (H3, HH3, H3K27me3, Histone H3); iridium intercalator (Ir191/Ir193, also inside
#: IMC labels such as ``DNA1(Ir191Di)``). Several matches are averaged. Name the channels in the
#: config to choose others.
NUCLEAR_NAME = re.compile(
    r"^(dapi.*|hoechst.*|nuclei|nuclear|nucleus|(ds[-_ ]?)?dna([-_ ]?\d+)?|histone.*|h?h3.*|"
    r".*ir19[13].*|draq5|sytox.*|to-?pro.*|pi)$",
    re.IGNORECASE,
)


#: channel names taken as membrane (cell-surface) markers when whole cells follow the membrane
#: (``segmentation.cell_growth.method: membrane``) and ``membrane_channels`` is empty (matched
#: whole, ignoring case, after dropping an IMC metal tag such as ``(Pr141Di)``): Na+/K+-ATPase
#: (NaKATPase, Na-K-ATPase, ATP1A1), Membrane, E-cadherin (Ecad, CDH1; CDH: cadherins), pan-cytokeratin
#: (PanCK, Keratin-pan, pan-keratin, Cytokeratin), CD45, HLA class I (HLA-ABC, HLA-Class-1),
#: beta-catenin, CD44, CD98, CD99, CD298, Vimentin, EpCAM, WGA: markers on (nearly) every cell of a
#: kind that outline it; lineage markers of few cells (CD3, CD20, CD68...) are left out. Several
#: matches are averaged, each scaled by its own slide-level 99th percentile.
MEMBRANE_NAME = re.compile(
    r"^(na[-_ +]?k[-_ +]?atpase.*|nakatpase.*|atp1a1|membrane|wga|"
    r"e[-_ ]?cad(herin)?|cdh\d*|"
    r"pan[-_ ]?c?k|pan[-_ ]?(cyto)?keratin|(cyto)?keratin([-_ ]?pan)?|"
    r"cd45(ra|ro)?|hla[-_ ]?(abc|class[-_ ]?(1|i)|a|b|c)|"
    r"(beta|b)[-_ ]?catenin|cd44|cd98|cd99|cd298|vimentin|epcam)$",
    re.IGNORECASE,
)
_METAL_TAG = re.compile(r"[(_ ]\(?[A-Z][a-z]?\d{2,3}(Di)?\)?$")


def membrane_channel_indices(channel_names, requested, key: str = "segmentation.cell_growth.membrane_channels") -> list[int]:
    """The membrane channel(s): those named in ``requested``, else every channel whose name looks
    like a membrane marker (:data:`MEMBRANE_NAME`), else an error naming the config ``key`` to set."""
    names = list(channel_names)
    if requested:
        return channel_indices(requested, names, key)
    found = [i for i, n in enumerate(names) if MEMBRANE_NAME.match(_METAL_TAG.sub("", n.strip()).strip())]
    if not found:
        raise ConfigError(f"{key}: no channel looks like a membrane marker in {names}; name the membrane "
                          "channel(s) in the config (e.g. [NaKATPase, CD45])")
    return found


def channel_scales(samples, indices) -> list[float]:
    """Slide-level scales of channels ``indices``: the 99th percentile of each channel's finite,
    non-zero pixels over the calibration windows ``samples`` (H×W×C, or H×W for one channel), the
    same for every tile so that tilings agree; 1.0 for a channel with no such pixel."""
    scales = []
    for i in indices:
        values = np.concatenate([np.asarray(s if s.ndim == 2 else s[:, :, i], np.float32).ravel() for s in samples]) \
            if samples else np.zeros(0, np.float32)
        values = values[np.isfinite(values) & (values > 0)]
        scales.append(max(float(np.percentile(values, 99)), 1e-6) if values.size else 1.0)
    return scales


def scaled_mean(image: np.ndarray, indices, scales) -> np.ndarray:
    """The mean (float32) of channels ``indices`` of an H×W×C window, each divided by its scale
    (:func:`channel_scales`): markers counted on different scales weigh alike."""
    if image.ndim == 2:
        image = image[:, :, None]
    out = np.zeros(image.shape[:2], np.float32)
    for i, s in zip(indices, scales):
        out += np.asarray(image[:, :, i], np.float32) * np.float32(1.0 / (s * len(indices)))
    return out


def nuclear_channel_indices(channel_names, requested) -> list[int]:
    names = list(channel_names)
    if requested:
        return channel_indices(requested, names, "segmentation.nuclear_channels")
    found = [i for i, n in enumerate(names) if NUCLEAR_NAME.match(n.strip())]
    return found


def model_input_channels(channel_names, modality, nuclear_channels, backend: str) -> tuple[str, list[int]]:
    """How a model backend reads a tile: ``("brightfield", [0, 1, 2])`` for RGB brightfield, or
    ``("fluorescence", indices)`` of the nuclear channel(s) (by name; all channels of a single-
    channel or RGB fluorescence image)."""
    names = list(channel_names)
    if modality == "brightfield" and not nuclear_channels:
        if len(names) != 3:
            raise ConfigError(
                f"{backend}: brightfield input needs 3 channels (RGB), the image has {len(names)} "
                f"({names}); for fluorescence set tissue.modality or segmentation.nuclear_channels")
        return "brightfield", [0, 1, 2]
    return "fluorescence", nuclear_or_all(names, nuclear_channels)


def nuclear_or_all(channel_names, requested) -> list[int]:
    """The nuclear channel(s) by name; every channel of a single-channel or RGB image; else an
    error asking to name them."""
    names = list(channel_names)
    channels = nuclear_channel_indices(names, requested)
    if not channels and (len(names) == 1 or tuple(names) == ("Red", "Green", "Blue")):
        channels = list(range(len(names)))
    if not channels:
        raise ConfigError(f"segmentation.nuclear_channels: no channel looks nuclear in {names}; "
                          "name the nuclear channel(s) in the config")
    return channels


def haematoxylin(rgb: np.ndarray) -> np.ndarray:
    """Haematoxylin optical density (float32, larger = more nuclear) of an H×W×3 brightfield
    image, by Ruifrok & Johnston colour deconvolution (the H row of the inverse stain matrix
    of :func:`skimage.color.rgb2hed`)."""
    from skimage.color import hed_from_rgb

    od = -np.log(np.maximum(rgb[:, :, :3].astype(np.float32), 1.0) / 255.0)
    return od @ hed_from_rgb[:, 0].astype(np.float32)


def smooth(plane: np.ndarray, sigma_um: float, mpp: float) -> np.ndarray:
    """A Gaussian blur of an H×W plane with sigma ``sigma_um`` µm (truncated at 3 sigma; none
    under 0.1 px). Counting instruments (MIBI, IMC) give Poisson-noisy nuclear channels whose
    nuclei a detector splits into fragments; a blur of under a micrometre joins them. Pixels that
    are not finite stay so and do not spread."""
    sigma = sigma_um / mpp
    if sigma <= 0.1:
        return plane
    from scipy.ndimage import gaussian_filter

    x = np.asarray(plane, np.float32)
    bad = ~np.isfinite(x)
    if not bad.any():
        return gaussian_filter(x, sigma, truncate=3.0)
    out = gaussian_filter(np.where(bad, 0.0, x), sigma, truncate=3.0)
    out[bad] = np.nan
    return out
