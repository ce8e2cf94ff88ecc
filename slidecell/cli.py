"""Command line: a thin layer over the public API in :mod:`slidecell`.

Every problem with the inputs is reported as one line on stderr with a non-zero exit code;
set ``SLIDECELL_DEBUG=1`` to see tracebacks of unexpected errors.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Optional

import typer

from ._typer import HelpCommand, HelpGroup

app = typer.Typer(
    cls=HelpGroup,
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="slidecell: every cell out of a whole-slide or multiplexed image.",
)


#: the held-out evaluation shipped with the repository (not relative to the working directory)
EVALUATE_DEFAULT = Path(__file__).resolve().parent.parent / "configs" / "evaluate" / "nuclei-heldout.yaml"


def _print_version(value: bool) -> None:
    if value:
        from . import __version__

        typer.echo(f"slidecell {__version__}")
        raise typer.Exit()


#: set by --verbose: slidecell's step-by-step log on stderr, other packages' warnings, tracebacks
_VERBOSE: list[bool] = []


@app.callback()
def _options(version: bool = typer.Option(False, "--version", callback=_print_version, is_eager=True, metavar="",
                                          help="print the version and exit"),
             verbose: bool = typer.Option(False, "--verbose", "-v", metavar="",
                                          help="log each step (plan, calibration, segmentation, outputs) with its "
                                               "figures, show other packages' warnings and internal errors' tracebacks")):
    """slidecell: every cell out of a whole-slide or multiplexed image."""
    import logging
    import warnings

    log = logging.getLogger("slidecell")
    for h in [h for h in log.handlers if getattr(h, "slidecell_cli", False)]:  # an earlier call's (in-process)
        log.removeHandler(h)
    if verbose:
        _VERBOSE.append(True)
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("slidecell: %(message)s"))
        handler.slidecell_cli = True
        log.addHandler(handler)
        log.setLevel(logging.INFO)
    else:  # logs stay readable: what other packages warn about is for --verbose
        warnings.filterwarnings("ignore", category=Warning, module=r"^(?!slidecell)")


def _parse_roi(text: str | None):
    if text is None:
        return None
    from .errors import ConfigError

    try:
        x, y, w, h = (float(v) for v in text.split(","))
    except ValueError:
        raise ConfigError(f"--roi {text!r}: expected x,y,width,height in level-0 pixels") from None
    import math

    if not all(math.isfinite(v) for v in (x, y, w, h)):
        raise ConfigError(f"--roi {text!r}: every value must be a finite number")
    if w <= 0 or h <= 0:
        raise ConfigError(f"--roi {text!r}: width and height must be positive")
    return [x, y, w, h]


@app.command(cls=HelpCommand)
def run(
    slide: Path = typer.Argument(..., metavar="SLIDE", help="slide or image file"),
    config: Optional[str] = typer.Option(None, "--config", "-c", metavar="PRESET|YAML",
                                         help="YAML config file or preset name (configs/)"),
    out: Path = typer.Option(Path("slidecell-out"), "--out", "-o", metavar="DIR", help="output directory"),
    mpp: Optional[float] = typer.Option(None, "--mpp", metavar="µm/px",
                                        help="level-0 pixel size in µm (required when the slide does not record it)"),
    roi: Optional[str] = typer.Option(None, "--roi", metavar="X,Y,W,H",
                                      help="region of interest x,y,width,height in level-0 pixels"),
    annotations: Optional[Path] = typer.Option(None, "--annotations", metavar="GEOJSON",
                                               help="QuPath GeoJSON: run only inside its annotations"),
    annotation_class: Optional[list[str]] = typer.Option(None, "--annotation-class", metavar="CLASS",
                                                         help="only annotations of this class (repeatable)"),
    workers: Optional[int] = typer.Option(None, "--workers", metavar="N",
                                          help="parallel tile readers (overrides the config)"),
    scheduler: Optional[str] = typer.Option(None, "--scheduler", metavar="local|ADDRESS",
                                            help="run on Dask: 'local' (a LocalCluster) or a scheduler address"),
    dask_workers: Optional[int] = typer.Option(None, "--dask-workers", metavar="N",
                                               help="workers of the local Dask cluster"),
    overwrite: bool = typer.Option(False, "--overwrite", metavar="", help="replace a finished run in --out"),
    keep_chunks: bool = typer.Option(False, "--keep-chunks", metavar="",
                                     help="keep the chunk cache (OUT/.slidecell) after the run completes"),
    quiet: bool = typer.Option(False, "--quiet", "-q", metavar="", help="no progress"),
):
    """Segment and measure every nucleus of SLIDE; write cells.geojson, cells.parquet, cells.h5ad."""
    from . import load_config
    from . import run as run_pipeline

    overrides: dict = {"output": {"keep_chunks": True}} if keep_chunks else {}
    if workers is not None:
        overrides["reader"] = {"workers": workers}
    if scheduler is not None or dask_workers is not None:
        overrides["engine"] = {k: v for k, v in (("scheduler", scheduler), ("dask_workers", dask_workers)) if v is not None}
    box = _parse_roi(roi)
    if box is not None:
        overrides["roi"] = box
    cfg = load_config(config, overrides or None)
    result = run_pipeline(slide, cfg, out, mpp=mpp, overwrite=overwrite, annotations=annotations,
                          annotation_classes=annotation_class or None, progress=not quiet)
    t = result.timings.get("total", 0.0)
    resumed = f", {result.resumed_chunks} chunks resumed" if result.resumed_chunks else ""
    typer.echo(f"{result.n_cells} cells from {result.n_tiles} tiles in {t:.1f} s{resumed}")
    if result.info.get("segmentation", {}).get("research_only"):
        typer.echo("  note: the segmentation model is licensed for research use only (see its model card)")
    for kind, path in result.outputs.items():
        typer.echo(f"  {kind:8s} {path}")
    typer.echo(f"  {'summary':8s} {result.out_dir / 'run.json'}")
    for warning in result.info.get("warnings", []):
        typer.echo(f"slidecell: warning: {warning}", err=True)


@app.command(cls=HelpCommand)
def export(
    run_dir: Path = typer.Argument(..., metavar="RUN_DIR", help="output directory of a finished `slidecell run`"),
    to: str = typer.Option(..., "--to", metavar="FORMAT",
                           help="geojson, geojson.gz, parquet, h5ad, csv, zarr (AnnData), labels "
                                             "(OME-TIFF label pyramid) or spatialdata (image + shapes + table)"),
    out: Optional[Path] = typer.Option(None, "--out", "-o", metavar="FILE", help="file to write (default: in RUN_DIR)"),
    overwrite: bool = typer.Option(False, "--overwrite", metavar="", help="replace an existing file"),
    image: bool = typer.Option(True, "--image/--no-image", metavar="",
                               help="spatialdata: include the image (multiscale)"),
):
    """Write the cells of a finished run in another format (streamed, bounded memory).

    zarr and spatialdata hold the cell table in memory."""
    from .export import export as do_export

    typer.echo(str(do_export(run_dir, to, out, overwrite, image=image)))


@app.command(cls=HelpCommand)
def analyze(
    source: Path = typer.Argument(..., metavar="SOURCE",
                                  help="a run folder (its cells.h5ad) or any AnnData (.h5ad/.zarr) with obsm['spatial'] in µm"),
    config: Optional[Path] = typer.Option(None, "--config", "-c", metavar="YAML",
                                          help="analysis YAML (its 'analysis:' section or the whole file)"),
    out: Optional[Path] = typer.Option(None, "--out", "-o", metavar="DIR",
                                       help="output folder (default: SOURCE_FOLDER/analysis)"),
    report: bool = typer.Option(True, "--report/--no-report", metavar="", help="also write report.html"),
    overwrite: bool = typer.Option(False, "--overwrite", metavar="", help="replace an existing analysis"),
):
    """Phenotypes, spatial statistics and tumour–immune metrics; tidy CSVs, cells_analyzed.h5ad."""
    from .analysis.analyze import analyze as do_analyze

    out = out or ((source if source.is_dir() else source.parent) / "analysis")
    done = do_analyze(source, out, config, overwrite=overwrite)
    typer.echo(str(done))
    if report:
        from .analysis.report import build_report

        typer.echo(str(build_report(done)))


@app.command(name="report", cls=HelpCommand)
def report_cmd(
    analysis_dir: Path = typer.Argument(..., metavar="ANALYSIS_DIR", help="folder written by slidecell analyze"),
    out: Optional[Path] = typer.Option(None, "--out", "-o", metavar="FILE",
                                       help="HTML file (default: ANALYSIS_DIR/report.html)"),
    run_dir: Optional[Path] = typer.Option(None, "--run", metavar="DIR",
                                           help="the run folder (default: where the analysed cells came from)"),
):
    """A self-contained HTML report of an analysis (and its run)."""
    from .analysis.report import build_report

    typer.echo(str(build_report(analysis_dir, out, run_dir)))


@app.command(name="cohort", cls=HelpCommand)
def cohort_cmd(
    runs: list[str] = typer.Argument(..., metavar="RUNS",
                                     help="run folders, as SAMPLE=FOLDER or FOLDER (sample = folder name)"),
    out: Path = typer.Option(..., "--out", "-o", metavar="DIR", help="output folder"),
):
    """Concatenate runs into cohort.h5ad (obs['sample']) with per-slide summaries and a report."""
    from .analysis.cohort import cohort

    pairs = {}
    for r in runs:
        name, _, folder = r.rpartition("=") if "=" in r else (Path(r).name, "", r)
        pairs[name] = Path(folder)
    typer.echo(str(cohort(pairs, out)))


classify_app = typer.Typer(cls=HelpGroup, no_args_is_help=True,
                           help="Object classifier for H&E: train from QuPath-labelled cells, apply to a run.")
app.add_typer(classify_app, name="classify")


@classify_app.command("train", cls=HelpCommand)
def classify_train(
    run_dir: Path = typer.Argument(..., metavar="RUN_DIR", help="a finished run folder (cells.h5ad)"),
    labels: Path = typer.Option(..., "--labels", metavar="GEOJSON",
                                help="QuPath GeoJSON with classified cells/detections/annotations"),
    out: Path = typer.Option(..., "--out", "-o", metavar="FILE",
                             help="model file to write (.skops: loads without running code)"),
):
    """Train a random forest on the cells a user classified in QuPath."""
    import anndata as ad

    from .analysis.classify import finished_run, labels_from_geojson, train_classifier

    record = finished_run(run_dir)
    adata = ad.read_h5ad(run_dir / "cells.h5ad")
    lab = labels_from_geojson(adata, labels, tuple(record.reader.get("bounds_offset") or (0, 0)))
    typer.echo(json.dumps(train_classifier(adata, lab, out), indent=1))


@classify_app.command("apply", cls=HelpCommand)
def classify_apply(
    run_dir: Path = typer.Argument(..., metavar="RUN_DIR", help="a finished run folder (cells.h5ad)"),
    model: Path = typer.Option(..., "--model", "-m", metavar="FILE", help="classifier from `slidecell classify train`"),
    out: Optional[Path] = typer.Option(None, "--out", "-o", metavar="FILE",
                                       help="GeoJSON to write (default: RUN_DIR/cells_classified.geojson)"),
    overwrite: bool = typer.Option(False, "--overwrite", metavar="", help="replace an existing file"),
):
    """Classify a run's cells; write them as QuPath GeoJSON with their classes."""
    from .analysis.classify import classify_run

    path, counts = classify_run(run_dir, model, out, overwrite=overwrite)
    typer.echo(json.dumps({"out": str(path), "classes": counts}, indent=1))


@app.command(cls=HelpCommand)
def info(
    slide: Path = typer.Argument(..., metavar="SLIDE", help="slide or image file"),
    mpp: Optional[float] = typer.Option(None, "--mpp", metavar="µm/px", help="level-0 pixel size in µm"),
):
    """Print what slidecell reads from SLIDE (JSON): reader, levels, pixel size, channels, modality.

    The modality is the one `run` will use."""
    from . import open_slide
    from .tiling import slide_modality

    with open_slide(slide, mpp=mpp) as reader:
        typer.echo(json.dumps({**reader.describe(), "modality": slide_modality(reader)}, indent=1))


@app.command(cls=HelpCommand)
def train(
    config: Path = typer.Argument(..., metavar="CONFIG", help="training config (YAML), e.g. configs/train/nuclei.yaml"),
    out: Path = typer.Option(..., "--out", "-o", metavar="DIR",
                             help="run folder: checkpoints, metrics.jsonl, model.safetensors"),
    data: Optional[Path] = typer.Option(None, "--data", metavar="DIR",
                                        help="folder of annotated sets (overrides data_root)"),
    ship: bool = typer.Option(False, "--ship", metavar="",
                              help="copy the best model into the package with its model card"),
    evaluation: Optional[Path] = typer.Option(None, "--evaluation", metavar="JSON",
                                              help="evaluation.json to cite in the model card"),
    min_confidence: float = typer.Option(0.0, "--min-confidence", metavar="P",
                                         help="with --ship: the model's confidence threshold (choose it on validation images: benchmarks/choose_confidence.py)"),
    min_area_um2: float = typer.Option(2.0, "--min-area-um2", metavar="µm²",
                                       help="with --ship: the model's smallest nucleus in µm²"),
):
    """Train the built-in nucleus model; rerun the same command to resume after an interruption."""
    from .train import train as train_model
    from .train.ship import ship as ship_model

    path = train_model(config, out, data_root=data)
    typer.echo(f"best model: {path}")
    if ship:
        for p in ship_model(out, evaluation, min_confidence, min_area_um2):
            typer.echo(f"  shipped {p}")


@app.command(cls=HelpCommand)
def evaluate(
    config: Path = typer.Argument(EVALUATE_DEFAULT, metavar="CONFIG", help="evaluation config (YAML)"),
    out: Optional[Path] = typer.Option(None, "--out", "-o", metavar="DIR",
                                       help="write evaluation.json and evaluation.md here"),
    data: Optional[Path] = typer.Option(None, "--data", metavar="DIR",
                                        help="folder of annotated sets (overrides data_root)"),
    backend: Optional[list[str]] = typer.Option(None, "--backend", "-b", metavar="NAME",
                                                help="only these backends (labels)"),
    sets: Optional[list[str]] = typer.Option(None, "--set", "-s", metavar="NAME", help="only these sets (labels)"),
    append: bool = typer.Option(False, "--append", metavar="",
                                help="keep results already in --out for what is not scored now"),
):
    """Score every configured backend on labelled images: mSA, F1@0.5, PQ, AJI, s/MP."""
    from .evaluate import evaluate as run_eval

    run_eval(config, out, data_root=data, only=backend, append=append, only_sets=sets)
    if out is not None:
        typer.echo(f"  written {out / 'evaluation.md'}")


@app.command(cls=HelpCommand)
def version():
    """Print the slidecell version."""
    from . import __version__

    typer.echo(__version__)


#: exit codes of a run stopped by a signal (128 + the signal's number, as shells report them)
INTERRUPTED, TERMINATED = 130, 143
_STOPPED_BY: list[int] = []


def _on_sigterm(signum, frame):
    """SIGTERM (SLURM's scancel, Snakemake, kill) stops a run as Ctrl-C does: the work folder
    keeps its finished chunks and the same command resumes."""
    _STOPPED_BY.append(signum)
    raise KeyboardInterrupt


def _stopped() -> int:
    import signal

    term = bool(_STOPPED_BY) and _STOPPED_BY[-1] == signal.SIGTERM
    what = "terminated (SIGTERM)" if term else "interrupted"
    typer.echo(f"slidecell: {what}; run the same command again to resume", err=True)
    return TERMINATED if term else INTERRUPTED


def main(argv: list[str] | None = None) -> int:
    import signal
    import threading

    from .errors import SlidecellError, StorageError, storage_problem

    _STOPPED_BY.clear()
    _VERBOSE.clear()
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        # typer turns KeyboardInterrupt into a returned exit code 130
        rv = app(args=argv, standalone_mode=False)
        if rv == INTERRUPTED:
            return _stopped()
        if isinstance(rv, int) and not isinstance(rv, bool) and rv:
            return rv
    except SlidecellError as exc:
        typer.echo(f"slidecell: error: {exc}", err=True)
        return exc.exit_code
    except KeyboardInterrupt:
        return _stopped()
    except (typer.Exit, SystemExit) as exc:
        return int(getattr(exc, "exit_code", getattr(exc, "code", 0)) or 0)
    except Exception as exc:  # usage errors and anything unexpected
        if hasattr(exc, "show") and hasattr(exc, "exit_code"):  # click/typer usage error
            exc.show()
            return int(exc.exit_code)
        problem = storage_problem(exc)
        if problem is not None:  # a full or read-only disk outside a run (export, analyze, ...)
            where = f"{exc.filename}: " if getattr(exc, "filename", None) else ""
            typer.echo(f"slidecell: error: {where}{problem}; make room and run the same command again", err=True)
            return StorageError.exit_code
        if os.environ.get("SLIDECELL_DEBUG") or _VERBOSE:
            raise
        typer.echo(f"slidecell: internal error: {type(exc).__name__}: {exc} "
                   "(set SLIDECELL_DEBUG=1 for the traceback)", err=True)
        return 1
    return 0


def entry() -> None:
    """Console-script entry point."""
    sys.exit(main())


if __name__ == "__main__":
    entry()
