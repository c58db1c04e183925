"""Development tools that are not part of the worker: the mutation run and its report."""
