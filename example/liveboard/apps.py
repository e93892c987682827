from django.apps import AppConfig


class LiveboardConfig(AppConfig):
    name = "liveboard"
    default_auto_field = "django.db.models.BigAutoField"
