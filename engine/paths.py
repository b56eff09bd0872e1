"""Where ovstream finds what it ships and where it writes what it makes: the one place that knows.

* **Bundled resources** (``models/`` with the registry ``models/models.toml``, ``configs/``, ``data/``):
  in an installed wheel they are package data under ``engine/bundled/`` (``pyproject.toml`` maps the
  top-level folders there at build time); in a source checkout (editable install or ``PYTHONPATH``)
  they are the checkout's own top-level folders. :func:`bundled_root` returns whichever holds them.
* **The user's folder** ``OVSTREAM_HOME`` (default ``$XDG_DATA_HOME/ovstream``, i.e.
  ``~/.local/share/ovstream``): what the tools write (``convert --register``, ``train-mnist``) goes to
  ``OVSTREAM_HOME/models/`` and its registry, which is read over the bundled one. Nothing is ever
  written into the installation.
* **Relative paths** (:func:`resolve`) are relative to where they were written: a config file's
  folder (the command line's: the working directory); a path that names nothing there but names a
  bundled resource (``data/coco100``, ``models/mnist/mnist.xml``) is that resource.
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
    checkout = Path(__file__).resolve().parent.parent
    if (checkout / REGISTRY).is_file():
        return checkout
    raise RuntimeError(f"ovstream's bundled resources are missing (looked in {installed} and {checkout}); "
                       f"reinstall the package")


def bundled(relative: str) -> Path:
    """A bundled resource by its path in the source tree, e.g. ``data/coco100``."""
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
