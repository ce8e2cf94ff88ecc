"""The report's figures (matplotlib): cells by phenotype over the slide, densities, heatmaps,
co-occurrence, compartments and cellular neighbourhoods."""

from __future__ import annotations

import numpy as np
import pandas as pd

#: most cells drawn in a scatter (a random subset beyond it, said in the caption)
MAX_POINTS = 150_000


#: phenotypes that are no class: drawn grey
NO_CLASS = {"Unknown", "marker-low", "Nucleus", "Cell"}
GREY = (0.62, 0.62, 0.62)


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
            out[c] = GREY
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
            arr, cmap = shown(thumb, run.modality, r.channel_names)
            ax.imshow(arr, cmap=cmap, extent=(0, w_um, h_um, 0))
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
        scale_bar(ax, h.shape, bin_um)
        fig.colorbar(im, ax=ax, shrink=0.7)
    for ax in axes.ravel()[len(cats):]:
        ax.axis("off")
    return fig, bin_um


def scale_bar(ax, shape, um_per_px: float, origin=(0.0, 0.0)) -> None:
    """A white scale bar (a round length near a fifth of the width) in the lower left of an
    image of ``shape`` (rows, columns) drawn from ``origin`` (x, y) in its axes' units."""
    width_um = shape[1] * um_per_px
    length = min((v for v in (10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000) if v >= width_um / 6),
                 default=10000)
    px = length / um_per_px
    x0, y0 = origin[0] + 0.04 * shape[1], origin[1] + shape[0] * 0.94
    ax.plot([x0, x0 + px], [y0, y0], color="white", lw=3, solid_capstyle="butt")
    ax.text(x0 + px / 2, y0 - 0.03 * shape[0], f"{length:g} µm" if length < 1000 else f"{length / 1000:g} mm",
            color="white", ha="center", va="bottom", fontsize=7)


def gate_figure(adata, gates: pd.DataFrame, transform_how: str, layer: str | None):
    """Each gated marker's transformed intensities (histogram, log counts) with its gate."""
    import matplotlib.pyplot as plt

    from ..phenotype import transform

    markers = [m for m in gates["marker"] if m in list(adata.var_names)]
    cols = min(4, max(len(markers), 1))
    rows = int(np.ceil(len(markers) / cols)) or 1
    fig, axes = plt.subplots(rows, cols, figsize=(3.0 * cols, 2.3 * rows), squeeze=False)
    X = adata.layers[layer] if layer else adata.X
    for ax, m in zip(axes.ravel(), markers):
        row = gates[gates["marker"] == m].iloc[0]
        v = np.asarray(X[:, list(adata.var_names).index(m)]).ravel().astype(np.float64)
        cof = row.get("cofactor")
        t, _ = transform(v[:, None], transform_how, None if cof is None or pd.isna(cof) else float(cof))
        ax.hist(t[:, 0], bins=80, color="#4a6a8a", log=True)
        ax.axvline(row["gate"], color="#d73027", lw=1.5)
        ax.set_title(f"{m}: {row['fraction_positive']:.0%} positive", fontsize=9)
        ax.set_xlabel(f"{transform_how} intensity", fontsize=8)
        ax.spines[["top", "right"]].set_visible(False)
    for ax in axes.ravel()[len(markers):]:
        ax.axis("off")
    fig.tight_layout()
    return fig


def shown(img: np.ndarray, modality: str | None, channel_names) -> tuple[np.ndarray, str | None]:
    """An image as the report draws it: brightfield RGB as it is; otherwise the nuclear
    channel(s) the run used (else the first), stretched to its 1-99.5th percentiles, grey.
    Returns (array, colour map)."""
    if modality == "brightfield" and img.shape[2] == 3:
        return img.astype(np.uint8), None
    from ...segment.channels import nuclear_channel_indices

    chans = nuclear_channel_indices(channel_names, []) or [0]
    ch = img[:, :, chans].astype(np.float64).mean(axis=2)
    lo, hi = np.percentile(ch, [1, 99.5])
    return np.clip((ch - lo) / max(hi - lo, 1e-9), 0, 1) ** 0.7, "gray"


def qc_crops(run, cells_parquet, n: int = 3, size_um: float = 120.0, seed: int = 0):
    """Segmentation QC: ``n`` squares of the slide at the run's working resolution with the
    cell outlines over them, centred on cells drawn at random (seeded). Reads the centroids, then
    only the outlines near the squares (a run of millions of cells is not decoded). None when
    the slide or the outlines cannot be read."""
    import matplotlib.pyplot as plt
    import pyarrow.compute as pc
    import pyarrow.parquet as pq
    import shapely

    try:
        cent = pq.read_table(cells_parquet, columns=["x", "y"])
        reader = run.open_slide()
    except Exception:
        return None
    with reader:
        mpp0, mpp = reader.mpp, float(run.plan.get("mpp") or reader.mpp)
        if not cent.num_rows:
            return None
        xy = np.column_stack([cent.column("x").to_numpy(), cent.column("y").to_numpy()])
        picks = xy[np.random.default_rng(seed).choice(len(xy), min(n, len(xy)), replace=False)]
        fig, axes = plt.subplots(1, len(picks), figsize=(3.4 * len(picks), 3.4), squeeze=False)
        half = size_um / mpp0 / 2  # level-0 px
        reach = 2 * half  # outlines of cells centred this far outside a square may still cross it
        for ax, (cx, cy) in zip(axes[0], picks):
            x0, y0 = int(max(cx - half, 0)), int(max(cy - half, 0))
            w = h = int(round(size_um / mpp))
            arr, cmap = shown(reader.read(x0, y0, w, h, mpp), run.modality, reader.channel_names)
            ax.imshow(arr, cmap=cmap, extent=(x0, x0 + w * mpp / mpp0, y0 + h * mpp / mpp0, y0))
            near = ((pc.field("x") > x0 - reach) & (pc.field("x") < x0 + 2 * half + reach)
                    & (pc.field("y") > y0 - reach) & (pc.field("y") < y0 + 2 * half + reach))
            geoms = pq.read_table(cells_parquet, columns=["geometry"], filters=near).column("geometry")
            for g in shapely.from_wkb(geoms.to_numpy(zero_copy_only=False)):
                ring = shapely.get_coordinates(shapely.get_exterior_ring(g))
                ax.plot(ring[:, 0], ring[:, 1], color="#00e5ff", lw=0.7)
            ax.set_xlim(x0, x0 + 2 * half)
            ax.set_ylim(y0 + 2 * half, y0)
            ax.set_title(f"x {cx * mpp0:.0f} µm, y {cy * mpp0:.0f} µm", fontsize=8)
            ax.axis("off")
            scale_bar(ax, (2 * half, 2 * half), mpp0, (x0, y0))
        fig.tight_layout()
    return fig


def ripley_figure(adata, key: str):
    """Ripley's L of each phenotype with distance (squidpy's), and the range of its simulations
    of the same number of points placed at random: above the range, the cells cluster."""
    import matplotlib.pyplot as plt

    r = adata.uns.get(f"{key}_ripley_L")
    if not r or "L_stat" not in r:
        return None
    stat, sims = pd.DataFrame(r["L_stat"]), pd.DataFrame(r["sims_stat"])
    fig, ax = plt.subplots(figsize=(5.2, 3.2))
    env = sims.groupby("bins")["stats"].agg(["min", "max"])
    ax.fill_between(env.index, env["min"], env["max"], color="#cccccc", label="random placement")
    col = colors(list(adata.obs[key].cat.categories))
    for c, g in stat.groupby(key, observed=True):
        c_ = col.get(c, "k")
        ax.plot(g["bins"], g["stats"], color="#333333" if c_ == GREY else c_, label=str(c))
    ax.set_xlabel("distance (µm)")
    ax.set_ylabel("Ripley's L (µm)")
    ax.legend(fontsize=8, frameon=False, loc="upper left", bbox_to_anchor=(1.01, 1))
    ax.spines[["top", "right"]].set_visible(False)
    return fig


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
    ax.legend([c.replace("_", " ").replace("tumor", "tumour") for c in piv.columns], title="", fontsize=8,
              frameon=False, loc="upper left", bbox_to_anchor=(1.01, 1))  # beside the bars, never over one
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
