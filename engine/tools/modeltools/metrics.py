"""Accuracy metrics over engine results (:class:`~engine.core.results.FrameResult`, as ``results.jsonl`` holds them).

Pure functions, shared by ``ovstream eval`` and the quantizer:

- :func:`coco_map`: COCO box mAP against ground-truth annotations, computed by pycocotools' COCOeval.
- :func:`agreement_map`: the same mAP with a reference model's detections standing in for ground truth.
- :func:`topk_accuracy`, :func:`classification_agreement`: classifier top-k and top-1 agreement.
- :func:`detection_conformance`: how many of a reference runtime's detections the engine reproduces.

A result is one frame: its ``source``, ``frame_index``, ``status`` and ``detections`` or ``classes``.
A failed frame (``status`` other than ``ok``) counts as a frame without answer: no detections, no class.
COCO statistics that are undefined (no ground truth in the area range) are ``None``.
"""
from __future__ import annotations

import contextlib
import copy
import io
import json
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from engine.core.results import Detection, FrameResult

# COCOeval.stats, in its order.
COCO_STATS = ("map", "map50", "map75", "map_small", "map_medium", "map_large",
              "mar1", "mar10", "mar100", "mar_small", "mar_medium", "mar_large")
# How a detection's class becomes a COCO category id (see coco_map).
CATEGORY_MODES = ("id", "index", "label")

FrameKey = tuple[str, int]


def frame_key(result: FrameResult) -> FrameKey:
    """Identity of a frame across runs: its resolved source path and index in that source."""
    return os.path.realpath(result.source), result.frame_index


def _xywh(box: Sequence[float]) -> list[float]:
    x1, y1, x2, y2 = (float(v) for v in box)
    return [x1, y1, x2 - x1, y2 - y1]


# ---- COCO mAP ------------------------------------------------------------------------------------

def load_coco(annotations: str | Path | Mapping) -> COCO:
    """A pycocotools COCO index from an annotation file or a COCO-format dict (the dict is copied).

    Annotation ids must be >= 1: COCOeval treats a match with id 0 as no match.
    """
    if isinstance(annotations, Mapping):
        dataset = copy.deepcopy(dict(annotations))
    else:
        with open(annotations, encoding="utf-8") as fh:
            dataset = json.load(fh)
    dataset.setdefault("annotations", [])
    coco = COCO()
    coco.dataset = dataset
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def evaluate_boxes(gt: COCO, results: list[dict], image_ids: Iterable[int]) -> dict[str, float | None]:
    """COCOeval ``bbox`` over ``image_ids``; ``results`` are COCO results (image_id, category_id, bbox, score)."""
    with contextlib.redirect_stdout(io.StringIO()):
        if results:
            dt = gt.loadRes(results)
        else:  # loadRes cannot take an empty list
            dt = COCO()
            dt.dataset = {"images": gt.dataset.get("images", []),
                          "categories": copy.deepcopy(gt.dataset.get("categories", [])),
                          "annotations": []}
            dt.createIndex()
        ev = COCOeval(gt, dt, "bbox")
        ev.params.imgIds = sorted(set(image_ids))
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return {name: (float(v) if v >= 0 else None) for name, v in zip(COCO_STATS, ev.stats)}


def _image_id_of(gt: COCO) -> Callable[[str], int | None]:
    by_name = {os.path.basename(img["file_name"]): img["id"] for img in gt.dataset.get("images", [])
               if "file_name" in img}
    known = set(gt.getImgIds())

    def image_id(source: str) -> int | None:
        name = os.path.basename(source)
        if name in by_name:
            return by_name[name]
        stem = Path(name).stem
        return int(stem) if stem.isdigit() and int(stem) in known else None
    return image_id


def _category_of(gt: COCO, categories: str | Mapping[int, int]) -> Callable[[Detection], int | None]:
    if isinstance(categories, Mapping):
        table = {int(k): int(v) for k, v in categories.items()}
        return lambda det: table.get(det.class_id)
    if categories == "id":
        known = set(gt.getCatIds())
        return lambda det: det.class_id if det.class_id in known else None
    if categories == "index":
        ordered = sorted(gt.getCatIds())
        return lambda det: ordered[det.class_id] if 0 <= det.class_id < len(ordered) else None
    if categories == "label":
        by_name = {c["name"]: c["id"] for c in gt.dataset.get("categories", [])}
        return lambda det: by_name.get(det.label)
    raise ValueError(f"categories must be one of {', '.join(CATEGORY_MODES)} or a mapping, not {categories!r}")


def category_mode(labels: Sequence[str], annotations: Mapping) -> str:
    """The ``categories`` mode for a model's labels: ``index`` when it has one label per annotated
    category (80-class COCO models, class i = the i-th category by id), else ``id`` (the 91-id label
    maps of TF OD API models, line i = category id i)."""
    return "index" if len(labels) == len(annotations.get("categories") or ()) else "id"


def coco_map(annotations: str | Path | Mapping, results: list[FrameResult], *,
             categories: str | Mapping[int, int] = "id") -> dict[str, Any]:
    """COCO box mAP@[.5:.95] (``map``), mAP@.5 (``map50``) and the other COCOeval stats of ``results``.

    Images: a result's file name is looked up in the annotations' ``file_name`` entries, else its
    stem is taken as the integer image id (COCO's ``000000000139.jpg`` → 139). Only the images of
    ``results`` are evaluated; a failed frame counts as one without detections.

    ``categories`` maps a detection's ``class_id`` to a COCO category id:
    ``"id"``: class_id is the category id (TF OD API / SSD models in COCO's 91-id label space,
    background 0); ``"index"``: class_id indexes the annotations' categories sorted by id (models
    with 80 contiguous classes); ``"label"``: the detection's label equals the category name; or an
    explicit ``{class_id: category_id}`` mapping. Detections whose class maps to nothing are dropped.

    Raises ``ValueError`` naming a result whose image is not in the annotations.
    """
    gt = load_coco(annotations)
    image_id, category_of = _image_id_of(gt), _category_of(gt, categories)
    image_ids, found = [], []
    for result in results:
        img = image_id(result.source)
        if img is None:
            raise ValueError(f"{result.source}: image not in the annotations")
        image_ids.append(img)
        for det in (result.detections or ()) if result.ok else ():
            cat = category_of(det)
            if cat is not None:
                found.append({"image_id": img, "category_id": cat, "bbox": _xywh(det.box), "score": float(det.score)})
    stats = evaluate_boxes(gt, found, image_ids)
    return {**stats, "images": len(set(image_ids)), "detections": len(found)}


def agreement_map(reference_records: list[FrameResult], candidate_records: list[FrameResult], *,
                  min_score: float = 0.0) -> dict[str, Any]:
    """mAP of the candidate's detections with the reference's (score >= ``min_score``) as ground truth.

    For detectors without ground truth, e.g. an INT8 model against its FP32 original. Frames match
    by :func:`frame_key`; frames the reference failed are skipped, frames the candidate failed or
    lacks count as frames without detections. Identical results give 1.0.
    """
    images: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    categories: dict[int, str] = {}
    image_of: dict[FrameKey, int] = {}
    for record in reference_records:
        if not record.ok or frame_key(record) in image_of:
            continue
        img = image_of[frame_key(record)] = len(images) + 1
        images.append({"id": img, "file_name": record.source})
        for det in record.detections or ():
            if float(det.score) < min_score:
                continue
            x, y, w, h = _xywh(det.box)
            categories.setdefault(det.class_id, det.label)
            annotations.append({"id": len(annotations) + 1, "image_id": img,
                                "category_id": det.class_id, "bbox": [x, y, w, h],
                                "area": w * h, "iscrowd": 0})
    results = []
    for record in candidate_records:
        found = image_of.get(frame_key(record))
        if found is None or not record.ok:
            continue
        for det in record.detections or ():
            categories.setdefault(det.class_id, det.label)
            results.append({"image_id": found, "category_id": det.class_id,
                            "bbox": _xywh(det.box), "score": float(det.score)})
    gt = load_coco({"images": images, "annotations": annotations,
                    "categories": [{"id": k, "name": v} for k, v in sorted(categories.items())]})
    stats = evaluate_boxes(gt, results, [img["id"] for img in images])
    return {**stats, "images": len(images), "reference_boxes": len(annotations),
            "candidate_boxes": len(results)}


def box_iou(a: Sequence[float], b: Sequence[float]) -> float:
    """Intersection over union of two (x1, y1, x2, y2) boxes (0 when either is empty)."""
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    inter = max(w, 0.0) * max(h, 0.0)
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def detection_conformance(reference_records: list[FrameResult], candidate_records: list[FrameResult], *,
                          min_score: float = 0.3, min_iou: float = 0.9,
                          score_tolerance: float = 0.05) -> dict[str, Any]:
    """How many reference detections (score >= ``min_score``) the candidate reproduces: the same
    class, IoU >= ``min_iou`` and a score within ``score_tolerance``, each candidate detection used
    once (reference detections taken best first). ``same_count_frames``: frames where both report
    as many detections at or above ``min_score``. Frames the reference failed are skipped; a failed
    or missing candidate frame reproduces nothing."""
    candidate = {frame_key(r): r for r in candidate_records if r.ok}
    total = reproduced = frames = same_count = 0
    for record in reference_records:
        if not record.ok:
            continue
        frames += 1
        wanted = sorted((d for d in record.detections or () if float(d.score) >= min_score),
                        key=lambda d: -float(d.score))
        answer = candidate.get(frame_key(record))
        found = list((answer.detections or ()) if answer is not None else ())
        same_count += len(wanted) == sum(float(d.score) >= min_score for d in found)
        for det in wanted:
            total += 1
            match = next((c for c in found if c.class_id == det.class_id
                          and abs(float(c.score) - float(det.score)) <= score_tolerance
                          and box_iou(c.box, det.box) >= min_iou), None)
            if match is not None:
                found.remove(match)
                reproduced += 1
    return {"reference_detections": total, "reproduced": reproduced,
            "rate": reproduced / total if total else None, "frames": frames, "same_count_frames": same_count,
            "min_score": min_score, "min_iou": min_iou, "score_tolerance": score_tolerance}


# ---- classification ------------------------------------------------------------------------------

def topk_accuracy(records: list[FrameResult], truth: Mapping[str, int],
                  k: Iterable[int] = (1, 5)) -> dict[str, Any]:
    """Top-k accuracy of ``records`` against ``truth`` (image path → class index).

    Paths match after resolving (:func:`os.path.realpath`); records of unlisted images are ignored.
    Every truth entry counts: one without an ``ok`` record is a miss (``unanswered``). ``topK`` looks
    at the record's ``classes`` list (best first), so the run must keep at least K classes.
    """
    ks = tuple(k)
    answers = {frame_key(r)[0]: [c.class_id for c in r.classes or ()] for r in records if r.ok}
    hits = dict.fromkeys(ks, 0)
    unanswered = 0
    for path, label in truth.items():
        ranked = answers.get(os.path.realpath(path))
        if ranked is None:
            unanswered += 1
            continue
        for n in ks:
            hits[n] += int(label) in ranked[:n]
    total = len(truth)
    return {**{f"top{n}": (hits[n] / total if total else None) for n in ks},
            "images": total, "unanswered": unanswered}


def classification_agreement(reference_records: list[FrameResult],
                             candidate_records: list[FrameResult]) -> dict[str, Any]:
    """Rate of frames whose top-1 class is the same for both models (``top1_agreement``).

    Frames the reference failed are skipped; a failed or missing candidate frame disagrees.
    """
    reference = {frame_key(r): r.classes[0].class_id for r in reference_records if r.ok and r.classes}
    candidate = {frame_key(r): r.classes[0].class_id for r in candidate_records if r.ok and r.classes}
    same = sum(candidate.get(key) == cls for key, cls in reference.items())
    return {"top1_agreement": same / len(reference) if reference else None, "frames": len(reference)}
