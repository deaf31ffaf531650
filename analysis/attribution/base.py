"""The contract every attribution method follows (Captum style): one ``attribute(...)`` and a cost."""
from __future__ import annotations

from adapters.base import AttributionSpec
from analysis.attribution.results import AttributionResult
from analysis.attribution.targets import Target
from core.errors import InputError


class Method:
    name: str = ""
    defaults: dict = {}

    def attribute(self, adapter, spec: AttributionSpec, target: Target, **params) -> AttributionResult:
        raise NotImplementedError

    def forward_equivalents(self, spec: AttributionSpec, **params) -> float:
        """Cost in units of one forward pass (a backward counts about 2)."""
        return 1.0

    def params(self, **params) -> dict:
        unknown = set(params) - set(self.defaults)
        if unknown:
            raise InputError(f"{self.name}: unknown parameter(s) {', '.join(sorted(unknown))}; "
                             f"known: {', '.join(sorted(self.defaults)) or 'none'}")
        return {**self.defaults, **{k: v for k, v in params.items() if v is not None}}
