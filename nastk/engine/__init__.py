"""Training loops: search (weights + architecture) and retrain (a discrete network), resumable and DDP-ready."""
