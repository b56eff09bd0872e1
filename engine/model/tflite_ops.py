"""OpenVINO conversion extension for the TFLite custom op ``TFLite_Detection_PostProcess``.

TF Object Detection API SSDs exported to TFLite (``detect.tflite``) end in this custom op: box
decoding against the anchors the exporter baked into the file, then non-maximum suppression.
OpenVINO's TFLite frontend has no translator for it; :data:`EXTENSIONS` supplies one, built from
OpenVINO opset nodes. It is what the codelab's Model Optimizer "transformations config" did for the
TF OD API, today as a frontend ``ConversionExtension``. Both ``ovstream convert`` and the engine,
when it reads a ``.tflite`` directly (:func:`engine.model.prepare.read_model`), use it.

The translation follows the TFLite kernel (``detection_postprocess.cc``), fast-NMS path:

- inputs: box encodings ``[1, A, 4]`` (ty, tx, th, tw), class scores ``[1, A, C + 1]`` (column 0 is
  the background) and the anchors ``[A, 4]`` (ycenter, xcenter, h, w), a constant; uint8 inputs are
  dequantized by the frontend (``Convert`` to f32 after its quantize node);
- decode: ``yc = ty / y_scale · ha + yca``, ``xc = tx / x_scale · wa + xca``, ``h = exp(th / h_scale)
  · ha``, ``w = exp(tw / w_scale) · wa``, box = (yc − h/2, xc − w/2, yc + h/2, xc + w/2);
- each anchor keeps its best class (``max_classes_per_detection`` = 1; of equal scores the lowest
  class, as the kernel's ArgMax), then one class-agnostic greedy NMS (OpenVINO
  ``NonMaxSuppression``) keeps at most ``max_detections`` boxes, best first (equal scores: lowest
  anchor first, as the kernel's stable sort). The kernel keeps scores ≥ ``nms_score_threshold`` and
  suppresses IoU > ``nms_iou_threshold``, where OpenVINO keeps scores > and suppresses IoU ≥ its
  thresholds: each is handed the adjacent float32 so that ties fall as in TFLite;
- outputs, as TFLite defines them: boxes ``[1, D, 4]`` (ymin, xmin, ymax, xmax, normalised), classes
  ``[1, D]`` (float, class index without the background: COCO id − 1), scores ``[1, D]`` and the
  count ``[1]``; rows past the count are zero.

The per-class ("regular") NMS variant (``use_regular_nms = true``) and more than one class per
anchor are refused with a clear message rather than translated approximately.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import openvino.opset13 as ops
from openvino.frontend import ConversionExtension, NodeContext

from engine.model.runtime import ov  # before any other openvino import: see its docstring

OP_TYPE = "TFLite_Detection_PostProcess"


def _attribute(node: NodeContext, name: str, default: Any) -> Any:
    """A custom-option attribute; options the exporter left out take the kernel's defaults."""
    return node.get_attribute(name, default_value=default)


def _const(value: object, dtype: type = np.float32) -> ov.Node:
    """A constant node of ``value`` (a number or a list) as ``dtype``."""
    return ops.constant(np.array(value, dtype=dtype))


def _next_float(value: float, up: bool) -> float:
    """The float32 next to ``value`` (above if ``up``), never a subnormal one (the CPU may flush it)."""
    tiny = np.finfo(np.float32).tiny
    step = np.nextafter(np.float32(value), np.float32(np.inf if up else -np.inf))
    return float(step if abs(step) >= tiny or step == 0 else np.copysign(tiny, step))


def translate_detection_postprocess(node: NodeContext) -> list[ov.Output]:
    """The OpenVINO subgraph of one ``TFLite_Detection_PostProcess`` node (see the module doc)."""
    if _attribute(node, "use_regular_nms", False):
        raise ValueError(f"{OP_TYPE}: use_regular_nms = true (per-class NMS) is not supported")
    if int(_attribute(node, "max_classes_per_detection", 1)) != 1:
        raise ValueError(f"{OP_TYPE}: max_classes_per_detection must be 1")
    scales = [float(_attribute(node, key, 10.0 if key[0] in "yx" else 5.0))
              for key in ("y_scale", "x_scale", "h_scale", "w_scale")]
    max_detections = int(_attribute(node, "max_detections", 10))
    iou = float(_attribute(node, "nms_iou_threshold", 0.5))
    min_score = float(_attribute(node, "nms_score_threshold", 0.0))
    num_classes = int(_attribute(node, "num_classes", 90))

    f32 = ov.Type.f32
    encodings, class_scores, anchors = (ops.convert(node.get_input(i), f32) for i in range(3))
    ty, tx, th, tw = ops.split(encodings, _const(-1, np.int64), 4).outputs()        # [1, A, 1] each
    ya, xa, ha, wa = ops.split(anchors, _const(-1, np.int64), 4).outputs()          # [A, 1] each
    y_scale, x_scale, h_scale, w_scale = (_const(s) for s in scales)
    yc = ops.add(ops.multiply(ops.divide(ty, y_scale), ha), ya)
    xc = ops.add(ops.multiply(ops.divide(tx, x_scale), wa), xa)
    half_h = ops.multiply(ops.multiply(ops.exp(ops.divide(th, h_scale)), ha), _const(0.5))
    half_w = ops.multiply(ops.multiply(ops.exp(ops.divide(tw, w_scale)), wa), _const(0.5))
    boxes = ops.concat([ops.subtract(yc, half_h), ops.subtract(xc, half_w),
                        ops.add(yc, half_h), ops.add(xc, half_w)], axis=-1)               # [1, A, 4]

    # the classes are the last num_classes columns (the first ones are background)
    columns = ops.slice(class_scores, _const([-num_classes], np.int64), _const([np.iinfo(np.int64).max], np.int64),
                        _const([1], np.int64), _const([2], np.int64))
    # the best class, the lowest of equal scores (TopK's unstable sort picks any; a stable one is slower)
    top = ops.reduce_max(columns, _const([2], np.int64), keep_dims=True)                 # [1, A, 1]
    ties = ops.select(ops.equal(columns, top), _const(np.arange(num_classes), np.int32), _const(num_classes, np.int32))
    best_score = ops.squeeze(top, _const([0, 2], np.int64))                              # [A]
    best_class = ops.squeeze(ops.reduce_min(ties, _const([2], np.int64), keep_dims=True), _const([0, 2], np.int64))
    nms = ops.non_max_suppression(boxes, ops.unsqueeze(best_score, _const([0, 1], np.int64)),
                                  _const([max_detections], np.int64), _const([_next_float(iou, up=True)]),
                                  _const([_next_float(min_score, up=False)]),
                                  box_encoding="corner", sort_result_descending=True, output_type="i32")
    keep = ops.gather(nms.output(0), _const(2, np.int64), _const(1, np.int64))          # [N] anchor indices
    count = ops.gather(ops.shape_of(keep, "i64"), _const([0], np.int64), _const(0, np.int64))  # [1]
    missing = ops.subtract(_const([max_detections], np.int64), count)

    def padded(values: ov.Node, shape: list[int]) -> ov.Output:
        """``values`` [N, ...] padded with zeros to ``max_detections`` rows, reshaped to ``shape``."""
        rank = len(values.get_output_partial_shape(0))
        zeros = _const([0] * (rank - 1), np.int64)
        pad = ops.pad(values, _const([0] * rank, np.int64), ops.concat([missing, zeros], 0) if rank > 1 else missing,
                      "constant", _const(0.0))
        return ops.reshape(pad, _const(shape, np.int64), special_zero=False).output(0)

    out_boxes = padded(ops.gather(ops.squeeze(boxes, _const([0], np.int64)), keep, _const(0, np.int64)),
                       [1, max_detections, 4])
    out_classes = padded(ops.convert(ops.gather(best_class, keep, _const(0, np.int64)), f32), [1, max_detections])
    out_scores = padded(ops.gather(best_score, keep, _const(0, np.int64)), [1, max_detections])
    out_count = ops.convert(count, f32).output(0)
    return [out_boxes, out_classes, out_scores, out_count]


EXTENSIONS = (ConversionExtension(OP_TYPE, translate_detection_postprocess),)
