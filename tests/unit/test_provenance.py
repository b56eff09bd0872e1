"""Every bundled file is accounted for: listed in its folder's PROVENANCE.toml with its sha256, from a
package registry (package, version, path) or made by the project, with its license beside it."""
from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import tomllib

REPO = Path(__file__).resolve().parents[2]
UNLISTED = {"PROVENANCE.toml", "models.toml"}          # the lists themselves: the project's source
SKIPPED_DIRS = {"cache", "__pycache__"}                # what runs write (ignored by git)


def _files(folder: Path) -> set[str]:
    return {path.relative_to(folder).as_posix() for path in folder.rglob("*")
            if path.is_file() and not SKIPPED_DIRS & set(path.relative_to(folder).parts)
            and path.relative_to(folder).as_posix() not in UNLISTED}


@pytest.mark.parametrize("folder", ["models", "data"])
def test_every_bundled_file_has_provenance(folder):
    root = REPO / folder
    entries = tomllib.loads((root / "PROVENANCE.toml").read_text(encoding="utf-8"))["file"]
    listed = {entry["path"]: entry for entry in entries}
    assert len(listed) == len(entries), "a file is listed twice"
    assert sorted(_files(root) - set(listed)) == [], "files without provenance"
    assert sorted(set(listed) - _files(root)) == [], "provenance of files that are not there"
    for path, entry in listed.items():
        assert hashlib.sha256((root / path).read_bytes()).hexdigest() == entry["sha256"], f"{path}: sha256"
        assert entry["origin"] in ("package", "made"), path
        if entry["origin"] == "package":
            assert entry["package"].split(":")[0] in ("pypi", "npm", "debian") and entry["version"] \
                and entry["package_path"], f"{path}: package, version and path in it"
        else:
            assert entry["made_by"], f"{path}: how the project made it"
        if entry["license_file"]:
            assert entry["license_file"] in listed, f"{path}: its license file is not bundled"


def test_made_files_are_what_the_project_makes(tmp_path):
    """The COCO label files and MNIST digits are what ``python -m engine.tools.modeltools.samples`` writes."""
    import cv2

    from engine.tools.modeltools.samples import coco_label_files, write_mnist_digits

    for name, text in coco_label_files().items():
        assert (REPO / "data" / name).read_text(encoding="utf-8") == text, name
    made = write_mnist_digits(REPO / "data" / "mnist_5k.npz", tmp_path)
    assert sorted(p.name for p in made) == sorted(p.name for p in (REPO / "data" / "mnist_samples").glob("*.png"))
    for path in made:
        bundled = cv2.imread(str(REPO / "data" / "mnist_samples" / path.name), cv2.IMREAD_UNCHANGED)
        assert (cv2.imread(str(path), cv2.IMREAD_UNCHANGED) == bundled).all(), path.name
