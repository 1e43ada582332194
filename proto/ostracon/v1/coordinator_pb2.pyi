import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class DeletionMode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DELETION_MODE_UNSPECIFIED: _ClassVar[DeletionMode]
    DELETION_MODE_EXACT: _ClassVar[DeletionMode]
    DELETION_MODE_APPROXIMATE: _ClassVar[DeletionMode]
    DELETION_MODE_APPROXIMATE_THEN_EXACT: _ClassVar[DeletionMode]

class OperationState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    OPERATION_STATE_UNSPECIFIED: _ClassVar[OperationState]
    OPERATION_STATE_PENDING: _ClassVar[OperationState]
    OPERATION_STATE_RUNNING: _ClassVar[OperationState]
    OPERATION_STATE_SUCCEEDED: _ClassVar[OperationState]
    OPERATION_STATE_FAILED: _ClassVar[OperationState]
    OPERATION_STATE_CANCELLED: _ClassVar[OperationState]
DELETION_MODE_UNSPECIFIED: DeletionMode
DELETION_MODE_EXACT: DeletionMode
DELETION_MODE_APPROXIMATE: DeletionMode
DELETION_MODE_APPROXIMATE_THEN_EXACT: DeletionMode
OPERATION_STATE_UNSPECIFIED: OperationState
OPERATION_STATE_PENDING: OperationState
OPERATION_STATE_RUNNING: OperationState
OPERATION_STATE_SUCCEEDED: OperationState
OPERATION_STATE_FAILED: OperationState
OPERATION_STATE_CANCELLED: OperationState

class DeleteRequest(_message.Message):
    __slots__ = ("sample_ids", "mode", "method", "idempotency_key")
    SAMPLE_IDS_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    sample_ids: _containers.RepeatedScalarFieldContainer[str]
    mode: DeletionMode
    method: str
    idempotency_key: str
    def __init__(self, sample_ids: _Optional[_Iterable[str]] = ..., mode: _Optional[_Union[DeletionMode, str]] = ..., method: _Optional[str] = ..., idempotency_key: _Optional[str] = ...) -> None: ...

class Operation(_message.Message):
    __slots__ = ("id", "state", "progress", "message", "sample_ids", "create_time", "update_time", "model_version", "mode")
    ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    SAMPLE_IDS_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    UPDATE_TIME_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    id: str
    state: OperationState
    progress: float
    message: str
    sample_ids: _containers.RepeatedScalarFieldContainer[str]
    create_time: _timestamp_pb2.Timestamp
    update_time: _timestamp_pb2.Timestamp
    model_version: int
    mode: DeletionMode
    def __init__(self, id: _Optional[str] = ..., state: _Optional[_Union[OperationState, str]] = ..., progress: _Optional[float] = ..., message: _Optional[str] = ..., sample_ids: _Optional[_Iterable[str]] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., update_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., model_version: _Optional[int] = ..., mode: _Optional[_Union[DeletionMode, str]] = ...) -> None: ...

class GetOperationRequest(_message.Message):
    __slots__ = ("operation_id",)
    OPERATION_ID_FIELD_NUMBER: _ClassVar[int]
    operation_id: str
    def __init__(self, operation_id: _Optional[str] = ...) -> None: ...

class ListOperationsRequest(_message.Message):
    __slots__ = ("page_size", "page_token")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListOperationsResponse(_message.Message):
    __slots__ = ("operations", "next_page_token")
    OPERATIONS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    operations: _containers.RepeatedCompositeFieldContainer[Operation]
    next_page_token: str
    def __init__(self, operations: _Optional[_Iterable[_Union[Operation, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class CancelOperationRequest(_message.Message):
    __slots__ = ("operation_id",)
    OPERATION_ID_FIELD_NUMBER: _ClassVar[int]
    operation_id: str
    def __init__(self, operation_id: _Optional[str] = ...) -> None: ...

class WatchOperationRequest(_message.Message):
    __slots__ = ("operation_id", "after_sequence")
    OPERATION_ID_FIELD_NUMBER: _ClassVar[int]
    AFTER_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    operation_id: str
    after_sequence: int
    def __init__(self, operation_id: _Optional[str] = ..., after_sequence: _Optional[int] = ...) -> None: ...

class OperationEvent(_message.Message):
    __slots__ = ("sequence", "operation")
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    OPERATION_FIELD_NUMBER: _ClassVar[int]
    sequence: int
    operation: Operation
    def __init__(self, sequence: _Optional[int] = ..., operation: _Optional[_Union[Operation, _Mapping]] = ...) -> None: ...

class GetCertificateRequest(_message.Message):
    __slots__ = ("operation_id",)
    OPERATION_ID_FIELD_NUMBER: _ClassVar[int]
    operation_id: str
    def __init__(self, operation_id: _Optional[str] = ...) -> None: ...

class DeletionCertificate(_message.Message):
    __slots__ = ("operation_id", "mode", "sample_ids", "model_version_before", "model_version_after", "group_digests", "gradient_evaluations", "full_retrain_gradient_evaluations", "json")
    class GroupDigestsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    OPERATION_ID_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    SAMPLE_IDS_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_BEFORE_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_AFTER_FIELD_NUMBER: _ClassVar[int]
    GROUP_DIGESTS_FIELD_NUMBER: _ClassVar[int]
    GRADIENT_EVALUATIONS_FIELD_NUMBER: _ClassVar[int]
    FULL_RETRAIN_GRADIENT_EVALUATIONS_FIELD_NUMBER: _ClassVar[int]
    JSON_FIELD_NUMBER: _ClassVar[int]
    operation_id: str
    mode: DeletionMode
    sample_ids: _containers.RepeatedScalarFieldContainer[str]
    model_version_before: int
    model_version_after: int
    group_digests: _containers.ScalarMap[str, str]
    gradient_evaluations: int
    full_retrain_gradient_evaluations: int
    json: str
    def __init__(self, operation_id: _Optional[str] = ..., mode: _Optional[_Union[DeletionMode, str]] = ..., sample_ids: _Optional[_Iterable[str]] = ..., model_version_before: _Optional[int] = ..., model_version_after: _Optional[int] = ..., group_digests: _Optional[_Mapping[str, str]] = ..., gradient_evaluations: _Optional[int] = ..., full_retrain_gradient_evaluations: _Optional[int] = ..., json: _Optional[str] = ...) -> None: ...

class Tensor(_message.Message):
    __slots__ = ("dtype", "shape", "data")
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    dtype: str
    shape: _containers.RepeatedScalarFieldContainer[int]
    data: bytes
    def __init__(self, dtype: _Optional[str] = ..., shape: _Optional[_Iterable[int]] = ..., data: _Optional[bytes] = ...) -> None: ...

class PredictRequest(_message.Message):
    __slots__ = ("inputs",)
    INPUTS_FIELD_NUMBER: _ClassVar[int]
    inputs: Tensor
    def __init__(self, inputs: _Optional[_Union[Tensor, _Mapping]] = ...) -> None: ...

class PredictResponse(_message.Message):
    __slots__ = ("labels", "probabilities", "model_version")
    LABELS_FIELD_NUMBER: _ClassVar[int]
    PROBABILITIES_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    labels: _containers.RepeatedScalarFieldContainer[int]
    probabilities: Tensor
    model_version: int
    def __init__(self, labels: _Optional[_Iterable[int]] = ..., probabilities: _Optional[_Union[Tensor, _Mapping]] = ..., model_version: _Optional[int] = ...) -> None: ...

class GetClusterStatusRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class WorkerStatus(_message.Message):
    __slots__ = ("index", "group", "byzantine", "alive", "restarts", "node")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    GROUP_FIELD_NUMBER: _ClassVar[int]
    BYZANTINE_FIELD_NUMBER: _ClassVar[int]
    ALIVE_FIELD_NUMBER: _ClassVar[int]
    RESTARTS_FIELD_NUMBER: _ClassVar[int]
    NODE_FIELD_NUMBER: _ClassVar[int]
    index: int
    group: int
    byzantine: bool
    alive: bool
    restarts: int
    node: str
    def __init__(self, index: _Optional[int] = ..., group: _Optional[int] = ..., byzantine: _Optional[bool] = ..., alive: _Optional[bool] = ..., restarts: _Optional[int] = ..., node: _Optional[str] = ...) -> None: ...

class ClusterStatus(_message.Message):
    __slots__ = ("workers", "model_version", "queue_depth", "backend")
    WORKERS_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    QUEUE_DEPTH_FIELD_NUMBER: _ClassVar[int]
    BACKEND_FIELD_NUMBER: _ClassVar[int]
    workers: _containers.RepeatedCompositeFieldContainer[WorkerStatus]
    model_version: int
    queue_depth: int
    backend: str
    def __init__(self, workers: _Optional[_Iterable[_Union[WorkerStatus, _Mapping]]] = ..., model_version: _Optional[int] = ..., queue_depth: _Optional[int] = ..., backend: _Optional[str] = ...) -> None: ...
