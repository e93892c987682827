"""``migrate`` whose "models have changes not yet reflected" check knows about bindings."""

from django.core.management.commands.migrate import Command as DjangoCommand

from pgbinding.operations import MigrationAutodetector


class Command(DjangoCommand):
    autodetector = MigrationAutodetector
