"""A model repository laid out as TensorFlow Serving's: ROOT/MODEL/VERSION/model.npu.

VERSION is a positive integer directory; the highest one is served by default and any one can
be asked for.  `register` validates the bundle before copying it in (through a temporary file
and a rename, so a server scanning the directory never sees half a bundle).
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

from softnpu.compiler.bundle import Bundle

__all__ = ["BUNDLE_FILE", "ModelRepository", "RepositoryError", "default_root", "list_versions"]

BUNDLE_FILE = "model.npu"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


class RepositoryError(ValueError):
    """An unknown model or version, a bad name, or a version that already exists."""


def default_root() -> Path:
    """$SOFTNPU_MODEL_DIR, else ~/.softnpu/models."""
    return Path(os.environ.get("SOFTNPU_MODEL_DIR", "~/.softnpu/models")).expanduser()


def _check_name(name: str) -> str:
    if not isinstance(name, str) or not _NAME.match(name):
        raise RepositoryError(f"model name {name!r}: use letters, digits, '.', '_' and '-' "
                              "(at most 128, not starting with a punctuation mark)")
    return name


def list_versions(model_dir: Path) -> list[int]:
    """The versions (ascending) of one model's folder: positive integer folders holding a bundle."""
    return sorted(int(v.name) for v in model_dir.iterdir()
                  if v.is_dir() and v.name.isdigit() and int(v.name) > 0 and (v / BUNDLE_FILE).is_file())


class ModelRepository:
    def __init__(self, root: str | Path | None = None):
        self.root = Path(root).expanduser() if root is not None else default_root()

    def models(self) -> dict[str, list[int]]:
        """Model name -> its versions (ascending) that hold a bundle file."""
        out: dict[str, list[int]] = {}
        if not self.root.is_dir():
            return out
        for model_dir in sorted(self.root.iterdir()):
            if not model_dir.is_dir() or not _NAME.match(model_dir.name):
                continue
            versions = list_versions(model_dir)
            if versions:
                out[model_dir.name] = versions
        return out

    def versions(self, name: str) -> list[int]:
        versions = self.models().get(name)
        if not versions:
            known = ", ".join(sorted(self.models())) or "none"
            raise RepositoryError(f"model {name!r} is not in the repository {self.root} (models: {known})")
        return versions

    def latest(self, name: str) -> int:
        return self.versions(name)[-1]

    def path(self, name: str, version: int | None = None) -> Path:
        """The bundle file of `name` at `version` (None: the latest)."""
        versions = self.versions(name)
        if version is None:
            version = versions[-1]
        if version not in versions:
            raise RepositoryError(f"model {name!r} has no version {version} (versions: "
                                  f"{', '.join(map(str, versions))})")
        return self.root / name / str(version) / BUNDLE_FILE

    def load(self, name: str, version: int | None = None) -> Bundle:
        return Bundle.load(self.path(name, version))

    def register(self, bundle_path: str | Path, name: str | None = None, version: int | None = None,
                 force: bool = False) -> Path:
        """Copy a bundle in as NAME/VERSION (default name: the manifest's model; default version:
        one past the latest).  Returns the installed path."""
        bundle = Bundle.load(bundle_path)          # raises BundleError on a bad file
        name = _check_name(bundle.manifest.model if name is None else name)
        existing = self.models().get(name, [])
        if version is None:
            version = (existing[-1] + 1) if existing else 1
        if isinstance(version, bool) or not isinstance(version, int) or version <= 0:
            raise RepositoryError(f"version must be a positive integer, got {version!r}")
        target = self.root / name / str(version) / BUNDLE_FILE
        if target.exists() and not force:
            raise RepositoryError(f"model {name!r} version {version} already exists ({target}); "
                                  "pass force to replace it")
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_suffix(".npu.tmp")
        shutil.copyfile(bundle_path, tmp)
        tmp.replace(target)
        return target

    def remove(self, name: str, version: int | None = None) -> list[int]:
        """Remove one version (or, with version None, the whole model); returns what was removed."""
        versions = self.versions(name)
        if version is None:
            shutil.rmtree(self.root / name)
            return versions
        if version not in versions:
            raise RepositoryError(f"model {name!r} has no version {version} (versions: "
                                  f"{', '.join(map(str, versions))})")
        shutil.rmtree(self.root / name / str(version))
        if not self.models().get(name):
            shutil.rmtree(self.root / name, ignore_errors=True)
        return [version]
