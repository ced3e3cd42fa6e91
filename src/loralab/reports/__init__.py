"""Pictures of results: a run's training curves (``curves.png``) and a table's HTML report."""
