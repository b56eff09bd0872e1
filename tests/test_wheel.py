"""The built wheel works outside the checkout: installed in a fresh venv and run from another folder,
it finds its bundled models, registry, configs and sample data, and writes only to the working
directory and OVSTREAM_HOME (never into the installation).

The venv borrows this environment's dependencies through a ``.pth`` file (no network, a few
seconds); ovstream itself comes only from the wheel: the checkout is not importable there.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.slow

SOURCES = ("pyproject.toml", "README.md", "ovstream.py", "engine", "workers", "models", "configs", "data")


def _copy_sources(dest: Path) -> None:
    """What the build reads, without caches or build leftovers (the checkout stays untouched)."""
    dest.mkdir()
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "cache", "*.egg-info")
    for name in SOURCES:
        src = REPO / name
        if src.is_dir():
            shutil.copytree(src, dest / name, ignore=ignore)
        else:
            shutil.copy2(src, dest / name)


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """(venv python, venv bin folder, environment for its commands) with the wheel installed."""
    tmp = tmp_path_factory.mktemp("wheel")
    _copy_sources(tmp / "src")
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                            "--no-index", "-q", "-w", str(tmp / "dist"), str(tmp / "src")],
                           capture_output=True, text=True, timeout=300)
    assert build.returncode == 0, build.stdout + build.stderr
    (wheel,) = (tmp / "dist").glob("ovstream-*.whl")
    venv = tmp / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    purelib = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             capture_output=True, text=True, check=True).stdout.strip()
    deps = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    (Path(purelib) / "_ovstream_test_deps.pth").write_text("\n".join(sorted(deps)) + "\n", encoding="utf-8")
    install = subprocess.run([str(python), "-m", "pip", "install", "--no-deps", "--no-index", "-q", str(wheel)],
                             capture_output=True, text=True, timeout=300)    # pip borrowed like the rest
    assert install.returncode == 0, install.stdout + install.stderr
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "XDG_DATA_HOME")}
    env["OVSTREAM_HOME"] = str(tmp / "home")
    work = tmp / "work"
    work.mkdir()
    return {"python": python, "bin": venv / "bin", "env": env, "work": work, "wheel": wheel,
            "site": Path(purelib), "home": tmp / "home"}


def _run(installed: dict, *cmd: str, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run(list(cmd), cwd=installed["work"], env=installed["env"], capture_output=True,
                          text=True, timeout=timeout, stdin=subprocess.DEVNULL)


def _tree(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): p.stat().st_mtime_ns for p in root.rglob("*")
            if p.is_file() and "__pycache__" not in p.parts}


def test_the_wheel_holds_every_module_and_the_bundled_resources(installed):
    names = set(zipfile.ZipFile(installed["wheel"]).namelist())
    for package in ("engine", "workers"):
        for path in (REPO / package).rglob("*.py"):
            assert path.relative_to(REPO).as_posix() in names, f"{path} is not in the wheel (pyproject packages)"
    for resource in ("models/models.toml", "configs/default.toml", "data/samples/chelsea.png", "data/clip.mp4",
                     "models/ssd_mobilenet_v2_coco/mobilenet_ssd_v2_coco_quant_postprocess.tflite",
                     "data/coco91_labels.tsv"):
        assert f"engine/bundled/{resource}" in names
    assert "ovstream.py" in names                               # the public module: `import ovstream`
    assert not any(name.startswith(("models/", "configs/", "data/", "bench/")) for name in names)


def test_installed_package_runs_from_another_folder(installed):
    """The bundled default config, model, labels and images, from a folder that is not the checkout."""
    site_before = _tree(installed["site"])
    where = _run(installed, str(installed["python"]), "-c",
                 "import engine, engine.core.paths as p; print(engine.__file__); print(p.bundled_root())")
    assert where.returncode == 0, where.stderr
    module, root = where.stdout.split()
    assert Path(module).is_relative_to(installed["site"]), module        # the wheel, not the checkout
    assert Path(root) == installed["site"] / "engine" / "bundled"
    run = _run(installed, str(installed["bin"] / "ovstream"), "run", "--no-dashboard")
    assert run.returncode == 0, run.stderr
    records = [json.loads(line) for line in
               (installed["work"] / "runs" / "default" / "results.jsonl").read_text().splitlines()]
    assert len(records) == 6 + 360 and all(r["status"] == "ok" for r in records)   # the photos and the clip
    assert any(d["label"] == "cat" for r in records for d in r["detections"])      # labels file found
    assert _tree(installed["site"]) == site_before            # nothing written into the installation


def test_the_python_api_runs_from_another_folder(installed):
    """`import ovstream` from the wheel: a Pipeline over the bundled images, results in order,
    the same run's results.jsonl line for line; nothing written into the installation."""
    site_before = _tree(installed["site"])
    script = ("import ovstream\n"
              "with ovstream.Pipeline(source='data/samples', model='face', output='api', loop=10) as pipe:\n"
              "    lines = [r.to_json() for r in pipe]\n"
              "assert ovstream.__file__.startswith(__import__('sysconfig').get_paths()['purelib'])\n"
              "assert lines == open('api/results.jsonl').read().splitlines(), 'results differ'\n"
              "print(len(lines), sum(len(r.detections) for r in ovstream.read_results('api/results.jsonl')))\n")
    api = _run(installed, str(installed["python"]), "-c", script)
    assert api.returncode == 0, api.stderr
    frames, faces = map(int, api.stdout.split())
    assert frames == 60 and faces > 0
    assert _tree(installed["site"]) == site_before


def test_converted_model_is_registered_in_ovstream_home(installed):
    """`convert --register` writes the IR and the registry entry to OVSTREAM_HOME; the user registry
    is read over the bundled one (the name stays, the file is the user's) and runs from anywhere."""
    site_before = _tree(installed["site"])
    tflite = installed["site"] / "engine" / "bundled" / "models" / "mediapipe" / "face_detection_short_range.tflite"
    convert = _run(installed, str(installed["bin"] / "ovstream"), "convert", str(tflite), "--name", "face_short",
                   "--register")
    assert convert.returncode == 0, convert.stderr
    home = installed["home"]
    assert (home / "models" / "face_short" / "face_short.xml").is_file()
    registry = (home / "models" / "models.toml").read_text()
    assert 'file = "face_short/face_short.xml"' in registry and "anchor_ssd" in registry
    script = ("from engine.config import load_config\n"
              "cfg = load_config(overrides={'model': {'name': 'face_short'}, 'sources': [{'uri': 'data/samples'}]})\n"
              "print(cfg.model.path); print(cfg.sources[0].uri)")
    api = _run(installed, str(installed["python"]), "-c", script)
    assert api.returncode == 0, api.stderr
    model_path, uri = api.stdout.split()
    assert Path(model_path) == home / "models" / "face_short" / "face_short.xml"
    assert Path(uri) == installed["site"] / "engine" / "bundled" / "data" / "samples"
    run = _run(installed, str(installed["bin"] / "ovstream"), "run", "--model", "face_short",
               "--source", "data/samples", "--output", "faces", "--no-dashboard")
    assert run.returncode == 0, run.stderr
    assert len((installed["work"] / "faces" / "results.jsonl").read_text().splitlines()) == 6
    assert _tree(installed["site"]) == site_before


def test_bin_launcher_runs_the_checkout_from_another_folder(tmp_path):
    """bin/ovstream: the checkout without installing it, from any folder, with its bundled names."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(PYTHON=sys.executable, OVSTREAM_HOME=str(tmp_path / "home"))
    proc = subprocess.run([str(REPO / "bin" / "ovstream"), "run", "--model", "mnist", "--source", "data/mnist_samples",
                           "--output", "out", "--no-dashboard"], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=240, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stderr
    records = [json.loads(line) for line in (tmp_path / "out" / "results.jsonl").read_text().splitlines()]
    assert sorted(r["classes"][0]["label"] for r in records) == [str(d) for d in range(10)]
