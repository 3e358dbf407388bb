"""kvlink's Azure Functions: triggers only. Each one hands its input to ``kvlink_core``."""

from __future__ import annotations

from typing import Any

import azure.functions as func

from kvlink_core import app as kvlink

app = func.FunctionApp(http_auth_level=func.AuthLevel.FUNCTION)


@app.event_grid_trigger(arg_name="event")
def on_secret_event(event: func.EventGridEvent) -> None:
    """A Key Vault event: bring every group linked to the vault in step for that secret.

    Malformed and unwanted events are logged and acknowledged; a transient failure
    raises, so Event Grid redelivers (its retry policy, then dead-lettering).
    """
    kvlink.handle_event_grid(_envelope(event))


def _envelope(event: Any) -> dict[str, Any]:
    # The binding hands over a CloudEvent object when the subscription uses that schema.
    if isinstance(event, func.CloudEvent):
        return {
            "specversion": event.specversion,
            "id": event.id,
            "source": event.source,
            "type": event.type,
            "subject": event.subject,
            "time": event.time,
            "data": event.get_json(),
        }
    return {
        "id": event.id,
        "topic": event.topic,
        "subject": event.subject,
        "eventType": event.event_type,
        "eventTime": event.event_time,
        "data": event.get_json(),
        "dataVersion": event.data_version,
    }
