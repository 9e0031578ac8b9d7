"""Prefect flows: thin wiring around the stages in `tasks/`."""
