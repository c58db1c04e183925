"""`signal-worker replay`: recorded signals and ticks through other configs, in memory."""
