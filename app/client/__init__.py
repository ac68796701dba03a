"""A typed Python client of the Switchyard API, blocking (`Client`) or asyncio (`AsyncClient`).

    from app.client import AsyncClient, Client, LossEvent, NotFoundError

    with Client("http://127.0.0.1:8000", api_key="sk-...") as sy:
        sy.upload_adapter("sst2", "./my-peft-adapter", labels=["negative", "positive"])
        print(sy.predict("sst2", ["what a film"]).outputs)  # [[{'label': 'positive', ...}]]

        data = sy.upload_dataset("train.jsonl")               # or a list of row dicts
        job = sy.create_job("sst2", training_data=data.id, method="lora",
                            hyperparameters={"epochs": 2})
        for event in sy.follow(job.id):                       # server-sent events, typed
            if isinstance(event, LossEvent):
                print(event.step, event.loss)
        print(sy.get_job(job.id).status)                      # "succeeded"
        sy.download_adapter("sst2", "./sst2-v2")              # loads with PeftModel
        try:
            sy.get_adapter("nope")
        except NotFoundError as exc:
            print(exc.status, exc.code, exc.param)            # 404 adapter_not_found name

    async with AsyncClient() as sy:                           # $SWITCHYARD_URL, $SWITCHYARD_KEY
        vectors = (await sy.embed(["a", "b"])).data

Return values are pydantic models that keep fields they do not declare. Errors are
`SwitchyardAPIError` subclasses (by status) carrying the API's `code`, `message` and `param`;
429 and 503 are retried, honouring Retry-After, as `RetryPolicy` says.
"""

from app.client._async import AsyncClient
from app.client._sync import Client
from app.client._transport import NO_RETRY, RetryPolicy
from app.client.errors import (
    APIConnectionError,
    APITimeoutError,
    AuthenticationError,
    BadRequestError,
    ConflictError,
    NotFoundError,
    PayloadTooLargeError,
    PermissionDeniedError,
    RateLimitError,
    ResponseFormatError,
    ServerError,
    ServiceUnavailableError,
    SwitchyardAPIError,
    SwitchyardClientError,
    UnprocessableEntityError,
)
from app.client.models import (
    Adapter,
    AdapterDetails,
    AdapterVersion,
    ChatCompletion,
    ChatCompletionChunk,
    Completion,
    Dataset,
    Embeddings,
    EvaluationEvent,
    EventPage,
    InfoEvent,
    JobEvent,
    LossEvent,
    ModelCard,
    MultiPrediction,
    Prediction,
    ServiceInfo,
    StatusEvent,
    TrainingJob,
)

__all__ = [
    "NO_RETRY",
    "APIConnectionError",
    "APITimeoutError",
    "Adapter",
    "AdapterDetails",
    "AdapterVersion",
    "AsyncClient",
    "AuthenticationError",
    "BadRequestError",
    "ChatCompletion",
    "ChatCompletionChunk",
    "Client",
    "Completion",
    "ConflictError",
    "Dataset",
    "Embeddings",
    "EvaluationEvent",
    "EventPage",
    "InfoEvent",
    "JobEvent",
    "LossEvent",
    "ModelCard",
    "MultiPrediction",
    "NotFoundError",
    "PayloadTooLargeError",
    "PermissionDeniedError",
    "Prediction",
    "RateLimitError",
    "ResponseFormatError",
    "RetryPolicy",
    "ServerError",
    "ServiceInfo",
    "ServiceUnavailableError",
    "StatusEvent",
    "SwitchyardAPIError",
    "SwitchyardClientError",
    "TrainingJob",
    "UnprocessableEntityError",
]
