"""The run's analysis stage: ``slidecell analyze`` and ``report`` on a finished run, its outcome
recorded in run.json so that a failed or killed stage is run again by the same command."""

from __future__ import annotations

from pathlib import Path

from ..config import Config
from ..io.writers import OUTPUT_NAMES
from ..records import RUN_FILE, AnalysisStage, RunRecord
from .runfolder import WORK_DIR


def analysis_stage(out: Path, cfg: Config, outputs: dict) -> dict:
    """``slidecell analyze`` and ``report`` on the finished run (its h5ad; exported when the
    run wrote none). Its outcome is recorded in run.json (``analysis_stage``): a failed stage
    is run again by the same command, as is one killed while running."""
    record = RunRecord.read(out / RUN_FILE)
    record.analysis_stage = AnalysisStage(status="running")
    record.write(out / RUN_FILE)
    try:
        done = _analyze_run(out, cfg, outputs)
    except BaseException as err:
        record.analysis_stage = AnalysisStage(status="failed", error=f"{type(err).__name__}: {err}"[:500])
        record.write(out / RUN_FILE)
        raise
    record.analysis_stage = AnalysisStage(status="complete",
                                          outputs={k: str(Path(v).relative_to(out)) for k, v in done.items()})
    record.write(out / RUN_FILE)
    return done


def _analyze_run(out: Path, cfg: Config, outputs: dict) -> dict:
    from ..analysis.analyze import analyze
    from ..analysis.report import build_report

    if "h5ad" not in outputs:
        from ..export import export

        export(out, "h5ad", out / WORK_DIR / OUTPUT_NAMES["h5ad"], overwrite=True)
        source = out / WORK_DIR / OUTPUT_NAMES["h5ad"]
    else:
        source = outputs["h5ad"]
    done = analyze(source, out / "analysis", cfg.analysis, overwrite=True)
    return {"analysis": done, "report": build_report(done, run_dir=out)}
