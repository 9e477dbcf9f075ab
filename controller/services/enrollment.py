"""Enrolment tokens: create, list, revoke, and spend one at Register.

Several tokens may be live at once (one per batch of devices, per site, per installer), each
with an expiry and a use count, and each revocable. The operator's re-enrolment of a device
(``reenrol_token``) is a one-use token bound to that device id. The token of the settings
(``EDGELOOP_ENROLLMENT_TOKEN`` or its file) stays accepted as the bootstrap token of small
installs; it has no expiry, so production installs create scoped tokens and can leave it unset.
Only sha256 digests are stored; a refused token gets one answer whatever the reason, so the
answer tells an attacker nothing about which tokens or device ids exist.
"""

from __future__ import annotations

import hmac
import secrets
from dataclasses import dataclass
from datetime import timedelta

from cryptography.hazmat.primitives import serialization
from sqlmodel import Session, col, select

from controller.errors import InvalidInput, NotFound, PermissionDenied, Unauthenticated
from controller.models import Device, EnrollmentToken, EnrollmentTokenCreate, utcnow
from controller.services.ca import ControllerCA
from controller.services.fleet import apply_registration, cert_secret, hash_token
from controller.services.limits import check_device_message
from protos import fleet_pb2

REFUSED = "enrolment refused: invalid, expired, revoked or used-up enrolment token"
REENROL = (
    "enrolment refused: an enrolled device id is re-enrolled only with its own certificate or an "
    "operator's re-enrolment token (POST /api/v1/devices/{id}/reenrol)"
)


@dataclass
class Enrolled:
    device: Device
    device_token: str  # insecure mode only ("" with TLS: the certificate is the credential)
    certificate_pem: bytes
    mqtt_password: str


def create_token(
    *, session: Session, token_in: EnrollmentTokenCreate, device_id: str | None = None
) -> tuple[EnrollmentToken, str]:
    """A new token (its plaintext is returned once, never stored)."""
    token = "enr_" + secrets.token_urlsafe(32)
    expires = utcnow() + timedelta(seconds=token_in.expires_in_s) if token_in.expires_in_s else None
    row = EnrollmentToken(
        name=token_in.name,
        token_hash=hash_token(token),
        expires_at=expires,
        max_uses=token_in.max_uses,
        device_id=device_id,
    )
    session.add(row)
    session.flush()
    return row, token


def reenrol_token(
    *, session: Session, device_id: str, expires_in_s: int = 86_400
) -> tuple[EnrollmentToken, str]:
    """The operator's re-enrolment of one device: a one-use token for exactly that id."""
    return create_token(
        session=session,
        token_in=EnrollmentTokenCreate(name=f"re-enrol {device_id}", expires_in_s=expires_in_s, max_uses=1),
        device_id=device_id,
    )


def list_tokens(*, session: Session) -> list[EnrollmentToken]:
    return list(session.exec(select(EnrollmentToken).order_by(col(EnrollmentToken.created_at).desc())).all())


def revoke_token(*, session: Session, token_id: str) -> EnrollmentToken:
    row = session.get(EnrollmentToken, token_id)
    if row is None:
        raise NotFound(f"enrolment token {token_id!r} not found")
    row.revoked = True
    session.add(row)
    session.flush()
    return row


def spend(*, session: Session, token: str, bootstrap: str) -> EnrollmentToken | None:
    """Check and use ``token``. Returns its row (None for the bootstrap token of the settings);
    raises ``Unauthenticated`` with one message for every kind of refusal."""
    if not token:
        raise Unauthenticated(REFUSED)
    if bootstrap and hmac.compare_digest(token.encode(), bootstrap.encode()):
        return None
    row = session.exec(
        select(EnrollmentToken).where(EnrollmentToken.token_hash == hash_token(token)).with_for_update()
    ).first()
    if row is None or row.revoked:
        raise Unauthenticated(REFUSED)
    expires = row.expires_at
    if expires is not None and expires.tzinfo is None:
        expires = expires.replace(tzinfo=utcnow().tzinfo)
    if expires is not None and expires <= utcnow():
        raise Unauthenticated(REFUSED)
    if row.max_uses is not None and row.uses >= row.max_uses:
        raise Unauthenticated(REFUSED)
    row.uses += 1
    session.add(row)
    return row


def enrol(
    *,
    session: Session,
    request: fleet_pb2.RegisterRequest,
    bootstrap: str,
    ca: ControllerCA | None,
    caller: str = "",
) -> Enrolled:
    """Register: a new device (with a valid enrolment token), the renewal of an enrolled one by
    itself (``caller`` = the device id its own credential proved), or the operator's
    re-enrolment of a device (a token bound to that id). Asking for an existing id in any other
    way is refused (the takeover of finding 1); the old credential stops working at once, since
    only the newest certificate serial (or token) is recorded."""
    check_device_message(request, "register")
    device: Device | None = None
    if request.device_id and caller == request.device_id:
        device = session.get(Device, request.device_id)
        if device is None or device.revoked:
            raise PermissionDenied(REENROL)
    else:
        row = spend(session=session, token=request.enrollment_token, bootstrap=bootstrap)
        bound = row.device_id if row is not None else None
        if request.device_id and request.device_id != bound:
            raise PermissionDenied(REENROL)
        if bound:
            device = session.get(Device, bound)
            if device is None:
                raise PermissionDenied(REENROL)
            device.revoked = False
    if device is None:
        device = Device(tags=sorted(set(request.tags)))
    apply_registration(device, request)
    certificate, token = b"", ""
    if ca is not None:
        if not request.csr_pem:
            raise InvalidInput(
                "TLS enrolment needs a CSR (csr_pem); an agent started with --insecure has none"
            )
        cert = ca.issue_client(request.csr_pem, device.id)
        device.token_hash = hash_token(cert_secret(cert.serial_number))
        certificate = cert.public_bytes(serialization.Encoding.PEM)
    else:
        token = secrets.token_urlsafe(32)
        device.token_hash = hash_token(token)
    session.add(device)
    session.flush()
    return Enrolled(device, token, certificate, secrets.token_urlsafe(24))
