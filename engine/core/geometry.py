"""Resize plans between a frame and the model input, and their inverse for boxes.

A :class:`Geometry` says how a frame of ``frame_w × frame_h`` pixels was placed in the model
input of ``input_w × input_h``: ``model_x = frame_x * sx + pad_x`` (same for y). ``letterbox``
keeps the aspect ratio and centres the image with padding; ``letterbox_topleft`` keeps it too and
puts the image in the top-left corner, the padding right and below (YOLOX's own preprocessing; the
padding's pixel value is ``resize_into``'s ``fill``, 114 there); ``stretch`` fills the input; ``crop``
(classifiers' evaluation preprocessing) keeps the aspect ratio and fills the input with the centre
of the frame: the shorter side (relative to the input's aspect) is scaled to ``input / crop`` (e.g.
224 / 0.875 = 256) and the centre ``input`` pixels are kept. The crop is taken in whole frame pixels
and then resized, so ``pad_x``/``pad_y`` are negative and the inverse is exact.

Interpolation: ``auto`` (area when shrinking, bilinear when enlarging), or ``nearest``, ``linear``,
``cubic``, ``area``, ``lanczos``.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

RESIZE_MODES = ("letterbox", "letterbox_topleft", "stretch", "crop")
WHOLE_FRAME_MODES = ("letterbox", "letterbox_topleft", "stretch")   # the frame is placed whole (a crop: a region)
# names of cv2 flags: cv2 is imported where pixels are resized, so the stages that only map boxes
# (inference, postprocessor) and the config do not pay its import at start-up
INTERPOLATIONS = {"nearest": "INTER_NEAREST", "linear": "INTER_LINEAR", "cubic": "INTER_CUBIC",
                  "area": "INTER_AREA", "lanczos": "INTER_LANCZOS4"}


@dataclass(frozen=True, slots=True)
class Geometry:
    """Frame → model-input mapping and its inverse."""

    sx: float
    sy: float
    pad_x: float
    pad_y: float
    frame_w: int
    frame_h: int
    input_w: int
    input_h: int

    @classmethod
    def plan(cls, frame_w: int, frame_h: int, input_w: int, input_h: int, mode: str,
             crop: float = 0.875) -> Geometry:
        """Plan a ``letterbox``, ``letterbox_topleft``, ``stretch`` or ``crop`` (centre fraction ``crop``)
        resize into the input."""
        if mode == "stretch":
            return cls(input_w / frame_w, input_h / frame_h, 0.0, 0.0, frame_w, frame_h, input_w, input_h)
        if mode == "crop":
            scale = max(input_w / frame_w, input_h / frame_h) / crop
            region_w = min(frame_w, max(1, round(input_w / scale)))
            region_h = min(frame_h, max(1, round(input_h / scale)))
            x0, y0 = (frame_w - region_w) // 2, (frame_h - region_h) // 2
            sx, sy = input_w / region_w, input_h / region_h
            return cls(sx, sy, -x0 * sx, -y0 * sy, frame_w, frame_h, input_w, input_h)
        scale = min(input_w / frame_w, input_h / frame_h)
        new_w, new_h = max(1, round(frame_w * scale)), max(1, round(frame_h * scale))
        # the scales and whole-pixel pads resize_into really applies, so the inverse matches it
        centred = mode != "letterbox_topleft"
        return cls(new_w / frame_w, new_h / frame_h, float((input_w - new_w) // 2 if centred else 0),
                   float((input_h - new_h) // 2 if centred else 0), frame_w, frame_h, input_w, input_h)

    @classmethod
    def from_list(cls, values: list[float], frame_w: int, frame_h: int, input_w: int, input_h: int) -> Geometry:
        sx, sy, pad_x, pad_y = values
        return cls(sx, sy, pad_x, pad_y, frame_w, frame_h, input_w, input_h)

    def to_list(self) -> list[float]:
        return [self.sx, self.sy, self.pad_x, self.pad_y]

    def scaled_to(self, orig_w: int, orig_h: int) -> Geometry:
        """The same mapping seen from a larger original frame (the decoder shrank it to fit a slot)."""
        kx, ky = self.frame_w / orig_w, self.frame_h / orig_h
        return Geometry(self.sx * kx, self.sy * ky, self.pad_x, self.pad_y, orig_w, orig_h,
                        self.input_w, self.input_h)

    def placed_size(self) -> tuple[int, int]:
        """(width, height) the whole frame takes in the input (:data:`WHOLE_FRAME_MODES`; a crop's region differs)."""
        return max(1, round(self.frame_w * self.sx)), max(1, round(self.frame_h * self.sy))

    def shrink(self, frame: np.ndarray, dst: np.ndarray, interpolation: str = "auto") -> None:
        """Resize ``frame`` into ``dst`` (:meth:`placed_size`) as :meth:`resize_into` resizes it into the
        input, padding left out: the same pixels, kept to be placed later. A plan of that size onto
        the input then copies them (the decoder stores frames at the model's scale)."""
        import cv2
        cv2.resize(frame, self.placed_size(), dst=dst, interpolation=_flag(interpolation, True))

    def resize_into(self, frame: np.ndarray, dst: np.ndarray, interpolation: str = "auto", fill: int = 0) -> None:
        """Resize ``frame`` (H×W×C uint8) into ``dst`` (input_h×input_w×C) per this plan; letterbox
        padding is set to ``fill``."""
        import cv2
        if self.pad_x < 0 or self.pad_y < 0:          # crop: the frame region that fills the input
            x0, y0 = round(-self.pad_x / self.sx), round(-self.pad_y / self.sy)
            region_w, region_h = round(self.input_w / self.sx), round(self.input_h / self.sy)
            source = frame[y0:y0 + region_h, x0:x0 + region_w]
            shrinking = region_w > self.input_w or region_h > self.input_h
            cv2.resize(source, (self.input_w, self.input_h), dst=dst, interpolation=_flag(interpolation, shrinking))
            return
        new_w, new_h = self.placed_size()
        x0, y0 = int(self.pad_x), int(self.pad_y)
        if x0 or y0 or new_w != self.input_w or new_h != self.input_h:
            dst[...] = fill
        shrinking = new_w < self.frame_w or new_h < self.frame_h
        target = dst[y0:y0 + new_h, x0:x0 + new_w]
        cv2.resize(frame, (new_w, new_h), dst=target, interpolation=_flag(interpolation, shrinking))

    def normalized_to_frame(self, xy: np.ndarray) -> np.ndarray:
        """Map points normalised to the model input (0..1, last axis x, y) to frame pixels."""
        xy = np.asarray(xy, dtype=np.float32)
        out = np.empty_like(xy)
        out[..., 0] = (xy[..., 0] * self.input_w - self.pad_x) / self.sx
        out[..., 1] = (xy[..., 1] * self.input_h - self.pad_y) / self.sy
        return out

    def boxes_to_frame(self, boxes: np.ndarray) -> np.ndarray:
        """Map ``[N, 4]`` normalised (x1, y1, x2, y2) boxes to frame pixels, clipped to the frame."""
        boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
        out = self.normalized_to_frame(boxes.reshape(-1, 2, 2)).reshape(-1, 4)
        out[:, 0::2] = np.clip(out[:, 0::2], 0, self.frame_w)
        out[:, 1::2] = np.clip(out[:, 1::2], 0, self.frame_h)
        return out


def _flag(interpolation: str, shrinking: bool) -> int:
    """The cv2 flag of an interpolation name (``auto``: area when shrinking, else bilinear)."""
    import cv2

    if interpolation == "auto":
        return cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR
    return getattr(cv2, INTERPOLATIONS[interpolation])
