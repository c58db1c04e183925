"""The running service: the composition (`app`), the health and metrics server, logging."""
