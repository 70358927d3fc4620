"""The console's websocket: routing and the consumer (see consumer.py)."""
