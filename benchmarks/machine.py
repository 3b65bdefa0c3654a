"""The machine a benchmark ran on (the header of every results table): `trainer.machine`, for the scripts here."""
from trainer.machine import device_name, source_commit  # noqa: F401
