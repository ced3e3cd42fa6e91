"""The learning-rate proxy's data split and score (``proxy:`` in a run's config, set by ``tune=lr_proxy``).

A proxy run trains on the first ``proxy.train_examples`` training examples and is scored by its mean loss on
the last ``proxy.heldout_examples`` — examples of the training distribution it never trained on, so the lr it
selects is not chosen on any evaluation set. The two ranges never overlap.
"""
from __future__ import annotations

from typing import Any, Iterator, Mapping, Sequence, overload

from loralab.errors import ConfigError


class Window(Sequence[Any]):
    """``data[start:stop]`` as a view: lazily decoded data sets (images) are not decoded to be split."""

    def __init__(self, data: Sequence[Any], start: int, stop: int) -> None:
        self.data, self.start, self.stop = data, start, stop

    def __len__(self) -> int:
        return self.stop - self.start

    @overload
    def __getitem__(self, index: int) -> Any: ...

    @overload
    def __getitem__(self, index: slice) -> list[Any]: ...

    def __getitem__(self, index: int | slice) -> Any:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(index)
        return self.data[self.start + index]

    def __iter__(self) -> Iterator[Any]:
        for i in range(len(self)):
            yield self[i]


def proxy_split(examples: Sequence[Any], proxy: Mapping[str, Any] | None,
                dataset: str = "?") -> tuple[Sequence[Any], Sequence[Any] | None]:
    """``(train, heldout)``: the whole set and None for an ordinary run; the proxy's two ranges otherwise."""
    if not proxy:
        return examples, None
    n_train, n_heldout = proxy.get("train_examples"), proxy.get("heldout_examples")
    for key, value in (("train_examples", n_train), ("heldout_examples", n_heldout)):
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise ConfigError(f"proxy.{key}={value!r} is invalid: a positive number of examples (tune_lr.{key})")
    assert isinstance(n_train, int) and isinstance(n_heldout, int)
    total = len(examples)
    if n_train + n_heldout > total:
        raise ConfigError(f"proxy.train_examples + proxy.heldout_examples = {n_train} + {n_heldout} exceeds the "
                          f"{total} training examples of dataset {dataset}; lower tune_lr.train_examples or "
                          f"tune_lr.heldout_examples")
    return Window(examples, 0, n_train), Window(examples, total - n_heldout, total)


def heldout_loss(trainer: Any, heldout: Sequence[Any]) -> float:
    """Mean loss of the trained model on ``heldout`` (the Trainer's own evaluation loop: same collator,
    precision and device placement as training)."""
    metrics = trainer.evaluate(eval_dataset=heldout, metric_key_prefix="heldout")
    return float(metrics["heldout_loss"])
