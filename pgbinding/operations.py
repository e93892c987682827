"""The import path migration files use: ``pgbinding.operations.InstallBindingTrigger`` and
its siblings are written into every project's migrations, so this path stays for good. The
operations live in :mod:`pgbinding.capture.operations`."""

from .capture.autodetect import MigrationAutodetector
from .capture.logical_ops import InstallLogicalCapture, RemoveLogicalCapture
from .capture.operations import (
    InstallBindingTrigger,
    RemoveBindingTrigger,
    RewriteCapturedChanges,
)

__all__ = [
    "InstallBindingTrigger",
    "InstallLogicalCapture",
    "MigrationAutodetector",
    "RemoveBindingTrigger",
    "RemoveLogicalCapture",
    "RewriteCapturedChanges",
]
