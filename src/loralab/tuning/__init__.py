"""Per-method learning-rate selection (``make tune-lr``): a declared proxy, one rule, TUNED config entries."""
