"""Per-device MQTT accounts for the broker the controller starts (Mosquitto).

Each device gets its own broker user at enrolment (username = device id, a random password
the Register answer carries once); the ACL lets a user write only under its own subtree
(``pattern write {prefix}/devices/%u/#``) and read nothing, and anonymous clients are refused.
The controller has its own account (password kept 0600 in the data dir) that reads the tree.
The password file holds PBKDF2-SHA512 hashes in Mosquitto 2's ``$7$`` format; after a change
the broker is told to reload it (SIGHUP). A broker run by the operator is configured the same
way from ``deploy/mosquitto/`` (see docs/security.md).
"""

from __future__ import annotations

import base64
import builtins
import hashlib
import hmac
import secrets
import threading
from collections.abc import Callable
from pathlib import Path

from controller.core.private import private_dir, read_secret, write_private

CONTROLLER_USER = "edgeloop-controller"
ITERATIONS = 101  # what mosquitto_passwd 2.0 writes
_B64 = base64.b64encode


def mosquitto_hash(password: str, salt: bytes | None = None) -> str:
    """A password-file hash Mosquitto 2 accepts (``$7$`` = PBKDF2-HMAC-SHA512)."""
    salt = salt if salt is not None else secrets.token_bytes(12)
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, ITERATIONS, 64)
    return f"$7${ITERATIONS}${_B64(salt).decode()}${_B64(digest).decode()}"


def check_hash(password: str, stored: str) -> bool:
    _, kind, iterations, salt, digest = stored.split("$")
    if kind != "7":
        return False
    mine = hashlib.pbkdf2_hmac("sha512", password.encode(), base64.b64decode(salt), int(iterations), 64)
    return hmac.compare_digest(mine, base64.b64decode(digest))


def acl_text(prefix: str) -> str:
    return (
        "# written by the edgeloop controller: devices write only their own subtree, read nothing\n"
        f"user {CONTROLLER_USER}\ntopic readwrite {prefix}/#\n\n"
        f"pattern write {prefix}/devices/%u/#\n"
    )


class BrokerAccounts:
    """The password file and ACL of the controller's broker, and the reload hook."""

    def __init__(self, directory: Path, prefix: str = "edgeloop") -> None:
        self.dir = private_dir(directory)
        self.passwd = self.dir / "passwd"
        self.acl = self.dir / "acl"
        self.reload: Callable[[], None] | None = None
        self._lock = threading.Lock()
        secret = self.dir / "controller_password"
        if secret.exists():
            self.controller_password = read_secret(secret)
        else:
            self.controller_password = secrets.token_urlsafe(24)
            write_private(secret, self.controller_password + "\n")
        write_private(self.acl, acl_text(prefix))
        self._users = self._read()
        self._users[CONTROLLER_USER] = self._users.get(CONTROLLER_USER, "")
        if not self._users[CONTROLLER_USER] or not check_hash(
            self.controller_password, self._users[CONTROLLER_USER]
        ):
            self._users[CONTROLLER_USER] = mosquitto_hash(self.controller_password)
        self._write()

    def _read(self) -> dict[str, str]:
        if not self.passwd.exists():
            return {}
        users = {}
        for line in self.passwd.read_text(encoding="utf-8").splitlines():
            user, sep, stored = line.partition(":")
            if sep and user:
                users[user] = stored
        return users

    def _write(self) -> None:
        write_private(self.passwd, "".join(f"{u}:{h}\n" for u, h in sorted(self._users.items())))

    def _changed(self) -> None:
        self._write()
        if self.reload is not None:
            self.reload()

    def set(self, user: str, password: str) -> None:
        """Create or replace ``user``'s account (a device at enrolment)."""
        if user == CONTROLLER_USER or not user or ":" in user or "\n" in user:
            raise ValueError(f"invalid broker user {user!r}")
        with self._lock:
            self._users[user] = mosquitto_hash(password)
            self._changed()

    def remove(self, user: str) -> None:
        """Delete ``user``'s account (a revoked device): it cannot connect again."""
        with self._lock:
            if self._users.pop(user, None) is not None and user != CONTROLLER_USER:
                self._changed()

    def users(self) -> builtins.set[str]:  # `set` alone is the method above
        with self._lock:
            return set(self._users)

    def controller_url(self, host: str, port: int) -> str:
        return f"mqtt://{CONTROLLER_USER}:{self.controller_password}@{host}:{port}"
