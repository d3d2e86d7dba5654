"""Standard Webhooks signatures for the HTTP destination.

A signed request carries ``webhook-id`` (the chunk's idempotency key: stable across
resends), ``webhook-timestamp`` (unix seconds of this attempt) and ``webhook-signature``:
``v1,<base64 HMAC-SHA256>`` of ``f"{id}.{timestamp}."`` + the **uncompressed** payload, one
signature per configured secret, space-separated (rotation: a receiver holding either the old
or the new secret verifies).

Why the uncompressed payload: the spec signs "the payload sent", but receivers' frameworks
undo ``Content-Encoding`` before the handler sees the body, and the reference verifier
(``standardwebhooks``) decodes the body as UTF-8 text before its HMAC, so a signature over
gzip or zstd bytes cannot be checked by it at all. Over the uncompressed bytes it verifies
whatever the codec: decompress, then verify.

Secrets are ``whsec_`` + base64 of 24 to 64 random bytes, the form every Standard Webhooks
library loads; anything else is refused at config load with a hint on making one.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import io
import zlib
from collections.abc import Iterable, Iterator, Sequence

import zstandard

__all__ = [
    "SECRET_HINT",
    "Signer",
    "check_secret",
    "decode_secret",
    "sign",
    "uncompressed_pieces",
]

PREFIX = "whsec_"
_MIN_KEY_BYTES, _MAX_KEY_BYTES = 24, 64
_PIECE = 256 * 1024  # decompressed bytes fed to the HMACs at a time: bounded memory

SECRET_HINT = (
    'make one with: python -c "import base64, os; '
    "print('whsec_' + base64.b64encode(os.urandom(32)).decode())\""
)


def decode_secret(secret: str) -> bytes:
    """The HMAC key of a ``whsec_`` secret. ``ValueError`` (with a hint) for anything else:
    no prefix, not base64, or a key shorter than 24 or longer than 64 bytes."""
    if not secret.startswith(PREFIX):
        raise ValueError(
            "must be a Standard Webhooks secret: 'whsec_' + base64 of 24-64 random bytes "
            f"({SECRET_HINT})"
        )
    try:
        encoded = secret.removeprefix(PREFIX)
        # unpadded base64 is accepted, as the reference verifier accepts it
        key = base64.b64decode(encoded + "=" * (-len(encoded) % 4), validate=True)
    except binascii.Error:
        raise ValueError(f"must be base64 after the whsec_ prefix ({SECRET_HINT})") from None
    if not _MIN_KEY_BYTES <= len(key) <= _MAX_KEY_BYTES:
        raise ValueError(
            f"the key after whsec_ is {len(key)} bytes; it must be {_MIN_KEY_BYTES}-"
            f"{_MAX_KEY_BYTES} random bytes ({SECRET_HINT})"
        )
    return key


def check_secret(secret: str) -> str:
    """``secret`` unchanged when it is a valid ``whsec_`` secret (for validators)."""
    decode_secret(secret)
    return secret


def _signatures(keys: Sequence[bytes], msg_id: str, timestamp: int, body: Iterable[bytes]) -> str:
    prefix = f"{msg_id}.{timestamp}.".encode()
    macs = [hmac.new(key, prefix, hashlib.sha256) for key in keys]
    for piece in body:
        for mac in macs:
            mac.update(piece)
    return " ".join("v1," + base64.b64encode(mac.digest()).decode("ascii") for mac in macs)


def sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` value for one ``whsec_`` secret over ``body``:
    ``v1,<base64 HMAC-SHA256 of f"{msg_id}.{timestamp}." + body>``."""
    return _signatures([decode_secret(secret)], msg_id, timestamp, [body])


def uncompressed_pieces(payload: bytes, codec: str) -> Iterator[bytes]:
    """``payload`` with ``codec`` (``none``, ``gzip``, ``zstd``) undone, in bounded pieces,
    so a signature over a large chunk never holds its uncompressed form whole. Concatenated
    gzip members and zstd frames are read through, as a receiver's decoder would."""
    if codec == "none":
        yield payload
    elif codec == "gzip":
        data = payload
        while data:
            inflater = zlib.decompressobj(wbits=31)  # 31: gzip header and trailer
            while not inflater.eof:
                piece = inflater.decompress(data, _PIECE)
                data = inflater.unconsumed_tail
                if piece:
                    yield piece
                elif not data:  # a truncated member: nothing more will come out
                    break
            data = inflater.unused_data  # the next gzip member, if any
    elif codec == "zstd":
        # one decompressor per call: a shared one is not thread-safe (PITFALLS.md)
        reader = zstandard.ZstdDecompressor().stream_reader(
            io.BytesIO(payload), read_across_frames=True
        )
        with reader:
            while piece := reader.read(_PIECE):
                yield piece
    else:
        raise ValueError(f"unknown codec {codec!r}")


class Signer:
    """Signs chunks with every configured secret (the first is the newest by convention;
    order does not matter to a verifier)."""

    def __init__(self, secrets: Sequence[str]) -> None:
        if not secrets:
            raise ValueError("at least one signing secret is needed")
        self._keys = [decode_secret(secret) for secret in secrets]

    def signature(self, msg_id: str, timestamp: int, payload: bytes, codec: str) -> str:
        """The ``webhook-signature`` header value over the uncompressed ``payload``.
        CPU-bound for large chunks (decompress and hash): callers run it off the loop."""
        return _signatures(self._keys, msg_id, timestamp, uncompressed_pieces(payload, codec))
