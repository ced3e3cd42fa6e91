"""Figure runs that drive the recipe: training runs of the embedded task behind `make figures` (claims g)."""
