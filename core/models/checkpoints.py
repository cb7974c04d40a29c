"""Weight files: writing classifier checkpoints as safetensors, and reading weight files without pickle.

A DCD Studio checkpoint is a safetensors file whose metadata holds ``format`` (:data:`CHECKPOINT_FORMAT`),
the architecture, the class count, the data config and the class names; its tensors are the state dict.

Reading (:func:`read_weights`) accepts safetensors files, and PyTorch files that load with
``torch.load(weights_only=True)``: plain state dicts, the common wrappers (``state_dict``, ``model``,
``model_state_dict``; ``module.`` prefixes are dropped by :func:`state_dict_of`) and the checkpoints earlier
versions wrote. A file that needs pickle to load could run code when loaded, so it is refused with
:class:`UnsafeCheckpointError`, which says how to convert it; only :func:`allow_pickle` (the command line's
``--trust-checkpoint``, never the app) lets such a file load.
"""

from __future__ import annotations

import json
import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from core.data.model_input import DataConfig
from core.models.config import ModelError
from core.store.files import atomic_path

CHECKPOINT_FORMAT = "dcd-studio-classifier-v1"
CHECKPOINT_SUFFIX = ".safetensors"
_STATE_DICT_KEYS = ("state_dict", "model_state_dict", "model")
_trust_pickle = False


class UnsafeCheckpointError(ModelError):
    """A weights file needs pickle to load (it could run code); the message says how to convert it."""


def allow_pickle(trust: bool) -> None:
    """Let :func:`read_weights` fall back to pickle in this process (``--trust-checkpoint``). Never call it
    on behalf of the app: a file anyone could name there would run code."""
    global _trust_pickle
    _trust_pickle = bool(trust)


def _conversion_hint(path: Path) -> str:
    return (f"{path} needs Python's pickle to load, and loading a pickle can run code. Convert it once, in an "
            f"environment you trust: `python -c \"import torch, safetensors.torch as s; "
            f"o = torch.load('{path}', weights_only=False); o = o.get('state_dict', o); "
            f"s.save_file({{k: v.contiguous() for k, v in o.items()}}, '{path.with_suffix('.safetensors')}')\"` "
            f"and pass the .safetensors file; or, if you trust this file, run the job from the command line with "
            f"--trust-checkpoint.")


def _read_safetensors(path: Path) -> dict[str, Any]:
    from safetensors import SafetensorError, safe_open
    from safetensors.torch import load_file

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
        tensors = load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError) as exc:
        raise ModelError(f"{path} is not a readable safetensors file: {exc}") from exc
    if meta.get("format") != CHECKPOINT_FORMAT:
        return tensors
    try:
        return {"format": CHECKPOINT_FORMAT, "arch": meta["arch"], "num_classes": int(meta["num_classes"]),
                "data_config": json.loads(meta["data_config"]), "class_names": json.loads(meta["class_names"]),
                "state_dict": tensors}
    except (KeyError, ValueError) as exc:
        raise ModelError(f"{path} is a damaged DCD Studio checkpoint (metadata {exc!s})") from exc


def read_weights(path: str | Path) -> Any:
    """The object stored in a weights file (a checkpoint dict, a state dict ...), on the CPU, without pickle.

    Raises :class:`UnsafeCheckpointError` for a file that needs pickle, :class:`ModelError` for a missing,
    empty or corrupted one.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise ModelError(f"weights file {path} does not exist")
    if path.suffix == CHECKPOINT_SUFFIX:
        return _read_safetensors(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if "Weights only load failed" not in str(exc):
            raise ModelError(f"{path} is not a readable weights file: {str(exc).splitlines()[0]}") from exc
        if not _trust_pickle:
            raise UnsafeCheckpointError(_conversion_hint(path)) from None
        return torch.load(path, map_location="cpu", weights_only=False)
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as exc:
        first = (str(exc).splitlines() or [type(exc).__name__])[0]
        raise ModelError(f"{path} is not a readable weights file (empty, truncated or another format): "
                         f"{first}") from exc


def is_classifier_checkpoint(obj: Any) -> bool:
    """True if ``obj`` (read by :func:`read_weights`) is a checkpoint written by :func:`save_checkpoint`
    (or by an earlier version, as a torch file)."""
    return isinstance(obj, dict) and obj.get("format") == CHECKPOINT_FORMAT


def state_dict_of(obj: Any) -> dict[str, Any] | None:
    """The state dict inside ``obj`` (itself, or under ``state_dict`` / ``model_state_dict`` / ``model``),
    keys without a ``module.`` prefix; None if there is none."""
    state = obj
    if isinstance(obj, dict):
        for key in _STATE_DICT_KEYS:
            if isinstance(obj.get(key), dict):
                state = obj[key]
                break
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        tensors = {k: v for k, v in state.items() if isinstance(v, torch.Tensor)} if isinstance(state, dict) else {}
        if not tensors:
            return None
        state = tensors
    return {str(k).removeprefix("module."): v for k, v in state.items()}


def save_checkpoint(model: nn.Module, path: Path, *, arch: str, num_classes: int,
                    data_config: DataConfig, class_names: list[str] | None = None) -> Path:
    """Write a classifier checkpoint as safetensors (atomically: a temporary file, then a rename); the file
    is named ``path`` with the ``.safetensors`` suffix, which is returned."""
    from safetensors.torch import save_file

    path = Path(path).with_suffix(CHECKPOINT_SUFFIX)
    state = {k: v.detach().to("cpu").clone().contiguous() for k, v in model.state_dict().items()}
    meta = {"format": CHECKPOINT_FORMAT, "arch": arch, "num_classes": str(int(num_classes)),
            "data_config": json.dumps(data_config.to_dict()), "class_names": json.dumps(class_names)}
    with atomic_path(path) as tmp:
        save_file(state, str(tmp), metadata=meta)
    return path


def weights_include_head(model: nn.Module, weights: str | Path | Any, num_classes: int) -> bool:
    """True if ``weights`` (a file, or what :func:`read_weights` returned for it) hold a trained classifier
    head with ``num_classes`` outputs for ``model``.

    A DCD Studio checkpoint always does; a timm/ImageNet backbone file whose head has another class count
    does not (its head was dropped, the model must be trained on this workspace's classes).
    """
    obj = read_weights(weights) if isinstance(weights, (str, Path)) else weights
    if is_classifier_checkpoint(obj):
        return True
    state = state_dict_of(obj) or {}
    head = (getattr(model, "pretrained_cfg", None) or {}).get("classifier") or "linear"
    heads = head if isinstance(head, (list, tuple)) else [head]
    for key, value in state.items():
        if any(key == f"{h}.weight" for h in heads) and hasattr(value, "shape"):
            return int(value.shape[0]) == num_classes
    return False
