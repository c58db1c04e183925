"""What a signal or a tick does to the agents: read and written through `worker.ports` only."""
