"""One module per command of contract section 1, each with `async def run(settings, args) -> int`."""
