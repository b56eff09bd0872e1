"""`ovstream quantize`: NNCF post-training INT8 quantization, with an FP32 / FP16 / INT8 comparison.

What the codelab did with POT (DefaultQuantization, preset performance, stat_subset_size 300) and
accuracy_checker, done with ``nncf.quantize`` — or ``nncf.quantize_with_accuracy_control`` when
``--max-drop`` is given. Calibration data (an image folder, or the MNIST training split) is
prepared exactly as the engine feeds the model (:class:`engine.tools.modeltools.datasets.InputPreparer`),
so the raw IR is quantized for the tensors it really receives. The model is folded first (OpenVINO's
MOC transformations, as ``openvino.convert_model`` runs them): an ONNX file read as it is can carry
weights and biases computed through shape subgraphs, which NNCF then quantizes as activations (YOLOX-nano
lost 18.5 AP50 points that way, 0.8 folded). On a CPU without VNNI, OpenVINO multiplies 8-bit
values with an instruction whose 16-bit sums saturate, so NNCF's overflow fix (weights in 7 bits) is
applied to every layer there (``--overflow-fix auto``; YOLOX-nano's drop on such a CPU: 30.5 AP50
points with it on the first layer only, NNCF's default, 0.7 with it everywhere). NNCF's preset is
``mixed`` (asymmetric activations) for models whose activations go negative, ``performance`` otherwise
(``--preset auto``). The INT8 IR stays raw too and is registered with the source model's adapter,
labels, params and preprocess conventions.

The metric is top-1 accuracy on labelled data (the held-out MNIST digits, or an image folder with a
``--labels-list``: ImageNet-format data, ``file label`` per line; top-5 is reported beside it), COCO
AP50 against ground truth for a detector given ``--annotations`` (COCO ``instances.json``; AP@[.5:.95]
beside it, detections kept down to the eval threshold of ``ovstream eval``, 0.01; an INT8 model
counts as good when AP50 drops by at most :data:`GOOD_AP50_DROP`, 1 point, and ``--max-drop 0.01``
makes that NNCF's accuracy-control target), or agreement with the FP32 model's answers, all decoded by
the engine's adapter: top-1 agreement for classifiers, agreement mAP
(:func:`engine.tools.modeltools.metrics.agreement_map`) for detectors. Throughput is
measured in the same run on CPU with an AsyncInferQueue (THROUGHPUT hint, f32 inference precision
so that "FP32" means FP32 even on CPUs that default to bf16), on the same inputs for all three.
"""
from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import nncf
import numpy as np
import openvino as ov
from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters, OverflowFix
from openvino._offline_transformations import apply_moc_transformations
from rich.console import Console, JustifyMethod
from rich.table import Table

from engine.config import ADAPTERS, ModelConfig, load_registry
from engine.core import paths
from engine.core.errors import ConfigError, ModelError
from engine.core.results import FrameResult
from engine.model.adapters import create_adapter
from engine.model.prepare import output_shapes, read_model
from engine.tools.modeltools.convert import new_progress, save_ir, step
from engine.tools.modeltools.datasets import InputPreparer, Sample, folder_samples, load_mnist, mnist_samples
from engine.tools.modeltools.registry import file_value, register_model

METRICS = ("auto", "top1", "ap50", "agreement")
METRIC_LABELS = {"top1": "top-1 accuracy", "ap50": "COCO AP50", "agreement": "top-1 agreement with FP32",
                 "agreement_map": "agreement mAP vs FP32"}
GOOD_AP50_DROP = 0.01      # an INT8 detector is good when its COCO AP50 is at most 1 point below FP32's
BENCH_PROPERTIES = {"PERFORMANCE_HINT": "THROUGHPUT", "INFERENCE_PRECISION_HINT": "f32"}
CALIBRATION_SEED = 0
THROUGHPUT_ROUNDS = 3


@dataclass
class Variant:
    """One precision of the model, scored and timed."""

    precision: str
    model: ov.Model
    metric: float
    fps: float = 0.0
    extra: dict[str, float] = field(default_factory=dict)   # top-5 (labelled), agreement mAP@.5 (detectors)


@dataclass
class QuantizeReport:
    """What one quantization produced and measured."""

    metric: str                       # a key of METRIC_LABELS
    variants: dict[str, Variant] = field(default_factory=dict)
    xml: Path | None = None

    @property
    def speedup(self) -> float:
        """INT8 throughput over FP32 throughput."""
        return self.variants["INT8"].fps / self.variants["FP32"].fps

    @property
    def ap50_drop(self) -> float | None:
        """FP32 AP50 minus INT8 AP50 (a fraction: 0.01 is 1 point), when scored against ground truth."""
        if self.metric != "ap50":
            return None
        return self.variants["FP32"].metric - self.variants["INT8"].metric


# ---- data and scoring ----------------------------------------------------------------------------

def load_data(data: str, prepare: InputPreparer, subset: int, labels_list: str | None = None,
              labels: list[str] | None = None, annotated: bool = False) -> tuple[list[Sample], list[Sample]]:
    """(calibration, validation) samples. ``mnist``: a seeded draw of ``subset`` training digits, and
    the 1000 held-out digits; a folder with ``labels_list``: every listed image, labelled, is scored,
    and a seeded draw of ``subset`` of them calibrates; a folder with COCO annotations (``annotated``):
    every image is scored and its first ``subset`` calibrate; a folder alone: its first ``subset``
    images, both for calibration and scoring."""
    if labels_list:
        from engine.tools.modeltools.evaluate import read_labels_list

        truth = read_labels_list(Path(labels_list).expanduser(), paths.resolve(data), labels or [])
        samples = []
        for path, label in sorted(truth.items()):
            frame = cv2.imread(path, cv2.IMREAD_COLOR)
            if frame is None:
                raise ConfigError(f"{path}: not a readable image (listed in {labels_list})")
            samples.append(prepare(frame, path, label))
        pick = np.random.default_rng(CALIBRATION_SEED).permutation(len(samples))[:subset]
        return [samples[i] for i in sorted(pick)], samples
    if data == "mnist":
        split = load_mnist()
        pick = np.random.default_rng(CALIBRATION_SEED).permutation(len(split.train_labels))[:subset]
        return (mnist_samples(split.train_images[pick], split.train_labels[pick], prepare),
                mnist_samples(split.test_images, split.test_labels, prepare))
    samples = folder_samples(paths.resolve(data), prepare, 0 if annotated else subset)
    return samples[:subset], samples


def infer_all(compiled: ov.CompiledModel, samples: Iterable[Sample]) -> list[dict[str, np.ndarray]]:
    """Every sample's outputs, ``{output name: array}`` named as the engine names them. A few
    requests run in parallel, waited for in turn (no Python callbacks inside OpenVINO's threads)."""
    names = list(output_shapes(compiled))
    items = list(samples)
    requests = [compiled.create_infer_request()
                for _ in range(max(1, int(compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS"))))]
    results: list[dict[str, np.ndarray]] = []
    for begin in range(0, len(items), len(requests)):
        chunk = list(zip(requests, items[begin:begin + len(requests)]))
        for request, sample in chunk:
            request.start_async({0: sample.tensor})
        for request, _ in chunk:
            request.wait()
            results.append({name: request.get_output_tensor(i).data.copy() for i, name in enumerate(names)})
    return results


class Scorer:
    """Scores a compiled model on samples: top-1 accuracy against their labels, COCO AP50 against
    ``annotations`` (a detector's detections kept down to the eval threshold), or agreement with the
    reference results (the FP32 model's answers)."""

    def __init__(self, cfg: ModelConfig, metric: str, labelled: bool, annotations: dict | None = None) -> None:
        from engine.tools.modeltools.evaluate import EVAL_SCORE_THRESHOLD
        from engine.tools.modeltools.metrics import category_mode

        self.adapter = create_adapter(cfg)
        if metric == "top1" and not (labelled and self.classifier):
            raise ConfigError("--metric top1 needs labelled data and a classifier (--data mnist, or a folder "
                              "with --labels-list)")
        if annotations is not None and self.classifier:
            raise ConfigError(f"--annotations scores detectors; {cfg.name} is a classifier")
        if metric == "ap50" and annotations is None:
            raise ConfigError("--metric ap50 needs COCO ground truth (--annotations instances.json) and a detector")
        self.metric = metric if metric != "auto" else "top1" if labelled and self.classifier \
            else "ap50" if annotations is not None else "agreement"
        self.annotations, self.categories = annotations, "id"
        if self.metric == "ap50" and annotations is not None:    # COCO AP counts low-score detections too
            self.adapter = create_adapter(cfg.model_copy(update={"score_threshold": EVAL_SCORE_THRESHOLD}))
            self.categories = category_mode(list(cfg.labels), annotations)
        self.reference: dict[str, FrameResult] = {}

    @property
    def classifier(self) -> bool:
        return self.adapter.kind == "classification"

    def run(self, compiled: ov.CompiledModel, samples: list[Sample]) -> tuple[list[FrameResult], list[dict]]:
        """(the engine's results, see :mod:`engine.tools.modeltools.metrics`; raw outputs), per sample
        (``frame_id``: its position in ``samples``)."""
        outputs = infer_all(compiled, samples)
        records = [FrameResult("", n, s.source, 0, **self.adapter.answer(self.adapter.decode(out, s.geometry)))
                   for n, (s, out) in enumerate(zip(samples, outputs))]
        return records, outputs

    def set_reference(self, compiled: ov.CompiledModel, samples: list[Sample]) -> None:
        self.reference = {r.source: r for r in self.run(compiled, samples)[0]}

    def score(self, compiled: ov.CompiledModel, samples: list[Sample]) -> tuple[float, list]:
        """(metric, per-sample values): 0/1 hits for classifiers; for detectors the outputs, which
        NNCF's accuracy control ranks layers by."""
        from engine.tools.modeltools.metrics import topk_accuracy

        records, outputs = self.run(compiled, samples)
        if self.metric == "top1":
            value = topk_accuracy(records, {s.source: s.label for s in samples}, k=(1,))["top1"]
            return float(value or 0.0), [float(_top1(r) == s.label) for r, s in zip(records, samples)]
        if self.metric == "ap50":
            return float(self._coco(records)["map50"] or 0.0), [list(out.values()) for out in outputs]
        return self._agreement(records, outputs, samples)

    def _coco(self, records: list[FrameResult]) -> dict[str, Any]:
        """COCO box AP of ``records`` against the annotations (their images looked up by file name)."""
        from engine.tools.modeltools.metrics import coco_map

        assert self.annotations is not None
        try:
            return coco_map(self.annotations, records, categories=self.categories)
        except (ValueError, KeyError, TypeError) as exc:
            raise ConfigError(f"--annotations: {exc}") from None

    def figures(self, compiled: ov.CompiledModel, samples: list[Sample]) -> tuple[float, dict[str, float]]:
        """The report's figures: the metric, and top-5 beside top-1, or agreement mAP@.5 beside the
        detectors' agreement mAP@[.5:.95]."""
        from engine.tools.modeltools.metrics import agreement_map, topk_accuracy

        records, outputs = self.run(compiled, samples)
        if self.metric == "top1":
            found = topk_accuracy(records, {s.source: s.label for s in samples}, k=(1, 5))
            return float(found["top1"] or 0.0), {"top-5 accuracy": float(found["top5"] or 0.0)}
        if self.metric == "ap50":
            found = self._coco(records)
            return float(found["map50"] or 0.0), {"COCO AP@[.5:.95]": float(found["map"] or 0.0)}
        if not self.classifier:
            found = agreement_map([self.reference[s.source] for s in samples], records)
            if found["map"] is None:
                return self._agreement(records, outputs, samples)[0], {}
            return float(found["map"]), {"agreement mAP@.5": float(found["map50"] or 0.0)}
        return self._agreement(records, outputs, samples)[0], {}

    def _agreement(self, records: list[FrameResult], outputs: list[dict[str, np.ndarray]],
                   samples: list[Sample]) -> tuple[float, list]:
        from engine.tools.modeltools.metrics import agreement_map, classification_agreement

        reference = [self.reference[s.source] for s in samples]
        if self.classifier:
            value = classification_agreement(reference, records)["top1_agreement"]
            return float(value or 0.0), [float(_top1(r) == _top1(ref)) for r, ref in zip(records, reference)]
        value = agreement_map(reference, records)["map"]
        if value is None:   # no reference boxes on these frames: agreeing means finding none either
            value = float(not any(r.detections for r in records))
        return float(value), [list(out.values()) for out in outputs]


def _top1(record: FrameResult) -> int:
    return record.classes[0].class_id if record.classes else -1


def throughput(compiled: dict[str, ov.CompiledModel], samples: list[Sample], seconds: float,
               rounds: int = THROUGHPUT_ROUNDS) -> dict[str, float]:
    """Frames per second of each compiled model, its optimal number of requests in flight, on the
    same inputs. The models take turns for ``rounds`` rounds of ``seconds / rounds`` each and the
    best round counts, so a burst of other load on the machine does not favour one of them."""
    tensors = [s.tensor for s in samples[:64]]
    queues = {name: ov.AsyncInferQueue(c, int(c.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS")))
              for name, c in compiled.items()}
    best = dict.fromkeys(compiled, 0.0)
    for _ in range(rounds):
        for name, queue in queues.items():
            for i in range(len(queue)):               # warm-up: every request once
                queue.start_async({0: tensors[i % len(tensors)]})
            queue.wait_all()
            count, start = 0, time.perf_counter()
            while time.perf_counter() - start < seconds / rounds:
                queue.start_async({0: tensors[count % len(tensors)]})
                count += 1
            queue.wait_all()
            best[name] = max(best[name], count / (time.perf_counter() - start))
    return best


# ---- the pipeline --------------------------------------------------------------------------------

def resolve(spec: str, like: str | None = None, adapter: str | None = None) -> ModelConfig:
    """A registry name or a model file (described by ``like``/``adapter``) → resolved ModelConfig."""
    from engine.tools.modeltools.evaluate import model_section, resolve_section

    return resolve_section(model_section(spec, like, adapter))


def quantize(cfg: ModelConfig, data: str, xml: Path, *, subset: int = 300, preset: str = "auto",
             fast_bias_correction: bool = True, max_drop: float | None = None, metric: str = "auto",
             seconds: float = 3.0, labels_list: str | None = None, ignored_scope: list[str] | None = None,
             ignored_types: list[str] | None = None, ignore_heads: bool = False,
             annotations: str | None = None, overflow_fix: str = "auto",
             console: Console | None = None) -> QuantizeReport:
    """Quantize ``cfg``'s model to INT8 with calibration ``data``, save it to ``xml``, and score and
    time the FP32, FP16 and INT8 versions on the same inputs (a detector against COCO ``annotations``
    when given: every image of ``data`` is scored)."""
    console = console or Console()
    core = ov.Core()
    with new_progress(console) as progress:
        with step(progress, f"read {Path(cfg.path).name}"):
            model = read_model(core, cfg.path)
            apply_moc_transformations(model, cf=True)   # as convert_model: shape subgraphs folded into constants
            truth = _read_annotations(annotations) if annotations else None
            scorer = Scorer(cfg, metric, labelled=data == "mnist" or bool(labels_list), annotations=truth)
        with step(progress, f"data: {data} ({cfg.preprocess.resize}, {cfg.preprocess.color})"):
            calibration, validation = load_data(data, InputPreparer(model, cfg, core), subset, labels_list,
                                                list(cfg.labels), annotated=truth is not None)
        with step(progress, f"FP32 reference answers on {len(validation)} samples"):
            fp32 = core.compile_model(model, "CPU", BENCH_PROPERTIES)
            scorer.set_reference(fp32, validation)
    preset = preset_for(model, preset)
    options = {"preset": nncf.QuantizationPreset(preset), "subset_size": min(subset, len(calibration)),
               "fast_bias_correction": fast_bias_correction, "target_device": nncf.TargetDevice.CPU}
    fix = overflow_fix_for(overflow_fix)
    advanced = AdvancedQuantizationParameters(overflow_fix=fix)
    heads = head_layers(model) if ignore_heads else []
    if ignored_scope or ignored_types or heads:
        options["ignored_scope"] = nncf.IgnoredScope(names=heads, patterns=ignored_scope or [],
                                                     types=ignored_types or [], validate=False)
        if heads:
            console.print(f"heads kept in floating point: {', '.join(heads)}")
    console.print(f"NNCF {'accuracy-controlled ' if max_drop is not None else ''}quantization: "
                  f"{len(calibration)} calibration samples, preset {preset}, overflow fix "
                  f"{fix.value}")
    started = time.perf_counter()
    if max_drop is None:
        int8 = nncf.quantize(model, nncf.Dataset(calibration, _tensor), advanced_parameters=advanced, **options)
    else:
        int8 = nncf.quantize_with_accuracy_control(
            model, nncf.Dataset(calibration, _tensor), nncf.Dataset(validation, _tensor),
            validation_fn=scorer.score, max_drop=max_drop, drop_type=nncf.DropType.ABSOLUTE,
            advanced_quantization_parameters=advanced, **options)
    console.print(f"[green]✓[/] quantized in {time.perf_counter() - started:.1f} s")
    report = QuantizeReport(scorer.metric if scorer.metric in ("top1", "ap50") or scorer.classifier
                            else "agreement_map")
    with new_progress(console) as progress, tempfile.TemporaryDirectory() as tmp:
        with step(progress, "FP16 copy (compress_to_fp16)"):
            fp16 = core.read_model(save_ir(model, Path(tmp) / "fp16.xml", "FP16"))
        models = {"FP32": model, "FP16": fp16, "INT8": int8}
        compiled = {"FP32": fp32, **{p: core.compile_model(m, "CPU", BENCH_PROPERTIES)
                                     for p, m in models.items() if p != "FP32"}}
        for precision, variant in models.items():
            with step(progress, f"{precision}: {scorer.metric} on {len(validation)} samples"):
                figure, extra = scorer.figures(compiled[precision], validation)
                report.variants[precision] = Variant(precision, variant, figure, extra=extra)
        with step(progress, f"throughput on CPU: {seconds:g} s per precision"):
            for precision, fps in throughput(compiled, validation, seconds).items():
                report.variants[precision].fps = fps
        with step(progress, f"save INT8 IR → {xml}"):
            report.xml = save_ir(int8, xml, "FP32")
    return report


SIGNED_ACTIVATIONS = ("Swish", "HSwish", "Mish", "Gelu", "Elu", "Selu", "PRelu")


def preset_for(model: ov.Model, choice: str) -> str:
    """``auto``: NNCF's ``mixed`` preset (asymmetric activations) for a model whose activations go
    negative (SiLU, PReLU, GELU …: a symmetric 8-bit grid spends half its steps on a sliver of
    negative values there), else ``performance``. Measured on the 100 COCO images: YOLOX-nano's
    AP50 drop 2.9 → -0.8 points, NanoDet-m's 2.8 → 1.3, at the same speed (docs/models.md)."""
    if choice != "auto":
        return choice
    signed = any(op.get_type_name() in SIGNED_ACTIVATIONS for op in model.get_ordered_ops())
    return "mixed" if signed else "performance"


WEIGHTED = ("Convolution", "GroupConvolution", "ConvolutionBackpropData", "GroupConvolutionBackpropData", "MatMul")


def head_layers(model: ov.Model) -> list[str]:
    """Names of the last weighted layers (convolutions, MatMul) before each output: the detector's
    heads, which ``--ignore-heads`` keeps in floating point. Names are read from this very model
    object (OpenVINO numbers unnamed nodes per read, so they are not stable across reads)."""
    found: list[str] = []
    seen: set[str] = set()
    stack = [result.input_value(0).get_node() for result in model.get_results()]
    while stack:
        node = stack.pop()
        name = node.get_friendly_name()
        if name in seen:
            continue
        seen.add(name)
        if node.get_type_name() in WEIGHTED:
            found.append(name)
            continue
        stack.extend(port.get_source_output().get_node() for port in node.inputs())
    return sorted(found)


def _read_annotations(path: str) -> dict:
    from engine.tools.modeltools.evaluate import read_annotations

    return read_annotations(Path(path).expanduser())


def _tensor(sample: Sample) -> np.ndarray:
    return sample.tensor


def report_table(name: str, report: QuantizeReport) -> Table:
    """FP32 / FP16 / INT8 side by side: metric, throughput, and throughput relative to FP32."""
    label = METRIC_LABELS[report.metric]
    caption = f"INT8/FP32 throughput ratio: {report.speedup:.2f}×"
    drop = report.ap50_drop
    if drop is not None:
        verdict = "good" if drop <= GOOD_AP50_DROP + 1e-9 else "not good"
        caption += (f"\nINT8 AP50 drop: {drop * 100:.1f} points ({verdict}: ≤ {GOOD_AP50_DROP * 100:g} point asked); "
                    f"eval score threshold 0.01")
    table = Table(title=f"{name}: FP32 / FP16 / INT8 on CPU", caption=caption)
    extra = list(report.variants["FP32"].extra)
    columns: list[tuple[str, JustifyMethod]] = [("precision", "left"), (label, "right"),
                                                *((name, "right") for name in extra),
                                                ("throughput (FPS)", "right"), ("vs FP32", "right")]
    for column, justify in columns:
        table.add_column(column, justify=justify)
    base = report.variants["FP32"].fps
    for variant in report.variants.values():
        table.add_row(variant.precision, f"{variant.metric:.2%}", *(f"{variant.extra.get(n, 0.0):.2%}" for n in extra),
                      f"{variant.fps:,.1f}", f"{variant.fps / base:.2f}×")
    return table


def int8_entry(cfg: ModelConfig, xml: Path, registry: Path | None = None) -> dict[str, Any]:
    """The registry entry of the INT8 copy (for ``registry``, default the user's): the source
    entry's settings (from ``registry``, default the model registry) with the new file."""
    source = load_registry(registry).get(cfg.name)
    if source is None:
        raise ConfigError(f"--register copies the settings of a registered model; '{cfg.name}' is not "
                          f"registered (pass a registry name, or --like NAME for a file)")
    described = source.get("description") or cfg.name
    return {**source, "description": f"{described} — INT8 (NNCF)",
            "file": file_value(xml, registry or paths.user_registry())}


VNNI_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")


def cpu_has_vnni(cpuinfo: Path = Path("/proc/cpuinfo")) -> bool:
    """Whether this CPU has 8-bit dot products without saturating 16-bit sums (VNNI or AMX)."""
    try:
        text = cpuinfo.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return True              # unknown: NNCF's default
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), [])
    return any(flag in flags for flag in VNNI_FLAGS)


def overflow_fix_for(choice: str) -> OverflowFix:
    """``auto``: every layer's weights in 7 bits on a CPU without VNNI, else the first layer's only."""
    if choice == "auto":
        return OverflowFix.FIRST_LAYER if cpu_has_vnni() else OverflowFix.ENABLE
    return OverflowFix(choice)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="registry name (models/models.toml) or model file")
    parser.add_argument("--data", default="", help="calibration images: a folder, or 'mnist' (the MNIST training "
                                                   "split); default: the codelab's 100 COCO images from the shared "
                                                   "folder, else data/samples")
    parser.add_argument("--labels-list", metavar="FILE",
                        help="labelled folder (ImageNet-format data): lines 'relative/path label' under --data; "
                             "classifiers are then scored by top-1/top-5")
    parser.add_argument("--annotations", metavar="JSON",
                        help="detector truth: COCO instances annotations of the --data images; FP32 / FP16 / INT8 "
                             "are then scored by COCO AP50 and AP (every image of --data scored)")
    parser.add_argument("--ignored-scope", action="append", metavar="REGEX",
                        help="keep layers whose names match in floating point (repeatable), e.g. a detector's heads")
    parser.add_argument("--ignored-type", action="append", metavar="OP",
                        help="keep every operation of this OpenVINO type in floating point (repeatable), "
                             "e.g. Add: the residual additions")
    parser.add_argument("--ignore-heads", action="store_true",
                        help="keep the last weighted layers before each output (a detector's heads) in floating point")
    parser.add_argument("--subset", type=int, default=300, help="calibration samples (default 300, the codelab's "
                                                                "stat_subset_size)")
    parser.add_argument("--preset", choices=("auto", "performance", "mixed"), default="auto",
                        help="performance: symmetric weights and activations; mixed: asymmetric activations; "
                             "auto (default): mixed where the model's activations go negative (SiLU, PReLU, "
                             "GELU ...), else performance")
    parser.add_argument("--fast-bias-correction", action=argparse.BooleanOptionalAction, default=True,
                        help="fast bias correction (default) or the slower, finer BiasCorrection")
    parser.add_argument("--max-drop", type=float, help="accuracy control: keep the metric within this absolute "
                                                       "drop of FP32 (e.g. 0.01), reverting layers as needed")
    parser.add_argument("--metric", choices=METRICS, default="auto",
                        help="top1 (labelled data: mnist), ap50 (COCO AP50, with --annotations) or agreement "
                             "with FP32; auto picks top1, then ap50, when it can")
    parser.add_argument("--output", type=Path, help="folder for the INT8 IR (default OVSTREAM_HOME/models/NAME)")
    parser.add_argument("--register", nargs="?", const="", metavar="NAME",
                        help="register the INT8 model (default name: MODEL_int8)")
    parser.add_argument("--like", metavar="NAME", help="a model file takes this registry entry's settings")
    parser.add_argument("--adapter", choices=ADAPTERS, help="a model file's output adapter (without --like)")
    parser.add_argument("--seconds", type=float, default=3.0, help="throughput measurement per precision")
    parser.add_argument("--overflow-fix", choices=("auto", *(f.value for f in OverflowFix)), default="auto",
                        help="NNCF's overflow fix (7-bit weights) for CPUs without VNNI, whose 8-bit products "
                             "saturate: auto (default) applies it to every layer on such a CPU, to the first "
                             "layer only on others")


def main(args: argparse.Namespace) -> int:
    if args.subset < 1:
        raise ConfigError(f"--subset must be >= 1, not {args.subset}")
    if args.seconds <= 0:
        raise ConfigError(f"--seconds must be > 0, not {args.seconds}")
    if args.max_drop is not None and not 0 < args.max_drop < 1:
        raise ConfigError(f"--max-drop is an absolute metric drop between 0 and 1, not {args.max_drop}")
    cfg = resolve(args.model, args.like, args.adapter)
    name = args.register or f"{cfg.name}_int8"
    xml = (args.output or paths.home() / "models" / name) / f"{name}.xml"
    entry = int8_entry(cfg, xml) if args.register is not None else None
    if xml.resolve() == Path(cfg.path).resolve():
        raise ModelError(f"{xml} is the model being quantized: choose another --output or name")
    console = Console()
    report = quantize(cfg, args.data or str(paths.default_images()), xml, subset=args.subset, preset=args.preset,
                      fast_bias_correction=args.fast_bias_correction, max_drop=args.max_drop,
                      metric=args.metric, seconds=args.seconds, labels_list=args.labels_list,
                      ignored_scope=args.ignored_scope, ignored_types=args.ignored_type,
                      ignore_heads=args.ignore_heads, annotations=args.annotations,
                      overflow_fix=args.overflow_fix, console=console)
    if entry is not None:
        register_model(name, entry)
        console.print(f"registered '{name}' in {paths.user_registry()}")
    console.print(report_table(cfg.name, report))
    return 0
