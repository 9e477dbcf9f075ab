"""The agent's side of TLS: its key and CSR, and the pinned controller CA.

At first contact the agent knows only the CA's fingerprint (``sha256:<hex>``, from the
enrolment command). The controller's enrolment port presents the CA certificate itself; the
agent reads it in a TLS handshake, compares its SHA-256 with the pin, and refuses anything
else before a token is sent, so a man-in-the-middle at first contact gets nothing. From then
on only that CA is trusted, for the enrolment call and every later mutual-TLS call.
"""

from __future__ import annotations

import hashlib
import hmac
import socket
import ssl

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

TLS_NAME = "edgeloop-controller"  # the name every controller certificate carries (controller/services/ca.py)


class UntrustedController(Exception):
    """The controller's CA is not the pinned one (or no pin was given)."""


def new_key_and_csr(name: str) -> tuple[bytes, bytes]:
    """A fresh EC P-256 key (PEM) and a CSR for it; the controller decides the certificate's name."""
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, (name or "device")[:64])]))
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return key_pem, csr.public_bytes(serialization.Encoding.PEM)


def normalise_fingerprint(text: str) -> str:
    hexpart = text.strip().lower().removeprefix("sha256:").replace(":", "")
    if len(hexpart) != 64 or any(c not in "0123456789abcdef" for c in hexpart):
        raise UntrustedController(f"not a SHA-256 fingerprint: {text!r} (expected sha256:<64 hex digits>)")
    return hexpart


def fetch_pinned_ca(target: str, pin: str, *, timeout: float = 10.0) -> bytes:
    """The CA certificate (PEM) the enrolment port at ``target`` presents, if it matches ``pin``."""
    if not pin:
        raise UntrustedController(
            "no CA fingerprint to pin: pass --ca-fingerprint (printed by `edgeloop controller serve`) "
            "or --ca-file, or run both sides with --insecure"
        )
    want = normalise_fingerprint(pin)
    host, _, port = target.rpartition(":")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # verified below, against the pin, not a public CA
    context.set_alpn_protocols(["h2"])
    with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout) as sock:
        with context.wrap_socket(sock, server_hostname=TLS_NAME) as tls:
            der = tls.getpeercert(binary_form=True)
    if not der or not hmac.compare_digest(hashlib.sha256(der).hexdigest(), want):
        got = hashlib.sha256(der or b"").hexdigest()
        raise UntrustedController(
            f"the controller at {target} presents CA sha256:{got}, not the pinned sha256:{want}: "
            "refusing to enrol (a man-in-the-middle, or the wrong controller)"
        )
    return ssl.DER_cert_to_PEM_cert(der).encode()
