#!/usr/bin/env python3
"""Regenerates the seed corpus of the fuzz targets from the captured MPush wire vectors.

Usage (from anywhere):  python3 fuzz/make_corpus.py [VECTORS_DIR]

VECTORS_DIR defaults to ../shared/vectors relative to the repository root (the folder above
fuzz/). The script empties fuzz/corpus/{frame,message,pipeline}/ and writes the seeds again;
they are deterministic, so running it twice gives the same files. Standard library only.

Input layout of each target (see fuzz/src/lib.rs):
  frame:    1 chunking byte (0 = feed all at once) + a byte stream of frames
  message:  1 selector byte (body type) + a plaintext body
  pipeline: 1 byte (low 5 bits: packet flags; top 3 bits: key, 0..5 AES, 6 RSA, 7 none) + a wire body

The pipeline target's fixed AES key and IV are those of the first connection of
handshake-bind-push.json, so the encrypted bodies captured on that connection are used as they are.
"""
import gzip
import json
import os
import struct
import sys
import zlib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CORPUS = os.path.join(ROOT, "fuzz", "corpus")
HEADER = 13
# Bodies larger than this stay out of the message and pipeline corpora: libFuzzer's default
# -max_len follows the largest seed, and small inputs fuzz faster.
MAX_SEED_BODY = 4096

# Must match fuzz/src/lib.rs.
FUZZ_AES_KEY = "3075fb1e700d44167b3a466d1f04a959"
FUZZ_AES_IV = "111d167edb8ac6646b37556c57c7b188"
KEY_AES, KEY_RSA, KEY_NONE = 0x00, 0xC0, 0xE0
CRYPTO, COMPRESS = 0x01, 0x02

# message selectors (fuzz/src/lib.rs: `message`)
SEL = {
    "Handshake": 0, "HandshakeOk": 1, "FastConnect": 2, "FastConnectOk": 3, "Bind": 4,
    "Push": 5, "Ack": 6, "Kick": 7, "OkMessage": 8, "ErrorMessage": 9, "GatewayPush": 10,
    "GatewayKick": 11, "HttpRequest": 12, "HttpResponse": 13,
}


def body_type(cmd, direction):
    to_server = direction in ("client->server", "pushclient->gateway")
    return {
        2: "Handshake" if to_server else "HandshakeOk",
        5: "Bind", 6: "Bind",
        7: "FastConnect" if to_server else "FastConnectOk",
        10: "ErrorMessage", 11: "OkMessage", 13: "Kick", 14: "GatewayKick", 15: "Push",
        16: "GatewayPush", 23: "Ack",
    }.get(cmd)


def string(text):
    """A §3 length-prefixed field (short form)."""
    data = text.encode() if isinstance(text, str) else text
    assert len(data) < 0x7FFF
    return struct.pack(">h", len(data)) + data


class Writer:
    def __init__(self):
        self.files = {}
        self.seen = {}
        self.per_group = {}

    def add(self, target, name, data, group=None, cap=2):
        """Adds a seed unless an identical one exists or `group` already has `cap` seeds."""
        if data in self.seen.setdefault(target, set()):
            return
        if group is not None:
            key = (target, group)
            if self.per_group.get(key, 0) >= cap:
                return
            self.per_group[key] = self.per_group.get(key, 0) + 1
        self.seen[target].add(data)
        self.files.setdefault(target, []).append((name, data))

    def write(self):
        for target, files in sorted(self.files.items()):
            folder = os.path.join(CORPUS, target)
            os.makedirs(folder, exist_ok=True)
            for old in os.listdir(folder):
                os.remove(os.path.join(folder, old))
            for name, data in files:
                with open(os.path.join(folder, name), "wb") as f:
                    f.write(data)
            size = sum(len(d) for _, d in files)
            print(f"{target}: {len(files)} files, {size} bytes")


def main():
    vectors = sys.argv[1] if len(sys.argv) > 1 else os.path.join(ROOT, "..", "shared", "vectors")
    out = Writer()
    scenarios = sorted(f for f in os.listdir(vectors) if f.endswith(".json"))
    if not scenarios:
        sys.exit(f"no *.json vectors in {vectors}")
    stream_no = 0
    for file in scenarios:
        scenario = file[: -len(".json")]
        with open(os.path.join(vectors, file)) as f:
            doc = json.load(f)
        for c, conn in enumerate(doc["connections"]):
            keys = conn.get("key_material")
            fuzz_key = (
                isinstance(keys, dict)
                and keys.get("sessionKey") == FUZZ_AES_KEY
                and keys.get("iv") == FUZZ_AES_IV
            )
            streams = {}
            for fr in conn["frames"]:
                raw = bytes.fromhex(fr["raw_hex"])
                direction = fr["direction"]
                streams.setdefault(direction, []).append(raw)
                header = fr["header"]
                if raw == b"\xdf":
                    continue
                cmd, flags = header["cmd"], header["flags"]
                wire = raw[HEADER:]
                plain = (
                    bytes.fromhex(fr["plaintext_body_hex"])
                    if "plaintext_body_hex" in fr
                    else (wire if flags & (CRYPTO | COMPRESS) == 0 else None)
                )
                tag = f"{scenario}-c{c}-f{fr['index']:02d}-{header['cmd_name'].lower()}"
                kind = body_type(cmd, direction)
                # message: the plaintext body with its selector
                if kind and plain is not None and len(plain) <= MAX_SEED_BODY:
                    out.add("message", tag, bytes([SEL[kind]]) + plain, group=(kind, direction), cap=3)
                # pipeline: bodies as they were on the wire, where the fuzz keys open them
                if len(wire) <= MAX_SEED_BODY:
                    cipher = fr.get("cipher", "")
                    if flags & CRYPTO and cipher.startswith("RSA"):
                        out.add("pipeline", tag + "-rsa", bytes([KEY_RSA | (flags & 0x1F)]) + wire, group="rsa")
                    elif flags & CRYPTO and fuzz_key and "sessionKey" in cipher:
                        group = ("aes", cmd, flags)
                        out.add("pipeline", tag + "-aes", bytes([KEY_AES | (flags & 0x1F)]) + wire, group=group)
                    elif flags & (CRYPTO | COMPRESS) == 0:
                        out.add("pipeline", tag + "-raw", bytes([KEY_NONE | flags]) + wire, group=("raw", cmd), cap=1)
                # pipeline: compressed-only bodies (zlib as Java writes it, gzip as iOS does)
                if plain and len(plain) <= MAX_SEED_BODY and cmd in (5, 15, 16):
                    zl = zlib.compress(plain, 6)
                    out.add("pipeline", tag + "-zlib", bytes([KEY_AES | COMPRESS]) + zl, group=("zlib", cmd))
                    gz = gzip.compress(plain, compresslevel=6, mtime=0)
                    out.add("pipeline", tag + "-gzip", bytes([KEY_NONE | COMPRESS]) + gz, group=("gzip", cmd), cap=1)
            # frame: every direction of every connection as one stream, alternately fed all at
            # once (chunk byte 0) and in small chunks
            for direction, frames in sorted(streams.items()):
                arrow = direction.replace("->", "-to-")
                chunking = 0 if stream_no % 2 == 0 else 1 + (stream_no * 37) % 255
                stream_no += 1
                out.add("frame", f"{scenario}-c{c}-{arrow}", bytes([chunking]) + b"".join(frames))

    # frame: hand-made edge cases
    ok_bind = bytes.fromhex("000000100b00000000000002000500000c62696e642073756363657373")
    out.add("frame", "worked-example-ok-bind", b"\x00" + ok_bind)
    out.add("frame", "heartbeats-and-ack-split", b"\x03" + b"\xdf\xdf" + bytes.fromhex("0000000017000000000003e900") + b"\xdf")
    out.add("frame", "negative-length", b"\x00" + bytes.fromhex("80000000") + bytes(9))
    out.add("frame", "length-limit-plus-one", b"\x00" + struct.pack(">i", 10241) + bytes(9))
    out.add("frame", "length-at-limit-header-only", b"\x05" + struct.pack(">i", 10240) + bytes([15, 0xAB, 0xCD, 1, 0, 0, 0, 7, 0x99]))

    # message: body types the captures do not have, and odd encodings
    gk = string("user-1") + string("device-A") + string("conn-1") + struct.pack(">i", 1) + string("10.0.0.1") + struct.pack(">i", 3000)
    out.add("message", "made-gateway-kick", bytes([SEL["GatewayKick"]]) + gk)
    req = b"\x01" + string("http://example.test/api") + string("Content-Type:application/json\n") + string(b'{"a":1}')
    out.add("message", "made-http-request", bytes([SEL["HttpRequest"]]) + req)
    resp = struct.pack(">i", 200) + string("OK") + string("Content-Length:2\n") + string(b"ok")
    out.add("message", "made-http-response", bytes([SEL["HttpResponse"]]) + resp)
    # BIND whose userId uses the extended length form for a short string (0x7FFF, then -32761)
    ext = b"\x7f\xff" + struct.pack(">i", 6 - 32767) + b"user-1" + string("") + string("tag-a")
    out.add("message", "made-bind-extended-length", bytes([SEL["Bind"]]) + ext)
    out.add("message", "made-ok-invalid-utf8", bytes([SEL["OkMessage"]]) + b"\x05\x00" + string(b"\xff\xfe"))
    out.add("message", "made-error-negative-length", bytes([SEL["ErrorMessage"]]) + b"\x0a\x00\x80\x00")

    # pipeline: inflation bounds and key-less cases
    out.add("pipeline", "made-zlib-bomb", bytes([KEY_AES | COMPRESS]) + zlib.compress(bytes(64 * 1024), 9))
    out.add("pipeline", "made-zlib-at-limit", bytes([KEY_AES | COMPRESS]) + zlib.compress(b"x" * 10240, 9))
    out.add("pipeline", "made-zlib-empty", bytes([KEY_AES | COMPRESS]) + zlib.compress(b"", 9))
    out.add("pipeline", "made-gzip-name", bytes([KEY_AES | COMPRESS]) + bytes.fromhex("1f8b0808000000000003") + b"a.txt\x00" + zlib.compress(b"hello", 6)[2:-4] + struct.pack("<II", zlib.crc32(b"hello"), 5))
    out.add("pipeline", "made-crypto-no-key", bytes([KEY_NONE | CRYPTO]) + bytes(16))
    out.add("pipeline", "made-empty-processed", bytes([KEY_AES | CRYPTO]))

    out.write()


if __name__ == "__main__":
    main()
