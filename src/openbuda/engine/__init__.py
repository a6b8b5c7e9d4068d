"""The engine: the organizer (workers, leases, reaper), the durable agent loop, and the
in-process broadcaster."""
