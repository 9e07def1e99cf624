"""The engine: one process per accelerator that owns the model and its dynamic batcher, fed by every front end."""
