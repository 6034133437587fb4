"""What runs a flow body: the engine seam, the current run's context, futures, attempts, signals, the run logger."""
