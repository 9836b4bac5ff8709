"""The served models of a repository: every version validated before it is servable.

A version (ROOT/MODEL/VERSION/model.npu) becomes servable only once its whole file checks out:
the zip's directory and every member's CRC, no encrypted or exotically compressed member, the
members' total size within `max_bundle_bytes`, the manifest, the program's and the weights'
sizes, the serving signature built from them.  A version that fails is logged once (its path and
the reason) and skipped: `latest` is the newest good version, so a truncated file dropped next to
a good one takes nothing down, and neither startup nor GetModelStatus ever fails because of one
file.  The store re-reads the listing at most every INDEX_TTL_S (at once when a request names
what it lacks) and re-validates a file whose size or mtime changed.  A version that disappears
or is replaced is unloaded: the store forgets it and tells its listeners (the worker pool drops
the runtimes, and with them the weights), so its memory is released.

Request-facing messages name the model and version, never a server path or another model.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
import zipfile
from collections.abc import Callable
from pathlib import Path

from softnpu.compiler.bundle import Bundle
from softnpu.host.serving.models import ModelNotFound, ServedModel
from softnpu.host.serving.repository import BUNDLE_FILE, ModelRepository

__all__ = ["ModelStore", "validate_bundle", "INDEX_TTL_S", "MAX_BUNDLE_BYTES"]

log = logging.getLogger("softnpu.serve")

INDEX_TTL_S = 1.0                      # how stale the repository listing may be
MAX_BUNDLE_BYTES = 4 * 1024 ** 3       # members of one bundle together, uncompressed


class BadVersion(ValueError):
    """A version file that cannot be served (the message names the file relative to the root)."""


def validate_bundle(path: Path, max_bytes: int = MAX_BUNDLE_BYTES) -> Bundle:
    """The bundle at `path` once its zip structure, sizes and CRCs check out; else ValueError."""
    try:
        with zipfile.ZipFile(path) as z:
            infos = z.infolist()
            for info in infos:
                if info.flag_bits & 0x1:
                    raise ValueError(f"member {info.filename!r} is encrypted")
                if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
                    raise ValueError(f"member {info.filename!r} uses compression method "
                                     f"{info.compress_type} (only stored and deflated are read)")
            total = sum(info.file_size for info in infos)
            if total > max_bytes:
                raise ValueError(f"members of {total} bytes uncompressed exceed the limit of {max_bytes}")
            bad = z.testzip()       # reads every member: CRC-32 and decompression
            if bad is not None:
                raise ValueError(f"member {bad!r} is damaged (bad CRC-32)")
    except zipfile.BadZipFile as exc:
        raise ValueError(f"not a valid zip file ({exc})") from None
    except (OSError, EOFError, RuntimeError, NotImplementedError) as exc:
        raise ValueError(f"unreadable ({type(exc).__name__}: {exc})") from None
    bundle = Bundle.load(path)
    if not any(stage.get("op") == "host_graph" for stage in bundle.manifest.postprocess):
        bundle.tflite = None    # the compiler's input: not served (unless a host tail runs from it)
    return bundle


@dataclasses.dataclass
class _Version:
    stamp: tuple[int, int]              # (size, mtime_ns) of the file validated
    model: ServedModel | None
    error: str | None = None            # relative to the repository root


class ModelStore:
    """Served models of a repository (see the module's docstring).

    `on_unload` callbacks get each ServedModel that was unloaded."""

    def __init__(self, repository: ModelRepository | str | Path, top_k: int = 5,
                 max_bundle_bytes: int = MAX_BUNDLE_BYTES):
        self.repository = repository if isinstance(repository, ModelRepository) else \
            ModelRepository(repository)
        self.top_k = top_k
        self.max_bundle_bytes = max_bundle_bytes
        self.on_unload: list[Callable[[ServedModel], None]] = []
        self._versions: dict[tuple[str, int], _Version] = {}
        self._listing: dict[str, list[int]] = {}
        self._listed_at: float | None = None
        self._lock = threading.Lock()           # the dicts
        self._loading = threading.Lock()        # one validation at a time

    # -- the listing ------------------------------------------------------------------------------
    def refresh(self) -> dict[str, list[int]]:
        """Re-read the repository's listing now; unload the versions that disappeared."""
        try:
            listing = self.repository.models()
        except OSError as exc:
            log.error("cannot list the model repository %s: %s", self.repository.root, exc)
            with self._lock:
                return dict(self._listing)
        gone = []
        with self._lock:
            self._listing, self._listed_at = listing, time.monotonic()
            for key in [k for k in self._versions if k[1] not in listing.get(k[0], ())]:
                gone.append(self._versions.pop(key))
        for entry in gone:
            self._unloaded(entry)
        return listing

    def _index(self, name: str = "", version: int | None = None) -> dict[str, list[int]]:
        with self._lock:
            listing, at = self._listing, self._listed_at
        stale = at is None or time.monotonic() - at > INDEX_TTL_S
        if stale or (name and name not in listing) or (version and version not in listing.get(name, ())):
            listing = self.refresh()
        return listing

    def _unloaded(self, entry: _Version) -> None:
        if entry.model is None:
            return
        log.info("unloaded %s:%d", entry.model.name, entry.model.version)
        for callback in self.on_unload:
            try:
                callback(entry.model)
            except Exception:           # a listener's bug must not keep the store from working
                log.exception("on_unload callback failed")

    # -- one version --------------------------------------------------------------------------
    def _entry(self, name: str, version: int) -> _Version | None:
        """The validated entry of a listed version (None: its file is gone)."""
        path = self.repository.root / name / str(version) / BUNDLE_FILE
        try:
            st = path.stat()
        except OSError:
            return None
        stamp = (st.st_size, st.st_mtime_ns)
        with self._lock:
            entry = self._versions.get((name, version))
        if entry is not None and entry.stamp == stamp:
            return entry
        with self._loading:
            with self._lock:
                entry = self._versions.get((name, version))
            if entry is not None and entry.stamp == stamp:
                return entry            # another thread validated it meanwhile
            fresh = self._load(path, name, version, stamp)
            with self._lock:
                old, self._versions[(name, version)] = self._versions.get((name, version)), fresh
        if old is not None:
            self._unloaded(old)
        return fresh

    def _load(self, path: Path, name: str, version: int, stamp) -> _Version:
        relative = f"{name}/{version}/{BUNDLE_FILE}"
        try:
            bundle = validate_bundle(path, self.max_bundle_bytes)
            model = ServedModel(bundle, name, version, self.top_k)
        except Exception as exc:        # whatever a bad file raises, it is that version's state
            reason = str(exc).replace(str(path), relative).replace(str(self.repository.root), "<models>")
            error = reason if reason.startswith(relative) else f"{relative}: {reason}"
            log.warning("model %s version %d at %s is not servable: %s", name, version, path, reason)
            return _Version(stamp, None, error)
        log.info("loaded %s:%d from %s", name, version, path)
        return _Version(stamp, model)

    # -- what the service asks ------------------------------------------------------------------
    def get(self, name: str, version: int | None = None) -> ServedModel:
        """The model at `version`, or the newest servable version (None or 0); an empty name means
        the only model of the repository.  Raises ModelNotFound."""
        name = self._default_name(name)
        versions = self._index(name, version).get(name)
        if version:
            entry = self._entry(name, version) if versions and version in versions else None
            if entry is None:
                raise ModelNotFound(f"Servable not found for request: Specific({name}, {version})")
            if entry.model is None:
                raise ModelNotFound(f"Servable not found for request: Specific({name}, {version}): "
                                    f"the version failed to load: {entry.error}")
            return entry.model
        for v in reversed(versions or ()):
            entry = self._entry(name, v)
            if entry is not None and entry.model is not None:
                return entry.model
        if not versions:
            raise ModelNotFound(f"Servable not found for request: Latest({name})")
        raise ModelNotFound(f"Servable not found for request: Latest({name}): none of its "
                            f"{len(versions)} version(s) loaded (GetModelStatus tells why)")

    def _default_name(self, name: str) -> str:
        if name:
            return name
        models = list(self._index())
        if len(models) == 1:
            return models[0]
        raise ModelNotFound("model_spec.name is empty and this server does not serve exactly one "
                            "model: name one")

    def status(self, name: str, version: int | None = None) -> list[tuple[int, str | None]]:
        """(version, error or None) for one version or every version of a model."""
        name = self._default_name(name)
        versions = self._index(name, version).get(name)
        if not versions:
            raise ModelNotFound(f"Could not find any versions of model {name}")
        if version:
            if version not in versions:
                raise ModelNotFound(f"Could not find version {version} of model {name}")
            versions = [version]
        out = []
        for v in versions:
            entry = self._entry(name, v)
            if entry is not None:
                out.append((v, entry.error))
        return out

    def preload(self) -> dict[str, list[tuple[int, str | None]]]:
        """Validate every version of every model now; returns their status."""
        return {name: self.status(name) for name in self.refresh()}

    def loaded(self) -> list[ServedModel]:
        """The servable versions held in memory."""
        with self._lock:
            return [e.model for e in self._versions.values() if e.model is not None]
