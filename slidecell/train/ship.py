"""Shipping a trained model into the package: its weights with the validation-chosen thresholds,
and its model card (data, licences, training chain, evaluation)."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from . import TrainConfig, set_groups, validate


def ship(run_dir: str | Path, evaluation: str | Path | None = None, min_confidence: float = 0.0,
         min_area_um2: float = 2.0) -> list[Path]:
    """Copy a run's best model into the package (``segment/builtin/weights/<name>.safetensors``,
    fp16 to halve the size; loaded back as fp32) and write its model card beside it.
    ``min_confidence`` and ``min_area_um2`` (chosen on validation images with
    ``benchmarks/choose_confidence.py``) become the model's own defaults."""
    from ..io.atomic import atomic_path
    from ..segment.builtin.model import load_weights, save_weights
    from ..segment.builtin.weights import WEIGHTS_DIR, PostParams

    run_dir = Path(run_dir)
    net, meta = load_weights(run_dir / "model.safetensors")
    cfg = yaml.safe_load((run_dir / "config.yaml").read_text())
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    meta.post = PostParams(min_confidence=min_confidence)  # chosen on validation images (see PostParams)
    meta.extra["min_area_um2"] = min_area_um2
    # validation scores with the post-processing that ships (training logged its own defaults)
    tcfg = TrainConfig.model_validate(cfg)
    root = Path(tcfg.data_root)
    if root.is_dir():
        from ..segment.builtin.model import Predictor

        val_samples = [x for g in set_groups(tcfg, root, "val") for x in g.samples]
        if val_samples:
            meta.extra["validation_shipped_post"] = validate(Predictor(net, meta), val_samples)
    dest = WEIGHTS_DIR / f"{meta.name}.safetensors"
    save_weights(net, meta, dest, half=True)
    card = model_card(meta, cfg, metrics, json.loads(Path(evaluation).read_text()) if evaluation else None)
    card_path = WEIGHTS_DIR / f"{meta.name}.md"
    with atomic_path(card_path) as tmp:
        Path(tmp).write_text(card)
    return [dest, card_path]


def init_chain(cfg: dict, configs: Path = Path("configs/train")) -> list[str]:
    """Earlier stages of a config, first first: ``init: runs/<stage>/model.safetensors`` names the
    stage whose config is ``configs/train/<stage>.yaml`` (followed while those files exist)."""
    chain: list[str] = []
    init = cfg.get("init")
    while init and len(chain) < 20:
        stage = Path(init).parent.name
        chain.insert(0, stage)
        path = configs / f"{stage}.yaml"
        init = (yaml.safe_load(path.read_text()) or {}).get("init") if path.is_file() else None
    return chain


def model_card(meta, cfg: dict, metrics: list[dict], evaluation: dict | None) -> str:
    n_params = None
    try:
        from ..segment.builtin.net import UNet

        n_params = sum(p.numel() for p in UNet(meta.spec).parameters())
    except Exception:
        pass
    best = meta.extra.get("validation", {})
    lines = [f"# Model card: `{meta.name}`", ""]
    if cfg.get("research_only"):
        lines += ["**RESEARCH USE ONLY.** Trained on data under non-commercial terms or with no licence "
                  "stated; the weights inherit those terms.", ""]
    lines += [
        (cfg.get("description") or "").strip(), "",
        "## Network",
        f"- U-Net, encoder widths {list(meta.spec.channels)}, {n_params:,} parameters; stored in fp16"
        if n_params else f"- U-Net, encoder widths {list(meta.spec.channels)}",
        "- outputs: foreground, boundary ring, normalised distance to the nucleus border; "
        f"post-processing: seeds = {meta.post.seeds} (threshold {meta.post.seed_threshold}), grown to the "
        f"foreground (> {meta.post.fg_threshold}) by {meta.post.grow}; nuclei with a confidence (mean "
        f"foreground probability) below {meta.post.min_confidence} or smaller than "
        f"{meta.extra.get('min_area_um2', 2.0)} µm² are dropped (both chosen on validation images, "
        "`benchmarks/choose_confidence.py`)",
        f"- input resolution: {meta.mpp} µm/px (tiles at other resolutions are resampled); RGB brightfield "
        "or one nuclear fluorescence channel (scaled by its 1st-99.8th percentiles per slide)",
        "", "## Training data and licences", "",
        "| set | images chosen by | licence |", "|---|---|---|",
    ]
    for s in cfg["sets"]:
        lines.append(f"| {s['name']} | train {s.get('train') or 'all'}; val {s.get('val') or '-'} | {s.get('license')} |")
    lines += ["", f"Seed {cfg['seed']}; {cfg['epochs']} epochs × {cfg['steps_per_epoch']} steps, batch "
              f"{cfg['batch_size']}, patches {cfg['augment']['patch']}² with stain (HED) jitter, scale "
              f"{cfg['augment']['scale'][0]}–{cfg['augment']['scale'][1]}×, flips/90° rotations, blur, "
              f"noise, JPEG artefacts; precision {cfg.get('precision', 'auto')}.", ""]
    lines += ["## Validation", "",
              f"Best epoch {meta.extra.get('epoch')} (chosen by validation mSA with the post-processing of the "
              "training run): " + ", ".join(f"{k} {v:.3f}" for k, v in best.items() if isinstance(v, float)), ""]
    shipped = meta.extra.get("validation_shipped_post")
    if shipped:
        lines += ["With the shipped post-processing: " + ", ".join(
            f"{k} {v:.3f}" for k, v in shipped.items() if isinstance(v, float)), ""]
    if metrics:
        last = metrics[-1]
        lines.append(f"Training time of this stage: {sum(m['seconds'] for m in metrics):.0f} s over {last['epoch']} "
                     "epochs (validation not counted).")
        lines.append("")
    if evaluation:
        from ..evaluate import EvalConfig, markdown_table

        lines += ["## Evaluation on held-out images (`slidecell evaluate`)", "",
                  "Protocol `run`: each image through `slidecell run` with the preset, outlines scored against "
                  "the labels at their native resolution (40x sets also as a 20x scanner gives them); "
                  "`downsampled`: the older protocol (images and labels resampled to 0.5 µm/px).", "",
                  markdown_table(evaluation, EvalConfig.model_validate(evaluation["config"]))]
    stages = init_chain(cfg)
    if stages:
        lines += ["Trained in stages, each starting from the weights of the one before: "
                  + " → ".join(f"`configs/train/{s}.yaml`" for s in stages) + " → this config.", ""]
    repro = [f"slidecell train configs/train/{s}.yaml --out runs/{s}" for s in stages]
    repro += [f"slidecell train configs/train/{meta.name}.yaml --out runs/{meta.name} --ship",
              "bash benchmarks/run_evaluation.sh   # slidecell evaluate configs/evaluate/nuclei-heldout.yaml"]
    lines += ["## Reproduce", "", "```", *repro, "```", ""]
    return "\n".join(lines)
