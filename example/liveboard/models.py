from django.conf import settings
from django.db import models


class Item(models.Model):
    class Status(models.TextChoices):
        OPEN = "open", "open"
        DONE = "done", "done"

    name = models.CharField(max_length=100)
    value = models.IntegerField(default=0)
    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL
    )
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.OPEN)

    def __str__(self) -> str:
        return self.name
