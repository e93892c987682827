"""``makemigrations`` that also writes pgbinding's capture-trigger operations."""

from django.core.management.commands.makemigrations import Command as DjangoCommand

from pgbinding.operations import MigrationAutodetector


class Command(DjangoCommand):
    autodetector = MigrationAutodetector
