"""Training loops: search and retrain, resumable and DDP-ready."""
