"""Errors raised by the serving package, each carrying the HTTP status it maps to."""

from __future__ import annotations


class ServingError(Exception):
    """Base error: `status` is the HTTP status, `code` a stable machine-readable name."""

    status = 500
    code = "internal_error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class ModelLoadError(ServingError):
    """A model folder or archive is missing, unsafe, or broken; raised at start-up."""

    status = 503
    code = "model_load_failed"


class BadRequest(ServingError):
    status = 400
    code = "bad_request"


class NotAcceptable(ServingError):
    status = 406
    code = "not_acceptable"


class PayloadTooLarge(ServingError):
    status = 413
    code = "request_entity_too_large"  # the name werkzeug's 413 had before the inference route left Flask


class UnsupportedMediaType(ServingError):
    status = 415
    code = "unsupported_media_type"


class UnprocessableInput(ServingError):
    status = 422
    code = "unprocessable_input"


class QueueFull(ServingError):
    status = 429
    code = "queue_full"


class NotReady(ServingError):
    status = 503
    code = "not_ready"


class DeviceFailed(ServingError):
    """The accelerator hit an error that poisons this process's CUDA context; the worker is being replaced."""

    status = 503
    code = "device_failed"


class RequestTimeout(ServingError):
    status = 504
    code = "timeout"


class BodyTimeout(ServingError):
    """The client had not sent the whole body by the request's deadline (it stalled, or sends too slowly): the
    client's delay, where RequestTimeout (504) is the server's."""

    status = 408
    code = "request_timeout"


class ModelNotFound(ServingError):
    """A multi-model endpoint has no model of that name loaded, or a folder to load holds no model."""

    status = 404
    code = "model_not_found"


class ModelExists(ServingError):
    status = 409
    code = "model_already_loaded"


class InsufficientMemory(ServingError):
    """The model does not fit what the device or host has free (or the configured budget): SageMaker then unloads
    a model and tries again."""

    status = 507
    code = "insufficient_memory"
