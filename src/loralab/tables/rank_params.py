"""Exact LoRA trainable-parameter counts from model dimensions (no weights needed).

A LoRA adapter on one ``d_out × d_in`` linear layer trains ``B`` (d_out × r) and ``A`` (r × d_in), i.e.
``r · (d_in + d_out)`` parameters. For a decoder like LLaMA the per-layer shapes follow from the model config
(``hidden_size``, ``intermediate_size``, ``num_attention_heads``, ``num_key_value_heads``, optional
``head_dim``, ``num_hidden_layers``), so a ``transformers`` config object (e.g. ``LlamaConfig(...)``) or a
plain dict is enough.

``article_table`` reproduces the layout of the rank-vs-parameters table of the "rank article" reference
(``results/paper/rank_params.yaml``): one attention matrix, one MLP matrix, and the chosen targets over all
layers, at several ranks, plus the parameters per unit of rank and the largest rank under a budget.
"""
from __future__ import annotations

from typing import Any, Iterable, Mapping

from loralab.errors import ConfigError

# PEFT module names of a LLaMA-style decoder layer; short aliases are accepted too.
LLAMA_MODULES: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
_ALIASES: dict[str, str] = {name.split("_")[0]: name for name in LLAMA_MODULES}

Shapes = Mapping[str, tuple[int, int]]  # module name -> (d_in, d_out)
_CONFIG_FIELDS = ("hidden_size", "intermediate_size", "num_attention_heads", "num_hidden_layers")


def lora_params(d_in: int, d_out: int, r: int) -> int:
    """Trainable parameters of LoRA on one ``d_out × d_in`` matrix at rank ``r``: ``r · (d_in + d_out)``."""
    for name, value in (("d_in", d_in), ("d_out", d_out), ("r", r)):
        if isinstance(value, bool) or not isinstance(value, int) or value < (0 if name == "r" else 1):
            raise ConfigError(f"lora_params: {name} must be an integer >= {0 if name == 'r' else 1}, got {value!r}")
    return r * (d_in + d_out)


def _field(config: Any, name: str, default: Any = None) -> Any:
    if isinstance(config, Mapping):
        return config.get(name, default)
    return getattr(config, name, default)


def _is_config(obj: Any) -> bool:
    return _field(obj, "hidden_size") is not None


def layer_shapes_from_config(config: Any) -> dict[str, tuple[int, int]]:
    """``(d_in, d_out)`` of every linear module of one LLaMA-style layer, from a config object or dict."""
    missing = [f for f in _CONFIG_FIELDS if _field(config, f) is None]
    if missing:
        raise ConfigError(f"model config lacks {missing}; needed: {list(_CONFIG_FIELDS)} "
                          "(num_key_value_heads and head_dim optional)")
    hidden = int(_field(config, "hidden_size"))
    inter = int(_field(config, "intermediate_size"))
    heads = int(_field(config, "num_attention_heads"))
    kv_heads = int(_field(config, "num_key_value_heads") or heads)
    head_dim = _field(config, "head_dim")
    if head_dim is None:
        if hidden % heads:
            raise ConfigError(f"hidden_size {hidden} is not divisible by num_attention_heads {heads}; set head_dim")
        head_dim = hidden // heads
    head_dim = int(head_dim)
    return {
        "q_proj": (hidden, heads * head_dim),
        "k_proj": (hidden, kv_heads * head_dim),
        "v_proj": (hidden, kv_heads * head_dim),
        "o_proj": (heads * head_dim, hidden),
        "gate_proj": (hidden, inter),
        "up_proj": (hidden, inter),
        "down_proj": (inter, hidden),
    }


def _resolve(layer_shapes: Any, n_layers: int | None) -> tuple[Shapes, int]:
    if _is_config(layer_shapes):
        shapes = layer_shapes_from_config(layer_shapes)
        layers = n_layers if n_layers is not None else int(_field(layer_shapes, "num_hidden_layers"))
    elif isinstance(layer_shapes, Mapping):
        shapes = dict(layer_shapes)
        if n_layers is None:
            raise ConfigError("n_layers is required when layer_shapes is a mapping of shapes (not a model config)")
        layers = n_layers
    else:
        raise ConfigError(f"layer_shapes must be a model config (object or dict with hidden_size, ...) or a mapping "
                          f"module -> (d_in, d_out), got {type(layer_shapes).__name__}")
    if isinstance(layers, bool) or not isinstance(layers, int) or layers < 1:
        raise ConfigError(f"n_layers must be a positive integer, got {layers!r}")
    return shapes, layers


def _targets(shapes: Shapes, targets: Iterable[str]) -> list[str]:
    if isinstance(targets, str):
        targets = [targets]
    names = [_ALIASES.get(t, t) for t in targets]
    if not names:
        raise ConfigError(f"targets is empty; choose from {sorted(shapes)}")
    unknown = [t for t in names if t not in shapes]
    if unknown:
        raise ConfigError(f"unknown target module(s) {unknown}; valid: {sorted(shapes)} "
                          f"(or their short forms {sorted(_ALIASES)})")
    if len(set(names)) != len(names):
        raise ConfigError(f"targets name a module twice: {list(targets)}")
    return names


def params_per_rank(layer_shapes: Any, targets: Iterable[str], n_layers: int | None = None) -> int:
    """LoRA parameters per unit of rank for the targets over ``n_layers`` layers: ``Σ (d_in + d_out) · n_layers``."""
    shapes, layers = _resolve(layer_shapes, n_layers)
    return layers * sum(lora_params(*shapes[t], 1) for t in _targets(shapes, targets))


def model_lora_params(layer_shapes: Any, targets: Iterable[str], n_layers: int | None = None, r: int = 8) -> int:
    """Total LoRA trainable parameters with ``targets`` adapted in each of ``n_layers`` layers at rank ``r``.

    ``layer_shapes`` is a transformers config (object or dict; ``n_layers`` then defaults to
    ``num_hidden_layers``) or a mapping ``module -> (d_in, d_out)`` (``n_layers`` required).
    """
    shapes, layers = _resolve(layer_shapes, n_layers)
    return layers * sum(lora_params(*shapes[t], r) for t in _targets(shapes, targets))


def max_rank_for_budget(budget: int, layer_shapes: Any, targets: Iterable[str], n_layers: int | None = None) -> int:
    """Largest rank whose parameter count stays within ``budget`` (0 when not even rank 1 fits)."""
    if isinstance(budget, bool) or not isinstance(budget, int) or budget < 0:
        raise ConfigError(f"budget must be a non-negative integer number of parameters, got {budget!r}")
    return budget // params_per_rank(layer_shapes, targets, n_layers)


def budget_label(budget: int) -> str:
    """``10_000_000 -> '10M'``, ``500_000 -> '500K'``, else the plain number."""
    for div, suffix in ((1_000_000_000, "B"), (1_000_000, "M"), (1_000, "K")):
        if budget >= div and budget % div == 0:
            return f"{budget // div}{suffix}"
    return str(budget)


def article_columns(ranks: Iterable[int] = (4, 8, 16, 64), budget: int = 10_000_000) -> list[str]:
    """Column names of :func:`article_table` (the same names as in ``rank_params.yaml``)."""
    return [f"r={r}" for r in ranks] + ["params_per_rank", f"max_rank_budget_{budget_label(budget)}"]


def targets_scope(targets: Iterable[str]) -> str:
    """Row name of the all-layers row, e.g. ``('q_proj', 'v_proj') -> 'q_v_all_layers'``."""
    names = [_ALIASES.get(t, t) for t in ([targets] if isinstance(targets, str) else targets)]
    return "_".join(n.removesuffix("_proj") for n in names) + "_all_layers"


def article_table(
    config: Any,
    ranks: Iterable[int] = (4, 8, 16, 64),
    targets: Iterable[str] = ("q_proj", "v_proj"),
    budget: int = 10_000_000,
) -> dict[str, dict[str, int]]:
    """``{row: {column: count}}`` for one attention matrix (q_proj shape), one MLP matrix (up_proj shape) and
    ``targets`` over all ``num_hidden_layers`` layers, in the layout of ``results/paper/rank_params.yaml``."""
    ranks = list(ranks)
    targets = list([targets] if isinstance(targets, str) else targets)
    shapes, layers = _resolve(config, None)
    cols = article_columns(ranks, budget)
    rows: dict[str, tuple[Shapes, list[str], int]] = {
        "attention_matrix": ({"m": shapes["q_proj"]}, ["m"], 1),
        "mlp_matrix": ({"m": shapes["up_proj"]}, ["m"], 1),
        targets_scope(targets): (shapes, targets, layers),
    }
    table: dict[str, dict[str, int]] = {}
    for name, (row_shapes, row_targets, n) in rows.items():
        values = [model_lora_params(row_shapes, row_targets, n, r) for r in ranks]
        values += [params_per_rank(row_shapes, row_targets, n), max_rank_for_budget(budget, row_shapes, row_targets, n)]
        table[name] = dict(zip(cols, values))
    return table


def render_markdown(table: Mapping[str, Mapping[str, int | None]], title: str | None = None) -> str:
    """A Markdown table (thousands separators; missing values as '—') of a ``{row: {column: value}}`` dict."""
    columns: list[str] = []
    for values in table.values():
        columns += [c for c in values if c not in columns]
    lines = [f"**{title}**", ""] if title else []
    lines.append("| | " + " | ".join(columns) + " |")
    lines.append("|---|" + "---:|" * len(columns))
    for name, values in table.items():
        cells = ["—" if values.get(c) is None else f"{values[c]:,}" for c in columns]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def render_rank_table(
    config: Any,
    ranks: Iterable[int] = (4, 8, 16, 64),
    targets: Iterable[str] = ("q_proj", "v_proj"),
    budget: int = 10_000_000,
) -> str:
    """Markdown version of :func:`article_table` with the model dimensions in the title."""
    shapes = layer_shapes_from_config(config)
    d_in, d_out = shapes["q_proj"]
    mlp_in, mlp_out = shapes["up_proj"]
    title = (f"LoRA trainable parameters: attention {d_out}×{d_in}, MLP {mlp_out}×{mlp_in}, "
             f"{'+'.join(targets_scope(targets).split('_')[:-2])} on {_field(config, 'num_hidden_layers')} layers, "
             f"budget {budget_label(budget)}")
    return render_markdown(article_table(config, ranks, targets, budget), title)
