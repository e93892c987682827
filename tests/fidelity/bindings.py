"""One binding per fidelity model: every concrete field, one group per model, readable by all."""

from django.db.models import Model

from pgbinding import WebsocketBinding
from pgbinding.permissions import AllowAny

from . import models


class _FidelityBinding(WebsocketBinding):
    """Abstract base (no model): ``fields = ["__all__"]`` and the group ``fidelity-<model>``."""

    fields = ["__all__"]
    permission_classes = [AllowAny]

    @classmethod
    def group_names(cls, instance: Model) -> list[str]:
        return [group_for(cls.model)]


def group_for(model: type[Model]) -> str:
    return f"fidelity-{model._meta.model_name}"


class TargetBinding(_FidelityBinding):
    model = models.Target
    stream = "fidelity-target"


class CodeBinding(_FidelityBinding):
    model = models.Code
    stream = "fidelity-code"


class NumbersBinding(_FidelityBinding):
    model = models.Numbers
    stream = "fidelity-numbers"


class TextsBinding(_FidelityBinding):
    model = models.Texts
    stream = "fidelity-texts"


class TimesBinding(_FidelityBinding):
    model = models.Times
    stream = "fidelity-times"


class BlobBinding(_FidelityBinding):
    model = models.Blob
    stream = "fidelity-blob"


class DocumentsBinding(_FidelityBinding):
    model = models.Documents
    stream = "fidelity-documents"


class RelationsBinding(_FidelityBinding):
    model = models.Relations
    stream = "fidelity-relations"


class ComputedBinding(_FidelityBinding):
    model = models.Computed
    stream = "fidelity-computed"


class ArraysBinding(_FidelityBinding):
    model = models.Arrays
    stream = "fidelity-arrays"


class RangesBinding(_FidelityBinding):
    model = models.Ranges
    stream = "fidelity-ranges"
