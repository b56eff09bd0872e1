"""Resize plans between a frame and the model input, and their inverse for boxes.

A :class:`Geometry` says how a frame of ``frame_w × frame_h`` pixels was placed in the model
input of ``input_w × input_h``: ``model_x = frame_x * sx + pad_x`` (same for y). ``letterbox``
keeps the aspect ratio and centres the image with padding; ``stretch`` fills the input.
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np


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
    def plan(cls, frame_w: int, frame_h: int, input_w: int, input_h: int, mode: str) -> "Geometry":
        """Plan a ``letterbox`` or ``stretch`` resize of a frame into the model input."""
        if mode == "stretch":
            return cls(input_w / frame_w, input_h / frame_h, 0.0, 0.0, frame_w, frame_h, input_w, input_h)
        scale = min(input_w / frame_w, input_h / frame_h)
        new_w, new_h = max(1, round(frame_w * scale)), max(1, round(frame_h * scale))
        # the scales and whole-pixel pads resize_into really applies, so the inverse matches it
        return cls(new_w / frame_w, new_h / frame_h, float((input_w - new_w) // 2),
                   float((input_h - new_h) // 2), frame_w, frame_h, input_w, input_h)

    @classmethod
    def from_list(cls, values: list[float], frame_w: int, frame_h: int, input_w: int, input_h: int) -> "Geometry":
        sx, sy, pad_x, pad_y = values
        return cls(sx, sy, pad_x, pad_y, frame_w, frame_h, input_w, input_h)

    def to_list(self) -> list[float]:
        return [self.sx, self.sy, self.pad_x, self.pad_y]

    def scaled_to(self, orig_w: int, orig_h: int) -> "Geometry":
        """The same mapping seen from a larger original frame (the decoder shrank it to fit a slot)."""
        kx, ky = self.frame_w / orig_w, self.frame_h / orig_h
        return Geometry(self.sx * kx, self.sy * ky, self.pad_x, self.pad_y, orig_w, orig_h,
                        self.input_w, self.input_h)

    def resize_into(self, frame: np.ndarray, dst: np.ndarray) -> None:
        """Resize ``frame`` (H×W×C uint8) into ``dst`` (input_h×input_w×C) per this plan."""
        new_w = max(1, round(self.frame_w * self.sx))
        new_h = max(1, round(self.frame_h * self.sy))
        x0, y0 = int(self.pad_x), int(self.pad_y)
        if x0 or y0 or new_w != self.input_w or new_h != self.input_h:
            dst[...] = 0
        shrinking = new_w < self.frame_w or new_h < self.frame_h
        interp = cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR
        target = dst[y0:y0 + new_h, x0:x0 + new_w]
        cv2.resize(frame, (new_w, new_h), dst=target, interpolation=interp)

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
