"""Pure logic: networks, losses, encodings, metrics, statistics, transforms, the phantom (no I/O, no tracking)."""
