"""The Functions host's half of the conversation with the Python worker, played in-process.

In Azure the host starts the worker, streams ``StreamingMessage``s to it over gRPC and the
worker hands each one to ``azure_functions_runtime`` (the v2-model runtime that Python 3.13+
apps pin in requirements.txt). This module plays the host *and* the thin proxy in front of
the runtime: it builds the same protobuf messages (compiled from the vendored, unmodified
``FunctionRpc.proto``), sends each through a serialize/parse round trip as the gRPC channel
would, and calls the runtime's own entry points -- ``worker_init_request``,
``functions_metadata_request``, ``function_load_request``, ``invocation_request`` -- wrapped
the way the proxy worker wraps them (``WorkerRequest(name, request, properties)``;
Azure/azure-functions-python-worker ``workers/proxy_worker/dispatcher.py``, commit 0320cd79).

How each trigger's payload is put on the wire follows the host's converter
(Azure/azure-functions-host ``src/WebJobs.Script.Grpc/MessageExtensions/GrpcMessageConversionExtensions.cs``,
commit 09adf43e, ``ToRpc``/``ToRpcHttp``): a JObject becomes ``TypedData.json``, a ``string[]``
``collection_string`` (empty entries dropped unless the worker asks otherwise), a ``long[]``
``collection_sint64``; HTTP header names are lower-cased, empty query values are dropped,
route parameters come from the route template, and the body is sent as raw bytes (the
runtime declares ``RawHttpBodyBytes`` and ``RpcHttpBodyOnly``) and only when there is one.
A queue message's journey is in :meth:`WorkerHost.queue_message` and :meth:`WorkerHost.deliver`.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import json
import re
import sys
import types
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

PROTO_DIR = Path(__file__).resolve().parent / "proto"
PROTO_FILES = ("FunctionRpc.proto", "identity/ClaimsIdentityRpc.proto", "shared/NullableTypes.proto")
HOST_VERSION = "4.1046.100.0"  # any 4.x host; the runtime only logs it
ROUTE_PREFIX = "api"  # host.json's extensions.http.routePrefix default; kvlink's host.json keeps it
PUBLIC_HOST = "func-kvlink.azurewebsites.net"


def compile_protos(out: Path) -> types.ModuleType:
    """``FunctionRpc_pb2`` and ``NullableTypes_pb2`` from the vendored .proto files, as one namespace.

    The runtime reads every message class from the ``protos`` object the proxy hands it
    (``protos.InvocationResponse``, ``protos.NullableString``, ...), so both generated modules
    are merged the way the proxy worker's ``protos/__init__.py`` re-exports them.
    """
    import grpc_tools
    from grpc_tools import protoc

    includes = Path(grpc_tools.__file__).resolve().parent / "_proto"  # google/protobuf/duration.proto
    args = ["protoc", f"-I{PROTO_DIR}", f"-I{includes}", f"--python_out={out}", *PROTO_FILES]
    if protoc.main(args) != 0:
        raise RuntimeError(f"protoc failed on {PROTO_DIR}: {' '.join(args)}")
    sys.path.insert(0, str(out))
    namespace = types.ModuleType("function_rpc_protos")
    for module_name in ("FunctionRpc_pb2", "shared.NullableTypes_pb2"):
        module = importlib.import_module(module_name)
        for name in dir(module):
            if not name.startswith("_"):
                setattr(namespace, name, getattr(module, name))
    return namespace


@dataclass
class WorkerRequest:
    """What the proxy worker passes the runtime: the parsed StreamingMessage and its properties."""

    name: str
    request: Any
    properties: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class HttpAnswer:
    """An HTTP function's answer as the host turns it into a response."""

    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


class WorkerHost:
    """One worker process's lifetime: init, indexing, loads, then invocations."""

    def __init__(self, protos: types.ModuleType, app_dir: Path) -> None:
        self.protos = protos
        self.app_dir = app_dir
        self.loop = asyncio.new_event_loop()
        self.init_response: Any = None
        self.metadata_response: Any = None
        self.load_responses: dict[str, Any] = {}
        self.functions: dict[str, Any] = {}  # name -> RpcFunctionMetadata
        self._runtime: Any = None

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self) -> WorkerHost:
        import azure_functions_runtime as runtime

        self._runtime = runtime
        p = self.protos
        # The proxy worker puts the app's directory on sys.path before the runtime imports it.
        if str(self.app_dir) not in sys.path:
            sys.path.insert(0, str(self.app_dir))
        runtime.start_threadpool_executor()
        self.init_response = self._send(
            runtime.worker_init_request,
            "WorkerInitRequest",
            p.StreamingMessage(
                worker_init_request=p.WorkerInitRequest(
                    host_version=HOST_VERSION,
                    function_app_directory=str(self.app_dir),
                    worker_directory=str(self.app_dir),
                )
            ),
            properties={"protos": p, "host": "127.0.0.1"},
        )
        self.metadata_response = self._send(
            runtime.functions_metadata_request,
            "WorkerMetadataRequest",
            p.StreamingMessage(
                functions_metadata_request=p.FunctionsMetadataRequest(function_app_directory=str(self.app_dir))
            ),
        )
        for metadata in self.metadata_response.function_metadata_results:
            self.functions[metadata.name] = metadata
            self.load_responses[metadata.name] = self._send(
                runtime.function_load_request,
                "FunctionLoadRequest",
                p.StreamingMessage(
                    function_load_request=p.FunctionLoadRequest(function_id=metadata.function_id, metadata=metadata)
                ),
            )
        return self

    def close(self) -> None:
        if self._runtime is not None:
            self._runtime.stop_threadpool_executor()
        self.loop.close()

    def _send(self, handler: Any, name: str, message: Any, properties: dict[str, Any] | None = None) -> Any:
        # Over gRPC both directions are serialized: a message that cannot be put on the wire fails here too.
        wire = self.protos.StreamingMessage.FromString(message.SerializeToString())
        response = self.loop.run_until_complete(handler(WorkerRequest(name, wire, properties or {})))
        return type(response).FromString(response.SerializeToString())

    # -- metadata ----------------------------------------------------------------------------
    def bindings(self, function: str) -> list[dict[str, Any]]:
        """The function's bindings as the worker reported them to the host (raw function.json entries)."""
        return [json.loads(raw) for raw in self.functions[function].raw_bindings]

    def trigger(self, function: str) -> dict[str, Any]:
        (trigger,) = [b for b in self.bindings(function) if b["type"].endswith("Trigger")]
        return trigger

    # -- invocations -------------------------------------------------------------------------
    def invoke(self, function: str, inputs: Iterable[Any], trigger_metadata: Mapping[str, Any] | None = None) -> Any:
        """One InvocationRequest; returns the worker's InvocationResponse."""
        p = self.protos
        invocation_id = str(uuid.uuid4())
        response = self._send(
            self._runtime.invocation_request,
            "FunctionInvocationRequest",
            p.StreamingMessage(
                invocation_request=p.InvocationRequest(
                    invocation_id=invocation_id,
                    function_id=self.functions[function].function_id,
                    input_data=list(inputs),
                    trigger_metadata=dict(trigger_metadata or {}),
                    trace_context=p.RpcTraceContext(trace_parent=f"00-{uuid.uuid4().hex}-{uuid.uuid4().hex[:16]}-01"),
                )
            ),
        )
        assert response.invocation_id == invocation_id
        return response

    def succeeded(self, response: Any) -> bool:
        return bool(response.result.status == self.protos.StatusResult.Success)

    def event_grid(self, function: str, event: Mapping[str, Any]) -> Any:
        """One Event Grid delivery: the host hands each array element over as a JSON object."""
        p = self.protos
        name = self.trigger(function)["name"]
        return self.invoke(function, [p.ParameterBinding(name=name, data=p.TypedData(json=json.dumps(event)))])

    def event_hub_batch(self, function: str, bodies: list[bytes], *, partition: str = "0") -> Any:
        """One cardinality-many batch: bodies as ``string[]``, per-event properties as parallel arrays.

        Binding data per Azure/azure-sdk-for-net
        ``sdk/eventhub/Microsoft.Azure.WebJobs.Extensions.EventHubs/src/Triggers/EventHubTriggerBindingStrategy.cs``
        (``AddBindingData`` for ``EventData[]``; commit 3eb90cb4).
        """
        p = self.protos
        name = self.trigger(function)["name"]
        now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f0Z")
        system = [
            {
                "x-opt-sequence-number": 1000 + i,
                "x-opt-offset": str(4096 * i),
                "x-opt-enqueued-time": now,
                "SequenceNumber": 1000 + i,
                "Offset": str(4096 * i),
                "PartitionKey": None,
                "EnqueuedTimeUtc": now,
            }
            for i in range(len(bodies))
        ]
        metadata = {
            "PartitionContext": p.TypedData(
                json=json.dumps(
                    {
                        "FullyQualifiedNamespace": "evhns-kvlink.servicebus.windows.net",
                        "EventHubName": "kv-logs",
                        "ConsumerGroup": "$Default",
                        "PartitionId": partition,
                    }
                )
            ),
            "SystemPropertiesArray": p.TypedData(json=json.dumps(system)),
            "PropertiesArray": p.TypedData(json=json.dumps([{} for _ in bodies])),
            "EnqueuedTimeUtcArray": p.TypedData(json=json.dumps([now for _ in bodies])),
            "SequenceNumberArray": p.TypedData(
                collection_sint64=p.CollectionSInt64(sint64=[s["SequenceNumber"] for s in system])
            ),
            "OffsetArray": p.TypedData(collection_string=p.CollectionString(string=[s["Offset"] for s in system])),
            # string[] of nulls: the host drops null entries, so the collection arrives empty.
            "PartitionKeyArray": p.TypedData(collection_string=p.CollectionString(string=[])),
        }
        texts = [body.decode("utf-8") for body in bodies if body]  # empty entries are dropped by the host
        data = p.TypedData(collection_string=p.CollectionString(string=texts))
        return self.invoke(function, [p.ParameterBinding(name=name, data=data)], metadata)

    def timer(self, function: str, *, past_due: bool) -> Any:
        """A timer tick: the host serializes its TimerInfo object as JSON."""
        p = self.protos
        name = self.trigger(function)["name"]
        now = datetime.now(UTC)
        info = {
            "Schedule": {"AdjustForDST": True},
            "ScheduleStatus": {
                "Last": "0001-01-01T00:00:00",
                "Next": now.strftime("%Y-%m-%dT%H:%M:%S+00:00"),
                "LastUpdated": "0001-01-01T00:00:00",
            },
            "IsPastDue": past_due,
        }
        return self.invoke(function, [p.ParameterBinding(name=name, data=p.TypedData(json=json.dumps(info)))])

    def queue_message(self, function: str, message: Any) -> Any:
        """One Storage queue message (``azure.storage.queue.QueueMessage``, bytes body) as the host sends it.

        Sources (SDK = Azure/azure-sdk-for-net ``sdk/storage/Microsoft.Azure.WebJobs.Extensions.Storage.*``;
        HOST = Azure/azure-functions-host, commit 89dc438d):

        - The extension reads with ``QueuesOptions.MessageEncoding``, base64 by default (SDK
          ``Common/src/Shared/Queues/QueuesOptions.cs``, commit 662cab9e): the body arrives decoded, so
          receive ``message`` with ``BinaryBase64DecodePolicy``.
        - A trigger with no ``dataType`` is bound as ``string``: HOST ``src/WebJobs.Script/Binding/
          GeneralScriptBindingProvider.cs`` (``ParseDataType``: ``object``), then Azure/azure-webjobs-sdk
          ``src/Microsoft.Azure.WebJobs.Host/Extensions/JobHostMetadataProvider.cs`` (``GetDefaultType``: a
          trigger's ``object`` is ``String``; commit f79ea0bf). The body becomes that string by a strict UTF-8
          decode (SDK ``Queues/src/Triggers/StorageQueueMessageToStringConverter.cs``, commit c188d0c6, and
          ``Common/src/Shared/BinaryDataExtensions.cs``, commit 37593e65): a body that is not UTF-8 fails in
          the host and never reaches the worker (ValueError here).
        - Trigger metadata: QueueTrigger, DequeueCount (long), ExpirationTime, InsertionTime, NextVisibleTime
          (DateTimeOffset), Id, PopReceipt (SDK ``Queues/src/Triggers/QueueTriggerBinding.cs``
          ``CreateBindingData``, commit 724e7448), plus the top-level non-array properties of a JSON body
          (HOST ``src/WebJobs.Script/Utility.cs`` ``ApplyBindingData``, from ``WorkerFunctionInvoker.TransformInput``).
        - On the wire (HOST ``GrpcMessageConversionExtensions.ToRpc``): a string as ``string``, a JObject as
          ``json``, anything else -- the long, the DateTimeOffsets -- through ``ToRpcDefault``: Json.NET's JSON.
        """
        p = self.protos
        text = bytes(message.content).decode("utf-8")  # strict, as the converter's UTF8Encoding(false, true)
        binding_data: dict[str, Any] = {
            "QueueTrigger": p.TypedData(string=text),
            "DequeueCount": p.TypedData(json=json.dumps(int(message.dequeue_count))),
            "ExpirationTime": p.TypedData(json=json.dumps(_newtonsoft_date(message.expires_on))),
            "Id": p.TypedData(string=message.id),
            "InsertionTime": p.TypedData(json=json.dumps(_newtonsoft_date(message.inserted_on))),
            "NextVisibleTime": p.TypedData(json=json.dumps(_newtonsoft_date(message.next_visible_on))),
            "PopReceipt": p.TypedData(string=message.pop_receipt),
        }
        for key, value in _json_properties(text).items():
            for existing in [k for k in binding_data if k.lower() == key.lower()]:  # OrdinalIgnoreCase keys
                del binding_data[existing]
            is_object = isinstance(value, dict)
            binding_data[key] = p.TypedData(json=json.dumps(value)) if is_object else p.TypedData(string=value)
        name = self.trigger(function)["name"]
        return self.invoke(function, [p.ParameterBinding(name=name, data=p.TypedData(string=text))], binding_data)

    def deliver(self, function: str, queue: Any, message: Any, *, max_dequeue_count: int = 5) -> Any:
        """What the queue listener does around one invocation: a success deletes the message; a failure
        releases it (visible again after host.json's ``visibilityTimeout``, 0 by default) or, at
        ``maxDequeueCount`` (5 by default), moves it to ``<queue>-poison``. Returns the worker's response.

        Azure/azure-sdk-for-net ``sdk/storage/Microsoft.Azure.WebJobs.Extensions.Storage.Common/src/Shared/
        Queues/QueueProcessor.cs`` (``CompleteProcessingMessageAsync``, commit 326ee7c0); the defaults in
        ``QueuesOptions.cs`` there (commit 662cab9e).
        """
        response = self.queue_message(function, message)
        if self.succeeded(response):
            queue.delete_message(message.id, message.pop_receipt)
        elif message.dequeue_count >= max_dequeue_count:
            from azure.core.exceptions import ResourceExistsError
            from azure.storage.queue import BinaryBase64EncodePolicy, QueueClient

            poison = QueueClient.from_queue_url(
                f"{queue.url}-poison",
                credential=queue.credential,
                message_encode_policy=BinaryBase64EncodePolicy(),
            )
            with poison:
                with contextlib.suppress(ResourceExistsError):
                    poison.create_queue()
                poison.send_message(bytes(message.content))
            queue.delete_message(message.id, message.pop_receipt)
        else:
            queue.update_message(message.id, message.pop_receipt, visibility_timeout=0)
        return response

    def http(
        self,
        method: str,
        path: str,
        *,
        query: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
        body: bytes | None = None,
    ) -> tuple[str, HttpAnswer]:
        """A request to ``/api/...``, routed by the host to the function whose route and methods match.

        Returns the function's name and its answer; a request no route takes raises LookupError
        (the host answers 404 without calling the worker).
        """
        p = self.protos
        function, params = self.route(method, path)
        query = dict(query or {})
        url = f"https://{PUBLIC_HOST}/{ROUTE_PREFIX}/{path}"
        if query:
            url += "?" + "&".join(f"{k}={v}" for k, v in query.items())
        request = p.RpcHttp(
            method=method.upper(),
            url=url,
            headers={k.lower(): v for k, v in {"Host": PUBLIC_HOST, **(headers or {})}.items()},
            query={k: v for k, v in query.items() if v},
            params=params,
        )
        if body:
            request.body.CopyFrom(p.TypedData(bytes=body))
        trigger_name = self.trigger(function)["name"]
        response = self.invoke(function, [p.ParameterBinding(name=trigger_name, data=p.TypedData(http=request))])
        if not self.succeeded(response):
            # The host answers 500 for a failed HTTP invocation; kvlink's routes never let one escape.
            raise AssertionError(f"{function} failed: {response.result.exception.message}")
        http = response.return_value.http
        body = http.body.bytes or http.body.string.encode()
        return function, HttpAnswer(int(http.status_code), dict(http.headers), body)

    def route(self, method: str, path: str) -> tuple[str, dict[str, str]]:
        """The function and route parameters the host picks for ``method /api/path``."""
        segments = [s for s in path.split("?", maxsplit=1)[0].split("/") if s]
        for name in self.functions:
            trigger = self.trigger(name)
            if trigger["type"] != "httpTrigger" or method.lower() not in [m.lower() for m in trigger["methods"]]:
                continue
            params = _match(trigger["route"], segments)
            if params is not None:
                return name, params
        raise LookupError(f"no route takes {method} /{ROUTE_PREFIX}/{path}")


def _newtonsoft_date(moment: datetime) -> str:
    """A (UTC) DateTimeOffset as Json.NET writes it by default: ISO 8601, the fraction without trailing zeros,
    then ``+00:00`` (JamesNK/Newtonsoft.Json ``Src/Newtonsoft.Json/Utilities/DateTimeUtils.cs``,
    ``WriteDateTimeOffsetString`` / ``WriteDefaultIsoDate``, commit 6b9f467e)."""
    moment = moment.astimezone(UTC)
    text = moment.strftime("%Y-%m-%dT%H:%M:%S")
    if moment.microsecond:
        text += "." + f"{moment.microsecond:06d}".rstrip("0")
    return text + "+00:00"


def _json_properties(text: str) -> dict[str, Any]:
    """``Utility.ApplyBindingData``: a JSON object body's top-level properties, arrays and nulls left out,
    objects as objects and every other value as its string form (Json.NET's ``(string)JValue``)."""
    try:
        parsed = json.loads(text)
    except ValueError:
        return {}  # a body that is not JSON adds no binding data, and is no error
    if not isinstance(parsed, dict):
        return {}
    properties: dict[str, Any] = {}
    for key, value in parsed.items():
        if value is None or isinstance(value, list):
            continue
        if isinstance(value, dict):
            properties[key] = value
        elif isinstance(value, bool):
            properties[key] = "True" if value else "False"
        else:
            properties[key] = value if isinstance(value, str) else json.dumps(value)
    return properties


_PARAM = re.compile(r"^\{(?P<name>\w+)(?P<optional>\?)?\}$")


def _match(template: str, segments: list[str]) -> dict[str, str] | None:
    parts = [s for s in template.split("/") if s]
    if len(segments) > len(parts):
        return None
    params: dict[str, str] = {}
    for i, part in enumerate(parts):
        param = _PARAM.match(part)
        if i >= len(segments):
            if param and param["optional"]:
                continue  # a missing optional segment: the host sends no entry for it
            return None
        if param:
            params[param["name"]] = segments[i]
        elif part.lower() != segments[i].lower():
            return None
    return params
