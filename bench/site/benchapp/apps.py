from django.apps import AppConfig


class BenchAppConfig(AppConfig):
    name = "bench.site.benchapp"
    label = "benchapp"

    def ready(self) -> None:
        # The peers hook Django signals: every process that writes must load them, as a web
        # process would by importing its consumers.
        from . import peers

        if peers.DCRF:
            peers.dcrf_consumer()
