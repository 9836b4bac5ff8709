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

With a model config file (host/serving/model_config.py, `ModelStore.from_config_file`) the models
are the file's, each with its own folder, version policy and labels, and the file is re-read every
`poll_s` seconds: models added, removed or changed without a restart; a file that does not check
out is logged and the config in force stays.  Without one, every model folder of the repository
is a model whose versions are all servable (the implicit config: policy `all`, no labels, each
version loaded when first asked for).  A version outside its model's policy is not servable
(NOT_FOUND, as in TF Serving) and, if it was loaded, is unloaded.

Loaded versions share a memory budget (`max_loaded_bytes`, `softnpu serve --max-loaded-mb`): the
bytes of their bundles (program, weights, the TFLite model), which the worker pool's runtimes and
device images mirror.  Loading a version that would exceed it first unloads the versions least
recently asked for (they load again when next asked for); a version larger than the whole budget
is not servable, and says so.

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
from softnpu.host.serving.model_config import ALL_VERSIONS, ConfigError, ModelSource, parse_model_config
from softnpu.host.serving.models import ModelNotFound, ServedModel, UnknownLabel
from softnpu.host.serving.repository import BUNDLE_FILE, ModelRepository, list_versions

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
    stamp: tuple[str, int, int]         # (path, size, mtime_ns) of the file validated
    model: ServedModel | None
    error: str | None = None            # relative to the repository root


class ModelStore:
    """Served models of a repository or of a model config file (see the module's docstring).

    `on_unload` callbacks get each ServedModel that was unloaded."""

    def __init__(self, repository: ModelRepository | str | Path | None, top_k: int = 5,
                 max_bundle_bytes: int = MAX_BUNDLE_BYTES, *, models: dict[str, ModelSource] | None = None,
                 max_loaded_bytes: int | None = None):
        if (repository is None) == (models is None):
            raise ValueError("a ModelStore serves a repository or configured models: give one of them")
        self.repository = repository if isinstance(repository, ModelRepository) or repository is None \
            else ModelRepository(repository)
        self.top_k = top_k
        self.max_bundle_bytes = max_bundle_bytes
        if max_loaded_bytes is not None and max_loaded_bytes <= 0:
            raise ValueError(f"the loaded-model memory budget must be positive, got {max_loaded_bytes} bytes")
        self.max_loaded_bytes = max_loaded_bytes
        self._used: dict[tuple[str, int], float] = {}    # when each loaded version was last asked for
        self.on_unload: list[Callable[[ServedModel], None]] = []
        self.config_file: Path | None = None
        self.config_poll_s = 0.0
        self._sources: dict[str, ModelSource] | None = dict(models) if models is not None else None
        self._versions: dict[tuple[str, int], _Version] = {}
        self._listing: dict[str, list[int]] = {}
        self._listed_at: float | None = None
        self._lock = threading.Lock()           # the dicts
        self._loading = threading.Lock()        # one validation at a time
        self._config_text: str | None = None    # the config file's text in force
        self._config_error: str | None = None   # the last reload's error (logged once)
        self._failed: tuple | None = None       # (text, error) of the last reload that failed
        self._unlisted: set[str] = set()        # models whose folder could not be listed (logged once)
        self._stop = threading.Event()
        self._watcher: threading.Thread | None = None

    @classmethod
    def from_config_file(cls, path: str | Path, poll_s: float = 0.0, top_k: int = 5,
                         max_bundle_bytes: int = MAX_BUNDLE_BYTES,
                         max_loaded_bytes: int | None = None) -> ModelStore:
        """The models of a model config file; with poll_s > 0, `watch()` re-reads it that often.
        Raises ConfigError (a clear message naming the file) when it does not check out."""
        path = Path(path)
        try:
            text = path.read_text()
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"model config file {path}: cannot read it ({exc})") from None
        store = cls(None, top_k, max_bundle_bytes, models=parse_model_config(text, path),
                    max_loaded_bytes=max_loaded_bytes)
        store.config_file, store.config_poll_s, store._config_text = path, float(poll_s), text
        return store

    # -- the config ----------------------------------------------------------------------------
    @property
    def configured(self) -> bool:
        """Whether the models come from a model config (else from the repository's folders)."""
        return self._sources is not None

    def sources(self) -> dict[str, ModelSource]:
        """The configured models by name ({} without a config)."""
        with self._lock:
            return dict(self._sources or {})

    def _source(self, name: str) -> ModelSource | None:
        with self._lock:
            sources = self._sources
        if sources is None:             # the implicit config: every folder, every version
            return ModelSource(name, self.repository.root / name, ALL_VERSIONS, {})
        return sources.get(name)

    def configure(self, models: dict[str, ModelSource]) -> None:
        """Serve `models` from now on: what left the config or its policy is unloaded, what the
        new policies serve is loaded."""
        with self._lock:
            if self._sources is None:
                raise ValueError("this store serves a repository's folders, not configured models")
            old, self._sources = self._sources, dict(models)
            self._listed_at = None
        added = sorted(set(models) - set(old))
        removed = sorted(set(old) - set(models))
        changed = sorted(n for n in set(models) & set(old) if models[n] != old[n])
        log.info("model config: %d model(s); added %s, removed %s, changed %s", len(models),
                 added or "none", removed or "none", changed or "none")
        for name in added + changed:
            s = models[name]
            log.info("  %s: %s, versions: %s%s", name, s.base_path, s.policy,
                     "".join(f", {k} -> {v}" for k, v in sorted(s.labels.items())))
        self.preload()

    def reload_config(self) -> bool:
        """Re-read the config file; apply it when its text changed and it checks out (True).
        A file that does not is logged (once per error) and the config in force stays.  A file
        read while it is being written does not parse: an error is logged only when the same
        text fails twice in a row (two polls), so a write in progress is never reported."""
        if self.config_file is None:
            return False
        text = None
        try:
            text = self.config_file.read_text()
            if text == self._config_text:
                self._config_error = self._failed = None
                return False
            models = parse_model_config(text, self.config_file)
        except (OSError, UnicodeDecodeError, ConfigError) as exc:
            error = str(exc) if isinstance(exc, ConfigError) else \
                f"model config file {self.config_file}: cannot read it ({exc})"
            seen, self._failed = self._failed, (text, error)
            if seen == (text, error) and error != self._config_error:
                log.error("%s; keeping the model config in force (%d model(s))", error, len(self.sources()))
                self._config_error = error
            return False
        self._config_text, self._config_error, self._failed = text, None, None
        log.info("model config file %s changed: applying it", self.config_file)
        self.configure(models)
        return True

    def watch(self) -> None:
        """Re-read the config file every `config_poll_s` seconds (when both are set), and unload
        what the policies no longer serve, in a thread of its own; `close()` ends it."""
        if self.config_file is None or self.config_poll_s <= 0 or self._watcher is not None:
            return
        self._stop.clear()
        self._watcher = threading.Thread(target=self._poll, daemon=True, name="softnpu-model-config")
        self._watcher.start()

    def close(self) -> None:
        self._stop.set()
        if self._watcher is not None:
            self._watcher.join(5)
            self._watcher = None

    def _poll(self) -> None:
        while not self._stop.wait(self.config_poll_s):
            try:
                if not self.reload_config():
                    self.preload()      # new versions of the policies loaded, old ones unloaded
            except Exception:           # the poller must outlive any one bad round
                log.exception("model config poll failed")

    # -- the listing ------------------------------------------------------------------------------
    def _list(self) -> dict[str, list[int]]:
        with self._lock:
            sources = self._sources
        if sources is None:
            return self.repository.models()
        out = {}
        for name, source in sources.items():
            try:
                versions = list_versions(source.base_path)
                self._unlisted.discard(name)
            except OSError as exc:
                if name not in self._unlisted:
                    log.error("model %s: cannot list its base_path %s: %s", name, source.base_path, exc)
                    self._unlisted.add(name)
                versions = []
            if versions:
                out[name] = versions
        return out

    def refresh(self) -> dict[str, list[int]]:
        """Re-read the listing now; unload the versions that disappeared or that their model's
        version policy no longer serves."""
        try:
            listing = self._list()
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
        self._enforce(listing)
        return listing

    def _enforce(self, listing: dict[str, list[int]]) -> None:
        """Unload the loaded versions outside their model's version policy."""
        with self._lock:
            loaded = {name for (name, _), e in self._versions.items() if e.model is not None}
        for name in loaded:
            source = self._source(name)
            if source is None or source.policy.kind == "all":
                continue
            if source.policy.kind == "specific":
                keep = source.policy.versions
            else:
                keep = {v for v, e in self._aspired(source, listing.get(name, [])) if e.model is not None}
            gone = []
            with self._lock:
                for key in [k for k, e in self._versions.items()
                            if k[0] == name and e.model is not None and k[1] not in keep]:
                    gone.append(self._versions.pop(key))
            for entry in gone:
                self._unloaded(entry)

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
    def _entry(self, source: ModelSource, version: int) -> _Version | None:
        """The validated entry of a listed version (None: its file is gone)."""
        name = source.name
        path = source.base_path / str(version) / BUNDLE_FILE
        try:
            st = path.stat()
        except OSError:
            return None
        stamp = (str(path), st.st_size, st.st_mtime_ns)
        with self._lock:
            entry = self._versions.get((name, version))
        if entry is not None and entry.stamp == stamp:
            return entry
        with self._loading:
            with self._lock:
                entry = self._versions.get((name, version))
            if entry is not None and entry.stamp == stamp:
                return entry            # another thread validated it meanwhile
            fresh = self._load(path, source, version, stamp)
            with self._lock:
                old, self._versions[(name, version)] = self._versions.get((name, version)), fresh
                evicted = self._fit_budget((name, version)) if fresh.model is not None else []
                fresh = self._versions[(name, version)]
        if old is not None:
            self._unloaded(old)
        for entry in evicted:
            self._unloaded(entry)
        return fresh

    @staticmethod
    def _nbytes(model: ServedModel) -> int:
        b = model.bundle
        return len(b.program) + len(b.weights) + len(b.tflite or b"")

    def _fit_budget(self, key: tuple[str, int]) -> list[_Version]:
        """Under the lock, after `key` loaded: the entries unloaded to keep the loaded versions within
        the budget, least recently asked for first; `key` itself if it alone exceeds it."""
        budget = self.max_loaded_bytes
        if budget is None:
            return []
        self._used[key] = time.monotonic()
        entry = self._versions[key]
        need = self._nbytes(entry.model)
        if need > budget:
            name, version = key
            self._versions[key] = _Version(entry.stamp, None,
                                           f"{name}/{version}: needs {need:,} bytes, more than the "
                                           f"loaded-model memory budget of {budget:,} bytes")
            log.warning("model %s version %d not loaded: %s", name, version, self._versions[key].error)
            return [entry]
        loaded = {k: self._nbytes(e.model) for k, e in self._versions.items() if e.model is not None}
        evicted = []
        for victim in sorted((k for k in loaded if k != key), key=lambda k: self._used.get(k, 0.0)):
            if sum(loaded.values()) <= budget:
                break
            evicted.append(self._versions.pop(victim))
            self._used.pop(victim, None)
            del loaded[victim]
            log.info("unloading %s:%d to stay within the loaded-model budget of %.1f MiB", *victim,
                     budget / 2**20)
        return evicted

    def _load(self, path: Path, source: ModelSource, version: int, stamp) -> _Version:
        name = source.name
        relative = f"{name}/{version}/{BUNDLE_FILE}"
        try:
            bundle = validate_bundle(path, self.max_bundle_bytes)
            model = ServedModel(bundle, name, version, self.top_k)
        except Exception as exc:        # whatever a bad file raises, it is that version's state
            reason = str(exc).replace(str(path), relative).replace(str(source.base_path), f"<{name}>")
            if self.repository is not None:
                reason = reason.replace(str(self.repository.root), "<models>")
            error = reason if reason.startswith(relative) else f"{relative}: {reason}"
            log.warning("model %s version %d at %s is not servable: %s", name, version, path, reason)
            return _Version(stamp, None, error)
        log.info("loaded %s:%d from %s", name, version, path)
        return _Version(stamp, model)

    def _aspired(self, source: ModelSource, versions: list[int]) -> list[tuple[int, _Version]]:
        """(version, entry), ascending, of the listed versions the policy serves: with `latest N`,
        the N newest good ones and the bad ones newer than the oldest of them (each validated)."""
        policy = source.policy
        candidates = [v for v in versions if policy.allows(v)]
        if policy.kind != "latest":
            return [(v, e) for v in candidates if (e := self._entry(source, v)) is not None]
        out, good = [], 0
        for v in reversed(candidates):
            entry = self._entry(source, v)
            if entry is None:
                continue
            out.append((v, entry))
            good += entry.model is not None
            if good == policy.num_versions:
                break
        return out[::-1]

    # -- what the service asks ------------------------------------------------------------------
    def label_version(self, name: str, label: str) -> int:
        """The version a label of the model names.  Raises UnknownLabel (INVALID_ARGUMENT, as TF
        Serving) when the model has no such label."""
        source = self._source(self._default_name(name))
        version = source.labels.get(label) if source is not None else None
        if version is None:
            raise UnknownLabel(f"Unrecognized servable version label: {label}")
        return version

    def get(self, name: str, version: int | None = None, label: str = "") -> ServedModel:
        """The model at `version` (or at the version of `label`), or the newest servable version
        (None or 0); an empty name means the only model.  Raises ModelNotFound, UnknownLabel."""
        name = self._default_name(name)
        if label:
            version = self.label_version(name, label)
        versions = self._index(name, version).get(name) or []
        source = self._source(name)
        if version:
            what = f"Specific({name}, {version})" + (f" (version label {label!r})" if label else "")
            if source is None or version not in versions or not source.policy.allows(version):
                raise ModelNotFound(f"Servable not found for request: {what}")
            if source.policy.kind == "latest":
                entry = dict(self._aspired(source, versions)).get(version)
                if entry is None:
                    raise ModelNotFound(f"Servable not found for request: {what}: the version policy "
                                        f"serves the {source.policy.num_versions} newest good version(s)")
            else:
                entry = self._entry(source, version)
            if entry is None:
                raise ModelNotFound(f"Servable not found for request: {what}")
            if entry.model is None:
                raise ModelNotFound(f"Servable not found for request: {what}: "
                                    f"the version failed to load: {entry.error}")
            return self._asked(entry.model)
        candidates = [v for v in versions if source.policy.allows(v)] if source is not None else []
        for v in reversed(candidates):
            entry = self._entry(source, v)
            if entry is not None and entry.model is not None:
                return self._asked(entry.model)
        if not candidates:
            raise ModelNotFound(f"Servable not found for request: Latest({name})")
        raise ModelNotFound(f"Servable not found for request: Latest({name}): none of its "
                            f"{len(candidates)} version(s) loaded (GetModelStatus tells why)")

    def _asked(self, model: ServedModel) -> ServedModel:
        if self.max_loaded_bytes is not None:
            with self._lock:
                self._used[(model.name, model.version)] = time.monotonic()
        return model

    def _default_name(self, name: str) -> str:
        if name:
            return name
        models = list(self._index())
        if len(models) == 1:
            return models[0]
        raise ModelNotFound("model_spec.name is empty and this server does not serve exactly one "
                            "model: name one")

    def status(self, name: str, version: int | None = None,
               label: str = "") -> list[tuple[int, str | None]]:
        """(version, error or None) for one version (or a label's) or for every version the
        model's policy serves."""
        name = self._default_name(name)
        if label:
            version = self.label_version(name, label)
        versions = self._index(name, version).get(name)
        source = self._source(name)
        if not versions or source is None:
            raise ModelNotFound(f"Could not find any versions of model {name}")
        if version and source.policy.kind != "latest":
            aspired = self._aspired(source, [version] if version in versions else [])
        else:
            aspired = self._aspired(source, versions)
        if version:
            aspired = [(v, e) for v, e in aspired if v == version]
            if not aspired:
                raise ModelNotFound(f"Could not find version {version} of model {name}")
        return [(v, e.error) for v, e in aspired]

    def preload(self) -> dict[str, list[tuple[int, str | None]]]:
        """Validate every version the policies serve now (and unload the others); returns their
        status."""
        out = {}
        for name in self.refresh():
            try:
                out[name] = self.status(name)
            except ModelNotFound:       # removed meanwhile
                pass
        return out

    def loaded(self) -> list[ServedModel]:
        """The servable versions held in memory."""
        with self._lock:
            return [e.model for e in self._versions.values() if e.model is not None]
