"""Networks as plain nn.Module code: no I/O, no tracking, no orchestration."""
