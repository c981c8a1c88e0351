"""BL-JUST: joint unsupervised + supervised training as a penalty-based bilevel problem (arXiv 2401.06980)."""
