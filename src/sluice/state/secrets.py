"""Secrets kept in the state database (the SMTP password, webhook signing secrets) are
encrypted at rest (AES-256-GCM) under a key kept outside the database: a file created on
first start with mode 0600 (``DATA_DIR/secret.key`` by default). A copy of the database, or
a reader of it, learns nothing of them without the file. Servers sharing one state database
share the file too.

A sealed value reads ``enc1:`` and the base64 of nonce, ciphertext and tag; a value without
the prefix is one written before encryption, read as it is (and sealed at the next start).
"""

from __future__ import annotations

import base64
import os
import secrets
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

PREFIX = "enc1:"


class SecretUnreadable(ValueError):
    """A sealed value that this key cannot open (another server's key file, a damaged value)."""


class SecretBox:
    def __init__(self, key: bytes):
        if len(key) != 32:
            raise ValueError("a secret key is 32 bytes")
        self._aead = AESGCM(key)

    @classmethod
    def from_file(cls, path: Path) -> SecretBox:
        """The key in ``path``, created (32 random bytes, mode 0600) if there is none."""
        path = Path(path)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            raw = path.read_bytes().strip()
            if (path.stat().st_mode & 0o077) and path.owner() == _me():
                path.chmod(0o600)
            try:
                key = base64.b64decode(raw, validate=True)
            except ValueError:
                key = b""
            if len(key) != 32:
                raise ValueError(
                    f"{path}: not a key written by Sluice (32 bytes, base64); restore it, or move it "
                    "away to make a new one (secrets stored under the old one are then lost)"
                ) from None
            return cls(key)
        key = secrets.token_bytes(32)
        with os.fdopen(fd, "wb") as f:
            f.write(base64.b64encode(key) + b"\n")
            f.flush()
            os.fsync(f.fileno())
        return cls(key)

    def seal(self, text: str) -> str:
        if not text:
            return ""
        nonce = secrets.token_bytes(12)
        return PREFIX + base64.b64encode(nonce + self._aead.encrypt(nonce, text.encode(), None)).decode()

    def open(self, value: str) -> str:
        if not value.startswith(PREFIX):
            return value  # written before encryption
        raw = base64.b64decode(value[len(PREFIX) :])
        try:
            return self._aead.decrypt(raw[:12], raw[12:], None).decode()
        except InvalidTag:
            raise SecretUnreadable(
                "a stored secret cannot be decrypted with this server's key file: servers sharing the state "
                "database need the same key file (state.secret_key_file)"
            ) from None


def _me() -> str:
    import pwd

    return pwd.getpwuid(os.getuid()).pw_name
