"""Loading a FunASR model through FunASR: a local model directory, or a hub name with a fast offline check.

Four roles, each named by its own setting (``ROLES``): the streaming Paraformer (``PARASTREAM_MODEL``) and the 2pass
models, the FSMN VAD (``PARASTREAM_VAD_MODEL``), the offline Paraformer (``PARASTREAM_OFFLINE_MODEL``) and the
CT-Transformer punctuation model (``PARASTREAM_PUNC_MODEL``). A load error names the setting of the role it loads.

A local directory is loaded without touching the network. A hub name is looked up in the local ModelScope cache
first; when it is not there and the hub cannot be reached, loading fails within seconds with a message that says
what to do, instead of FunASR's unrelated "model ... is not registered" after ~22 s of retries.
"""

from __future__ import annotations

import os
import socket
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import funasr

# Files a local model directory needs (the real hub snapshot also has configuration.json and am.mvn).
# FunASR also accepts tokens.txt in place of tokens.json.
_REQUIRED_FILES = ("config.yaml", "model.pt", "tokens.json")

_HUB_PROBE_TIMEOUT_S = 3.0
_DEFAULT_HUB_ENDPOINT = "https://modelscope.cn"  # modelscope_hub's DEFAULT_ENDPOINT


class ModelLoadError(RuntimeError):
    """The model named by ``PARASTREAM_MODEL`` (or a 2pass model's setting) could not be loaded; the message says
    what to do."""


@dataclass(frozen=True)
class Role:
    """What one kind of model is for: the setting that names it, the files its directory needs, what a test build
    of it is called (``engine.model.factory``), and how to recognise it once FunASR has built it."""

    name: str
    setting: str
    required_files: tuple[str, ...]
    model_classes: tuple[str, ...]  # FunASR's registered class names; () = checked by _check_streaming_model
    test_kind: str


ROLES: dict[str, Role] = {
    role.name: role
    for role in (
        Role("streaming", "PARASTREAM_MODEL", _REQUIRED_FILES, (), "tiny-random"),
        # FSMN-VAD has no vocabulary; its directory holds config.yaml, model.pt and am.mvn.
        Role("vad", "PARASTREAM_VAD_MODEL", ("config.yaml", "model.pt", "am.mvn"), ("FsmnVADStreaming",), "vad"),
        # The 2pass server's corrected sentence: SeACo-Paraformer (hotwords, timestamps) or plain Paraformer.
        Role(
            "offline", "PARASTREAM_OFFLINE_MODEL", _REQUIRED_FILES,
            ("SeacoParaformer", "Paraformer", "BiCifParaformer"), "offline-tiny-random",
        ),
        # The real-time server's punctuation: the vad_realtime CT-Transformer, which carries a cache across sentences.
        Role("punc", "PARASTREAM_PUNC_MODEL", _REQUIRED_FILES, ("CTTransformerStreaming",), "punc-tiny-random"),
    )
}


def load_automodel(spec: str, device: str = "cpu", ncpu: int = 1, role: str = "streaming") -> Any:
    """Load ``spec`` (a local model directory or a FunASR/ModelScope model name) as a ``funasr.AutoModel``.

    ``role`` (a key of ``ROLES``) says what the model is for: it decides which setting an error names, which files a
    local directory needs, and which FunASR class the loaded model must be.

    * A local directory is loaded without touching the network.
    * A name (``paraformer-zh-streaming`` or ``iic/speech_paraformer-...``) is first looked up in the
      local ModelScope cache; a complete cached snapshot is loaded from disk directly (no network, no
      update check). Otherwise the hub is probed with a short TCP connect: when it is unreachable this
      raises :class:`ModelLoadError` within a second or two, instead of the ~22 s that ModelScope spends
      retrying before FunASR swallows its error and fails with an unrelated "model ... is not
      registered" message. When the hub is reachable the normal FunASR download path runs.

    Dither is forced to 0 after loading (see :func:`_disable_dither`).
    """
    if role not in ROLES:
        raise ValueError(f"unknown model role {role!r}; expected one of {', '.join(ROLES)}")
    the_role = ROLES[role]
    path = Path(spec).expanduser()
    if path.exists():
        return _load_local_dir(path, device, ncpu, the_role)
    if _looks_like_path(spec):
        raise ModelLoadError(
            f"{the_role.setting}={spec!r}: local model directory {str(path)!r} does not exist. "
            f"{_hint(the_role)}"
        )
    return _load_hub_name(spec, device, ncpu, the_role)


_OFFLINE_HINT = (
    "Point PARASTREAM_MODEL at a local model directory containing config.yaml, model.pt and tokens.json "
    "(for example a downloaded copy of paraformer-zh-streaming), or build a test model with "
    "`parastream make-model tiny-random DIR` and set PARASTREAM_MODEL=DIR."
)


def _hint(role: Role) -> str:
    """What to do instead, for ``role``: the streaming role's text is the historical ``_OFFLINE_HINT``."""
    if role.name == "streaming":
        return _OFFLINE_HINT
    return (
        f"Point {role.setting} at a local model directory containing {', '.join(role.required_files)}, "
        f"or build a test model with engine.model.factory.ensure_model({role.test_kind!r}, DIR) and set "
        f"{role.setting} to the directory it returns."
    )


def find_cached_hub_model(name: str, role: str = "streaming") -> Path | None:
    """The local ModelScope cache directory of hub model ``name`` if a complete snapshot is there."""
    model_id = _hub_model_id(name)
    try:
        from modelscope.hub.snapshot_download import snapshot_download

        # local_files_only: answers from the cache in milliseconds, never opens a connection.
        cached = Path(snapshot_download(model_id, local_files_only=True))
    except Exception:  # not cached, or modelscope missing/broken: either way there is no usable copy
        return None
    return cached if _is_model_dir(cached, ROLES[role]) else None


def hub_reachable(timeout: float = _HUB_PROBE_TIMEOUT_S) -> bool:
    """Whether a TCP connection to the ModelScope endpoint (or the configured HTTPS proxy) opens in time.

    Run in a daemon thread so a hanging DNS lookup cannot exceed ``timeout`` either.
    """
    host, port = _probe_target()
    result: list[bool] = []

    def probe() -> None:
        try:
            with socket.create_connection((host, port), timeout=timeout):
                result.append(True)
        except OSError:
            result.append(False)

    thread = threading.Thread(target=probe, name="parastream-hub-probe", daemon=True)
    thread.start()
    thread.join(timeout + 0.5)
    return bool(result and result[0])


def _probe_target() -> tuple[str, int]:
    # Through a proxy, the proxy is what must answer; otherwise the endpoint modelscope_hub would use.
    candidates = ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy", "MODELSCOPE_ENDPOINT", "MODELSCOPE_DOMAIN")
    endpoint = next((os.environ[k] for k in candidates if os.environ.get(k)), _DEFAULT_HUB_ENDPOINT)
    if "://" not in endpoint:
        endpoint = "https://" + endpoint
    url = urlparse(endpoint)
    default_port = 80 if url.scheme == "http" else 443
    return url.hostname or "modelscope.cn", url.port or default_port


def _looks_like_path(spec: str) -> bool:
    """Heuristic: hub names are ``alias`` or ``owner/name``; anything else path-shaped is a directory."""
    return (
        os.path.isabs(spec)
        or spec.startswith((".", "~"))
        or spec.endswith(("/", os.sep))
        or spec.count("/") >= 2
        or os.sep != "/" and os.sep in spec
    )


def _hub_model_id(name: str) -> str:
    from funasr.download.name_maps_from_hub import name_maps_ms

    return str(name_maps_ms.get(name, name))


def _missing_files(path: Path, role: Role = ROLES["streaming"]) -> list[str]:
    missing = [f for f in role.required_files if not (path / f).is_file()]
    if "tokens.json" in missing and (path / "tokens.txt").is_file():
        missing.remove("tokens.json")
    return missing


def _is_model_dir(path: Path, role: Role = ROLES["streaming"]) -> bool:
    return path.is_dir() and not _missing_files(path, role)


def _load_local_dir(path: Path, device: str, ncpu: int, role: Role = ROLES["streaming"]) -> Any:
    if not path.is_dir():
        raise ModelLoadError(
            f"{role.setting}={str(path)!r} is a file, not a model directory. {_hint(role)}"
        )
    missing = _missing_files(path, role)
    if missing:
        raise ModelLoadError(
            f"{role.setting}={str(path)!r} is not a complete model directory: "
            f"missing {', '.join(missing)}. {_hint(role)}"
        )
    return _build(str(path), device, ncpu, what=f"local model directory {str(path)!r}", role=role)


def _load_hub_name(name: str, device: str, ncpu: int, role: Role = ROLES["streaming"]) -> Any:
    cached = find_cached_hub_model(name, role.name)
    if cached is not None:
        return _build(str(cached), device, ncpu, what=f"cached hub model {name!r} at {str(cached)!r}", role=role)
    if not hub_reachable():
        host, port = _probe_target()
        raise ModelLoadError(
            f"{role.setting}={name!r} is not an existing local directory, so it was taken as a ModelScope "
            f"hub model name, but the hub could not be reached "
            f"(no connection to {host}:{port} within {_HUB_PROBE_TIMEOUT_S:.0f} s) and the model is "
            f"not in the local ModelScope cache. {_hint(role)}"
        )
    return _build(name, device, ncpu, what=f"hub model {name!r}", role=role)


def _build(model: str, device: str, ncpu: int, what: str, role: Role = ROLES["streaming"]) -> Any:
    try:
        automodel = funasr.AutoModel(
            model=model,
            device=device,
            ncpu=ncpu,
            disable_update=True,  # skips a version check against the package index
            disable_pbar=True,
            log_level="ERROR",
        )
    except Exception as exc:  # FunASR reports a failed download as "model ... is not registered"
        raise ModelLoadError(
            f"{role.setting}: could not load {what}: {type(exc).__name__}: {str(exc)[:500]}. "
            f"{_hint(role)}"
        ) from exc
    if role.name == "streaming":
        _check_streaming_model(automodel, what)
        _disable_dither(automodel)
    else:
        _check_role_model(automodel, what, role)
        _disable_dither_everywhere(automodel)
    return automodel


def _check_role_model(automodel: Any, what: str, role: Role) -> None:
    name = type(automodel.model).__name__
    if name not in role.model_classes:
        raise ModelLoadError(
            f"{role.setting}: {what} loaded as {name}, which is not a {role.name} model "
            f"(expected {' or '.join(role.model_classes)})."
        )


def _disable_dither_everywhere(automodel: Any) -> None:
    """Dither 0 on every frontend object FunASR may use: the one in ``automodel.kwargs`` and the one in its baseline
    snapshot (``_base_kwargs_map``, a deep copy taken at construction, which ``generate()`` restores before each
    call). The two are different objects; both must be deterministic, for the adapters (which use the baseline's, as
    ``generate()`` does) and for the reference loops. A punctuation model has no frontend."""
    dicts = [automodel.kwargs, getattr(automodel, "_base_kwargs_map", {}).get("kwargs") or {}]
    for kwargs in dicts:
        frontend = kwargs.get("frontend")
        if frontend is not None and hasattr(frontend, "dither"):
            frontend.dither = 0.0
        if isinstance(kwargs.get("frontend_conf"), dict) and "dither" in kwargs["frontend_conf"]:
            kwargs["frontend_conf"]["dither"] = 0.0


def _check_streaming_model(automodel: Any, what: str) -> None:
    model = automodel.model
    streaming = hasattr(model, "init_cache") and hasattr(model, "generate_chunk")
    if not streaming or automodel.kwargs.get("frontend") is None:
        raise ModelLoadError(
            f"PARASTREAM_MODEL: {what} loaded as {type(model).__name__}, which is not a streaming Paraformer "
            "(expected ParaformerStreaming with a WavFrontendOnline frontend)."
        )


def _disable_dither(automodel: Any) -> None:
    """Set the frontend's fbank dither to 0.

    WavFrontendOnline defaults to dither 1.0 (random noise added to every fbank), so the same audio gives
    different tokens on each run. The frontend reads ``self.dither`` on every call, so setting the
    attribute takes effect at once; the object is shared by ``automodel.kwargs`` and FunASR's baseline
    snapshot of it, so ``generate()`` (the reference loop) sees dither 0 too.
    """
    frontend = automodel.kwargs["frontend"]
    frontend.dither = 0.0
    if isinstance(automodel.kwargs.get("frontend_conf"), dict):
        automodel.kwargs["frontend_conf"]["dither"] = 0.0
