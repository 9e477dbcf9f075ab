"""The controller's ed25519 artifact-signing key, kept in the data dir.

An artifact's signature is ed25519 over the raw 32-byte sha256 digest of its bytes; agents get
the public key from Register and refuse anything that does not verify.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from controller.core.private import created_once, write_private

log = logging.getLogger(__name__)
KEY_FILE = "artifact_signing_ed25519.pem"


@dataclass
class Signer:
    private_key: Ed25519PrivateKey

    @property
    def public_key_bytes(self) -> bytes:
        return self.private_key.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )

    def sign_sha256(self, sha256_hex: str) -> str:
        return self.private_key.sign(bytes.fromhex(sha256_hex)).hex()


def load_or_create_signer(keys_dir: Path) -> Signer:
    path = keys_dir / KEY_FILE
    with created_once(keys_dir):  # controllers sharing the data dir share one signing key
        if path.exists():
            key = serialization.load_pem_private_key(path.read_bytes(), password=None)
            if not isinstance(key, Ed25519PrivateKey):
                raise ValueError(f"{path} is not an ed25519 private key")
            return Signer(key)
        key = Ed25519PrivateKey.generate()
        pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        write_private(path, pem)
    log.info("created artifact signing key %s", path)
    return Signer(key)
