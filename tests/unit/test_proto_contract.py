"""The proto API keeps the names DESIGN.md promises, and its two chat requests stay twins."""

from google.protobuf.descriptor import Descriptor

from gateway_core.pb.gateway.admin.v1 import admin_pb2
from gateway_core.pb.gateway.v1 import chat_pb2, metering_pb2, types_pb2


def _type_name(descriptor: Descriptor | None) -> str:
    if descriptor is None:
        return ""
    if descriptor.GetOptions().map_entry:  # nested per message: compare the entry's own fields
        return repr(_fields(descriptor))
    return descriptor.full_name


def _fields(descriptor: Descriptor) -> list[tuple[str, int, int, str, bool]]:
    return [(f.name, f.number, f.type, _type_name(f.message_type), f.has_presence) for f in descriptor.fields]


def test_create_and_stream_requests_have_identical_fields() -> None:
    create = chat_pb2.CreateChatCompletionRequest.DESCRIPTOR
    stream = chat_pb2.StreamChatCompletionRequest.DESCRIPTOR
    assert _fields(create) == _fields(stream)


def test_requests_are_wire_compatible() -> None:
    request = chat_pb2.StreamChatCompletionRequest(model="m", temperature=0.5, stop=["x"], request_id="r")
    request.messages.add(role=types_pb2.ROLE_USER, content="hi")
    again = chat_pb2.CreateChatCompletionRequest.FromString(request.SerializeToString())
    assert again.model == "m" and again.HasField("temperature") and again.messages[0].content == "hi"


def _rpcs(module: object, service: str) -> set[str]:
    return {m.name for m in module.DESCRIPTOR.services_by_name[service].methods}  # type: ignore[attr-defined]


def test_services_and_rpcs_have_the_design_names() -> None:
    assert chat_pb2.DESCRIPTOR.package == "gateway.v1"
    assert admin_pb2.DESCRIPTOR.package == "gateway.admin.v1"
    assert _rpcs(chat_pb2, "ChatService") == {"CreateChatCompletion", "StreamChatCompletion", "ListModels"}
    assert _rpcs(metering_pb2, "MeteringService") == {"GetBalance", "ListUsageRecords", "SummarizeUsage"}
    assert _rpcs(admin_pb2, "AdminService") == {
        "CreateAccount", "GetAccount", "ListAccounts", "UpdateAccount", "TopUpAccount",
        "CreateApiKey", "GetApiKey", "ListApiKeys", "UpdateApiKey", "RevokeApiKey", "ListLedgerEntries",
        # Beyond DESIGN.md, for `tollgate admin usage` and `tollgate admin prices` (issue 8).
        "SummarizeUsage", "ListModelPrices",
    }


def test_roles_match_design() -> None:
    assert set(types_pb2.Role.keys()) == {
        "ROLE_UNSPECIFIED", "ROLE_USER", "ROLE_SYSTEM", "ROLE_ASSISTANT", "ROLE_TOOL", "ROLE_DEVELOPER",
    }


def test_money_fields_are_integer_micros() -> None:
    """No float ever carries money: every *_micros field in every message is int64."""
    int64 = 3  # FieldDescriptor.TYPE_INT64
    for module in (chat_pb2, metering_pb2, admin_pb2, types_pb2):
        for message in module.DESCRIPTOR.message_types_by_name.values():
            for field in message.fields:
                if field.name.endswith("_micros"):
                    assert field.type == int64, f"{message.full_name}.{field.name}"
