"""Greedy non-maximum suppression per class (OpenCV's ``NMSBoxesBatched``), for the anchor-free adapters."""
from __future__ import annotations

import cv2
import numpy as np


def class_nms(boxes: np.ndarray, scores: np.ndarray, classes: np.ndarray, iou: float, max_detections: int,
              agnostic: bool = False) -> np.ndarray:
    """Indices of the kept ``[N, 4]`` (x1, y1, x2, y2) boxes, best score first: a box is dropped when
    a better one of the same class (any class when ``agnostic``) overlaps it by IoU > ``iou``."""
    if not len(boxes):
        return np.zeros(0, np.int64)
    xywh = np.concatenate([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], axis=1).astype(np.float64)
    ids = np.zeros(len(boxes), np.int32) if agnostic else classes.astype(np.int32)
    keep = np.asarray(cv2.dnn.NMSBoxesBatched(xywh.tolist(), scores.astype(np.float32).tolist(), ids.tolist(),
                                              0.0, float(iou)), dtype=np.int64).reshape(-1)
    keep = keep[np.argsort(-scores[keep], kind="stable")]
    return keep[:max_detections]
