"""Generative bilevel optimisation (arXiv 2502.08808): entropy-regularised fine-tuning weight."""
