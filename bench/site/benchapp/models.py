from django.db import models


class Tick(models.Model):
    """What every benchmark writes: ``value`` identifies one write (its commit time is kept by
    the writer), ``note`` pads the row like a typical small model."""

    value = models.BigIntegerField(default=0)
    note = models.CharField(max_length=200, default="")
