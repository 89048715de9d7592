import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ApiKeyState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    API_KEY_STATE_UNSPECIFIED: _ClassVar[ApiKeyState]
    API_KEY_STATE_ACTIVE: _ClassVar[ApiKeyState]
    API_KEY_STATE_REVOKED: _ClassVar[ApiKeyState]
    API_KEY_STATE_EXPIRED: _ClassVar[ApiKeyState]

class LedgerEntryKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    LEDGER_ENTRY_KIND_UNSPECIFIED: _ClassVar[LedgerEntryKind]
    LEDGER_ENTRY_KIND_TOP_UP: _ClassVar[LedgerEntryKind]
    LEDGER_ENTRY_KIND_HOLD: _ClassVar[LedgerEntryKind]
    LEDGER_ENTRY_KIND_SETTLE: _ClassVar[LedgerEntryKind]
    LEDGER_ENTRY_KIND_RELEASE: _ClassVar[LedgerEntryKind]
    LEDGER_ENTRY_KIND_REFUND: _ClassVar[LedgerEntryKind]
    LEDGER_ENTRY_KIND_ADJUSTMENT: _ClassVar[LedgerEntryKind]
API_KEY_STATE_UNSPECIFIED: ApiKeyState
API_KEY_STATE_ACTIVE: ApiKeyState
API_KEY_STATE_REVOKED: ApiKeyState
API_KEY_STATE_EXPIRED: ApiKeyState
LEDGER_ENTRY_KIND_UNSPECIFIED: LedgerEntryKind
LEDGER_ENTRY_KIND_TOP_UP: LedgerEntryKind
LEDGER_ENTRY_KIND_HOLD: LedgerEntryKind
LEDGER_ENTRY_KIND_SETTLE: LedgerEntryKind
LEDGER_ENTRY_KIND_RELEASE: LedgerEntryKind
LEDGER_ENTRY_KIND_REFUND: LedgerEntryKind
LEDGER_ENTRY_KIND_ADJUSTMENT: LedgerEntryKind

class Account(_message.Message):
    __slots__ = ("id", "display_name", "balance_micros", "held_micros", "create_time", "rpm_limit", "tpm_limit", "concurrency_limit", "monthly_budget_micros", "budget_spent_micros", "budget_held_micros", "allowed_models")
    ID_FIELD_NUMBER: _ClassVar[int]
    DISPLAY_NAME_FIELD_NUMBER: _ClassVar[int]
    BALANCE_MICROS_FIELD_NUMBER: _ClassVar[int]
    HELD_MICROS_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    RPM_LIMIT_FIELD_NUMBER: _ClassVar[int]
    TPM_LIMIT_FIELD_NUMBER: _ClassVar[int]
    CONCURRENCY_LIMIT_FIELD_NUMBER: _ClassVar[int]
    MONTHLY_BUDGET_MICROS_FIELD_NUMBER: _ClassVar[int]
    BUDGET_SPENT_MICROS_FIELD_NUMBER: _ClassVar[int]
    BUDGET_HELD_MICROS_FIELD_NUMBER: _ClassVar[int]
    ALLOWED_MODELS_FIELD_NUMBER: _ClassVar[int]
    id: str
    display_name: str
    balance_micros: int
    held_micros: int
    create_time: _timestamp_pb2.Timestamp
    rpm_limit: int
    tpm_limit: int
    concurrency_limit: int
    monthly_budget_micros: int
    budget_spent_micros: int
    budget_held_micros: int
    allowed_models: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, id: _Optional[str] = ..., display_name: _Optional[str] = ..., balance_micros: _Optional[int] = ..., held_micros: _Optional[int] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., rpm_limit: _Optional[int] = ..., tpm_limit: _Optional[int] = ..., concurrency_limit: _Optional[int] = ..., monthly_budget_micros: _Optional[int] = ..., budget_spent_micros: _Optional[int] = ..., budget_held_micros: _Optional[int] = ..., allowed_models: _Optional[_Iterable[str]] = ...) -> None: ...

class CreateAccountRequest(_message.Message):
    __slots__ = ("display_name", "rpm_limit", "tpm_limit", "concurrency_limit", "monthly_budget_micros", "allowed_models")
    DISPLAY_NAME_FIELD_NUMBER: _ClassVar[int]
    RPM_LIMIT_FIELD_NUMBER: _ClassVar[int]
    TPM_LIMIT_FIELD_NUMBER: _ClassVar[int]
    CONCURRENCY_LIMIT_FIELD_NUMBER: _ClassVar[int]
    MONTHLY_BUDGET_MICROS_FIELD_NUMBER: _ClassVar[int]
    ALLOWED_MODELS_FIELD_NUMBER: _ClassVar[int]
    display_name: str
    rpm_limit: int
    tpm_limit: int
    concurrency_limit: int
    monthly_budget_micros: int
    allowed_models: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, display_name: _Optional[str] = ..., rpm_limit: _Optional[int] = ..., tpm_limit: _Optional[int] = ..., concurrency_limit: _Optional[int] = ..., monthly_budget_micros: _Optional[int] = ..., allowed_models: _Optional[_Iterable[str]] = ...) -> None: ...

class CreateAccountResponse(_message.Message):
    __slots__ = ("account",)
    ACCOUNT_FIELD_NUMBER: _ClassVar[int]
    account: Account
    def __init__(self, account: _Optional[_Union[Account, _Mapping]] = ...) -> None: ...

class GetAccountRequest(_message.Message):
    __slots__ = ("account_id",)
    ACCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    account_id: str
    def __init__(self, account_id: _Optional[str] = ...) -> None: ...

class GetAccountResponse(_message.Message):
    __slots__ = ("account",)
    ACCOUNT_FIELD_NUMBER: _ClassVar[int]
    account: Account
    def __init__(self, account: _Optional[_Union[Account, _Mapping]] = ...) -> None: ...

class ListAccountsRequest(_message.Message):
    __slots__ = ("page_size", "page_token")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListAccountsResponse(_message.Message):
    __slots__ = ("accounts", "next_page_token")
    ACCOUNTS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    accounts: _containers.RepeatedCompositeFieldContainer[Account]
    next_page_token: str
    def __init__(self, accounts: _Optional[_Iterable[_Union[Account, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class UpdateAccountRequest(_message.Message):
    __slots__ = ("account_id", "display_name", "rpm_limit", "tpm_limit", "concurrency_limit", "monthly_budget_micros", "allowed_models")
    ACCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    DISPLAY_NAME_FIELD_NUMBER: _ClassVar[int]
    RPM_LIMIT_FIELD_NUMBER: _ClassVar[int]
    TPM_LIMIT_FIELD_NUMBER: _ClassVar[int]
    CONCURRENCY_LIMIT_FIELD_NUMBER: _ClassVar[int]
    MONTHLY_BUDGET_MICROS_FIELD_NUMBER: _ClassVar[int]
    ALLOWED_MODELS_FIELD_NUMBER: _ClassVar[int]
    account_id: str
    display_name: str
    rpm_limit: int
    tpm_limit: int
    concurrency_limit: int
    monthly_budget_micros: int
    allowed_models: ModelList
    def __init__(self, account_id: _Optional[str] = ..., display_name: _Optional[str] = ..., rpm_limit: _Optional[int] = ..., tpm_limit: _Optional[int] = ..., concurrency_limit: _Optional[int] = ..., monthly_budget_micros: _Optional[int] = ..., allowed_models: _Optional[_Union[ModelList, _Mapping]] = ...) -> None: ...

class UpdateAccountResponse(_message.Message):
    __slots__ = ("account",)
    ACCOUNT_FIELD_NUMBER: _ClassVar[int]
    account: Account
    def __init__(self, account: _Optional[_Union[Account, _Mapping]] = ...) -> None: ...

class TopUpAccountRequest(_message.Message):
    __slots__ = ("account_id", "amount_micros", "request_id", "note")
    ACCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    AMOUNT_MICROS_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    NOTE_FIELD_NUMBER: _ClassVar[int]
    account_id: str
    amount_micros: int
    request_id: str
    note: str
    def __init__(self, account_id: _Optional[str] = ..., amount_micros: _Optional[int] = ..., request_id: _Optional[str] = ..., note: _Optional[str] = ...) -> None: ...

class TopUpAccountResponse(_message.Message):
    __slots__ = ("account", "entry")
    ACCOUNT_FIELD_NUMBER: _ClassVar[int]
    ENTRY_FIELD_NUMBER: _ClassVar[int]
    account: Account
    entry: LedgerEntry
    def __init__(self, account: _Optional[_Union[Account, _Mapping]] = ..., entry: _Optional[_Union[LedgerEntry, _Mapping]] = ...) -> None: ...

class ApiKey(_message.Message):
    __slots__ = ("id", "account_id", "display_name", "allowed_models", "rpm_limit", "tpm_limit", "expire_time", "spend_limit_micros", "state", "redacted_secret", "create_time", "revoke_time", "concurrency_limit")
    ID_FIELD_NUMBER: _ClassVar[int]
    ACCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    DISPLAY_NAME_FIELD_NUMBER: _ClassVar[int]
    ALLOWED_MODELS_FIELD_NUMBER: _ClassVar[int]
    RPM_LIMIT_FIELD_NUMBER: _ClassVar[int]
    TPM_LIMIT_FIELD_NUMBER: _ClassVar[int]
    EXPIRE_TIME_FIELD_NUMBER: _ClassVar[int]
    SPEND_LIMIT_MICROS_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    REDACTED_SECRET_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    REVOKE_TIME_FIELD_NUMBER: _ClassVar[int]
    CONCURRENCY_LIMIT_FIELD_NUMBER: _ClassVar[int]
    id: str
    account_id: str
    display_name: str
    allowed_models: _containers.RepeatedScalarFieldContainer[str]
    rpm_limit: int
    tpm_limit: int
    expire_time: _timestamp_pb2.Timestamp
    spend_limit_micros: int
    state: ApiKeyState
    redacted_secret: str
    create_time: _timestamp_pb2.Timestamp
    revoke_time: _timestamp_pb2.Timestamp
    concurrency_limit: int
    def __init__(self, id: _Optional[str] = ..., account_id: _Optional[str] = ..., display_name: _Optional[str] = ..., allowed_models: _Optional[_Iterable[str]] = ..., rpm_limit: _Optional[int] = ..., tpm_limit: _Optional[int] = ..., expire_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., spend_limit_micros: _Optional[int] = ..., state: _Optional[_Union[ApiKeyState, str]] = ..., redacted_secret: _Optional[str] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., revoke_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., concurrency_limit: _Optional[int] = ...) -> None: ...

class CreateApiKeyRequest(_message.Message):
    __slots__ = ("account_id", "display_name", "allowed_models", "rpm_limit", "tpm_limit", "expire_time", "spend_limit_micros", "concurrency_limit")
    ACCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    DISPLAY_NAME_FIELD_NUMBER: _ClassVar[int]
    ALLOWED_MODELS_FIELD_NUMBER: _ClassVar[int]
    RPM_LIMIT_FIELD_NUMBER: _ClassVar[int]
    TPM_LIMIT_FIELD_NUMBER: _ClassVar[int]
    EXPIRE_TIME_FIELD_NUMBER: _ClassVar[int]
    SPEND_LIMIT_MICROS_FIELD_NUMBER: _ClassVar[int]
    CONCURRENCY_LIMIT_FIELD_NUMBER: _ClassVar[int]
    account_id: str
    display_name: str
    allowed_models: _containers.RepeatedScalarFieldContainer[str]
    rpm_limit: int
    tpm_limit: int
    expire_time: _timestamp_pb2.Timestamp
    spend_limit_micros: int
    concurrency_limit: int
    def __init__(self, account_id: _Optional[str] = ..., display_name: _Optional[str] = ..., allowed_models: _Optional[_Iterable[str]] = ..., rpm_limit: _Optional[int] = ..., tpm_limit: _Optional[int] = ..., expire_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., spend_limit_micros: _Optional[int] = ..., concurrency_limit: _Optional[int] = ...) -> None: ...

class CreateApiKeyResponse(_message.Message):
    __slots__ = ("api_key", "secret")
    API_KEY_FIELD_NUMBER: _ClassVar[int]
    SECRET_FIELD_NUMBER: _ClassVar[int]
    api_key: ApiKey
    secret: str
    def __init__(self, api_key: _Optional[_Union[ApiKey, _Mapping]] = ..., secret: _Optional[str] = ...) -> None: ...

class GetApiKeyRequest(_message.Message):
    __slots__ = ("api_key_id",)
    API_KEY_ID_FIELD_NUMBER: _ClassVar[int]
    api_key_id: str
    def __init__(self, api_key_id: _Optional[str] = ...) -> None: ...

class GetApiKeyResponse(_message.Message):
    __slots__ = ("api_key",)
    API_KEY_FIELD_NUMBER: _ClassVar[int]
    api_key: ApiKey
    def __init__(self, api_key: _Optional[_Union[ApiKey, _Mapping]] = ...) -> None: ...

class ListApiKeysRequest(_message.Message):
    __slots__ = ("account_id", "page_size", "page_token")
    ACCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    account_id: str
    page_size: int
    page_token: str
    def __init__(self, account_id: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListApiKeysResponse(_message.Message):
    __slots__ = ("api_keys", "next_page_token")
    API_KEYS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    api_keys: _containers.RepeatedCompositeFieldContainer[ApiKey]
    next_page_token: str
    def __init__(self, api_keys: _Optional[_Iterable[_Union[ApiKey, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class ModelList(_message.Message):
    __slots__ = ("models",)
    MODELS_FIELD_NUMBER: _ClassVar[int]
    models: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, models: _Optional[_Iterable[str]] = ...) -> None: ...

class UpdateApiKeyRequest(_message.Message):
    __slots__ = ("api_key_id", "display_name", "allowed_models", "rpm_limit", "tpm_limit", "expire_time", "clear_expire_time", "spend_limit_micros", "concurrency_limit")
    API_KEY_ID_FIELD_NUMBER: _ClassVar[int]
    DISPLAY_NAME_FIELD_NUMBER: _ClassVar[int]
    ALLOWED_MODELS_FIELD_NUMBER: _ClassVar[int]
    RPM_LIMIT_FIELD_NUMBER: _ClassVar[int]
    TPM_LIMIT_FIELD_NUMBER: _ClassVar[int]
    EXPIRE_TIME_FIELD_NUMBER: _ClassVar[int]
    CLEAR_EXPIRE_TIME_FIELD_NUMBER: _ClassVar[int]
    SPEND_LIMIT_MICROS_FIELD_NUMBER: _ClassVar[int]
    CONCURRENCY_LIMIT_FIELD_NUMBER: _ClassVar[int]
    api_key_id: str
    display_name: str
    allowed_models: ModelList
    rpm_limit: int
    tpm_limit: int
    expire_time: _timestamp_pb2.Timestamp
    clear_expire_time: bool
    spend_limit_micros: int
    concurrency_limit: int
    def __init__(self, api_key_id: _Optional[str] = ..., display_name: _Optional[str] = ..., allowed_models: _Optional[_Union[ModelList, _Mapping]] = ..., rpm_limit: _Optional[int] = ..., tpm_limit: _Optional[int] = ..., expire_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., clear_expire_time: _Optional[bool] = ..., spend_limit_micros: _Optional[int] = ..., concurrency_limit: _Optional[int] = ...) -> None: ...

class UpdateApiKeyResponse(_message.Message):
    __slots__ = ("api_key",)
    API_KEY_FIELD_NUMBER: _ClassVar[int]
    api_key: ApiKey
    def __init__(self, api_key: _Optional[_Union[ApiKey, _Mapping]] = ...) -> None: ...

class RevokeApiKeyRequest(_message.Message):
    __slots__ = ("api_key_id",)
    API_KEY_ID_FIELD_NUMBER: _ClassVar[int]
    api_key_id: str
    def __init__(self, api_key_id: _Optional[str] = ...) -> None: ...

class RevokeApiKeyResponse(_message.Message):
    __slots__ = ("api_key",)
    API_KEY_FIELD_NUMBER: _ClassVar[int]
    api_key: ApiKey
    def __init__(self, api_key: _Optional[_Union[ApiKey, _Mapping]] = ...) -> None: ...

class LedgerEntry(_message.Message):
    __slots__ = ("id", "account_id", "kind", "amount_micros", "balance_after_micros", "request_id", "note", "create_time")
    ID_FIELD_NUMBER: _ClassVar[int]
    ACCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    AMOUNT_MICROS_FIELD_NUMBER: _ClassVar[int]
    BALANCE_AFTER_MICROS_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    NOTE_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    id: int
    account_id: str
    kind: LedgerEntryKind
    amount_micros: int
    balance_after_micros: int
    request_id: str
    note: str
    create_time: _timestamp_pb2.Timestamp
    def __init__(self, id: _Optional[int] = ..., account_id: _Optional[str] = ..., kind: _Optional[_Union[LedgerEntryKind, str]] = ..., amount_micros: _Optional[int] = ..., balance_after_micros: _Optional[int] = ..., request_id: _Optional[str] = ..., note: _Optional[str] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class ListLedgerEntriesRequest(_message.Message):
    __slots__ = ("account_id", "page_size", "page_token")
    ACCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    account_id: str
    page_size: int
    page_token: str
    def __init__(self, account_id: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListLedgerEntriesResponse(_message.Message):
    __slots__ = ("entries", "next_page_token")
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    entries: _containers.RepeatedCompositeFieldContainer[LedgerEntry]
    next_page_token: str
    def __init__(self, entries: _Optional[_Iterable[_Union[LedgerEntry, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class SummarizeUsageRequest(_message.Message):
    __slots__ = ("account_id", "start_time", "end_time")
    ACCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    START_TIME_FIELD_NUMBER: _ClassVar[int]
    END_TIME_FIELD_NUMBER: _ClassVar[int]
    account_id: str
    start_time: _timestamp_pb2.Timestamp
    end_time: _timestamp_pb2.Timestamp
    def __init__(self, account_id: _Optional[str] = ..., start_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., end_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class DailyModelUsage(_message.Message):
    __slots__ = ("day", "model", "request_count", "prompt_tokens", "completion_tokens", "cost_micros")
    DAY_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    REQUEST_COUNT_FIELD_NUMBER: _ClassVar[int]
    PROMPT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    COMPLETION_TOKENS_FIELD_NUMBER: _ClassVar[int]
    COST_MICROS_FIELD_NUMBER: _ClassVar[int]
    day: str
    model: str
    request_count: int
    prompt_tokens: int
    completion_tokens: int
    cost_micros: int
    def __init__(self, day: _Optional[str] = ..., model: _Optional[str] = ..., request_count: _Optional[int] = ..., prompt_tokens: _Optional[int] = ..., completion_tokens: _Optional[int] = ..., cost_micros: _Optional[int] = ...) -> None: ...

class SummarizeUsageResponse(_message.Message):
    __slots__ = ("usages",)
    USAGES_FIELD_NUMBER: _ClassVar[int]
    usages: _containers.RepeatedCompositeFieldContainer[DailyModelUsage]
    def __init__(self, usages: _Optional[_Iterable[_Union[DailyModelUsage, _Mapping]]] = ...) -> None: ...

class ListModelPricesRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ModelRoute(_message.Message):
    __slots__ = ("provider", "upstream_model")
    PROVIDER_FIELD_NUMBER: _ClassVar[int]
    UPSTREAM_MODEL_FIELD_NUMBER: _ClassVar[int]
    provider: str
    upstream_model: str
    def __init__(self, provider: _Optional[str] = ..., upstream_model: _Optional[str] = ...) -> None: ...

class ModelPrice(_message.Message):
    __slots__ = ("model", "input_price_micros", "output_price_micros", "cached_input_price_micros", "max_output_tokens", "routes")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    INPUT_PRICE_MICROS_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_PRICE_MICROS_FIELD_NUMBER: _ClassVar[int]
    CACHED_INPUT_PRICE_MICROS_FIELD_NUMBER: _ClassVar[int]
    MAX_OUTPUT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    ROUTES_FIELD_NUMBER: _ClassVar[int]
    model: str
    input_price_micros: int
    output_price_micros: int
    cached_input_price_micros: int
    max_output_tokens: int
    routes: _containers.RepeatedCompositeFieldContainer[ModelRoute]
    def __init__(self, model: _Optional[str] = ..., input_price_micros: _Optional[int] = ..., output_price_micros: _Optional[int] = ..., cached_input_price_micros: _Optional[int] = ..., max_output_tokens: _Optional[int] = ..., routes: _Optional[_Iterable[_Union[ModelRoute, _Mapping]]] = ...) -> None: ...

class ListModelPricesResponse(_message.Message):
    __slots__ = ("models",)
    MODELS_FIELD_NUMBER: _ClassVar[int]
    models: _containers.RepeatedCompositeFieldContainer[ModelPrice]
    def __init__(self, models: _Optional[_Iterable[_Union[ModelPrice, _Mapping]]] = ...) -> None: ...
