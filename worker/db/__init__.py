"""SQL and row mapping, one module per aggregate. The only package that holds SQL."""
