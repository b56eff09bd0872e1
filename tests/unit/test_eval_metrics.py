"""Metrics against pycocotools run directly, and sanity cases for mAP, top-k and agreement."""
from __future__ import annotations

import contextlib
import copy
import io

import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from engine.core.errors import ConfigError
from engine.core.results import Classification, Detection, FrameResult
from engine.tools.modeltools.evaluate import read_class_folders, read_labels_list
from engine.tools.modeltools.metrics import (
    COCO_STATS,
    agreement_map,
    category_mode,
    classification_agreement,
    coco_map,
    topk_accuracy,
)

CATEGORIES = [{"id": 1, "name": "person"}, {"id": 3, "name": "car"}, {"id": 18, "name": "dog"}]
IMAGES = {139: (640, 426), 285: (586, 640), 632: (640, 483), 724: (375, 500), 776: (428, 640)}
# image id → [category id, [x, y, w, h], iscrowd]: large/medium/small boxes, crowd regions, an empty image.
TRUTH = {
    139: [(1, [10, 20, 100, 200], 0), (1, [300, 50, 40, 60], 0), (3, [200, 300, 20, 15], 0),
          (1, [400, 100, 150, 150], 1)],
    285: [(18, [50, 50, 200, 150], 0), (3, [10, 10, 30, 30], 0)],
    632: [(1, [100, 100, 50, 120], 0), (1, [160, 100, 50, 120], 0), (18, [0, 200, 80, 60], 0)],
    724: [(3, [100, 100, 300, 200], 0), (3, [420, 120, 150, 100], 0), (3, [0, 0, 60, 40], 1)],
    776: [],
}
# image id → [category id, [x, y, w, h], score]: hits, a hit on a crowd region, a wrong class, a
# duplicate, a badly placed box, false positives on a busy and on an empty image.
DETECTIONS = {
    139: [(1, [12, 22, 98, 196], 0.95), (1, [298, 52, 42, 58], 0.8), (1, [420, 110, 100, 100], 0.7),
          (3, [202, 301, 18, 14], 0.6), (18, [10, 20, 100, 200], 0.3), (1, [10, 20, 100, 200], 0.4)],
    285: [(18, [55, 52, 195, 148], 0.9), (3, [40, 40, 30, 30], 0.5), (1, [300, 300, 50, 50], 0.45)],
    632: [(1, [100, 100, 50, 120], 0.85), (1, [165, 105, 45, 110], 0.75), (18, [0, 205, 85, 55], 0.65)],
    724: [(3, [105, 95, 290, 210], 0.92), (3, [430, 130, 140, 90], 0.55), (3, [5, 5, 50, 30], 0.35)],
    776: [(1, [10, 10, 50, 50], 0.5)],
}
NAMES = {c["id"]: c["name"] for c in CATEGORIES}
INDEX = {c["id"]: i for i, c in enumerate(CATEGORIES)}


def file_name(image_id: int) -> str:
    return f"{image_id:012d}.jpg"


def ground_truth(with_file_names: bool = True) -> dict:
    images = [{"id": i, "width": w, "height": h, **({"file_name": file_name(i)} if with_file_names else {})}
              for i, (w, h) in IMAGES.items()]
    annotations = [{"id": n, "image_id": img, "category_id": cat, "bbox": box, "area": box[2] * box[3],
                    "iscrowd": crowd}
                   for n, (img, cat, box, crowd) in enumerate(
                       ((img, *a) for img, anns in TRUTH.items() for a in anns), 1)]
    return {"images": images, "annotations": annotations, "categories": CATEGORIES}


def detection(cat: int, box: list[float], score: float, class_id: int | None = None) -> Detection:
    x, y, w, h = box
    return Detection(NAMES[cat], cat if class_id is None else class_id, score, (x, y, x + w, y + h))


def record(image_id: int, detections: list[Detection], status: str = "ok") -> FrameResult:
    source = f"/data/coco/{file_name(image_id)}"
    if status != "ok":
        return FrameResult.failed("coco", image_id, source, 0, "decode", "decode failed")
    return FrameResult("coco", image_id, source, 0, device="CPU", worker="inference-0", detections=tuple(detections))


def records(dets: dict = DETECTIONS) -> list[FrameResult]:
    return [record(img, [detection(c, b, s) for c, b, s in found]) for img, found in dets.items()]


def direct_cocoeval(gt: dict, dets: dict, image_ids: list[int]) -> dict:
    results = [{"image_id": img, "category_id": c, "bbox": [float(v) for v in b], "score": s}
               for img, found in dets.items() for c, b, s in found]
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO()
        coco.dataset = copy.deepcopy(gt)
        coco.createIndex()
        ev = COCOeval(coco, coco.loadRes(results), "bbox")
        ev.params.imgIds = image_ids
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return {name: (float(v) if v >= 0 else None) for name, v in zip(COCO_STATS, ev.stats, strict=True)}


# ---- coco_map -------------------------------------------------------------------------------------

def test_coco_map_equals_cocoeval_run_directly():
    gt = ground_truth()
    got = coco_map(gt, records())
    expected = direct_cocoeval(gt, DETECTIONS, sorted(IMAGES))
    assert {k: got[k] for k in COCO_STATS} == expected
    assert 0.3 < got["map"] < got["map50"] < 1.0
    assert got["images"] == 5 and got["detections"] == sum(map(len, DETECTIONS.values()))
    assert gt == ground_truth(), "the caller's annotations must not be modified"


def test_coco_map_only_scores_the_images_of_the_records():
    subset = {img: DETECTIONS[img] for img in (139, 632)}
    got = coco_map(ground_truth(), records(subset))
    assert {k: got[k] for k in COCO_STATS} == direct_cocoeval(ground_truth(), subset, [139, 632])


def test_coco_map_reads_an_annotation_file_and_image_ids_from_stems(tmp_path):
    import json
    path = tmp_path / "instances.json"
    path.write_text(json.dumps(ground_truth(with_file_names=False)))
    assert coco_map(path, records()) == coco_map(ground_truth(), records())


def test_perfect_detections_score_one_and_none_score_zero():
    perfect = {img: [(c, b, 1.0) for c, b, crowd in anns if not crowd] for img, anns in TRUTH.items()}
    assert coco_map(ground_truth(), records(perfect))["map"] == pytest.approx(1.0)
    empty = coco_map(ground_truth(), records({img: [] for img in IMAGES}))
    assert empty["map"] == 0.0 and empty["map50"] == 0.0 and empty["detections"] == 0


def test_shifted_boxes_score_lower():
    perfect = {img: [(c, b, 1.0) for c, b, crowd in anns if not crowd] for img, anns in TRUTH.items()}
    shifted = {img: [(c, [b[0] + b[2] * 0.15, b[1] + b[3] * 0.1, b[2], b[3]], s) for c, b, s in found]
               for img, found in perfect.items()}
    got = coco_map(ground_truth(), records(shifted))
    assert 0.0 < got["map"] < got["map50"] <= 1.0
    assert got["map"] < 0.5


def test_category_mode_maps_80_class_models_by_index_and_91_id_label_maps_by_id():
    coco = {"categories": [{"id": i, "name": str(i)} for i in (1, 2, 3, 5)]}
    assert category_mode(["person", "bicycle", "car", "airplane"], coco) == "index"
    assert category_mode(["background", "person", "bicycle", "car", "motorcycle", "airplane"], coco) == "id"


def test_category_modes_agree():
    by_id = coco_map(ground_truth(), records())
    by_index = [record(img, [detection(c, b, s, class_id=INDEX[c]) for c, b, s in found])
                for img, found in DETECTIONS.items()]
    by_label = [record(img, [detection(c, b, s, class_id=99) for c, b, s in found])
                for img, found in DETECTIONS.items()]
    assert coco_map(ground_truth(), by_index, categories="index") == by_id
    assert coco_map(ground_truth(), by_label, categories="label") == by_id
    assert coco_map(ground_truth(), by_index, categories={v: k for k, v in INDEX.items()}) == by_id
    with pytest.raises(ValueError, match="categories"):
        coco_map(ground_truth(), records(), categories="names")


def test_failed_frames_count_as_frames_without_detections():
    failed = records()
    failed[3] = record(724, [], status="error")
    assert coco_map(ground_truth(), failed) == coco_map(ground_truth(), records({**DETECTIONS, 724: []}))


def test_unknown_image_is_an_error():
    stray = records() + [FrameResult("coco", 0, "/data/elsewhere/cat.jpg", 0, detections=())]
    with pytest.raises(ValueError, match="cat.jpg"):
        coco_map(ground_truth(), stray)


# ---- agreement_map --------------------------------------------------------------------------------

def test_identical_records_agree_fully():
    got = agreement_map(records(), records())
    assert got["map"] == pytest.approx(1.0) and got["map50"] == pytest.approx(1.0)
    assert got["images"] == 5 and got["reference_boxes"] == got["candidate_boxes"] == 16


def test_perturbed_records_agree_less():
    perturbed = {img: [(c, [b[0] + 6, b[1] - 4, b[2] * 0.9, b[3]], s) for c, b, s in found]
                 for img, found in DETECTIONS.items()}
    perturbed[285] = perturbed[285][1:]                       # one box lost
    perturbed[776] = perturbed[776] + [(3, [200, 200, 40, 40], 0.99)]  # one box invented
    got = agreement_map(records(), records(perturbed))
    assert 0.0 < got["map"] < 1.0
    assert got["map"] < got["map50"]


def test_agreement_threshold_and_missing_frames():
    # Reference boxes under min_score are not ground truth; the candidate's extra low boxes rank last.
    assert agreement_map(records(), records(), min_score=0.5)["map"] == pytest.approx(1.0)
    assert agreement_map(records(), records(), min_score=0.5)["reference_boxes"] == 12
    # A frame the candidate failed loses its boxes; a frame the reference failed is not scored.
    candidate = records()
    candidate[0] = record(139, [], status="error")
    assert agreement_map(records(), candidate)["map"] < 1.0
    reference = records()
    reference[0] = record(139, [], status="error")
    assert agreement_map(reference, candidate)["map"] == pytest.approx(1.0)
    assert agreement_map(reference, candidate)["images"] == 4


# ---- classification -------------------------------------------------------------------------------

def classified(path: str, ranked: list[int], status: str = "ok") -> FrameResult:
    if status != "ok":
        return FrameResult.failed("flowers", 0, path, 0, "decode", "decode failed")
    return FrameResult("flowers", 0, path, 0,
                       classes=tuple(Classification(str(c), c, 1.0 / (i + 1)) for i, c in enumerate(ranked)))


@pytest.fixture
def flowers(tmp_path):
    """A flowers102-style data root with a val_list.txt of `relative/path label` lines."""
    for name in ("image_0001.jpg", "image_0002.jpg", "image_0003.jpg", "image_0004.jpg"):
        (tmp_path / "jpg").mkdir(exist_ok=True)
        (tmp_path / "jpg" / name).write_bytes(b"")
    (tmp_path / "val_list.txt").write_text(
        "jpg/image_0001.jpg 3\njpg/image_0002.jpg 7\n\njpg/image_0003.jpg 0\njpg/image_0004.jpg rose\n")
    return tmp_path


def test_topk_accuracy_with_a_labels_list(flowers):
    truth = read_labels_list(flowers / "val_list.txt", flowers, ["pink primrose", "rose"])
    assert truth[str(flowers / "jpg" / "image_0004.jpg")] == 1
    recs = [classified(str(flowers / "jpg/image_0001.jpg"), [3, 1, 2, 4, 5]),      # top-1 hit
            classified(str(flowers / "jpg/image_0002.jpg"), [1, 2, 3, 4, 7]),      # top-5 hit
            classified(str(flowers / "jpg/image_0003.jpg"), [1, 2, 3, 4, 5, 0]),   # miss: 6th
            classified(str(flowers / "jpg/image_0004.jpg"), [1], status="error"),  # failed: miss
            classified(str(flowers / "other.jpg"), [0])]                          # not listed
    got = topk_accuracy(recs, truth)
    assert got == {"top1": 0.25, "top5": 0.5, "images": 4, "unanswered": 1}
    assert topk_accuracy(recs, truth, k=(1, 2, 6))["top6"] == 0.75


def test_labels_list_errors(flowers):
    bad = flowers / "bad.txt"
    bad.write_text("jpg/image_0001.jpg tulip\n")
    with pytest.raises(ConfigError, match="bad.txt:1"):
        read_labels_list(bad, flowers, ["rose"])
    bad.write_text("jpg/image_0001.jpg 1\njpg/missing.jpg 2\n")
    with pytest.raises(ConfigError, match="1 listed images"):
        read_labels_list(bad, flowers, [])


def test_class_folders(tmp_path):
    for cls, name in (("tulip", "a.png"), ("rose", "b.jpg"), ("rose", "c.JPG"), ("tulip", "notes.txt")):
        (tmp_path / cls).mkdir(exist_ok=True)
        (tmp_path / cls / name).write_bytes(b"")
    sorted_order = read_class_folders(tmp_path, [])
    assert sorted_order == {str(tmp_path / "rose/b.jpg"): 0, str(tmp_path / "rose/c.JPG"): 0,
                            str(tmp_path / "tulip/a.png"): 1}
    by_labels = read_class_folders(tmp_path, ["daisy", "tulip", "rose"])
    assert by_labels[str(tmp_path / "tulip/a.png")] == 1 and by_labels[str(tmp_path / "rose/b.jpg")] == 2


def test_classification_agreement():
    reference = [classified(f"/d/{i}.png", [i % 3, 9]) for i in range(4)]
    assert classification_agreement(reference, reference) == {"top1_agreement": 1.0, "frames": 4}
    candidate = [classified(f"/d/{i}.png", [i % 3, 9]) for i in range(4)]
    candidate[1] = classified("/d/1.png", [9, 1])
    candidate[2] = classified("/d/2.png", [2], status="error")
    assert classification_agreement(reference, candidate) == {"top1_agreement": 0.5, "frames": 4}
    assert classification_agreement([], candidate)["top1_agreement"] is None
