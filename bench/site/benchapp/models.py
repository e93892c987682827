from django.conf import settings
from django.db import models


class Tick(models.Model):
    """What every benchmark writes: ``value`` identifies one write (its commit time is kept by
    the writer), ``note`` pads the row like a typical small model."""

    value = models.BigIntegerField(default=0)
    note = models.CharField(max_length=200, default="")


class Owned(models.Model):
    """What bench/fanout writes: one row per user, seen only by its ``owner`` under the per-user
    read rule (``OwnedBinding``)."""

    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+")
    value = models.BigIntegerField(default=0)
