from django.apps import AppConfig


class FidelityConfig(AppConfig):
    name = "tests.fidelity"
    label = "fidelity"
