#!/usr/bin/env python3
"""IKE_SA_INIT flood for the lab (tests/tests/ike_hardening.rs): sends RATE requests a second for
SECONDS seconds from BIND to TARGET:500, each with a fresh SPI and nonce and a valid proposal
(AES-GCM-256, PRF-HMAC-SHA256, Curve25519), and answers every COOKIE it is given by sending that
request again with the COOKIE (RFC 7296 section 2.6), as a determined flooder would. Prints one
line at the end: requests sent, the seconds it took, answers, cookies met.

Usage: ike_init_flood.py BIND TARGET RATE SECONDS
"""

import os
import socket
import struct
import sys
import time

SA, KE, NONCE, NOTIFY = 33, 34, 40, 41
IKE_SA_INIT = 34
COOKIE = 16390


def transform(last, kind, ident, attributes=b""):
    return struct.pack("!BBHBBH", 0 if last else 3, 0, 8 + len(attributes), kind, 0, ident) + attributes


def security_association():
    transforms = (
        transform(False, 1, 20, struct.pack("!HH", 0x800E, 256))  # ENCR_AES_GCM_16, 256-bit key
        + transform(False, 2, 5)  # PRF_HMAC_SHA2_256
        + transform(True, 4, 31)  # Curve25519
    )
    proposal = struct.pack("!BBHBBBB", 0, 0, 8 + len(transforms), 1, 1, 0, 3) + transforms
    return proposal


def payloads(first_type, parts):
    """Chains (type, body) pairs: each generic header names the next payload's type."""
    out = b""
    for index, (kind, body) in enumerate(parts):
        following = parts[index + 1][0] if index + 1 < len(parts) else 0
        out += struct.pack("!BBH", following, 0, 4 + len(body)) + body
    return out


def request(spi, nonce, cookie=None):
    parts = []
    if cookie is not None:
        parts.append((NOTIFY, struct.pack("!BBH", 0, 0, COOKIE) + cookie))
    parts.append((SA, security_association()))
    parts.append((KE, struct.pack("!HH", 31, 0) + os.urandom(32)))
    parts.append((NONCE, nonce))
    body = payloads(parts[0][0], parts)
    header = spi + bytes(8) + struct.pack("!BBBBII", parts[0][0], 0x20, IKE_SA_INIT, 0x08, 0, 28 + len(body))
    return header + body


def cookie_of(answer):
    """The COOKIE of an unprotected IKE_SA_INIT answer, if its first payload is one."""
    if len(answer) < 36 or answer[16] != NOTIFY:
        return None
    length = struct.unpack("!H", answer[30:32])[0]
    spi_size = answer[33]
    kind = struct.unpack("!H", answer[34:36])[0]
    if kind != COOKIE:
        return None
    return answer[36 + spi_size : 28 + length]


def main():
    bind, target, rate, seconds = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
    sock = socket.socket(socket.AF_INET6 if ":" in target else socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((bind, 0))
    sock.setblocking(False)
    nonces = {}
    sent = answers = cookies = 0
    start = time.monotonic()
    batch = max(1, rate // 100)
    while True:
        elapsed = time.monotonic() - start
        if elapsed >= seconds:
            break
        due = int(elapsed * rate) + batch
        while sent < due:
            spi, nonce = os.urandom(8), os.urandom(32)
            nonces[spi] = nonce
            if len(nonces) > 4096:
                nonces.pop(next(iter(nonces)))
            try:
                sock.sendto(request(spi, nonce), (target, 500))
            except OSError:
                pass
            sent += 1
        while True:
            try:
                answer = sock.recv(2048)
            except OSError:
                break
            answers += 1
            cookie = cookie_of(answer)
            spi = answer[:8]
            if cookie is not None and spi in nonces:
                cookies += 1
                sock.sendto(request(spi, nonces[spi], cookie), (target, 500))
        time.sleep(0.005)
    took = time.monotonic() - start
    print(f"sent={sent} seconds={took:.2f} answers={answers} cookies={cookies}", flush=True)


if __name__ == "__main__":
    main()
