#!/usr/bin/python3
"""Independent reader of the Custody sealed model format v1, written from docs/FORMAT.md alone.

It shares no code with the C++ implementation; the test suite uses it to check that the spec is
complete and that Custody's files follow it.

usage: reference_open.py SEALED DEK_FILE VENDOR_PUB_PEM OUT_PLAINTEXT
exit 0 and the plaintext written on success; exit 1 with a message on any failure.
"""
import hashlib
import json
import struct
import sys

from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
import hmac


class FormatError(Exception):
    pass


def hkdf(ikm, salt, info, length=32):
    return HKDF(hashes.SHA256(), length, salt, info).derive(ikm)


def open_sealed(data, dek, trusted_raw):
    if data[:8] != b"CUSTODYM":
        raise FormatError("bad magic")
    if len(data) < 16:
        raise FormatError("truncated preamble")
    version, reserved, header_len = struct.unpack(">HHI", data[8:16])
    if version != 1:
        raise FormatError("unsupported version %d" % version)
    if reserved != 0 or not (120 <= header_len <= 120 + 65536):
        raise FormatError("bad preamble")
    signed = data[: 16 + header_len]
    signature = data[16 + header_len : 16 + header_len + 64]
    if len(signature) != 64:
        raise FormatError("truncated header")
    vendor_raw = data[100:132]
    if not hmac.compare_digest(vendor_raw, trusted_raw):
        raise FormatError("different vendor key")
    try:
        Ed25519PublicKey.from_public_bytes(trusted_raw).verify(
            signature, b"custody/sealed-model/v1\x00" + signed)
    except InvalidSignature:
        raise FormatError("signature does not verify")
    body = signed[16:]
    suite, log2, res16, size = struct.unpack(">BBHQ", body[0:12])
    salt = body[12:44]
    prefix = body[44:51]
    res8 = body[51]
    commitment = body[52:84]
    (metadata_len,) = struct.unpack(">I", body[116:120])
    if suite != 1 or not (4 <= log2 <= 24) or res16 or res8 or metadata_len != header_len - 120:
        raise FormatError("bad header fields")
    meta = json.loads(body[120:].decode("utf-8"))
    for k in ("model_id", "name", "version", "engine", "created"):
        if not isinstance(meta.get(k), str):
            raise FormatError("metadata lacks " + k)
    chunk = 1 << log2
    n = 1 if size == 0 else (size + chunk - 1) // chunk
    p = 16 + header_len + 64
    if len(data) != p + size + 16 * n:
        raise FormatError("wrong file size")
    if not hmac.compare_digest(hkdf(dek, salt, b"custody/sealed-model/v1/key-commitment"), commitment):
        raise FormatError("key commitment mismatch")
    key = hkdf(dek, salt, b"custody/sealed-model/v1/payload-key")
    aad = hashlib.sha256(signed).digest()
    gcm = AESGCM(key)
    out = bytearray()
    for i in range(n):
        length = min(chunk, size - i * chunk)
        off = p + i * (chunk + 16)
        nonce = prefix + struct.pack(">I", i) + (b"\x01" if i == n - 1 else b"\x00")
        try:
            out += gcm.decrypt(nonce, data[off : off + length + 16], aad)
        except InvalidTag:
            raise FormatError("chunk %d failed authentication" % i)
    return meta, bytes(out)


def main():
    if len(sys.argv) != 5:
        print(__doc__, file=sys.stderr)
        return 2
    data = open(sys.argv[1], "rb").read()
    dek = bytes.fromhex(open(sys.argv[2]).read().strip())
    pub = serialization.load_pem_public_key(open(sys.argv[3], "rb").read())
    raw = pub.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    try:
        meta, plain = open_sealed(data, dek, raw)
    except FormatError as e:
        print("reference_open: " + str(e), file=sys.stderr)
        return 1
    open(sys.argv[4], "wb").write(plain)
    print("reference_open: %s %s, %d bytes" % (meta["name"], meta["version"], len(plain)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
