"""One module per command of contract section 1: `async def run(settings, args) -> int`."""
