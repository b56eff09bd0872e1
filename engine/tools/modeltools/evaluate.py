"""`ovstream eval`: a model's accuracy on a data set, or its agreement with a reference model.

The model runs through the engine (``ovstream run`` in a subprocess, results in
``OUTPUT/model/results.jsonl``, read back as :class:`~engine.core.results.FrameResult` s);
:mod:`engine.tools.modeltools.metrics` scores them:

- classifier: top-1/top-5 against a labels list (``relative/path label`` per line, as flowers102's
  ``val_list.txt``) or a folder-per-class tree;
- detector: COCO AP@[.5:.95], AP50, AP75 and AP small/medium/large (pycocotools) against COCO
  ``instances_*.json`` annotations. As COCO evaluation expects, low-score detections are kept: the
  model runs with a score threshold of ``--score-threshold`` (default :data:`EVAL_SCORE_THRESHOLD`,
  0.01, not the registry's display threshold), at most its adapter's ``max_detections`` (100) per
  image, and the report states the threshold. Class ids map to COCO's 91-id categories by
  ``--categories`` (``auto``: 80-class models by index, 91-id label maps by id);
- ``--agreement REFERENCE``: both models run, and the candidate is scored with the reference's
  answers as ground truth (agreement mAP for detectors, top-1 agreement for classifiers).
- ``--conformance [ORIGINAL]``: the original model (the registry's file when it is a ``.tflite``,
  ``.onnx`` or SavedModel, else ORIGINAL) runs in its own framework's runtime
  (:mod:`engine.tools.modeltools.conformance`) on the pixels the engine feeds, and the report says how many
  of its detections (score >= ``--min-score``, default 0.3) the engine reproduces: same class,
  IoU >= 0.9, score within 0.05; top-1 agreement for classifiers. The engine runs without reduced
  JPEG decoding so that both see the same frames.
- ``--diagnose``: on the first ``--subset`` images of the ground truth, the usual input mistakes are
  tried one at a time (:mod:`engine.tools.modeltools.diagnose`) and the one that restores accuracy
  is named.

Frames that failed are counted and reported; the exit code is 1 when any failed.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from engine.config import ADAPTERS, MODEL_SUFFIXES, ModelConfig, RunConfig, load_config, load_registry, resolve_model
from engine.core import paths
from engine.core.errors import EXIT_FAILED, EXIT_OK, EXIT_USAGE, ConfigError, OvstreamError
from engine.core.results import FrameResult, read_results
from engine.tools.modeltools.conformance import open_reference, reference_records
from engine.tools.modeltools.metrics import (
    CATEGORY_MODES,
    agreement_map,
    category_mode,
    classification_agreement,
    coco_map,
    detection_conformance,
    topk_accuracy,
)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
TOP_K = (1, 5)
SCORE_TOLERANCE = 0.05     # conformance: a reproduced detection's score is within this of the reference's
EVAL_SCORE_THRESHOLD = 0.01   # detectors scored against annotations keep detections down to this score
DIAGNOSE_IMAGES = 100         # --diagnose: the first images of the ground truth tried


class RunFailed(OvstreamError):
    """The engine run behind an evaluation crashed or wrote no results."""

    exit_code = EXIT_FAILED


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="registry name (models/models.toml) or model file")
    parser.add_argument("--data", required=True, help="folder of images to evaluate on")
    parser.add_argument("--labels-list", metavar="FILE",
                        help="classifier truth: lines 'relative/path label' (label: class index or name); "
                             "without it a folder-per-class --data is used (class = sorted folder order, "
                             "or the folder's position in the model's labels)")
    parser.add_argument("--annotations", metavar="JSON", help="detector truth: COCO instances annotations")
    parser.add_argument("--categories", choices=("auto", *CATEGORY_MODES), default="auto",
                        help="how a class_id maps to a COCO category: id (91-id COCO label space, as TF OD "
                             "API/SSD models), index (into the sorted categories: 80-class models), label (by "
                             "name); auto (default): index when the model has one label per category, else id")
    parser.add_argument("--score-threshold", type=float, default=EVAL_SCORE_THRESHOLD, metavar="S",
                        help=f"with --annotations: the detector's score threshold (default {EVAL_SCORE_THRESHOLD:g}: "
                             f"COCO AP wants low-score detections kept, not the registry's display threshold)")
    parser.add_argument("--agreement", metavar="REFERENCE",
                        help="reference model (name or file): score MODEL against its answers")
    parser.add_argument("--conformance", nargs="?", const="", metavar="ORIGINAL",
                        help="check the engine against the original model in its own runtime (LiteRT for "
                             ".tflite, onnxruntime for .onnx, TensorFlow for a SavedModel); ORIGINAL: that "
                             "file when MODEL is a converted IR")
    parser.add_argument("--min-score", type=float,
                        help="agreement: reference detections below this score are not ground truth "
                             "(default 0); conformance: reference detections counted (default 0.3)")
    parser.add_argument("--diagnose", action="store_true",
                        help="accuracy far too low? try the usual input mistakes (colour order, value range, "
                             "layout, resize, label offset, box units) on a subset and name the one that "
                             "restores it (needs ground truth)")
    parser.add_argument("--subset", type=int, default=DIAGNOSE_IMAGES, metavar="N",
                        help=f"--diagnose: images tried (default {DIAGNOSE_IMAGES})")
    parser.add_argument("--like", metavar="NAME",
                        help="a model file (MODEL or REFERENCE) takes this registry entry's adapter, labels, "
                             "preprocessing and params (e.g. an INT8 copy of 'face')")
    parser.add_argument("--adapter", choices=ADAPTERS, help="a model file's output adapter (without --like)")
    parser.add_argument("--device", action="append", metavar="D", help="device (repeatable; default CPU)")
    parser.add_argument("--nireq", type=int, default=0, help="infer requests per device (0: device optimum)")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--output", metavar="DIR", help="runs and metrics.json go here (default runs/eval/MODEL)")
    parser.add_argument("--json", action="store_true", help="print the metrics as JSON instead of a table")


# ---- truth ---------------------------------------------------------------------------------------

def read_labels_list(path: Path, data: Path, labels: list[str]) -> dict[str, int]:
    """``{image path: class index}`` from ``relative/path label`` lines; a label may be a class name."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise ConfigError(f"labels list {path}: {exc.strerror}") from None
    truth: dict[str, int] = {}
    for number, line in enumerate(lines, 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.rsplit(None, 1)
        if len(parts) != 2:
            raise ConfigError(f"{path}:{number}: expected 'relative/path label', got {line!r}")
        relative, label = parts
        try:
            index = int(label)
        except ValueError:
            if label not in labels:
                raise ConfigError(f"{path}:{number}: label {label!r} is neither a class index "
                                  f"nor one of the model's labels") from None
            index = labels.index(label)
        truth[str(data / relative)] = index
    if not truth:
        raise ConfigError(f"{path}: no 'relative/path label' lines")
    missing = [p for p in truth if not Path(p).is_file()]
    if missing:
        raise ConfigError(f"{path}: {len(missing)} listed images are not under {data} (first: {missing[0]})")
    return truth


def read_class_folders(data: Path, labels: list[str]) -> dict[str, int]:
    """``{image path: class index}`` of a folder-per-class tree (empty when ``data`` has no subfolders).

    A class is the folder's position in the model's ``labels`` when every folder is named there,
    else its position in sorted folder order.
    """
    classes = sorted(p.name for p in data.iterdir() if p.is_dir() and not p.name.startswith("."))
    if labels and all(name in labels for name in classes):
        index = {name: labels.index(name) for name in classes}
    else:
        index = {name: i for i, name in enumerate(classes)}
    return {str(f): index[name] for name in classes for f in sorted((data / name).rglob("*"))
            if f.suffix.lower() in IMAGE_SUFFIXES and f.is_file()}


def read_annotations(path: Path) -> dict:
    """A COCO annotation file, read once up front so a bad file fails before anything runs."""
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
    except OSError as exc:
        raise ConfigError(f"--annotations {path}: {exc.strerror}") from None
    except ValueError as exc:
        raise ConfigError(f"--annotations {path}: not JSON: {exc}") from None
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise ConfigError(f"--annotations {path}: not COCO annotations (no 'images' list)")
    return data


# ---- running the engine --------------------------------------------------------------------------

def model_section(spec: str, like: str | None = None, adapter: str | None = None) -> dict[str, Any]:
    """The ``[model]`` table for a registry name, or for a model file (``like``/``adapter`` describe it)."""
    path, registry = Path(spec).expanduser(), load_registry()
    if spec in registry or not (path.suffix in MODEL_SUFFIXES or path.exists()):
        return {"name": spec}
    name = like or path.stem
    if not adapter and name not in registry:
        raise ConfigError(f"{spec} is a model file: give its adapter (--adapter) or the registry entry "
                          f"it shares settings with (--like NAME)")
    section = {"name": name, "path": str(path.resolve())}
    if adapter:
        section["adapter"] = adapter
    return section


def resolve_section(model: dict[str, Any]) -> ModelConfig:
    """The resolved model of a ``[model]`` table (registry merged, file and adapter checked)."""
    return resolve_model(RunConfig.from_dict({"model": model}, origin="ovstream eval")).model


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False).replace("\x7f", "\\u007f")
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"no TOML form for {type(value).__name__}")


def write_run_config(out_dir: Path, model: dict[str, Any], data: Path, *, recursive: bool = False,
                     devices: list[str] | None = None, nireq: int = 0, batch: int = 1,
                     pipeline: dict[str, Any] | None = None) -> Path:
    """Write and check ``out_dir/run.toml``: one ``ovstream run`` of ``model`` over ``data``, no dashboard."""
    out_dir.mkdir(parents=True, exist_ok=True)
    sections = {
        "source": {"uri": str(data), "recursive": recursive},
        "model": model,
        "inference": {"devices": devices or ["CPU"], "nireq": nireq, "batch": batch},
        "output": {"dir": str(out_dir), "jsonl": True, "images": False, "video": False},
        "dashboard": {"enabled": False},
        **({"pipeline": pipeline} if pipeline else {}),
    }
    text = "".join(f"[{name}]\n" + "".join(f"{k} = {_toml_value(v)}\n" for k, v in table.items()) + "\n"
                   for name, table in sections.items())
    path = out_dir / "run.toml"
    path.write_text(text, encoding="utf-8")
    load_config(path)
    return path


def run_engine(config_path: Path, out_dir: Path) -> list[FrameResult]:
    """Run ``ovstream run CONFIG`` in a subprocess and return its ``results.jsonl`` results.

    The run's output goes to ``out_dir/run.log``. Exit 1 (some frames failed) still returns the
    records; exit 2 is the run's own usage error, re-raised; anything else is :class:`RunFailed`.
    """
    command = [sys.executable, "-m", "engine.cli", "run", str(config_path), "--output", str(out_dir),
               "--no-dashboard"]
    proc = subprocess.run(command, stdin=subprocess.DEVNULL,
                          capture_output=True, text=True)
    log = out_dir / "run.log"
    log.write_text(proc.stdout + proc.stderr, encoding="utf-8")
    last = next((line for line in reversed(proc.stderr.splitlines()) if line.strip()), "no message")
    if proc.returncode == EXIT_USAGE:
        raise ConfigError(f"{last} (config {config_path})")
    if proc.returncode not in (EXIT_OK, EXIT_FAILED):
        raise RunFailed(f"engine run failed (exit {proc.returncode}): {last} (see {log})")
    results = out_dir / "results.jsonl"
    if not results.is_file():
        raise RunFailed(f"engine run wrote no {results} (see {log})")
    try:
        return list(read_results(results, strict=True))
    except ValueError as exc:
        raise RunFailed(f"engine run wrote an unreadable result: {exc}") from None


# ---- the command ---------------------------------------------------------------------------------

def _summary(name: str, records: list[FrameResult]) -> dict[str, Any]:
    failed = [r for r in records if not r.ok]
    summary: dict[str, Any] = {"model": name, "frames": len(records), "errors": len(failed)}
    if failed:
        source, error = failed[0].source, failed[0].error or "failed"
        summary["first_error"] = error if source in error else f"{source}: {error}"
    return summary


def evaluate(args: argparse.Namespace) -> dict[str, Any]:
    """Run the model (and the reference) on ``--data`` and return the metrics report."""
    data = paths.resolve(args.data)
    if not data.is_dir():
        raise ConfigError(f"--data {args.data}: not a folder")
    out = Path(args.output or Path("runs") / "eval" / Path(args.model).stem).expanduser().resolve()
    engine_opts = dict(devices=args.device, nireq=args.nireq, batch=args.batch)

    candidate = model_section(args.model, args.like, args.adapter)
    model = resolve_section(candidate)
    kind = "classification" if model.adapter == "classification" else "detection"
    truth: dict[str, int] = {}
    if kind == "classification":
        if args.annotations:
            raise ConfigError(f"--annotations scores detectors; {args.model} is a classifier")
        candidate["top_k"] = max(TOP_K)
        labels = list(model.labels)
        truth = (read_labels_list(Path(args.labels_list).expanduser(), data, labels) if args.labels_list
                 else read_class_folders(data, labels))
    elif args.labels_list:
        raise ConfigError(f"--labels-list scores classifiers; {args.model} is a detector")
    annotations = read_annotations(Path(args.annotations).expanduser()) if args.annotations else None
    if annotations is not None:
        if not 0 <= args.score_threshold <= 1:
            raise ConfigError(f"--score-threshold must be from 0 to 1, not {args.score_threshold}")
        candidate["score_threshold"] = args.score_threshold
        categories = (category_mode(list(model.labels), annotations) if args.categories == "auto"
                      else args.categories)
    if args.diagnose:
        return run_diagnosis(args, model, data, truth, annotations, categories if annotations else "id")
    conformance = args.conformance is not None
    if not (truth or annotations or args.agreement or conformance):
        raise ConfigError("nothing to measure: give --labels-list or a folder-per-class --data (classifier), "
                          "--annotations (detector), --agreement REFERENCE or --conformance")
    original = None
    if conformance:
        original = Path(args.conformance).expanduser() if args.conformance else Path(model.path)
        if not original.exists():
            raise ConfigError(f"--conformance {original}: no such file or folder")
        reference_runtime = open_reference(original)
        min_score = 0.3 if args.min_score is None else args.min_score
        if kind == "detection":     # both sides report down to the tolerance below the counted scores
            candidate["score_threshold"] = max(0.0, min_score - SCORE_TOLERANCE)
    reference = model_section(args.agreement, args.like, args.adapter) if args.agreement else None
    if reference:
        if (resolve_section(reference).adapter == "classification") != (kind == "classification"):
            raise ConfigError(f"--agreement {args.agreement} and {args.model} must both be detectors "
                              f"or both classifiers")
        if kind == "classification":
            reference["top_k"] = max(TOP_K)
        elif annotations is not None:
            reference["score_threshold"] = args.score_threshold
    recursive = bool(truth)  # class folders and listed paths can be nested
    config = write_run_config(out / "model", candidate, data, recursive=recursive, **engine_opts,
                              pipeline={"reduced_decode": False} if conformance else None)
    ref_config = (write_run_config(out / "reference", reference, data, recursive=recursive, **engine_opts)
                  if reference else None)

    records = run_engine(config, out / "model")
    report: dict[str, Any] = {"kind": kind, "data": str(data), "candidate": _summary(args.model, records)}
    if annotations is not None:
        report["coco"] = {"annotations": str(args.annotations), "score_threshold": candidate["score_threshold"],
                          "categories": categories}
    runs = [(report["candidate"], records)]
    if ref_config:
        ref_records = run_engine(ref_config, out / "reference")
        report["reference"] = _summary(args.agreement, ref_records)
        runs.append((report["reference"], ref_records))
        report["agreement"] = (classification_agreement(ref_records, records) if kind == "classification"
                               else agreement_map(ref_records, records, min_score=args.min_score or 0.0))
    if conformance:
        images = [Path(r.source) for r in records if r.frame_index == 0]
        ref_records = reference_records(resolve_section(candidate), reference_runtime, images)
        report["conformance"] = {"original": str(original), "runtime": reference_runtime.runtime,
                                 **(classification_agreement(ref_records, records) if kind == "classification"
                                    else detection_conformance(ref_records, records, min_score=min_score,
                                                               score_tolerance=SCORE_TOLERANCE))}
    for summary, recs in runs:
        if truth:
            summary["metrics"] = topk_accuracy(recs, truth, TOP_K)
        elif annotations:
            try:
                summary["metrics"] = coco_map(annotations, recs, categories=categories)
            except (ValueError, KeyError, TypeError) as exc:
                raise ConfigError(f"--annotations {args.annotations}: {exc}") from None
    (out / "metrics.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    report["output"] = str(out)
    return report


def run_diagnosis(args: argparse.Namespace, model: ModelConfig, data: Path, truth: dict[str, int],
                  annotations: dict | None, categories: str) -> dict[str, Any]:
    """``--diagnose``: the report of :func:`engine.tools.modeltools.diagnose.diagnose` on a subset."""
    from engine.tools.modeltools.datasets import image_files
    from engine.tools.modeltools.diagnose import Diagnoser, diagnose

    if args.subset < 1:
        raise ConfigError(f"--subset must be at least 1, not {args.subset}")
    if not (truth or annotations):
        raise ConfigError("--diagnose needs ground truth: --labels-list or a folder-per-class --data "
                          "(classifier), --annotations (detector)")
    images = ([Path(p) for p in sorted(truth)[:args.subset]] if truth else image_files(data, args.subset))
    diagnoser = Diagnoser(model, images, truth=truth or None, annotations=annotations, categories=categories,
                          score_threshold=args.score_threshold)
    console = Console(stderr=True)
    with console.status("diagnosing") as status:
        found = diagnose(diagnoser, lambda label: status.update(f"diagnosing: {escape(label)}"))
    return {"kind": "diagnosis", "model": args.model, "data": str(data), "metric": found.metric,
            "images": found.images,
            "trials": [{"changes": t.label, "metric": t.metric, **({"error": t.error} if t.error else {})}
                       for t in found.trials],
            "diagnosis": found.found.label if found.found else None,
            "configured": found.baseline.metric, "restored": found.found.metric if found.found else None}


def render_diagnosis(report: dict[str, Any]) -> tuple[Table, str]:
    """The trials, best first, and the verdict line."""
    table = Table(title=f"ovstream eval --diagnose: {escape(report['model'])}",
                  caption=f"{report['images']} images of {escape(report['data'])}")
    table.add_column("tried")
    table.add_column(report["metric"], justify="right")
    trials = report["trials"]
    ranked = [trials[0]] + sorted(trials[1:], key=lambda t: -1.0 if t["metric"] is None else t["metric"],
                                  reverse=True)
    for trial in ranked:
        error = trial.get("error", "")[:60]
        shown = "n/a: " + error if trial["metric"] is None else f"{trial['metric']:.4f}"
        style = "bold green" if trial["changes"] == report["diagnosis"] else None
        table.add_row(escape(trial["changes"]), escape(shown), style=style)
    if report["diagnosis"]:
        verdict = (f"likely mistake found: with {report['diagnosis']}, {report['metric']} goes "
                   f"{report['configured']:.4f} → {report['restored']:.4f}")
    else:
        verdict = (f"no usual input mistake explains it: the configured conventions score best "
                   f"({report['metric']} {report['configured']:.4f})")
    return table, verdict


def _fmt(value: Any) -> str:
    if value is None:
        return "n/a"
    return f"{value:.4f}" if isinstance(value, float) else str(value)


ROWS = {
    "classification": [("top1", "top-1 accuracy"), ("top5", "top-5 accuracy"), ("images", "labelled images"),
                       ("unanswered", "labelled images without answer")],
    "detection": [("map", "AP@[.5:.95]"), ("map50", "AP50"), ("map75", "AP75"), ("map_small", "AP small"),
                  ("map_medium", "AP medium"), ("map_large", "AP large"), ("mar100", "AR@100"),
                  ("images", "images"), ("detections", "detections scored")],
}
AGREEMENT_ROWS = {
    "classification": [("top1_agreement", "top-1 agreement"), ("frames", "frames compared")],
    "detection": [("map", "agreement mAP@[.5:.95]"), ("map50", "agreement mAP@.5"),
                  ("reference_boxes", "reference boxes"), ("candidate_boxes", "candidate boxes")],
}


CONFORMANCE_ROWS = {
    "classification": [("top1_agreement", "top-1 agreement with the reference runtime"), ("frames", "frames compared")],
    "detection": [("reference_detections", "reference detections (score ≥ {min_score:g})"),
                  ("reproduced", "reproduced (same class, IoU ≥ {min_iou:g}, score ± {score_tolerance:g})"),
                  ("rate", "reproduced fraction"), ("same_count_frames", "frames with the same count")],
}


def render(report: dict[str, Any]) -> Table:
    """The report as a rich table: one column per model, agreement rows last."""
    runs = [report["candidate"]] + ([report["reference"]] if "reference" in report else [])
    table = Table(title=f"ovstream eval: {report['kind']}", caption=f"data: {escape(report['data'])}")
    table.add_column("metric")
    for role, run in zip(("model", "reference"), runs):
        table.add_column(f"{role} {escape(Path(run['model']).name)}", justify="right")
    table.add_row("frames", *(_fmt(r["frames"]) for r in runs))
    table.add_row("failed frames", *(_fmt(r["errors"]) for r in runs))
    if "metrics" in runs[0]:
        table.add_section()
        for key, title in ROWS[report["kind"]]:
            table.add_row(title, *(_fmt(r["metrics"].get(key)) for r in runs))
        if "coco" in report:      # what the COCO figures depend on, said with them
            coco = report["coco"]
            table.add_row("score threshold (eval)", f"{coco['score_threshold']:g}", *([""] * (len(runs) - 1)))
            table.add_row("class → COCO category", str(coco["categories"]), *([""] * (len(runs) - 1)))
    if "agreement" in report:
        table.add_section()
        for key, title in AGREEMENT_ROWS[report["kind"]]:
            table.add_row(title, _fmt(report["agreement"].get(key)), *([""] * (len(runs) - 1)))
    if "conformance" in report:
        found = report["conformance"]
        table.add_section()
        table.add_row("reference runtime", escape(found["runtime"]), *([""] * (len(runs) - 1)))
        for key, title in CONFORMANCE_ROWS[report["kind"]]:
            label = title.format(**found)
            table.add_row(label, _fmt(found.get(key)), *([""] * (len(runs) - 1)))
    return table


def main(args: argparse.Namespace) -> int:
    report = evaluate(args)
    if report["kind"] == "diagnosis":
        if args.json:
            print(json.dumps(report, indent=2))
        else:
            table, verdict = render_diagnosis(report)
            Console().print(table)
            Console().print(escape(verdict))
        return EXIT_OK
    runs = [report["candidate"]] + ([report["reference"]] if "reference" in report else [])
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        console = Console()
        console.print(render(report))
        for run in runs:
            if run["errors"]:
                console.print(f"[red]{escape(run['model'])}: {run['errors']} frames failed[/], "
                              f"first: {escape(run['first_error'])}")
        console.print(f"metrics: {report['output']}/metrics.json")
    return EXIT_FAILED if any(r["errors"] for r in runs) else EXIT_OK
