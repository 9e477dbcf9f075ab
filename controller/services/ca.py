"""The controller's own small certificate authority (``cryptography``), made on first start.

- The CA key and certificate live in ``keys/`` (key 0600). The CA certificate is also the TLS
  certificate of the enrolment port: an agent that has only the CA's fingerprint (from the
  enrolment command) reads it in the handshake, checks the fingerprint, and from then on trusts
  only this CA, so a man-in-the-middle at first contact is refused before a token is sent.
- The main gRPC port presents a server certificate issued by the CA (made at each start for the
  names configured) and requires a client certificate issued by the CA.
- Each device gets a client certificate whose common name is its device id: the controller
  takes the id from the verified peer certificate, never from the request. The serial of the
  one valid certificate per device is recorded, so re-enrolment and revocation invalidate the
  older ones.

Every certificate carries the DNS name ``edgeloop-controller`` (``TLS_NAME``) and agents verify
that name (``grpc.ssl_target_name_override``): the trust is the pinned CA, not a host name, so
the controller may be reached by any address.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import ipaddress
import logging
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from controller.core.private import created_once, write_private
from controller.errors import InvalidInput

log = logging.getLogger(__name__)
TLS_NAME = "edgeloop-controller"
CA_KEY, CA_CERT = "ca_key.pem", "ca_cert.pem"
CA_DAYS, SERVER_DAYS, CLIENT_DAYS = 3650, 365, 365


def fingerprint(cert_der: bytes) -> str:
    """``sha256:<hex>`` of a certificate's DER bytes (what the enrolment command carries)."""
    return "sha256:" + hashlib.sha256(cert_der).hexdigest()


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _san(names: tuple[str, ...]) -> x509.SubjectAlternativeName:
    entries: list[x509.GeneralName] = []
    for name in dict.fromkeys((TLS_NAME, "localhost", "127.0.0.1", "::1", *names)):
        try:
            entries.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            entries.append(x509.DNSName(name))
    return x509.SubjectAlternativeName(entries)


@dataclass
class ControllerCA:
    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate
    server_key_pem: bytes
    server_cert_pem: bytes

    @property
    def cert_pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    @property
    def key_pem(self) -> bytes:
        return _pem_key(self.key)

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.cert.public_bytes(serialization.Encoding.DER))

    def issue_client(self, csr_pem: bytes, device_id: str) -> x509.Certificate:
        """A client certificate for ``device_id`` (its common name), for the key in the CSR.
        Only the CSR's public key is used (its subject is ignored): the id is the controller's."""
        try:
            csr = x509.load_pem_x509_csr(csr_pem)
        except ValueError as exc:
            raise InvalidInput("malformed certificate signing request (PEM CSR expected)") from exc
        if not csr.is_signature_valid:
            raise InvalidInput("the CSR is not signed by its own key")
        public = csr.public_key()
        if not isinstance(public, ec.EllipticCurvePublicKey):
            raise InvalidInput("the CSR key must be an EC key (P-256)")
        now = _now()
        return (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, device_id)]))
            .issuer_name(self.cert.subject)
            .public_key(public)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=CLIENT_DAYS))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
            .add_extension(
                x509.SubjectAlternativeName([x509.UniformResourceIdentifier(f"edgeloop:device:{device_id}")]),
                critical=False,
            )
            .sign(self.key, hashes.SHA256())
        )


def _make_ca() -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "edgeloop controller CA")])
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=CA_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )  # fmt: skip
        .add_extension(_san(()), critical=False)  # it is also the enrolment port's certificate
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return key, cert


def _server_cert(
    ca_key: ec.EllipticCurvePrivateKey, ca_cert: x509.Certificate, names: tuple[str, ...]
) -> tuple[bytes, bytes]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, TLS_NAME)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=SERVER_DAYS))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(_san(names), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    return _pem_key(key), cert.public_bytes(serialization.Encoding.PEM)


def load_or_create_ca(keys_dir: Path, names: tuple[str, ...] = ()) -> ControllerCA:
    """The CA of this data dir (created on first start) and a fresh server certificate."""
    key_path, cert_path = keys_dir / CA_KEY, keys_dir / CA_CERT
    with created_once(keys_dir):  # controllers sharing the data dir share one CA
        if key_path.exists() and cert_path.exists():
            key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
            if not isinstance(key, ec.EllipticCurvePrivateKey):
                raise ValueError(f"{key_path} is not an EC private key")
            cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        else:
            key, cert = _make_ca()
            write_private(key_path, _pem_key(key))
            write_private(cert_path, cert.public_bytes(serialization.Encoding.PEM))
            log.info("created the controller CA in %s", keys_dir)
    server_key, server_cert = _server_cert(key, cert, names)
    return ControllerCA(key=key, cert=cert, server_key_pem=server_key, server_cert_pem=server_cert)


def peer_identity(pem: bytes) -> tuple[str, int]:
    """(device id, serial) of a verified peer certificate (gRPC has checked the chain)."""
    cert = x509.load_pem_x509_certificate(pem)
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return (str(names[0].value) if names else ""), cert.serial_number
