"""Cross-validation folds and the evaluation set, fixed by a seed."""

from __future__ import annotations

import numpy as np

from seggrid.errors import SeggridError


def make_splits(training: list[str], validation: list[str], folds: int, seed: int,
                holdout_fraction: float = 0.2) -> dict:
    """K folds over the training cases; the evaluation set is the dataset's validation list,
    or (when it has none) a seeded hold-out of ``holdout_fraction`` of the training cases."""
    rng = np.random.default_rng(seed)
    cases = sorted(training)
    evaluation = sorted(validation)
    if not evaluation:
        n_hold = max(1, int(round(len(cases) * holdout_fraction)))
        held = set(rng.choice(cases, size=n_hold, replace=False).tolist())
        evaluation = sorted(held)
        cases = [c for c in cases if c not in held]
    if len(cases) < folds:
        raise SeggridError(f"split: {len(cases)} training cases cannot make {folds} folds")
    order = rng.permutation(len(cases))
    chunks = np.array_split(order, folds)
    out = []
    for k in range(folds):
        val = sorted(cases[i] for i in chunks[k])
        out.append({"train": sorted(c for c in cases if c not in val), "val": val})
    return {"seed": seed, "folds": out, "evaluation": evaluation}
