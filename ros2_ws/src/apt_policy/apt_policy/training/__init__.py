"""apt-train: the two APT training stages, the dataset interface, checkpoints and the CPU demo."""
