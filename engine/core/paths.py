"""Where ovstream finds what it ships and where it writes what it makes: the one place that knows.

* **Bundled resources** (``models/`` with the registry ``models/models.toml``, ``configs/``, ``data/``):
  in an installed wheel they are package data under ``engine/bundled/`` (``pyproject.toml`` maps the
  top-level folders there at build time); in a source checkout (editable install or ``PYTHONPATH``)
  they are the checkout's own top-level folders. :func:`bundled_root` returns whichever holds them.
* **The user's folder** ``OVSTREAM_HOME`` (default ``$XDG_DATA_HOME/ovstream``, i.e.
  ``~/.local/share/ovstream``): what the tools write (``convert --register``, ``train-mnist``) goes to
  ``OVSTREAM_HOME/models/`` and its registry, which is read over the bundled one. Nothing is ever
  written into the installation.
* **Models not bundled** (their files may not be redistributed here, e.g. NanoDet-m or SSD MobileNet v1):
  the registry still describes them, and their relative ``file`` is looked up in the registry's own
  folder, then in the **model search path** (:func:`model_search_path`): ``OVSTREAM_HOME/models``,
  the folders of ``OVSTREAM_MODEL_PATH`` (``:``-separated), and ``models/`` of the shared folder.
* **The shared folder** (:func:`shared_root`): ``OVSTREAM_SHARED``, else ``../shared`` beside a source
  checkout when it exists: models and data that may be used but not shipped (the codelab's 100 COCO
  val2017 images and their COCO ground truth, see :func:`coco100_images`).
* **Relative paths** (:func:`resolve`) are relative to where they were written: a config file's
  folder (the command line's: the working directory); a path that names nothing there but names a
  bundled resource (``data/samples``, ``models/mnist/mnist.xml``) is that resource.
"""
from __future__ import annotations

import os
from functools import lru_cache
from importlib import resources
from pathlib import Path

REGISTRY = "models/models.toml"          # relative to a resource root or to OVSTREAM_HOME
DEFAULT_CONFIG = "configs/default.toml"


@lru_cache(maxsize=1)
def bundled_root() -> Path:
    """The folder holding the bundled ``models/``, ``configs/`` and ``data/``."""
    installed = Path(str(resources.files("engine") / "bundled"))
    if (installed / REGISTRY).is_file():
        return installed
    checkout = Path(__file__).resolve().parents[2]
    if (checkout / REGISTRY).is_file():
        return checkout
    raise RuntimeError(f"ovstream's bundled resources are missing (looked in {installed} and {checkout}); "
                       f"reinstall the package")


def bundled(relative: str) -> Path:
    """A bundled resource by its path in the source tree, e.g. ``data/samples``."""
    return bundled_root() / relative


def home() -> Path:
    """``OVSTREAM_HOME``: the user's models and registry (created when a tool first writes there)."""
    explicit = os.environ.get("OVSTREAM_HOME")
    if explicit:
        return Path(explicit).expanduser().resolve()
    data = os.environ.get("XDG_DATA_HOME") or "~/.local/share"
    return (Path(data).expanduser() / "ovstream").resolve()


def user_registry() -> Path:
    """The user's model registry, read over the bundled one and written by ``convert --register``."""
    return home() / REGISTRY


def registries() -> list[Path]:
    """The registries to read, lowest priority first: the bundled one, then the user's."""
    return [bundled(REGISTRY), user_registry()]


def shared_root() -> Path | None:
    """The shared folder of models and data that are used but not shipped (``OVSTREAM_SHARED``, else
    ``../shared`` beside a source checkout), or None when there is none."""
    explicit = os.environ.get("OVSTREAM_SHARED")
    if explicit:
        return Path(explicit).expanduser().resolve()
    beside = Path(__file__).resolve().parents[3] / "shared"
    return beside if beside.is_dir() else None


def shared(relative: str) -> Path:
    """``relative`` inside the shared folder; a :class:`FileNotFoundError` that says how to provide it
    when it is not there."""
    root = shared_root()
    path = root / relative if root is not None else None
    if path is None or not path.exists():
        where = f"{root}" if root is not None else "no shared folder (../shared beside the checkout)"
        raise FileNotFoundError(f"{relative} is not in the shared folder ({where}); set OVSTREAM_SHARED to the "
                                f"folder that holds it")
    return path


def coco100_images() -> Path:
    """The codelab's 100 COCO val2017 images (file name = COCO image id), from the shared folder."""
    return shared("data/coco_val2017_first100")


def coco100_annotations() -> Path:
    """Their real COCO ground truth (``instances_val2017_first100.json``), from the shared folder."""
    return shared("data/coco_val2017_first100_annotations/instances_val2017_first100.json")


def default_images() -> Path:
    """The images the tools measure on by default: the codelab's 100 COCO images where the shared
    folder has them, else the bundled sample photos."""
    try:
        return coco100_images()
    except FileNotFoundError:
        return bundled("data/samples")


def model_search_path() -> list[Path]:
    """Folders where a registry entry's relative model file is looked for after its registry's own."""
    found = [home() / "models"]
    found += [Path(p).expanduser() for p in os.environ.get("OVSTREAM_MODEL_PATH", "").split(os.pathsep) if p]
    root = shared_root()
    if root is not None:
        found.append(root / "models")
    return found


def resolve_model_file(value: str | Path, registry_dir: Path) -> Path:
    """A registry entry's model file: absolute as written; else in the registry's folder (or the
    bundled resources), else in the first folder of :func:`model_search_path` that has it, else the
    registry-relative path (for the error message)."""
    first = resolve(value, registry_dir)
    if os.path.lexists(first) or Path(value).expanduser().is_absolute():
        return first
    for folder in model_search_path():
        if os.path.lexists(folder / value):
            return (folder / value).absolute()
    return first


def resolve(value: str | Path, base: Path | None = None) -> Path:
    """``value`` as an absolute path: itself when absolute; else ``base / value`` (``base``: the
    folder of the file that names it, default the working directory) when that exists, else the
    bundled resource of that name when that exists, else ``base / value`` (for the error message)."""
    candidate = Path(value).expanduser()
    if candidate.is_absolute():
        return candidate
    here = (base or Path.cwd()) / candidate
    if os.path.lexists(here):
        return here.absolute()
    shipped = bundled_root() / candidate
    return shipped if os.path.lexists(shipped) else here.absolute()


def display(path: Path) -> str:
    """``path`` for a registry or message: relative to the bundled root when inside it (``data/…``),
    else absolute."""
    path = Path(path).absolute()
    root = bundled_root()
    return path.relative_to(root).as_posix() if path.is_relative_to(root) else str(path)
