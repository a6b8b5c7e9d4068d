"""The pure core of openbuda: ids, states, transitions, events and validation. No I/O here."""
