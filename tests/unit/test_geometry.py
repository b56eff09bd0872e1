"""Geometry: resize plans, the resize itself, and the inverse that puts boxes back on the frame."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from engine.core.geometry import Geometry


def to_model(g: Geometry, xy: np.ndarray) -> np.ndarray:
    """The forward mapping of the Geometry docstring, normalised to the model input."""
    return np.stack([(xy[:, 0] * g.sx + g.pad_x) / g.input_w,
                     (xy[:, 1] * g.sy + g.pad_y) / g.input_h], axis=1)


def placed_region(g: Geometry) -> tuple[int, int, int, int]:
    """(x0, y0, w, h) of the non-padding area resize_into really fills."""
    dst = np.full((g.input_h, g.input_w, 3), 99, np.uint8)
    g.resize_into(np.full((g.frame_h, g.frame_w, 3), 255, np.uint8), dst)
    ys, xs = np.nonzero(dst[..., 0] == 255)
    assert np.all(dst[..., 0][(dst[..., 0] != 255)] == 0), "padding must be zeroed"
    return int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1)


def test_letterbox_plan_landscape_and_portrait():
    g = Geometry.plan(640, 480, 192, 192, "letterbox")
    assert (g.sx, g.sy, g.pad_x, g.pad_y) == pytest.approx((0.3, 0.3, 0.0, 24.0))
    g = Geometry.plan(480, 640, 192, 192, "letterbox")
    assert (g.sx, g.sy, g.pad_x, g.pad_y) == pytest.approx((0.3, 0.3, 24.0, 0.0))
    assert placed_region(g) == (24, 0, 144, 192)


@pytest.mark.parametrize("size", [(100, 51, 64, 64), (427, 640, 192, 192), (641, 481, 300, 300),
                                  (1920, 1080, 128, 128)])
def test_plan_matches_what_resize_into_does(size):
    """Odd sizes: the plan's pads and scales are the ones the resize applies (whole pixels)."""
    g = Geometry.plan(*size, "letterbox")
    assert placed_region(g) == (g.pad_x, g.pad_y, round(g.frame_w * g.sx), round(g.frame_h * g.sy))


def test_inverse_round_trip():
    g = Geometry.plan(1280, 720, 192, 192, "letterbox")
    points = np.array([[0, 0], [1280, 720], [640.5, 100.25], [17, 719]], dtype=np.float32)
    assert g.normalized_to_frame(to_model(g, points)) == pytest.approx(points, abs=1e-3)
    box = np.concatenate([to_model(g, points[2:3]), to_model(g, points[1:2])], axis=1)
    assert g.boxes_to_frame(box)[0] == pytest.approx([640.5, 100.25, 1280, 720], abs=1e-3)


def test_boxes_in_the_padding_are_clipped_to_the_frame():
    g = Geometry.plan(640, 480, 192, 192, "letterbox")   # rows 0..23 and 168..191 are padding
    box = g.boxes_to_frame(np.array([[-0.1, 0.0, 0.5, 1.0]]))[0]
    assert box == pytest.approx([0, 0, 320, 480])


def test_top_left_letterbox_pads_right_and_below_with_the_fill_value():
    """YOLOX's preprocessing: the image at the top-left corner, the padding grey (114)."""
    g = Geometry.plan(640, 480, 416, 416, "letterbox_topleft")
    assert (g.sx, g.sy, g.pad_x, g.pad_y) == pytest.approx((0.65, 0.65, 0.0, 0.0))
    dst = np.zeros((416, 416, 3), np.uint8)
    g.resize_into(np.full((480, 640, 3), 255, np.uint8), dst, fill=114)
    assert np.all(dst[:312] == 255) and np.all(dst[312:] == 114)          # 480 × 0.65 = 312 rows of image
    assert g.boxes_to_frame(np.array([[0.5, 0.5, 1.0, 1.0]]))[0] == pytest.approx([320, 320, 640, 480])


def test_stretch_fills_the_input():
    g = Geometry.plan(640, 480, 300, 300, "stretch")
    assert (g.sx, g.sy, g.pad_x, g.pad_y) == pytest.approx((300 / 640, 300 / 480, 0, 0))
    assert placed_region(g) == (0, 0, 300, 300)
    assert g.boxes_to_frame(np.array([[0.25, 0.5, 1.0, 1.0]]))[0] == pytest.approx([160, 240, 640, 480])


def test_scaled_to_maps_to_the_original_frame():
    """The decoder shrank a 1920x1080 frame to 960x540; boxes must come back in 1920x1080 pixels."""
    small = Geometry.plan(960, 540, 192, 192, "letterbox")
    g = small.scaled_to(1920, 1080)
    assert (g.frame_w, g.frame_h) == (1920, 1080)
    norm = np.array([[0.5, 0.5], [0.1, 0.3]])
    assert g.normalized_to_frame(norm) == pytest.approx(small.normalized_to_frame(norm) * 2, abs=1e-3)
    assert g.boxes_to_frame(np.array([[0.0, 0.0, 1.0, 1.0]]))[0] == pytest.approx([0, 0, 1920, 1080])
    point = np.array([[1500.0, 800.0]])
    assert g.normalized_to_frame(to_model(g, point)) == pytest.approx(point, abs=1e-2)


def test_to_list_round_trip():
    g = Geometry.plan(640, 480, 192, 192, "letterbox")
    assert Geometry.from_list(g.to_list(), 640, 480, 192, 192) == g


def test_crop_plan_keeps_the_centre_of_the_shorter_side():
    """ImageNet evaluation: 640x480 → shorter side to 224/0.875 = 256, centre 224x224 kept, i.e. the
    centre 420x420 frame pixels resized to 224."""
    g = Geometry.plan(640, 480, 224, 224, "crop", 0.875)
    assert (g.sx, g.sy) == pytest.approx((224 / 420, 224 / 420))
    assert (g.pad_x, g.pad_y) == pytest.approx((-110 * 224 / 420, -30 * 224 / 420))
    corners = g.normalized_to_frame(np.array([[0.0, 0.0], [1.0, 1.0]]))
    assert corners.ravel().tolist() == pytest.approx([110, 30, 530, 450])
    portrait = Geometry.plan(300, 500, 100, 100, "crop", 0.5)     # half of the shorter side: 150x150
    assert portrait.normalized_to_frame(np.array([[0.0, 0.0], [1.0, 1.0]])).ravel().tolist() == \
        pytest.approx([75, 175, 225, 325])


@pytest.mark.parametrize("interpolation, flag", [("cubic", cv2.INTER_CUBIC), ("nearest", cv2.INTER_NEAREST),
                                                 ("auto", cv2.INTER_AREA)])
def test_crop_resize_into_is_the_centre_region_resized(interpolation, flag):
    frame = np.random.default_rng(0).integers(0, 256, (480, 640, 3), dtype=np.uint8)
    g = Geometry.plan(640, 480, 224, 224, "crop", 0.875)
    dst = np.zeros((224, 224, 3), np.uint8)
    g.resize_into(frame, dst, interpolation)
    assert np.array_equal(dst, cv2.resize(frame[30:450, 110:530], (224, 224), interpolation=flag))


def test_crop_inverse_round_trip_and_clipping():
    g = Geometry.plan(640, 480, 224, 224, "crop", 0.875)
    box = np.array([[150.0, 60.0, 400.0, 300.0]])                  # inside the kept region
    model = to_model(g, box.reshape(2, 2)).reshape(1, 4)
    assert g.boxes_to_frame(model).ravel().tolist() == pytest.approx(box.ravel().tolist(), abs=1e-3)
    outside = g.boxes_to_frame(np.array([[-0.5, -0.5, 1.5, 1.5]]))  # beyond the crop: clipped to the frame
    assert outside.ravel().tolist() == pytest.approx([0, 0, 640, 480])
    assert Geometry.from_list(g.to_list(), 640, 480, 224, 224) == g


@pytest.mark.parametrize("mode", ["letterbox", "letterbox_topleft", "stretch"])
@pytest.mark.parametrize("interpolation", ["auto", "linear"])
@pytest.mark.parametrize("size", [(640, 480), (1000, 333), (301, 917)])
def test_a_frame_stored_at_the_input_scale_gives_the_same_input_and_boxes(mode, interpolation, size):
    """The decoder stores a frame as the preprocessor would resize it: the batch row it then
    fills, and the mapping of boxes back to the original frame, are what the whole frame gives."""
    from engine.protocol.shm import SlotPool
    from workers.decoder import InputScale, fit_into_slot

    w, h = size
    frame = np.random.default_rng(w).integers(0, 256, (h, w, 3), dtype=np.uint8)
    whole = Geometry.plan(w, h, 192, 192, mode)
    direct = np.zeros((192, 192, 3), np.uint8)
    whole.resize_into(frame, direct, interpolation, 114)

    spec = SlotPool.create(f"t{w}{mode[:3]}{interpolation[:2]}", "raw", 1920 * 1080 * 3, 1)
    pool = SlotPool(spec)
    try:
        stored_h, stored_w = fit_into_slot(frame, 1920, 1080, pool, 0, InputScale(192, 192, mode, interpolation))
        assert stored_w * stored_h < w * h                                     # smaller than the frame
        plan = Geometry.plan(stored_w, stored_h, 192, 192, mode)
        row = np.zeros((192, 192, 3), np.uint8)
        plan.resize_into(pool.view(0, (stored_h, stored_w, 3)), row, interpolation, 114)
    finally:
        pool.close()
        SlotPool.unlink(spec)
    assert np.array_equal(row, direct)
    back = plan.scaled_to(w, h)
    boxes = np.array([[0.1, 0.2, 0.7, 0.9], [0.0, 0.0, 1.0, 1.0]])
    assert back.boxes_to_frame(boxes) == pytest.approx(whole.boxes_to_frame(boxes), abs=1e-3)
