"""AnnData: the cells streamed into ``.h5ad`` (scverse conventions: markers in ``X``, µm
coordinates in ``obsm['spatial']``, the run in ``uns``), and the zarr store made from it."""

from __future__ import annotations

import contextlib
from pathlib import Path

import numpy as np
import pandas as pd

from ..table import to_anndata
from .atomic import atomic_dir, atomic_path


class H5adWriter:
    """Streams cell tables into an AnnData ``.h5ad`` without holding them in memory. anndata
    writes the file's layout (var, uns, encodings) from an empty AnnData; the per-cell arrays
    (``X``, ``layers``, the ``obs`` columns and index, ``obsm['spatial']``) are then made
    resizable and filled part by part, gzip-compressed (level 1, byte-shuffled: as small as
    anndata's gzip writer for a small run, half its size for 244k cells, ~2× faster than level 4;
    ``benchmarks/bench_h5ad.py``). With ``n``, :meth:`close` checks that exactly ``n`` cells came."""

    def __init__(self, path, schema, uns: dict | None = None, n: int | None = None, var=None,
                 slide_id: str | None = None, compression: str | None = "gzip", level: int | None = 1,
                 spatial: dict | None = None):
        import h5py

        from ..table import empty_table

        self.n, self.var, self.slide_id, self.path, self.f = n, var, slide_id, Path(path), None
        images = sum(v.nbytes for v in ((spatial or {}).get("images") or {}).values())
        self._check_room(images)
        with self._failing():
            to_anndata(empty_table(schema), uns, var, slide_id, spatial).write_h5ad(path, compression=compression)
            self.f = h5py.File(path, "r+")
            self._resizable(compression, level)
        self.pos = 0

    #: free space kept beyond what a write needs: HDF5 must never meet a full disk (HDF5 2.0
    #: leaves the process unusable, and crashing at exit, after a write that failed for want of
    #: space), so a full disk is reported before it writes (ENOSPC, one line, resumable)
    HEADROOM = 64 << 20

    def _check_room(self, nbytes: int) -> None:
        import errno
        import shutil

        free = shutil.disk_usage(self.path.parent).free
        if free < nbytes + self.HEADROOM:
            raise OSError(errno.ENOSPC, f"No space left on device ({free >> 20} MiB free; the h5ad needs "
                                        f"{(nbytes + self.HEADROOM) >> 20} MiB of room)", str(self.path))

    @contextlib.contextmanager
    def _failing(self):
        """HDF5 work that may fail (a full disk): on failure the file is closed here and now, its
        objects collected, HDF5's complaints while doing so kept off stderr (the caller reports
        the failure in one line), and a plain OSError naming the file raised without references
        to HDF5 objects. A file left open behind a failure is closed later by whichever thread
        collects it, and HDF5 2.0 has crashed in the next file's work after that."""
        import gc
        import io

        failure = None
        try:
            yield
        except OSError as err:
            failure = (err.errno, err.strerror or str(err).split("(")[0].strip())
        if failure is None:
            return
        with contextlib.redirect_stderr(io.StringIO()):
            if self.f is not None:
                try:
                    self.f.close()
                except Exception:  # noqa: BLE001  (the disk is full: closing reports it again)
                    pass
                self.f = None
            gc.collect()
        raise OSError(failure[0], failure[1], str(self.path))

    def _resizable(self, compression, level) -> None:
        """The per-cell arrays anndata wrote empty, made again resizable (and compressed)."""
        import h5py

        obs = self.f["obs"]
        self.keys = ["X", "obsm/spatial", "obs/" + obs.attrs["_index"]]
        self.keys += ["layers/" + k for k in self.f.get("layers", {}).keys()]
        for c in obs.attrs["column-order"]:
            self.keys.append(f"obs/{c}/codes" if isinstance(obs[c], h5py.Group) else f"obs/{c}")
        for key in self.keys:
            old = self.f[key]
            attrs, dtype, shape = dict(old.attrs), old.dtype, old.shape
            del self.f[key]
            packed = {"compression": compression, "compression_opts": level,
                      "shuffle": dtype.kind != "O"} if compression else {}
            new = self.f.create_dataset(key, shape=(0, *shape[1:]), maxshape=(None, *shape[1:]), dtype=dtype,
                                        chunks=(max(1024, 65536 // max(1, int(np.prod(shape[1:])))), *shape[1:]),
                                        **packed)
            new.attrs.update(attrs)

    def _values(self, a, key: str):
        if key == "X":
            return a.X
        if key == "obsm/spatial":
            return a.obsm["spatial"]
        if key == self.keys[2]:
            return a.obs_names.to_numpy().astype(object)
        if key.startswith("layers/"):
            return a.layers[key[7:]]
        if key.endswith("/codes"):
            return a.obs[key[4:-6]].cat.codes.to_numpy()
        return a.obs[key[4:]].to_numpy()

    def write(self, table: pd.DataFrame) -> None:
        k = len(table)
        if not k:
            return
        if self.n is not None and self.pos + k > self.n:
            raise ValueError(f"more cells than announced ({self.n})")
        a = to_anndata(table, None, self.var, self.slide_id)
        self._check_room(2 * (a.X.nbytes + sum(v.nbytes for v in a.layers.values()) + 64 * k * a.obs.shape[1]))
        sl = slice(self.pos, self.pos + k)
        with self._failing():
            for key in self.keys:
                self.f[key].resize(self.pos + k, axis=0)
                self.f[key][sl] = self._values(a, key)
        self.pos += k

    def close(self) -> None:
        if self.f is not None:
            with self._failing():
                self.f.close()
            self.f = None
        if self.n is not None and self.pos != self.n:
            raise ValueError(f"wrote {self.pos} cells, announced {self.n}")


def write_h5ad(table: pd.DataFrame, path, uns: dict | None = None, var=None, slide_id: str | None = None) -> None:
    adata = to_anndata(table, uns, var, slide_id)
    with atomic_path(path) as tmp:
        adata.write_h5ad(tmp)


def run_uns(record, config: dict, version) -> dict:
    """What a run's AnnData keeps in ``uns['slidecell']``, from its record (a :class:`RunRecord`)."""
    return {"version": version, "slide": record.slide, "mpp": record.reader.get("mpp"),
            "working_mpp": record.plan.get("mpp"), "modality": record.modality,
            "reader": record.reader or None, "config": config}


def run_var(record):
    """AnnData ``var`` rows (channel, index, metal/fluorophore...) from a run's record."""
    names = record.reader.get("channels") or []
    meta = record.reader.get("channel_meta") or [{} for _ in names]
    return pd.DataFrame([{"channel": n, "channel_index": i, **m} for i, (n, m) in enumerate(zip(names, meta))])


def write_zarr_from_h5ad(h5ad, path) -> Path:
    """The AnnData of ``h5ad`` as a zarr store at ``path`` (replaced atomically). Holds the
    table in memory while converting (about cells × markers × (1 + layers) × 4 bytes)."""
    import warnings

    import anndata as ad

    adata = ad.read_h5ad(h5ad)
    with atomic_dir(path) as tmp, ad.settings.override(zarr_write_format=3), warnings.catch_warnings():
        # zarr's notices about its future defaults (sharding, consolidated metadata)
        warnings.simplefilter("ignore", UserWarning)
        adata.write_zarr(tmp)
    return path
