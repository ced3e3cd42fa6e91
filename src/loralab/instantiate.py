"""``hydra.utils.instantiate`` that lets the project's own errors through unwrapped.

Hydra wraps anything a ``_target_`` raises in an InstantiationException; a user should see the
project's one-line message (which names the bad value), not Hydra's wrapper around it.
"""
from __future__ import annotations

from typing import Any

from hydra.errors import InstantiationException
from hydra.utils import instantiate

from loralab.errors import LoralabError


def build(node: Any, **kwargs: Any) -> Any:
    try:
        return instantiate(node, **kwargs)
    except InstantiationException as err:
        cause = err.__cause__
        while cause is not None and not isinstance(cause, LoralabError):
            cause = cause.__cause__
        if cause is not None:
            raise cause from None
        raise
