"""Apache Airflow provider for integration-sender: operator, deferrable trigger, sensor, hook.

``from integration_sender_airflow import SendBatchOperator`` (or from ``.operators``),
``BatchSensor`` (``.sensors``), ``BatchCompleteTrigger`` (``.triggers``),
``IntegrationSenderHook`` (``.hooks``). This package talks to the daemon's control server
over HTTP only; it never imports the sender. Importing it loads nothing of Airflow until one
of those names is used: ``get_provider_info`` is what Airflow's ProvidersManager reads
through the ``apache_airflow_provider`` entry point.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .hooks import IntegrationSenderHook
    from .operators import SendBatchOperator
    from .sensors import BatchSensor
    from .triggers import BatchCompleteTrigger

__all__ = [
    "BatchCompleteTrigger",
    "BatchSensor",
    "IntegrationSenderHook",
    "SendBatchOperator",
    "__version__",
    "get_provider_info",
]

__version__ = "0.1.0"

_INTEGRATION = "Integration Sender"
_LAZY = {
    "BatchCompleteTrigger": "triggers",
    "BatchSensor": "sensors",
    "IntegrationSenderHook": "hooks",
    "SendBatchOperator": "operators",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def get_provider_info() -> dict[str, Any]:
    """The provider's metadata (Airflow's provider_info schema), incl. its connection type."""
    modules = "integration_sender_airflow"
    return {
        "package-name": "airflow-provider-integration-sender",
        "name": _INTEGRATION,
        "description": "Deliver prediction batches with integration-sender and wait for their "
        "reconciliation: SendBatchOperator, BatchSensor, BatchCompleteTrigger.",
        "versions": [__version__],
        "integrations": [{"integration-name": _INTEGRATION, "tags": ["service"]}],
        "operators": [
            {"integration-name": _INTEGRATION, "python-modules": [f"{modules}.operators"]}
        ],
        "sensors": [{"integration-name": _INTEGRATION, "python-modules": [f"{modules}.sensors"]}],
        "hooks": [{"integration-name": _INTEGRATION, "python-modules": [f"{modules}.hooks"]}],
        "triggers": [{"integration-name": _INTEGRATION, "python-modules": [f"{modules}.triggers"]}],
        "connection-types": [
            {
                "connection-type": "integration_sender",
                "hook-class-name": f"{modules}.hooks.IntegrationSenderHook",
                "hook-name": _INTEGRATION,
            }
        ],
    }
