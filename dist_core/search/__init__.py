"""Ray Tune drives outer searches: sweeps over any job file, with per-round reporting."""
