"""The core over real gRPC on a free port: Chat, health, reflection (as grpcurl uses it), errors."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from google.protobuf import descriptor_pool
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

from gateway_core.errors import error_info
from gateway_core.pb.gateway.v1 import chat_pb2, chat_pb2_grpc, types_pb2
from tests.fakes.openai_upstream import FakeOpenAIUpstream
from tests.gateway_support import RunningGateway, running_gateway, settings_for


@pytest.fixture(scope="module")
def upstream() -> Iterator[FakeOpenAIUpstream]:
    with FakeOpenAIUpstream() as fake:
        yield fake


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory, upstream: FakeOpenAIUpstream) -> Iterator[RunningGateway]:
    settings = settings_for(
        tmp_path_factory.mktemp("core"),
        providers=[{"name": "up", "type": "openai", "base_url": upstream.base_url, "api_key": "sk-op"}],
        models=[{"name": "slow", "routes": [{"provider": "up", "model": "fake-slow"}], "input_price": 1, "output_price": 1}],
    )
    with running_gateway(settings) as running:
        yield running


@pytest.fixture(scope="module")
def chat(gateway: RunningGateway) -> Iterator[tuple[chat_pb2_grpc.ChatServiceStub, tuple[tuple[str, str], ...]]]:
    secret = gateway.create_key()[2]
    with grpc.insecure_channel(gateway.grpc_target) as channel:
        yield chat_pb2_grpc.ChatServiceStub(channel), (("authorization", f"Bearer {secret}"),)


def _hello(model: str = "mock-echo") -> chat_pb2.CreateChatCompletionRequest:
    request = chat_pb2.CreateChatCompletionRequest(model=model)
    request.messages.add(role=types_pb2.ROLE_USER, content="Hello over gRPC")
    return request


def test_unary_chat(chat: tuple) -> None:
    stub, meta = chat
    response = stub.CreateChatCompletion(_hello(), metadata=meta)
    assert response.choices[0].message.content == "Hello over gRPC"
    assert response.choices[0].finish_reason == types_pb2.FINISH_REASON_STOP
    assert response.usage.prompt_tokens > 0 and response.provider == "mock"


def test_stream_chat_ends_with_one_usage_message(chat: tuple) -> None:
    stub, meta = chat
    request = chat_pb2.StreamChatCompletionRequest.FromString(_hello().SerializeToString())
    messages = list(stub.StreamChatCompletion(request, metadata=meta))
    text = "".join(c.delta.content for m in messages for c in m.choices)
    assert text == "Hello over gRPC"
    assert [m.HasField("usage") for m in messages].count(True) == 1
    assert messages[-1].HasField("usage") and not messages[-1].choices


def test_list_models(chat: tuple) -> None:
    stub, meta = chat
    ids = [m.id for m in stub.ListModels(chat_pb2.ListModelsRequest(), metadata=meta).models]
    assert ids == sorted(ids) and {"mock-chat", "mock-echo", "slow"} <= set(ids)


@pytest.mark.parametrize("metadata", [(), (("authorization", "Bearer sk-tg-nope"),), (("authorization", "Basic abc"),)])
def test_bad_keys_are_unauthenticated(chat: tuple, metadata: tuple) -> None:
    stub, _ = chat
    with pytest.raises(grpc.RpcError) as caught:
        stub.CreateChatCompletion(_hello(), metadata=metadata)
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
    info = error_info(caught.value)
    assert info is not None and info.reason == "INVALID_API_KEY"


def test_invalid_request_names_the_param(chat: tuple) -> None:
    stub, meta = chat
    request = _hello()
    request.messages.add(role=types_pb2.ROLE_TOOL, content="orphan result")
    with pytest.raises(grpc.RpcError) as caught:
        stub.CreateChatCompletion(request, metadata=meta)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    info = error_info(caught.value)
    assert info is not None and info.metadata["param"] == "messages[1].tool_call_id"


def test_deadline_reaches_the_upstream(chat: tuple, upstream: FakeOpenAIUpstream) -> None:
    stub, meta = chat
    before = upstream.disconnects
    request = chat_pb2.StreamChatCompletionRequest.FromString(_hello("slow").SerializeToString())
    with pytest.raises(grpc.RpcError) as caught:
        for _ in stub.StreamChatCompletion(request, metadata=meta, timeout=0.5):
            pass
    assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    import time

    deadline = time.monotonic() + 5
    while upstream.disconnects == before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert upstream.disconnects == before + 1, "the upstream request was closed"


def test_health_serving(gateway: RunningGateway) -> None:
    with grpc.insecure_channel(gateway.grpc_target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        for service in ("", "gateway.v1.ChatService", "gateway.admin.v1.AdminService"):
            response = stub.Check(health_pb2.HealthCheckRequest(service=service))
            assert response.status == health_pb2.HealthCheckResponse.SERVING
        with pytest.raises(grpc.RpcError) as caught:
            stub.Check(health_pb2.HealthCheckRequest(service="nope.Service"))
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND


def test_reflection_lists_and_describes_without_proto_files(gateway: RunningGateway) -> None:
    """What `grpcurl list` and `grpcurl describe` do, through the reflection service."""
    with grpc.insecure_channel(gateway.grpc_target) as channel:
        database = ProtoReflectionDescriptorDatabase(channel)
        services = set(database.get_services())
        assert {
            "gateway.v1.ChatService", "gateway.v1.MeteringService", "gateway.admin.v1.AdminService",
            "grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection",
        } <= services
        pool = descriptor_pool.DescriptorPool(database)
        chat_service = pool.FindServiceByName("gateway.v1.ChatService")
        assert {m.name for m in chat_service.methods} == {"CreateChatCompletion", "StreamChatCompletion", "ListModels"}
        stream = chat_service.methods_by_name["StreamChatCompletion"]
        assert stream.output_type.full_name == "gateway.v1.StreamChatCompletionResponse"
        message = pool.FindMessageTypeByName("gateway.v1.Message")
        assert message.fields_by_name["role"].enum_type.full_name == "gateway.v1.Role"
        admin = pool.FindServiceByName("gateway.admin.v1.AdminService")
        assert "TopUpAccount" in admin.methods_by_name
