"""Where a model's weights come from: a local directory, a project-built embedded model, or the hub.

Order: ``model.path`` (a local copy, e.g. a pre-downloaded hub snapshot) → ``model.builder`` (the embedded
models the project pretrains itself) → ``model.hub_id`` (downloaded into / read from the HF cache, which
honours ``HF_HUB_OFFLINE``). A failure names the hub id and the override that points at a local copy.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from loralab.instantiate import build
from omegaconf import DictConfig
from transformers import (
    AutoModelForCausalLM,
    AutoModelForImageClassification,
    AutoModelForSequenceClassification,
    AutoTokenizer,
)

from loralab.errors import ConfigError, ModelUnavailableError

AUTO_CLASSES = {
    "causal_lm": AutoModelForCausalLM,
    "image_classification": AutoModelForImageClassification,
    "sequence_classification": AutoModelForSequenceClassification,
}
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_source(model_cfg: DictConfig) -> str:
    """The path or hub id ``from_pretrained`` will read."""
    if model_cfg.get("path"):
        path = Path(str(model_cfg.path)).expanduser()
        if not path.is_dir():
            raise ModelUnavailableError(
                f"model.path={model_cfg.path} is not a directory; point it at a local copy of the weights "
                f"(a directory with config.json), or unset it to use hub id {model_cfg.get('hub_id')!r}"
            )
        return str(path)
    if model_cfg.get("builder"):
        return str(build(model_cfg.builder))
    if model_cfg.get("hub_id"):
        return str(model_cfg.hub_id)
    raise ConfigError(f"model {model_cfg.name}: set one of model.path, model.builder or model.hub_id")


def model_provenance(model_cfg: DictConfig) -> dict[str, Any]:
    """Where a run's weights came from, for its provenance record.

    From the hub: the hub id, the revision asked for, and the commit it resolved to in the local hub cache
    (``refs/<revision>`` → ``snapshots/<commit>``), so ``revision: main`` still names the exact snapshot used.
    From ``model.path``: the directory, and the commit when it is a snapshot of a hub cache. From
    ``model.builder``: the builder (an embedded model the project builds and caches itself).
    """
    revision = str(model_cfg.get("revision") or "main")
    if model_cfg.get("path"):
        path = Path(str(model_cfg.path)).expanduser().resolve()
        in_cache = path.parent.name == "snapshots" and path.parent.parent.name.startswith("models--")
        return {"source": "path", "path": str(path), "commit": path.name if in_cache else None}
    if model_cfg.get("builder"):
        return {"source": "builder", "builder": str(model_cfg.builder.get("_target_"))}
    hub_id = str(model_cfg.get("hub_id"))
    return {"source": "hub", "hub_id": hub_id, "revision": revision, "commit": cached_snapshot_commit(hub_id, revision)}


def cached_snapshot_commit(hub_id: str, revision: str = "main") -> str | None:
    """The commit ``revision`` of ``hub_id`` resolves to in the local hub cache (None if it is not cached)."""
    from huggingface_hub import try_to_load_from_cache

    cached = try_to_load_from_cache(hub_id, "config.json", revision=revision)
    if not isinstance(cached, str):  # None (not cached) or the "known not to exist" marker
        return None
    snapshot = Path(cached).parent
    return snapshot.name if snapshot.parent.name == "snapshots" else None


def load_model(model_cfg: DictConfig, num_labels: int | None = None) -> tuple[torch.nn.Module, Any]:
    """The pretrained model and its tokenizer (None for vision models)."""
    kind = model_cfg.kind
    if kind not in AUTO_CLASSES:
        raise ConfigError(f"model.kind={kind!r}; valid kinds: {sorted(AUTO_CLASSES)}")
    dtype_name = model_cfg.get("dtype", "float32")
    if dtype_name not in DTYPES:
        raise ConfigError(f"model.dtype={dtype_name!r}; valid dtypes: {sorted(DTYPES)}")
    source = resolve_source(model_cfg)
    kwargs: dict[str, Any] = {"dtype": DTYPES[dtype_name], "revision": model_cfg.get("revision") or "main"}
    if num_labels is not None and kind != "causal_lm":
        kwargs.update(num_labels=num_labels, ignore_mismatched_sizes=True)
    try:
        model = AUTO_CLASSES[kind].from_pretrained(source, **kwargs)
        tokenizer = AutoTokenizer.from_pretrained(source) if kind != "image_classification" else None
    except (OSError, ValueError) as err:
        if model_cfg.get("path") or model_cfg.get("builder"):
            raise ModelUnavailableError(f"could not load model {model_cfg.name!r} from {source}: {err}") from err
        raise ModelUnavailableError(
            f"could not fetch model {model_cfg.name!r} (hub id {source!r}): no local copy and no reachable hub "
            f"({type(err).__name__}). Download it where the hub is reachable (e.g. `hf download {source}`) and "
            f"point the config at the directory: model.path=/local/dir"
        ) from err
    if tokenizer is not None and tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token  # Llama-3 and Gemma ship without a pad token
    return model, tokenizer
