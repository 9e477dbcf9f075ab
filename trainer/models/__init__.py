"""Model zoo (backbones by name) and checkpoints."""
