"""Fine-tuning methods. Each lives in its own module and is selected by ``conf/method/<name>.yaml``'s ``_target_``."""
from loralab.methods.base import Method, count_trainable, linear_module_names, matching_linears

__all__ = ["Method", "count_trainable", "linear_module_names", "matching_linears"]
