"""The master key (key-encryption key) and envelope encryption primitives.

The master key never sits in the database. It is either a random 256-bit key in a 0600 file
(default ``<data_dir>/master.key``) or derived from a passphrase with Argon2id (the salt and
parameters, which are not secret, are kept in the database's ``meta`` table). The database keeps
only a key id (an HMAC of the key) so a wrong key is refused with a clear message.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from unityctl.core.errors import DecryptionError, MasterKeyError
from unityctl.core.paths import write_private_file

KEY_BYTES = 32
NONCE_BYTES = 12
ARGON2_DEFAULTS = {"time_cost": 3, "memory_cost": 65536, "parallelism": 2}


@dataclass(frozen=True)
class Keyring:
    """The master key in memory. Its repr never shows the key."""

    master_key: bytes = field(repr=False)
    source: str = "file"

    def __post_init__(self) -> None:
        if len(self.master_key) != KEY_BYTES:
            raise MasterKeyError(f"master key must be {KEY_BYTES} bytes, got {len(self.master_key)}")

    @property
    def key_id(self) -> str:
        """A public identifier of this key (an HMAC, reveals nothing about the key)."""
        return hmac.new(self.master_key, b"unityctl key id v1", hashlib.sha256).hexdigest()[:16]

    def derive(self, purpose: str) -> bytes:
        """A 256-bit key for one purpose, derived with HKDF-SHA256."""
        return HKDF(algorithm=hashes.SHA256(), length=32, salt=None,
                    info=f"unityctl {purpose}".encode()).derive(self.master_key)

    def wrap(self, data_key: bytes, associated_data: bytes) -> bytes:
        """Encrypt a data key under the master key (nonce prepended)."""
        nonce = os.urandom(NONCE_BYTES)
        return nonce + AESGCM(self.master_key).encrypt(nonce, data_key, b"wrap|" + associated_data)

    def unwrap(self, wrapped: bytes, associated_data: bytes) -> bytes:
        """Decrypt a data key; raises DecryptionError when it was not wrapped by this key for this AD."""
        try:
            return AESGCM(self.master_key).decrypt(wrapped[:NONCE_BYTES], wrapped[NONCE_BYTES:],
                                                   b"wrap|" + associated_data)
        except (InvalidTag, ValueError):
            raise DecryptionError("failed authentication") from None


@dataclass(frozen=True)
class Envelope:
    """A secret encrypted under its own data key, which is wrapped by the master key."""

    wrapped_key: bytes
    nonce: bytes
    ciphertext: bytes


def seal(keyring: Keyring, plaintext: bytes, associated_data: bytes) -> Envelope:
    """Encrypt ``plaintext`` with a fresh AES-256-GCM data key bound to ``associated_data``."""
    data_key = AESGCM.generate_key(bit_length=256)
    nonce = os.urandom(NONCE_BYTES)
    ciphertext = AESGCM(data_key).encrypt(nonce, plaintext, associated_data)
    return Envelope(keyring.wrap(data_key, associated_data), nonce, ciphertext)


def open_envelope(keyring: Keyring, envelope: Envelope, associated_data: bytes) -> bytes:
    """Decrypt an envelope; DecryptionError when tampered, moved, or sealed under another key."""
    data_key = keyring.unwrap(envelope.wrapped_key, associated_data)
    try:
        return AESGCM(data_key).decrypt(envelope.nonce, envelope.ciphertext, associated_data)
    except (InvalidTag, ValueError):
        raise DecryptionError("failed authentication") from None


def rewrap(old: Keyring, new: Keyring, wrapped_key: bytes, associated_data: bytes) -> bytes:
    """Re-wrap a data key under a new master key without touching the ciphertext."""
    return new.wrap(old.unwrap(wrapped_key, associated_data), associated_data)


# --- master key sources -------------------------------------------------------------------------

def generate_master_key() -> bytes:
    return os.urandom(KEY_BYTES)


def write_key_file(path: Path, key: bytes) -> None:
    """Write a master key file (hex, mode 0600)."""
    write_private_file(path, key.hex().encode() + b"\n")


def read_key_file(path: Path) -> bytes:
    """Read a master key file; MasterKeyError when missing, unreadable or malformed."""
    try:
        text = path.read_text(encoding="ascii").strip()
    except FileNotFoundError:
        raise MasterKeyError(f"master key file not found: {path} (run `unityctl init`, or set "
                             "UNITYCTL_PASSPHRASE if this database uses a passphrase)") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise MasterKeyError(f"cannot read master key file {path}: {exc.__class__.__name__}") from None
    try:
        key = bytes.fromhex(text)
    except ValueError:
        raise MasterKeyError(f"master key file {path} is malformed (expected 64 hex characters)") from None
    if len(key) != KEY_BYTES:
        raise MasterKeyError(f"master key file {path} is malformed (expected 64 hex characters)")
    return key


def new_passphrase_params() -> dict[str, object]:
    """Fresh Argon2id parameters (random salt) for a passphrase-derived master key."""
    return {"salt": base64.b64encode(os.urandom(16)).decode(), **ARGON2_DEFAULTS}


def derive_from_passphrase(passphrase: str, params: dict[str, object]) -> bytes:
    """Argon2id(passphrase, salt) -> 256-bit master key."""
    from argon2.low_level import Type, hash_secret_raw

    if not passphrase:
        raise MasterKeyError("the passphrase is empty")
    return hash_secret_raw(
        passphrase.encode(), base64.b64decode(str(params["salt"])),
        time_cost=int(params["time_cost"]), memory_cost=int(params["memory_cost"]),  # type: ignore[arg-type]
        parallelism=int(params["parallelism"]), hash_len=KEY_BYTES, type=Type.ID,  # type: ignore[arg-type]
    )


def params_to_text(params: dict[str, object]) -> str:
    return json.dumps(params, sort_keys=True)


def params_from_text(text: str) -> dict[str, object]:
    return json.loads(text)
