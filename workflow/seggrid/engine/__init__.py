"""Stage 2, engine: planning, the network, losses, recipe registries, sampling and augmentation, the training loop, multi-GPU launch and spatial partitioning."""
