"""The report's figures (matplotlib): cells by phenotype over the slide, densities, heatmaps,
co-occurrence, compartments and cellular neighbourhoods."""

from __future__ import annotations

import numpy as np
import pandas as pd

#: most cells drawn in a scatter (a random subset beyond it, said in the caption)
MAX_POINTS = 150_000


#: phenotypes that are no class: drawn grey
NO_CLASS = {"Unknown", "marker-low", "Nucleus", "Cell"}


def colors(categories) -> dict:
    """QuPath's colour for its default classes (Tumor, Immune cells, Stroma...); grey for cells of
    no class (``Unknown``, marker-low clusters, the single class of an image without markers);
    matplotlib's tab10 in order for the others (hash colours of similar names can look alike)."""
    import matplotlib

    from ...io.geojson import QUPATH_CLASS_COLORS

    tab = matplotlib.colormaps["tab10"].colors
    out, k = {}, 0
    for c in categories:
        name = str(c)
        if name in NO_CLASS or (name.endswith("−") and "+" not in name):
            out[c] = (0.62, 0.62, 0.62)
        elif name in QUPATH_CLASS_COLORS:
            out[c] = tuple(v / 255 for v in QUPATH_CLASS_COLORS[name])
        else:
            out[c] = tab[k % len(tab)]
            k += 1
    return out


def dot(n: int) -> float:
    """Marker size for ``n`` dots: visible for a few hundred cells, not a blot for millions."""
    return float(np.clip(30000 / max(n, 1), 0.5, 14))


def sample(n: int, seed: int = 0):
    if n <= MAX_POINTS:
        return np.arange(n), ""
    idx = np.sort(np.random.default_rng(seed).choice(n, MAX_POINTS, replace=False))
    return idx, f" ({MAX_POINTS:,} of {n:,} cells drawn at random)"


def slide_figure(adata, key: str, run: dict | None):
    """Cells coloured by phenotype, over the slide's thumbnail when the slide can be read."""
    import matplotlib.pyplot as plt

    xy = np.asarray(adata.obsm["spatial"])
    cats = list(adata.obs[key].cat.categories)
    col = colors(cats)
    idx, note = sample(len(xy))
    fig, ax = plt.subplots(figsize=(9, 9 * max(np.ptp(xy[:, 1]), 1) / max(np.ptp(xy[:, 0]), 1) if len(xy) else 9))
    extent = None
    if run is not None:
        try:
            with run.open_slide() as r:
                mpp = max(r.mpp * r.dimensions[0] / 1600, r.mpp)
                thumb = r.thumbnail(mpp)
            w_um, h_um = r.dimensions[0] * r.mpp, r.dimensions[1] * r.mpp
            if run.modality == "brightfield" and thumb.shape[2] == 3:
                ax.imshow(thumb, extent=(0, w_um, h_um, 0))
            else:  # fluorescence: the nuclear channel(s) the run used (else the first), stretched, grey
                from ...segment.channels import nuclear_channel_indices

                chans = nuclear_channel_indices(r.channel_names, []) or [0]
                ch = thumb[:, :, chans].astype(np.float64).mean(axis=2)
                lo, hi = np.percentile(ch, [1, 99.5])
                ax.imshow(np.clip((ch - lo) / max(hi - lo, 1e-9), 0, 1) ** 0.7, cmap="gray",
                          extent=(0, w_um, h_um, 0))
            extent = (w_um, h_um)
        except Exception:  # the slide moved or cannot be read: cells alone
            extent = None
    labels = adata.obs[key].to_numpy()[idx]
    for c in cats:
        m = labels == c
        if m.any():
            ax.scatter(xy[idx][m, 0], xy[idx][m, 1], s=dot(len(idx)), color=col[c], label=c,
                       linewidths=0, rasterized=True)
    if extent is None:
        ax.invert_yaxis()
    ax.set_aspect("equal")
    ax.set_xlabel("µm")
    ax.legend(markerscale=max(1, 6 / np.sqrt(dot(len(idx)))), fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1),
              frameon=False)
    return fig, note


#: morphology columns drawn (those a run wrote), with their axis labels
MORPHOLOGY = {"area_um2": "area (µm²)", "circularity": "circularity", "nucleus_area_um2": "nucleus area (µm²)",
              "nucleus_od_Hematoxylin": "haematoxylin OD (nucleus mean)", "nucleus_od_DAB": "DAB OD (nucleus mean)"}


def morphology_figure(adata, key: str):
    """Histograms of the cells' size, shape and stain (the columns of :data:`MORPHOLOGY` the
    table has) and each phenotype's medians."""
    import matplotlib.pyplot as plt

    cols = [c for c in MORPHOLOGY if c in adata.obs]
    fig, axes = plt.subplots(1, max(len(cols), 1), figsize=(3.2 * max(len(cols), 1), 2.6), squeeze=False)
    for ax, c in zip(axes[0], cols):
        v = pd.to_numeric(adata.obs[c], errors="coerce").to_numpy(float)
        v = v[np.isfinite(v)]
        hi = np.percentile(v, 99.5) if len(v) else 1.0
        ax.hist(v[v <= hi], bins=60, color="#4a6a8a")
        ax.set_xlabel(MORPHOLOGY[c])
        ax.set_ylabel("cells")
        ax.spines[["top", "right"]].set_visible(False)
    fig.tight_layout()
    medians = adata.obs.groupby(key, observed=True)[cols].median().reset_index() if cols else pd.DataFrame()
    return fig, medians.rename(columns={c: MORPHOLOGY[c] for c in cols})


def density_figure(adata, key: str):
    import matplotlib.pyplot as plt

    xy = np.asarray(adata.obsm["spatial"])
    cats = [c for c in adata.obs[key].cat.categories]
    cats = sorted(cats, key=lambda c: -(adata.obs[key] == c).sum())[:8]
    bin_um = max(25.0, float(max(np.ptp(xy[:, 0]), np.ptp(xy[:, 1]))) / 80)
    xe = np.arange(xy[:, 0].min(), xy[:, 0].max() + bin_um, bin_um)
    ye = np.arange(xy[:, 1].min(), xy[:, 1].max() + bin_um, bin_um)
    cols = min(4, len(cats))
    rows = int(np.ceil(len(cats) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 3.0 * rows), squeeze=False)
    for ax, c in zip(axes.ravel(), cats):
        m = (adata.obs[key] == c).to_numpy()
        h, _, _ = np.histogram2d(xy[m, 1], xy[m, 0], bins=(ye, xe))
        im = ax.imshow(h / (bin_um / 1000) ** 2, cmap="magma", origin="upper", interpolation="nearest")
        ax.set_title(f"{c} (cells/mm²)", fontsize=9)
        ax.axis("off")
        fig.colorbar(im, ax=ax, shrink=0.7)
    for ax in axes.ravel()[len(cats):]:
        ax.axis("off")
    return fig, bin_um


def heatmap(matrix, labels, title: str, cmap="coolwarm", center=True, fmt="{:.1f}"):
    import matplotlib.pyplot as plt

    m = np.asarray(matrix, np.float64)
    fig, ax = plt.subplots(figsize=(1.0 + 0.6 * len(labels), 0.8 + 0.5 * len(labels)))
    vmax = np.nanmax(np.abs(m)) if center and np.isfinite(m).any() else None
    im = ax.imshow(m, cmap=cmap, vmin=-vmax if vmax else None, vmax=vmax)
    ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(len(labels)), labels, fontsize=8)
    if len(labels) <= 12:
        for i in range(m.shape[0]):
            for j in range(m.shape[1]):
                if np.isfinite(m[i, j]):
                    ax.text(j, i, fmt.format(m[i, j]), ha="center", va="center", fontsize=7)
    ax.set_title(title, fontsize=10)
    fig.colorbar(im, ax=ax, shrink=0.8)
    return fig


def cooccurrence_figure(adata, key: str, focus: list[str]):
    import matplotlib.pyplot as plt

    co = adata.uns.get(f"{key}_co_occurrence")
    cats = [str(c) for c in co.get("categories", adata.obs[key].cat.categories)]  # of the subsample
    col = colors(cats)
    focus = [f for f in focus if f in cats][:3] or cats[:2]
    fig, axes = plt.subplots(1, len(focus), figsize=(4.6 * len(focus), 3.4), squeeze=False)
    interval = np.asarray(co["interval"])
    mid = (interval[1:] + interval[:-1]) / 2 if len(interval) == co["occ"].shape[2] + 1 else interval[1:]
    for ax, f in zip(axes.ravel(), focus):
        i = cats.index(f)
        for j, c in enumerate(cats):
            ax.plot(mid, co["occ"][i, j], color=col[c], label=c)
        ax.axhline(1, color="grey", lw=0.8, ls="--")
        ax.set_title(f"given a {f} cell", fontsize=9)
        ax.set_xlabel("distance (µm)")
        ax.set_ylabel("P(type | distance) / P(type)")
    axes.ravel()[-1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1), frameon=False)
    return fig


def compartment_figure(dens: pd.DataFrame):
    import matplotlib.pyplot as plt

    imm = dens[dens["immune"]]
    if imm.empty:
        imm = dens
    piv = imm.pivot(index="phenotype", columns="compartment", values="density_per_mm2")
    piv = piv[[c for c in ("tumor_core", "invasive_margin", "stroma") if c in piv.columns]]
    fig, ax = plt.subplots(figsize=(1.5 + 1.1 * len(piv), 3.6))
    piv.plot.bar(ax=ax, color=["#b2182b", "#ef8a62", "#67a9cf"][: len(piv.columns)], width=0.8)
    ax.set_ylabel("cells / mm²")
    ax.set_xlabel("")
    ax.tick_params(axis="x", rotation=30)
    ax.legend(title="", fontsize=8, frameon=False)
    return fig


def compartment_map(adata):
    import matplotlib.pyplot as plt

    xy = np.asarray(adata.obsm["spatial"])
    idx, _ = sample(len(xy), 1)
    comp = adata.obs["compartment"].astype(str).to_numpy()[idx]
    colors = {"tumor_core": "#b2182b", "invasive_margin": "#ef8a62", "stroma": "#67a9cf"}
    fig, ax = plt.subplots(figsize=(5.5, 5.5 * max(np.ptp(xy[:, 1]), 1) / max(np.ptp(xy[:, 0]), 1)))
    for c, colr in colors.items():
        m = comp == c
        ax.scatter(xy[idx][m, 0], xy[idx][m, 1], s=dot(len(idx)), color=colr, label=c, linewidths=0, rasterized=True)
    ax.invert_yaxis()
    ax.set_aspect("equal")
    ax.legend(markerscale=8, fontsize=8, frameon=False, loc="upper left", bbox_to_anchor=(1.01, 1))
    return fig


def neighbourhood_figures(adata, cn: pd.DataFrame):
    import matplotlib.pyplot as plt

    xy = np.asarray(adata.obsm["spatial"])
    idx, _ = sample(len(xy), 2)
    lab = adata.obs["neighbourhood"].astype(str).to_numpy()[idx]
    cmap = plt.get_cmap("tab10")
    fig, ax = plt.subplots(figsize=(5.5, 5.5 * max(np.ptp(xy[:, 1]), 1) / max(np.ptp(xy[:, 0]), 1)))
    for k in sorted(set(lab), key=int):
        m = lab == k
        ax.scatter(xy[idx][m, 0], xy[idx][m, 1], s=dot(len(idx)), color=cmap(int(k) % 10), label=f"CN {k}", linewidths=0,
                   rasterized=True)
    ax.invert_yaxis()
    ax.set_aspect("equal")
    ax.legend(markerscale=8, fontsize=8, frameon=False, loc="upper left", bbox_to_anchor=(1.01, 1))
    comp = cn.set_index("neighbourhood")
    fig2, ax2 = plt.subplots(figsize=(1.2 + 0.6 * comp.shape[1], 0.8 + 0.45 * len(comp)))
    im = ax2.imshow(comp.to_numpy(), cmap="Blues", vmin=0, vmax=1)
    ax2.set_xticks(range(comp.shape[1]), comp.columns, rotation=45, ha="right", fontsize=8)
    ax2.set_yticks(range(len(comp)), [f"CN {i}" for i in comp.index], fontsize=8)
    ax2.set_title("composition of each neighbourhood", fontsize=10)
    fig2.colorbar(im, ax=ax2, shrink=0.8)
    return fig, fig2
