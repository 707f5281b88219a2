#!/usr/bin/env python3
"""Decrypts pgseal's committed envelope vectors from docs/format.md alone.

An independent implementation (Python standard library + the `cryptography` package) of the key
derivation, AAD, envelope and blind index. It checks every record of envelope-v1.txt and exits
non-zero on any mismatch. Run: python3 crypto-core/tests/vectors/independent_check.py
"""
import hashlib
import hmac
import pathlib
import struct
import sys

from cryptography.hazmat.primitives.ciphers.aead import AESGCMSIV

SALT = b"pgseal/v1/hkdf-salt"
FORMAT = 1


def hkdf(ikm: bytes, info: bytes, length: int = 32) -> bytes:
    prk = hmac.new(SALT, ikm, hashlib.sha256).digest()
    okm, block, i = b"", b"", 1
    while len(okm) < length:
        block = hmac.new(prk, block + info + bytes([i]), hashlib.sha256).digest()
        okm += block
        i += 1
    return okm[:length]


def enc_part(s: str) -> bytes:
    b = s.encode()
    return struct.pack(">H", len(b)) + b


def enc_column(dotted: str) -> bytes:
    schema, table, column = dotted.split(".")
    return enc_part(schema) + enc_part(table) + enc_part(column)


def records(text: str):
    for block in text.split("\n\n"):
        rec = {}
        for line in block.splitlines():
            if line.startswith("#") or " = " not in line and not line.endswith(" ="):
                continue
            k, _, v = line.partition(" =")
            rec[k.strip()] = v[1:] if v.startswith(" ") else v
        if "envelope" in rec:
            yield rec


def main() -> int:
    path = pathlib.Path(__file__).with_name("envelope-v1.txt")
    n = 0
    for r in records(path.read_text(encoding="utf-8")):
        material = bytes.fromhex(r["material"])
        version = int(r["key_version"])
        env = bytes.fromhex(r["envelope"])
        assert env[0] == FORMAT, "format version"
        assert struct.unpack(">I", env[1:5])[0] == version, "key version"
        nonce, body = env[5:17], env[17:]
        enc_key = hkdf(material, b"pgseal-column-encryption\x00" + bytes([FORMAT]) + enc_column(r["column"]))
        aad = b"pgseal-envelope\x00" + bytes([FORMAT]) + struct.pack(">I", version) + enc_column(r["column"])
        plain = AESGCMSIV(enc_key).decrypt(nonce, body, aad)
        assert plain.hex() == r["canonical"], f"canonical of {r['column']}"
        idx_key = hkdf(material, b"pgseal-blind-index\x00" + bytes([FORMAT]) + enc_part(r["index_group"]))
        tag = hmac.new(idx_key, bytes.fromhex(r["index_input"]), hashlib.sha256).digest()[:16]
        assert tag.hex() == r["blind_index"], f"blind index of {r['column']}"
        # A value moved to another column must not decrypt.
        wrong_aad = aad[:-1] + bytes([aad[-1] ^ 1])
        try:
            AESGCMSIV(enc_key).decrypt(nonce, body, wrong_aad)
            raise AssertionError("decrypted under a wrong column identity")
        except Exception as e:  # cryptography raises InvalidTag
            if isinstance(e, AssertionError):
                raise
        n += 1
    if n < 14:
        print(f"only {n} vectors found", file=sys.stderr)
        return 1
    # Blind-index lineages (docs/format.md section 2.4): the tag comes from the keyring's index
    # material, not from the data-key version that seals the envelope.
    lineage = pathlib.Path(__file__).with_name("blind-index-lineage-v1.txt")
    m, tags = 0, {}
    for r in records(lineage.read_text(encoding="utf-8")):
        material = bytes.fromhex(r["material"])
        version = int(r["key_version"])
        env = bytes.fromhex(r["envelope"])
        assert struct.unpack(">I", env[1:5])[0] == version, "key version"
        enc_key = hkdf(material, b"pgseal-column-encryption\x00" + bytes([FORMAT]) + enc_column(r["column"]))
        aad = b"pgseal-envelope\x00" + bytes([FORMAT]) + struct.pack(">I", version) + enc_column(r["column"])
        plain = AESGCMSIV(enc_key).decrypt(env[5:17], env[17:], aad)
        assert plain.hex() == r["canonical"], "lineage canonical"
        idx_key = hkdf(bytes.fromhex(r["index_material"]), b"pgseal-blind-index\x00" + bytes([FORMAT]) + enc_part(r["index_group"]))
        tag = hmac.new(idx_key, bytes.fromhex(r["index_input"]), hashlib.sha256).digest()[:16]
        assert tag.hex() == r["blind_index"], "lineage blind index"
        assert (tag + env).hex() == r["cell"], "lineage cell"
        if r["source"] == "legacy":
            assert r["index_material"] == r["material"], "legacy index material"
        tags.setdefault((r["index_material"], r["index_input"]), set()).add(tag)
        m += 1
    assert m >= 5 and all(len(t) == 1 for t in tags.values()), "one tag per value and index material"
    print(f"independent check: {n} envelope and {m} lineage vectors passed, 0 failed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
