"""Domain errors. Services raise these; one FastAPI handler (api/errors.py) and one gRPC mapping
(grpc/server.py) turn them into status codes, so service code never sees a status code."""

from __future__ import annotations


class ControllerError(Exception):
    """Base of every error a client is meant to read."""

    status_code = 400

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidInput(ControllerError):
    status_code = 422


class NotFound(ControllerError):
    status_code = 404


class Conflict(ControllerError):
    status_code = 409


class Unauthenticated(ControllerError):
    status_code = 401


class PermissionDenied(ControllerError):
    status_code = 403


class TooLarge(ControllerError):
    """An upload over the controller's size limit (``max_upload_bytes``)."""

    status_code = 413
