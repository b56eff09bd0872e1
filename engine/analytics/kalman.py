"""The constant-velocity Kalman filter of SORT/ByteTrack on a box's (centre x, centre y, aspect, height).

State: ``(cx, cy, a, h, vcx, vcy, va, vh)``; the noise is relative to the box height, as in
ByteTrack's ``KalmanFilter`` (position 1/20, velocity 1/160 of the height per frame).
"""
from __future__ import annotations

import numpy as np

STD_POSITION = 1.0 / 20
STD_VELOCITY = 1.0 / 160

_MOTION = np.eye(8)
_MOTION[:4, 4:] = np.eye(4)          # x' = x + v (one frame)
_UPDATE = np.eye(4, 8)               # what is measured: the position part


def xyah(box: tuple[float, float, float, float] | np.ndarray) -> np.ndarray:
    """``(x1, y1, x2, y2)`` → ``(cx, cy, w/h, h)``."""
    x1, y1, x2, y2 = (float(v) for v in box)
    w, h = max(x2 - x1, 1e-6), max(y2 - y1, 1e-6)
    return np.array([x1 + w / 2, y1 + h / 2, w / h, h])


def box_of(mean: np.ndarray) -> tuple[float, float, float, float]:
    """A state's ``(x1, y1, x2, y2)``."""
    cx, cy, a, h = (float(v) for v in mean[:4])
    w = a * h
    return (cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2)


def initiate(measurement: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and covariance of a new track from its first box (velocity 0, uncertain)."""
    h = measurement[3]
    std = [2 * STD_POSITION * h, 2 * STD_POSITION * h, 1e-2, 2 * STD_POSITION * h,
           10 * STD_VELOCITY * h, 10 * STD_VELOCITY * h, 1e-5, 10 * STD_VELOCITY * h]
    return np.r_[measurement, np.zeros(4)], np.diag(np.square(std))


def predict(mean: np.ndarray, cov: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One frame ahead."""
    h = mean[3]
    std = [STD_POSITION * h, STD_POSITION * h, 1e-2, STD_POSITION * h,
           STD_VELOCITY * h, STD_VELOCITY * h, 1e-5, STD_VELOCITY * h]
    return _MOTION @ mean, _MOTION @ cov @ _MOTION.T + np.diag(np.square(std))


def update(mean: np.ndarray, cov: np.ndarray, measurement: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The state corrected by a measured box."""
    h = mean[3]
    noise = np.diag(np.square([STD_POSITION * h, STD_POSITION * h, 1e-1, STD_POSITION * h]))
    projected_cov = _UPDATE @ cov @ _UPDATE.T + noise
    gain = np.linalg.solve(projected_cov, (cov @ _UPDATE.T).T).T
    mean = mean + gain @ (measurement - _UPDATE @ mean)
    cov = cov - gain @ projected_cov @ gain.T
    return mean, cov
