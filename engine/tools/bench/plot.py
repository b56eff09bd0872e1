"""bench.png from engine.tools.bench.json: FPS per variant with min–max whiskers, per-stage latency of the
engine runs, and (when measured) the transport µs/frame. matplotlib with the Agg backend."""
from __future__ import annotations

from pathlib import Path

STAGE_ORDER = ("decode", "preprocess", "queue", "inference", "postprocess", "end_to_end")


def plot_bench(result: dict, path: Path) -> Path | None:
    """Draw what ``result`` (the bench.json dict) holds; None when there is nothing to draw."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    variants = {k: v for k, v in result.get("variants", {}).items() if v.get("fps")}
    engine = {k: v for k, v in variants.items() if v.get("stage_ms")}
    transport = result.get("transport", {}).get("rows", [])
    panels = [p for p, present in (("fps", variants), ("stages", engine), ("transport", transport)) if present]
    if not panels:
        return None
    fig, axes = plt.subplots(1, len(panels), figsize=(6.0 * len(panels), 4.6), squeeze=False)
    for ax, panel in zip(axes[0], panels):
        if panel == "fps":
            _fps_panel(ax, variants)
        elif panel == "stages":
            _stage_panel(ax, engine)
        else:
            _transport_panel(ax, transport)
    return _save(fig, result, "ovstream bench", path)


def _save(fig, result: dict, title: str, path: Path) -> Path:
    """Title the figure with the model and machine of ``result``, write it to ``path``, close it."""
    import matplotlib.pyplot as plt

    machine = result.get("machine", {})
    fig.suptitle(f"{title} — {result.get('settings', {}).get('model', '')} on {machine.get('cpu', 'CPU')}, "
                 f"{machine.get('logical_cores', '?')} logical cores", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _fps_panel(ax, variants: dict) -> None:
    keys = list(variants)
    med = [variants[k]["fps"]["median"] for k in keys]
    lo = [m - variants[k]["fps"]["min"] for k, m in zip(keys, med)]
    hi = [variants[k]["fps"]["max"] - m for k, m in zip(keys, med)]
    bars = ax.bar(range(len(keys)), med, yerr=[lo, hi], capsize=4, color="#4c72b0")
    for bar, value, top in zip(bars, med, (variants[k]["fps"]["max"] for k in keys)):
        ax.annotate(f"{value:.0f}", (bar.get_x() + bar.get_width() / 2, top),
                    ha="center", va="bottom", fontsize=8, xytext=(0, 2), textcoords="offset points")
    ax.set_xticks(range(len(keys)), [f"({k}) {variants[k].get('short', '')}" for k in keys], rotation=20,
                  ha="right", fontsize=8)
    ax.set_ylabel("frames/s (median, min–max whiskers)")
    ax.set_title("Throughput per variant")


def _stage_panel(ax, engine: dict) -> None:
    stages = [s for s in STAGE_ORDER if any(s in v["stage_ms"] for v in engine.values())]
    width = 0.8 / max(1, len(engine))
    for i, (key, v) in enumerate(engine.items()):
        values = [v["stage_ms"].get(s) or 0.0 for s in stages]
        ax.bar([x + i * width for x in range(len(stages))], values, width, label=f"({key}) {v.get('short', '')}")
    ax.set_xticks([x + width * (len(engine) - 1) / 2 for x in range(len(stages))], stages, rotation=20,
                  fontsize=8)
    ax.set_ylabel("ms per frame (median of runs' p50)")
    ax.set_title("Engine per-stage latency")
    ax.legend(fontsize=8)


def _transport_panel(ax, rows: list[dict]) -> None:
    sizes = list(dict.fromkeys(r["size"] for r in rows))
    methods = list(dict.fromkeys(r["method"] for r in rows))
    width = 0.8 / max(1, len(methods))
    for i, method in enumerate(methods):
        values: list[float] = []
        errs: list[list[float]] = [[], []]
        for size in sizes:
            row = next((r for r in rows if r["size"] == size and r["method"] == method), None)
            us = row["us_per_frame"] if row else {"median": 0, "min": 0, "max": 0}
            values.append(us["median"])
            errs[0].append(us["median"] - us["min"])
            errs[1].append(us["max"] - us["median"])
        ax.bar([x + i * width for x in range(len(sizes))], values, width, yerr=errs, capsize=3, label=method)
    ax.set_yscale("log")
    ax.axhline(200, color="grey", linestyle="--", linewidth=0.8)
    ax.set_xticks([x + width * (len(methods) - 1) / 2 for x in range(len(sizes))], sizes)
    ax.set_ylabel("µs per frame (log; dashed: 200 µs target)")
    ax.set_title("One-hop transport between two processes")
    ax.legend(fontsize=8)


def plot_density(result: dict, path: Path) -> Path | None:
    """density.png: delivered FPS of the slowest stream against the number of streams, per variant
    (median of repeats, min–max whiskers), with the target and the 95 % line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    d = result.get("density") or {}
    if not d.get("variants"):
        return None
    fig, ax = plt.subplots(figsize=(7.0, 4.6))
    for name, v in d["variants"].items():
        rows = sorted(((int(n), r["min_fps"]) for n, r in v["by_streams"].items() if r.get("min_fps")))
        if not rows:
            continue
        xs = [n for n, _ in rows]
        med = [f["median"] for _, f in rows]
        err = [[f["median"] - f["min"] for _, f in rows], [f["max"] - f["median"] for _, f in rows]]
        ax.errorbar(xs, med, yerr=err, marker="o", capsize=3,
                    label=f"{name} (sustains {v['sustained_streams']})")
    target = d["target_fps"]
    ax.axhline(target, color="grey", linestyle=":", linewidth=1, label=f"target {target:g} FPS")
    ax.axhline(target * d["sustain_fraction"], color="grey", linestyle="--", linewidth=1,
               label=f"{d['sustain_fraction']:.0%} of target")
    ax.set_xlabel("concurrent streams")
    ax.set_ylabel("delivered FPS of the slowest stream")
    ax.set_ylim(bottom=0)
    ax.legend(fontsize=8)
    return _save(fig, result, "Stream density", path)
