"""Pure SSH key building blocks: generate, import, parse, fingerprint, export.

Nothing here touches a database, a network or the terminal. Private key material only ever
appears in :attr:`KeyMaterial.private_openssh` (never in a repr, an error message or a log line);
the service layer encrypts it at rest.

Naming: ``key_type`` is the key *family* (``"ed25519"``, ``"rsa"``, ``"ecdsa"``, ``"dsa"``,
``"ed25519-sk"``, ``"ecdsa-sk"``); ``ssh_type`` is the name OpenSSH writes in front of the blob
(``"ssh-ed25519"``, ``"ssh-ed25519-cert-v01@openssh.com"``, ...). Fingerprints are exactly what
``ssh-keygen -lf`` prints (``SHA256:`` + unpadded base64 of the SHA-256 of the key blob; for a
certificate, of the certified key's blob).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
import struct
import warnings
from dataclasses import dataclass, field
from typing import Literal

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed25519, rsa

from unityctl.core.errors import DecryptionError, ParseError, UsageError

KeyType = Literal["ed25519", "rsa", "ecdsa"]

RSA_DEFAULT_BITS = 3072
RSA_MIN_BITS = 2048
# Beyond this, generation takes minutes and OpenSSH itself refuses (SSH_RSA_MAXIMUM_MODULUS_SIZE).
RSA_MAX_BITS = 16384
ECDSA_DEFAULT_BITS = 256
_ECDSA_CURVES: dict[int, ec.EllipticCurve] = {
    256: ec.SECP256R1(),
    384: ec.SECP384R1(),
    521: ec.SECP521R1(),
}

_CERT_SUFFIX = "-cert-v01@openssh.com"
# Wire name -> (family, fixed bit size or None when it comes from the key itself).
_SSH_TYPES: dict[str, tuple[str, int | None]] = {
    "ssh-ed25519": ("ed25519", 256),
    "ssh-rsa": ("rsa", None),
    "ssh-dss": ("dsa", None),
    "ecdsa-sha2-nistp256": ("ecdsa", 256),
    "ecdsa-sha2-nistp384": ("ecdsa", 384),
    "ecdsa-sha2-nistp521": ("ecdsa", 521),
    # Security-key types: cryptography cannot load them, but they are common in authorized_keys
    # files, so they are parsed and fingerprinted from the blob alone.
    "sk-ssh-ed25519@openssh.com": ("ed25519-sk", 256),
    "sk-ecdsa-sha2-nistp256@openssh.com": ("ecdsa-sk", 256),
}
_SK_TYPES = {"sk-ssh-ed25519@openssh.com", "sk-ecdsa-sha2-nistp256@openssh.com"}
# Certificate wire name -> the plain key type it certifies (security-key certificates are not
# loadable by cryptography and are reported as unsupported).
_CERT_TYPES = {base + "-cert-v01@openssh.com": base for base in _SSH_TYPES if base not in _SK_TYPES}
# A comment is free text but must stay on one line of an authorized_keys / .pub file.
_BAD_COMMENT = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")


@dataclass(frozen=True)
class KeyMaterial:
    """A key pair. ``private_openssh`` is an *unencrypted* OpenSSH private key (PEM text)."""

    private_openssh: str = field(repr=False)
    public_openssh: str
    key_type: str
    bits: int
    fingerprint_sha256: str
    comment: str

    @property
    def weakness(self) -> str | None:
        """Why this key should be replaced, or None when it is fine."""
        return weakness(self.key_type, self.bits)

    def __repr__(self) -> str:
        # Written out by hand so that no future field can drag the private key into a log line.
        return (
            f"KeyMaterial(key_type={self.key_type!r}, bits={self.bits}, "
            f"fingerprint_sha256={self.fingerprint_sha256!r}, comment={self.comment!r}, "
            "private_openssh=<hidden>)"
        )

    __str__ = __repr__

    def __reduce__(self) -> object:
        # Pickling would copy the secret into caches and queues unnoticed; refuse it.
        raise TypeError("KeyMaterial holds a private key and cannot be pickled")


@dataclass(frozen=True)
class PublicKey:
    """One parsed public key or certificate line (``.pub`` file or ``authorized_keys`` line)."""

    key_type: str
    bits: int
    fingerprint: str
    comment: str
    blob_b64: str
    ssh_type: str
    is_certificate: bool = False
    options: str | None = None

    @property
    def line(self) -> str:
        """The key as ``<ssh_type> <blob> [comment]``, without authorized_keys options."""
        return " ".join(p for p in (self.ssh_type, self.blob_b64, self.comment) if p)

    @property
    def weakness(self) -> str | None:
        """Why this key should be replaced, or None when it is fine."""
        return weakness(self.key_type, self.bits)


def weakness(key_type: str, bits: int | None) -> str | None:
    """Say why a key of this type and size is weak.

    In: a family (``"rsa"``) or wire name (``"ssh-rsa"``, certificate names too) and its bits.
    Out: one line such as ``"RSA 1024 < 2048 bits"`` or ``"DSA keys are deprecated"``; None if fine.
    """
    family = _family(key_type)
    if family == "dsa":
        return "DSA keys are deprecated"
    if family == "rsa" and bits is not None and bits < RSA_MIN_BITS:
        return f"RSA {bits} < {RSA_MIN_BITS} bits"
    return None


def generate(key_type: KeyType, bits: int | None = None, comment: str = "") -> KeyMaterial:
    """Generate a new key pair.

    In: ``key_type`` ed25519 | rsa (``bits`` default 3072, at least 2048) | ecdsa (256, 384 or
    521, default 256); ``comment`` goes on the public line.
    Out: :class:`KeyMaterial` with an unencrypted OpenSSH private key.
    Raises: UsageError for an unknown type, a bad size or a multi-line comment.
    """
    _check_comment(comment)
    private: ed25519.Ed25519PrivateKey | rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey
    if key_type == "ed25519":
        if bits not in (None, 256):
            raise UsageError(f"ed25519 keys have a fixed size of 256 bits, not {bits}")
        private = ed25519.Ed25519PrivateKey.generate()
    elif key_type == "rsa":
        size = RSA_DEFAULT_BITS if bits is None else bits
        if size < RSA_MIN_BITS:
            raise UsageError(f"RSA keys need at least {RSA_MIN_BITS} bits, got {size}")
        if size > RSA_MAX_BITS:
            raise UsageError(f"RSA keys larger than {RSA_MAX_BITS} bits are not supported")
        private = rsa.generate_private_key(public_exponent=65537, key_size=size)
    elif key_type == "ecdsa":
        size = ECDSA_DEFAULT_BITS if bits is None else bits
        if size not in _ECDSA_CURVES:
            raise UsageError(f"ECDSA keys are 256, 384 or 521 bits, not {size}")
        private = ec.generate_private_key(_ECDSA_CURVES[size])
    else:
        raise UsageError(f"unknown key type {key_type!r}: use ed25519, rsa or ecdsa")
    return _material(private, comment)


def load_private(
    data: bytes, passphrase: bytes | None = None, *, comment: str | None = None
) -> KeyMaterial:
    """Import a private key file.

    In: the bytes of an OpenSSH, PEM (PKCS#1, PKCS#8, SEC1, DSA) or DER private key, encrypted or
    not, and its passphrase (ignored when the key is not encrypted). ``comment`` overrides the
    comment; by default it is read from an unencrypted OpenSSH key, else empty.
    Out: :class:`KeyMaterial` (DSA keys load and report a :attr:`~KeyMaterial.weakness`).
    Raises: UsageError (passphrase needed, unsupported key type or format), DecryptionError
    (wrong passphrase), ParseError (not a private key, corrupt key).
    """
    if comment is not None:
        _check_comment(comment)
    stripped = data.strip()
    if b"-----BEGIN OPENSSH PRIVATE KEY-----" in stripped:
        private = _load_openssh(stripped, passphrase)
        if comment is None:
            comment = _openssh_comment(stripped) or ""
    elif stripped.startswith(b"PuTTY-User-Key-File"):
        raise UsageError("PuTTY .ppk keys are not supported: convert with 'puttygen -O private-openssh'")
    elif b"-----BEGIN" in stripped:
        if b"PRIVATE KEY-----" not in stripped:
            raise ParseError("not a private key (the PEM block holds a public key or certificate)")
        private = _load_pem(stripped, passphrase)
    elif _looks_like_public_line(stripped):
        raise ParseError("not a private key (this is an OpenSSH public key line)")
    else:
        private = _load_der(stripped, passphrase)
    return _material(private, comment or "")


def export_private(material: KeyMaterial, passphrase: bytes | None = None) -> str:
    """Write the private key in OpenSSH format, protected by ``passphrase`` when given.

    Out: PEM text (``-----BEGIN OPENSSH PRIVATE KEY-----``); encrypted with bcrypt-pbkdf and
    AES-256 when a passphrase is given. The comment is not carried (cryptography writes it empty).
    Raises: UsageError for an empty passphrase or when bcrypt is missing.
    """
    if passphrase is not None and len(passphrase) == 0:
        raise UsageError("empty passphrase: pass no passphrase for an unencrypted key")
    private = _load_openssh(material.private_openssh.encode(), None)
    encryption: serialization.KeySerializationEncryption = (
        serialization.NoEncryption()
        if passphrase is None
        else serialization.BestAvailableEncryption(passphrase)
    )
    try:
        with _quiet_dsa():
            out = private.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, encryption
            )
    except UnsupportedAlgorithm:
        # cryptography needs the bcrypt module for the OpenSSH key-derivation function.
        raise UsageError("passphrase-protected OpenSSH keys need the 'bcrypt' package") from None
    return out.decode()


def parse_public(line: str) -> PublicKey:
    """Parse one public key or certificate line.

    In: ``[options] <ssh_type> <base64 blob> [comment]`` as found in ``.pub`` and
    ``authorized_keys`` files (trailing newline allowed).
    Out: :class:`PublicKey`; for a certificate, bits and fingerprint are the certified key's,
    like ``ssh-keygen -l`` prints.
    Raises: ParseError for anything else (comment lines, blank lines, corrupt blobs, types the
    blob contradicts), UsageError for an unsupported key type.
    """
    text = line.strip()
    if not text or text.startswith("#"):
        raise ParseError("not a public key line (blank or comment)")
    if "\n" in text or "\r" in text:
        raise ParseError("a public key line must be one line")
    options: str | None = None
    first, _, rest = _split_field(text)
    if not _is_key_type_token(first) and not _looks_like_type_then_blob(first, rest):
        options, rest = _split_options(text)
        if not rest:
            raise ParseError("not a public key line (options without a key)")
    else:
        rest = text
    ssh_type, _, rest = _split_field(rest)
    blob_b64, _, comment = _split_field(rest)
    comment = comment.strip()
    if not blob_b64:
        raise ParseError("not a public key line (no key data after the type)")
    if ssh_type not in _SSH_TYPES and ssh_type not in _CERT_TYPES:
        if not _looks_like_type_then_blob(ssh_type, blob_b64):
            raise ParseError("not a public key line")
        raise UsageError(f"unsupported key type {_clip(ssh_type)!r}")
    try:
        blob = base64.b64decode(blob_b64, validate=True)
    except (binascii.Error, ValueError):
        raise ParseError(f"corrupt {ssh_type} key: the key data is not valid base64") from None
    if _first_string(blob) != ssh_type.encode():
        raise ParseError(f"corrupt {ssh_type} key: the key data is of another type")
    is_cert = ssh_type in _CERT_TYPES
    if ssh_type in _SK_TYPES:
        family, bits = _SSH_TYPES[ssh_type]
        return PublicKey(
            key_type=family,
            bits=bits or 0,
            fingerprint=fingerprint_of_blob(blob),
            comment=comment,
            blob_b64=blob_b64,
            ssh_type=ssh_type,
            options=options,
        )
    try:
        with _quiet_dsa():
            identity = serialization.load_ssh_public_identity(f"{ssh_type} {blob_b64}".encode())
    except UnsupportedAlgorithm:
        raise UsageError(f"unsupported key type {ssh_type!r}") from None
    except ValueError:
        raise ParseError(f"corrupt {ssh_type} key: the key data does not decode") from None
    key = identity.public_key() if isinstance(identity, serialization.SSHCertificate) else identity
    family, bits = _family_and_bits(key)
    return PublicKey(
        key_type=family,
        bits=bits,
        fingerprint=_fingerprint_of_public(key),
        comment=comment,
        blob_b64=blob_b64,
        ssh_type=ssh_type,
        is_certificate=is_cert,
        options=options,
    )


def fingerprint_of_blob(blob: bytes) -> str:
    """``SHA256:<unpadded base64>`` of a raw SSH key blob, as ``ssh-keygen -l`` prints it."""
    digest = hashlib.sha256(blob).digest()
    return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


# --- internals ---------------------------------------------------------------------------------

_PrivateKey = (
    ed25519.Ed25519PrivateKey | rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | dsa.DSAPrivateKey
)
_PublicKey = (
    ed25519.Ed25519PublicKey | rsa.RSAPublicKey | ec.EllipticCurvePublicKey | dsa.DSAPublicKey
)


class _quiet_dsa(warnings.catch_warnings):
    """Silence cryptography's DSA deprecation warnings: we report DSA weakness ourselves."""

    def __enter__(self) -> None:
        super().__enter__()
        warnings.simplefilter("ignore")


def _family(key_type: str) -> str:
    name = _CERT_TYPES.get(key_type, key_type)
    if name in _SSH_TYPES:
        return _SSH_TYPES[name][0]
    return name.lower()


def _check_comment(comment: str) -> None:
    if _BAD_COMMENT.search(comment):
        raise UsageError("a key comment must be a single line without control characters")


def _family_and_bits(key: object) -> tuple[str, int]:
    if isinstance(key, ed25519.Ed25519PublicKey | ed25519.Ed25519PrivateKey):
        return "ed25519", 256
    if isinstance(key, rsa.RSAPublicKey | rsa.RSAPrivateKey):
        return "rsa", key.key_size
    if isinstance(key, ec.EllipticCurvePublicKey | ec.EllipticCurvePrivateKey):
        if key.curve.key_size not in _ECDSA_CURVES or not isinstance(
            key.curve, type(_ECDSA_CURVES[key.curve.key_size])
        ):
            raise UsageError(f"unsupported key type: ECDSA curve {key.curve.name} is not usable with SSH")
        return "ecdsa", key.curve.key_size
    if isinstance(key, dsa.DSAPublicKey | dsa.DSAPrivateKey):
        return "dsa", key.key_size
    raise UsageError(f"unsupported key type: {type(key).__name__.removeprefix('_')}")


def _public_openssh_bytes(key: _PublicKey) -> bytes:
    with _quiet_dsa():
        return key.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)


def _fingerprint_of_public(key: _PublicKey) -> str:
    _type, b64 = _public_openssh_bytes(key).split()[:2]
    return fingerprint_of_blob(base64.b64decode(b64))


def _material(private: object, comment: str) -> KeyMaterial:
    family, bits = _family_and_bits(private)  # also rejects Ed448, X25519, odd curves...
    assert isinstance(private, _PrivateKey)
    public = private.public_key()
    with _quiet_dsa():
        private_text = private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.OpenSSH,
            serialization.NoEncryption(),
        ).decode()
    public_line = _public_openssh_bytes(public).decode()
    return KeyMaterial(
        private_openssh=private_text,
        public_openssh=f"{public_line} {comment}" if comment else public_line,
        key_type=family,
        bits=bits,
        fingerprint_sha256=_fingerprint_of_public(public),
        comment=comment,
    )


def _openssh_body(data: bytes) -> bytes:
    """The decoded binary body of an ``OPENSSH PRIVATE KEY`` PEM block."""
    match = re.search(
        rb"-----BEGIN OPENSSH PRIVATE KEY-----(.*?)-----END OPENSSH PRIVATE KEY-----", data, re.S
    )
    if not match:
        raise ParseError("corrupt OpenSSH private key (no END line)")
    try:
        return base64.b64decode(b"".join(match.group(1).split()), validate=True)
    except (binascii.Error, ValueError):
        raise ParseError("corrupt OpenSSH private key (invalid base64)") from None


def _read_string(buf: bytes, pos: int) -> tuple[bytes, int]:
    if pos + 4 > len(buf):
        raise ValueError("truncated")
    (length,) = struct.unpack(">I", buf[pos : pos + 4])
    end = pos + 4 + length
    if end > len(buf):
        raise ValueError("truncated")
    return buf[pos + 4 : end], end


def _first_string(blob: bytes) -> bytes | None:
    try:
        return _read_string(blob, 0)[0]
    except ValueError:
        return None


_OPENSSH_MAGIC = b"openssh-key-v1\x00"


def _openssh_cipher(data: bytes) -> bytes | None:
    """The cipher name of an OpenSSH private key (``b"none"`` when unencrypted), None if corrupt."""
    body = _openssh_body(data)
    if not body.startswith(_OPENSSH_MAGIC):
        return None
    try:
        return _read_string(body, len(_OPENSSH_MAGIC))[0]
    except ValueError:
        return None


# Number of SSH strings/mpints after the type name in the private section, per type (see
# OpenSSH PROTOCOL.key): needed to find the comment that follows them.
_PRIVATE_FIELDS = {
    b"ssh-ed25519": 2,
    b"ssh-rsa": 6,
    b"ssh-dss": 5,
    b"ecdsa-sha2-nistp256": 3,
    b"ecdsa-sha2-nistp384": 3,
    b"ecdsa-sha2-nistp521": 3,
}


def _openssh_comment(data: bytes) -> str | None:
    """The comment stored inside an *unencrypted* OpenSSH private key, else None.

    Encrypted keys hide the comment inside the ciphertext; we do not decrypt by hand for it.
    """
    try:
        body = _openssh_body(data)
        pos = len(_OPENSSH_MAGIC)
        cipher, pos = _read_string(body, pos)
        if cipher != b"none":
            return None
        _kdf, pos = _read_string(body, pos)
        _kdfopts, pos = _read_string(body, pos)
        (count,) = struct.unpack(">I", body[pos : pos + 4])
        pos += 4
        for _ in range(count):
            _pub, pos = _read_string(body, pos)
        private, _ = _read_string(body, pos)
        ppos = 8  # two check integers
        key_type, ppos = _read_string(private, ppos)
        for _ in range(_PRIVATE_FIELDS[key_type]):
            _field, ppos = _read_string(private, ppos)
        comment, _ = _read_string(private, ppos)
        text = comment.decode("utf-8")
    except (ValueError, KeyError, struct.error, UnicodeDecodeError, ParseError):
        return None
    return None if _BAD_COMMENT.search(text) else text


def _load_openssh(data: bytes, passphrase: bytes | None) -> _PrivateKey:
    cipher = _openssh_cipher(data)
    encrypted = cipher not in (None, b"none")
    try:
        with _quiet_dsa():
            key = serialization.load_ssh_private_key(data, passphrase if encrypted else None)
    except TypeError:
        # cryptography signals "password missing" as TypeError.
        raise UsageError("the private key is encrypted: a passphrase is needed") from None
    except UnsupportedAlgorithm as exc:
        raise UsageError(f"unsupported private key type or cipher: {_clip(str(exc))}") from None
    except ValueError as exc:
        if encrypted and passphrase is not None:
            raise DecryptionError("wrong passphrase for the private key") from None
        if "nsupported" in str(exc):
            raise UsageError(f"unsupported private key type: {_clip(str(exc))}") from None
        raise ParseError("not a usable private key (corrupt OpenSSH key data)") from None
    _family_and_bits(key)
    return key  # type: ignore[return-value]


def _pem_is_encrypted(data: bytes) -> bool:
    # PKCS#8 encrypted keys say so in the label; PKCS#1/SEC1 ones carry a Proc-Type header.
    return b"ENCRYPTED PRIVATE KEY-----" in data or b"Proc-Type: 4,ENCRYPTED" in data


def _load_pem(data: bytes, passphrase: bytes | None) -> _PrivateKey:
    encrypted = _pem_is_encrypted(data)
    if encrypted and passphrase is None:
        raise UsageError("the private key is encrypted: a passphrase is needed")
    try:
        with _quiet_dsa():
            key = serialization.load_pem_private_key(data, passphrase if encrypted else None)
    except TypeError:
        raise UsageError("the private key is encrypted: a passphrase is needed") from None
    except UnsupportedAlgorithm as exc:
        raise UsageError(f"unsupported private key type: {_clip(str(exc))}") from None
    except ValueError:
        if encrypted:
            raise DecryptionError("wrong passphrase for the private key") from None
        raise ParseError("not a usable private key (corrupt PEM key data)") from None
    _family_and_bits(key)
    return key  # type: ignore[return-value]


def _load_der(data: bytes, passphrase: bytes | None) -> _PrivateKey:
    try:
        with _quiet_dsa():
            key = serialization.load_der_private_key(data, None)
    except TypeError:
        # Encrypted PKCS#8 DER: only now does the passphrase matter.
        if passphrase is None:
            raise UsageError("the private key is encrypted: a passphrase is needed") from None
        try:
            with _quiet_dsa():
                key = serialization.load_der_private_key(data, passphrase)
        except ValueError:
            raise DecryptionError("wrong passphrase for the private key") from None
    except UnsupportedAlgorithm as exc:
        raise UsageError(f"unsupported private key type: {_clip(str(exc))}") from None
    except ValueError:
        raise ParseError("not a private key (expected an OpenSSH or PEM private key)") from None
    _family_and_bits(key)
    return key  # type: ignore[return-value]


def _clip(text: str, limit: int = 80) -> str:
    """Shorten foreign text we echo in an error, keeping the message one short line."""
    one = " ".join(text.split())
    return one if len(one) <= limit else one[: limit - 3] + "..."


_TYPE_TOKEN = re.compile(r"^[a-z0-9][a-z0-9.+-]*(@[a-z0-9.-]+)?$")


def _is_key_type_token(token: str) -> bool:
    return token in _SSH_TYPES or token in _CERT_TYPES


def _looks_like_type_then_blob(token: str, rest: str) -> bool:
    """True for ``<some-type> AAAA...`` where the type is one we do not know (vs. options)."""
    blob = rest.split(None, 1)[0] if rest.split() else ""
    return bool(_TYPE_TOKEN.match(token)) and "=" not in token and blob.startswith("AAAA")


def _looks_like_public_line(data: bytes) -> bool:
    head = data.split(None, 2)
    return len(head) >= 2 and head[1].startswith(b"AAAA")


def _split_field(text: str) -> tuple[str, str, str]:
    """Split off the first whitespace-separated field (spaces or tabs, as sshd does)."""
    text = text.lstrip(" \t")
    match = re.match(r"([^ \t]*)([ \t]+)?(.*)\Z", text, re.S)
    assert match is not None
    return match.group(1), match.group(2) or "", match.group(3)


def _split_options(text: str) -> tuple[str, str]:
    """Split ``options rest`` where options end at the first whitespace outside double quotes.

    Raises ParseError on an unterminated quote (sshd would reject the line too).
    """
    in_quotes = False
    i = 0
    while i < len(text):
        ch = text[i]
        if ch == "\\" and in_quotes and i + 1 < len(text):
            i += 2
            continue
        if ch == '"':
            in_quotes = not in_quotes
        elif ch in " \t" and not in_quotes:
            return text[:i], text[i:].lstrip(" \t")
        i += 1
    if in_quotes:
        raise ParseError("not a public key line (unbalanced double quote in the options)")
    return text, ""
