"""Encryption of personal data at rest (names, phone numbers) with AES-GCM.

The key lives in a file apart from the database (mode 0600, created on first start), so a
copy of the database alone reveals nothing personal. Each value is bound to its row and column
through the associated data, so ciphertexts cannot be swapped between rows unnoticed.
"""

from __future__ import annotations

import base64
import hashlib
import os
import secrets
from pathlib import Path

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

_VERSION = b"\x01"
_NONCE = 12


class KeyFileError(Exception):
    pass


def load_or_create_key(path: Path) -> bytes:
    """Read the base64 key at ``path``; create a fresh 256-bit one (0600) if missing."""
    if path.exists():
        return load_key(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    key = AESGCM.generate_key(bit_length=256)
    write_key(path, key)
    return key


def load_key(path: Path) -> bytes:
    """Read the base64 key at ``path``: 256 bits, readable by its owner only."""
    mode = path.stat().st_mode & 0o077
    if mode:
        raise KeyFileError(f"{path} must not be readable by group or others (chmod 600)")
    try:
        raw = base64.b64decode(path.read_bytes().strip(), validate=True)
    except ValueError:
        raw = b""
    if len(raw) != 32:
        raise KeyFileError(f"{path} does not hold a 256-bit key")
    return raw


def write_key(path: Path, key: bytes) -> None:
    """Write atomically with 0600 from the first byte (no window where others could read)."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(base64.b64encode(key) + b"\n")
    os.replace(tmp, path)


def field_binding(column: str, person_id: str) -> str:
    """The ``aad`` of a person's encrypted field: each value is bound to its row and column,
    so a value copied into another row or column does not open."""
    return f"people.{column}:{person_id}"


class FieldCipher:
    """Encrypts one field value at a time; ``aad`` names where the value belongs."""

    def __init__(self, key: bytes) -> None:
        self._aead = AESGCM(key)
        self.key_id = hashlib.sha256(key).digest()[:4]

    def encrypt(self, plaintext: str, aad: str) -> bytes:
        nonce = secrets.token_bytes(_NONCE)
        return _VERSION + self.key_id + nonce + self._aead.encrypt(nonce, plaintext.encode(), aad.encode())

    def decrypt(self, blob: bytes, aad: str) -> str:
        if blob[:1] != _VERSION or blob[1:5] != self.key_id:
            raise KeyFileError("value was encrypted under another key")
        nonce = blob[5 : 5 + _NONCE]
        return self._aead.decrypt(nonce, blob[5 + _NONCE :], aad.encode()).decode()
