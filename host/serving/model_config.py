"""TF Serving's model config file (`softnpu serve --model-config-file F`): which models are
served, from where, which of their versions, and the versions' labels.

The file is TF Serving's `ModelServerConfig` in protobuf text format (or, for a file named
`*.json`, the same message as JSON), parsed with TF Serving's own message:

    model_config_list {
      config {
        name: "resnet"
        base_path: "/models/resnet"          # holds VERSION/model.npu; relative: to the file's folder
        model_platform: "softnpu"            # or "tensorflow" (configs written for TF Serving), or none
        model_version_policy { latest { num_versions: 2 } }  # or all {}, or specific { versions: 3 }
        version_labels { key: "stable" value: 1 }
        version_labels { key: "canary" value: 3 }
      }
    }

A model without a policy serves its latest version, as in TF Serving.  What softnpu adds:
`latest { num_versions: N }` counts the N newest *good* versions (a version whose file does not
validate is reported and skipped, never takes the model down), and a label may point at a version
that is not loaded yet (it is refused per request, NOT_FOUND, until it is).  Everything that is
wrong with a file is a ConfigError that names the file, the model and the field; nothing is
applied unless all of it checks out.
"""

from __future__ import annotations

import dataclasses
import logging
import re
from collections.abc import Mapping
from pathlib import Path

__all__ = ["ConfigError", "ModelSource", "VersionPolicy", "ALL_VERSIONS", "load_model_config",
           "parse_model_config"]

log = logging.getLogger("softnpu.serve")

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")      # as host/serving/repository.py
_LABEL = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")     # a path segment of the REST API
PLATFORMS = ("", "softnpu", "tensorflow")


class ConfigError(ValueError):
    """A model config file that cannot be applied (the message names the file and the field)."""


@dataclasses.dataclass(frozen=True)
class VersionPolicy:
    """Which versions of a model are servable: the newest `num_versions` good ones (`latest`),
    every one (`all`), or the listed ones (`specific`)."""

    kind: str = "latest"
    num_versions: int = 1
    versions: frozenset[int] = frozenset()

    def __post_init__(self):
        if self.kind not in ("latest", "all", "specific"):
            raise ValueError(f"version policy kind must be latest, all or specific, got {self.kind!r}")

    def allows(self, version: int) -> bool:
        """Whether the policy can ever serve `version` (`latest` decides on the listing too)."""
        return self.kind != "specific" or version in self.versions

    def __str__(self) -> str:
        if self.kind == "latest":
            return f"latest {self.num_versions}"
        if self.kind == "specific":
            return "specific " + ", ".join(map(str, sorted(self.versions)))
        return "all"


ALL_VERSIONS = VersionPolicy("all")


@dataclasses.dataclass(frozen=True)
class ModelSource:
    """One served model: its name, the folder of its versions, its policy and labels."""

    name: str
    base_path: Path
    policy: VersionPolicy = VersionPolicy()
    labels: Mapping[str, int] = dataclasses.field(default_factory=dict)


def load_model_config(path: str | Path) -> dict[str, ModelSource]:
    """The models of a config file, by name.  Raises ConfigError."""
    path = Path(path)
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"model config file {path}: cannot read it ({exc})") from None
    return parse_model_config(text, path)


def parse_model_config(text: str, path: str | Path) -> dict[str, ModelSource]:
    """The models of a config file's text (`path`: where it was read; relative base paths are
    resolved against its folder; `*.json` is read as JSON).  Raises ConfigError."""
    from google.protobuf import json_format, text_format
    from tensorflow_serving.config import model_server_config_pb2

    path = Path(path)
    config = model_server_config_pb2.ModelServerConfig()
    try:
        if path.suffix.lower() == ".json":
            json_format.Parse(text, config)
        else:
            text_format.Parse(text, config)
    except (text_format.ParseError, json_format.ParseError) as exc:
        raise ConfigError(f"model config file {path}: {exc}") from None
    which = config.WhichOneof("config")
    if which != "model_config_list":
        raise ConfigError(f"model config file {path}: " + (
            "no model_config_list (an empty file serves nothing: write `model_config_list {}` for that)"
            if which is None else f"{which} is not supported; use model_config_list"))
    models: dict[str, ModelSource] = {}
    for index, entry in enumerate(config.model_config_list.config):
        where = f"model config file {path}, config {index + 1}" + (f" ({entry.name!r})" if entry.name else "")
        source = _source(entry, path.parent, where)
        if source.name in models:
            raise ConfigError(f"{where}: model {source.name!r} is configured twice")
        models[source.name] = source
    return models


def _source(entry, folder: Path, where: str) -> ModelSource:
    if not _NAME.match(entry.name):
        raise ConfigError(f"{where}: name {entry.name!r}: use letters, digits, '.', '_' and '-' (at most "
                          "128, not starting with a punctuation mark)")
    if not entry.base_path:
        raise ConfigError(f"{where}: base_path is required (the folder of VERSION/model.npu)")
    base = Path(entry.base_path).expanduser()
    base = base if base.is_absolute() else folder / base
    if not base.is_dir():
        raise ConfigError(f"{where}: base_path {entry.base_path!r} is not a folder")
    if entry.model_platform not in PLATFORMS:
        raise ConfigError(f"{where}: model_platform {entry.model_platform!r}: softnpu serves "
                          "'softnpu' bundles ('tensorflow' is accepted for configs written for TF Serving)")
    if entry.HasField("logging_config"):
        log.warning("%s: logging_config is ignored (softnpu's access log is the logger softnpu.access)",
                    where)
    policy = _policy(entry.model_version_policy, where)
    labels = dict(entry.version_labels)
    for label, version in labels.items():
        if not _LABEL.match(label):
            raise ConfigError(f"{where}: version label {label!r}: use letters, digits, '.', '_' and '-'")
        if version <= 0:
            raise ConfigError(f"{where}: version label {label!r} -> {version}: versions are positive")
        if not policy.allows(version):
            raise ConfigError(f"{where}: version label {label!r} -> {version}: the version policy "
                              f"({policy}) never serves version {version}")
    return ModelSource(entry.name, base, policy, labels)


def _policy(message, where: str) -> VersionPolicy:
    kind = message.WhichOneof("policy_choice")
    if kind is None or kind == "latest":
        # TF Serving: no policy is latest 1, and num_versions 0 counts as 1
        return VersionPolicy("latest", max(1, message.latest.num_versions) if kind else 1)
    if kind == "all":
        return ALL_VERSIONS
    versions = list(message.specific.versions)
    if not versions:
        raise ConfigError(f"{where}: model_version_policy specific {{}} lists no versions")
    bad = [v for v in versions if v <= 0]
    if bad:
        raise ConfigError(f"{where}: model_version_policy specific: versions are positive, got {bad}")
    return VersionPolicy("specific", versions=frozenset(versions))
