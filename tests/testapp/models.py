import uuid

from django.conf import settings
from django.db import models


class Item(models.Model):
    """A row with one field of each kind the serializer must handle."""

    name = models.CharField(max_length=100)
    value = models.IntegerField(default=0)
    status = models.CharField(max_length=10, default="open")
    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL
    )
    price = models.DecimalField(max_digits=12, decimal_places=4, default=0)
    due = models.DateTimeField(null=True, blank=True)
    day = models.DateField(null=True, blank=True)
    uid = models.UUIDField(default=uuid.uuid4)
    extra = models.JSONField(default=dict, blank=True)
    body = models.TextField(blank=True, default="")
    secret = models.CharField(max_length=50, blank=True, default="")

    def __str__(self) -> str:
        return self.name


class Note(models.Model):
    """Bound only by some tests (for makemigrations); no binding in bindings.py."""

    text = models.TextField()


class Counter(models.Model):
    """A table for stress tests: many writers, random rollbacks."""

    key = models.CharField(max_length=20, unique=True)
    n = models.IntegerField(default=0)
