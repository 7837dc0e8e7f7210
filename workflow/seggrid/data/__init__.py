"""Stage 1, data: dataset layouts and checks, fingerprint, splits, preprocessing and geometry, the demo and scale datasets."""
