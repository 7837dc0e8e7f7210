"""Stage 5, outputs: the paper's tables, figures, and `seggrid status`."""
