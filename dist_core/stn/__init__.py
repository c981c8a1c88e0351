"""Self-Tuning Networks (MacKay et al., ICLR 2019, arXiv 1903.03088): a learned best response ŵ_φ(λ)."""
