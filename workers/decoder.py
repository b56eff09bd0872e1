"""Decoder stage: reads the source and writes BGR frames into raw slots.

A frame is read only when a raw slot is free, so a file source waits (never drops) and a live
source's reader thread keeps only the newest frame (drop-oldest, counted). Frames larger than
a slot are shrunk to fit; the original size travels with the frame so boxes map back to it.
"""
from __future__ import annotations

import time

import cv2
import numpy as np
import zmq

from engine.channels import make_socket
from engine.messages import EndOfSource, ErrorMsg, FrameMsg, FrameRef, ReleaseMsg
from engine.shm import FreeList, SlotPool
from engine.sources import open_source
from workers.runtime import Stage, StageContext, stage_main


def fit_into_slot(frame: np.ndarray, max_w: int, max_h: int, dst_pool: SlotPool, slot: int) -> tuple[int, int]:
    """Copy (or shrink) ``frame`` into ``slot``; returns the stored (height, width)."""
    h, w = frame.shape[:2]
    scale = min(1.0, max_w / w, max_h / h)
    if scale < 1.0:
        nw, nh = max(1, int(w * scale)), max(1, int(h * scale))
        cv2.resize(frame, (nw, nh), dst=dst_pool.view(slot, (nh, nw, 3)), interpolation=cv2.INTER_AREA)
        return nh, nw
    np.copyto(dst_pool.view(slot, (h, w, 3)), frame)
    return h, w


def run(ctx: StageContext, stage: Stage) -> None:
    cfg = ctx.config
    pool = SlotPool(ctx.pools["raw"])
    free = FreeList(pool.spec.slots)
    releases = make_socket(stage.zmq, zmq.PULL, bind=ctx.endpoints["release"])
    frames_out = make_socket(stage.zmq, zmq.PUSH, connect=ctx.endpoints["frames"])
    results_out = make_socket(stage.zmq, zmq.PUSH, connect=ctx.endpoints["results"])
    done = ctx.completed_ids()
    annotating = cfg.output.images or cfg.output.video      # annotated frames keep full resolution
    min_side = max(ctx.input["height"], ctx.input["width"]) if cfg.pipeline.reduced_decode and not annotating else 0
    source = open_source(cfg.source, skip=done.__contains__ if done else None, min_side=min_side)
    stage.gauges.update(raw_slots=pool.spec.slots, raw_free=free.free, next_frame_id=max(done) + 1 if done else 0)
    stage.declare("frames_read", "frames_emitted", "decode_errors", "drops", "reconnects")
    stage.ready(live=source.live)
    stage.wait_for_start()

    def drain_releases(timeout_ms: int) -> None:
        if releases.poll(timeout_ms):
            while releases.poll(0):
                msg = stage.decode(releases.recv())
                if isinstance(msg, ReleaseMsg):
                    for slot in msg.slots:
                        free.release(slot)

    items = iter(source)
    total = max(done) + 1 if done else 0
    id_offset = total if source.live else 0     # a restarted live source continues the numbering
    min_interval = 1.0 / cfg.source.max_fps if cfg.source.max_fps > 0 else 0.0
    next_read = 0.0
    try:
        while not stage.stopping:
            stage.tick()
            drain_releases(0)
            stage.gauges["raw_free"] = free.free
            slot = free.acquire()
            if slot is None:
                drain_releases(int(cfg.pipeline.heartbeat_s * 1000))
                continue
            if min_interval:
                time.sleep(max(0.0, next_read - time.monotonic()))
                next_read = time.monotonic() + min_interval
            t0 = time.monotonic_ns()
            item = next(items, None)
            for event in source.drain_events():
                stage.count("reconnects")
                print(f"[decoder] {event}", flush=True)
            stage.counters["drops"] = source.drops
            if item is None:
                free.release(slot)
                break
            stage.count("frames_read")
            frame_id = item.index + id_offset
            total = max(total, frame_id + 1)
            stage.gauges["next_frame_id"] = total
            ref = FrameRef(frame_id, item.locator, item.frame_index, stamps={"src": t0})
            if item.frame is None:
                free.release(slot)
                stage.count("decode_errors")
                results_out.send(ErrorMsg(ref, "decode", item.error or "unreadable frame", ctx.generation).encode())
                continue
            ref.orig_height, ref.orig_width = item.frame.shape[:2]
            if item.original_size is not None:       # decoded at a reduced size
                ref.orig_width, ref.orig_height = item.original_size
            ref.height, ref.width = fit_into_slot(item.frame, cfg.pipeline.max_frame_width,
                                                  cfg.pipeline.max_frame_height, pool, slot)
            ref.raw_slot = slot
            ref.stamps["dec"] = time.monotonic_ns()
            stage.latency.record("decode", (ref.stamps["dec"] - t0) / 1e6)
            frames_out.send(FrameMsg(ref, ctx.generation).encode())
            stage.count("frames_emitted")
        if not stage.stopping:
            eos = EndOfSource(total, source.drops, ctx.generation).encode()
            frames_out.send(eos)
            results_out.send(eos)
            while not stage.stopping:          # keep serving releases and heartbeats until stopped
                stage.tick()
                drain_releases(int(cfg.pipeline.heartbeat_s * 1000))
                stage.gauges["raw_free"] = free.free
    finally:
        source.close()
        for sock in (releases, frames_out, results_out):
            sock.close(0)
        pool.close()


if __name__ == "__main__":
    stage_main(run)
