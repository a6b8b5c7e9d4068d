"""The routers of ``/v1``: each translates HTTP to service calls and records to JSON."""
