from django.apps import AppConfig


class BenchAppConfig(AppConfig):
    name = "bench.site.benchapp"
    label = "benchapp"

    def ready(self) -> None:
        # The peers hook Django signals: every process that writes must load them, as a web
        # process would by importing its consumers. BENCH_PEERS limits which (see peers.py).
        from . import peers

        if peers.DCRF and "dcrf" in peers.enabled():
            peers.dcrf_consumer()
