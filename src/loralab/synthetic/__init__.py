"""Synthetic worlds the project builds itself: the embedded models are pretrained in them and the embedded tasks
are drawn from them (arithmetic word problems, scikit-learn's bundled digits)."""
