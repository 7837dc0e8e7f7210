"""Stage 3, inference: sliding-window prediction, the quantised maps and labels it writes, ensembling, postprocessing."""
