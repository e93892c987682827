"""Delivery: the change log read in order, the listener that leads and retries, and the
messages it sends through the channel layer (dispatch); the listener inside an ASGI server."""
