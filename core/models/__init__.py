"""Models: building timm models, checkpoints, the workspace's model catalog, inference, training, evaluation."""
