#!/usr/bin/env python3
"""Regenerates the kernel fixtures of daemon/src/offload/kernel_tests.rs. Root only.

In two network namespaces of its own joined by a veth pair (198.18.200.0/24; removed at the
end, also on failure), it
1. injects a TSO super-frame with a virtio-net header through an AF_PACKET socket with
   PACKET_VNET_HDR on side A, whose veth has TSO and TX checksumming off, so that the kernel's
   software GSO (tcp_gso_segment) cuts it; tshark on A writes what went out:
   kernel_tso_v4.pcap / kernel_tso_v6.pcap;
2. injects those segments, one by one, into the same veth with GRO on at side B (and a GRO
   flush timeout, so one NAPI poll is not one packet), and reads what GRO made of them with a
   PACKET_VNET_HDR socket on B: kernel_gro_v4.pcap / kernel_gro_v6.pcap, whose records are
   the 10-byte virtio-net header followed by the frame (link type USER0).

The super-frames are built here the same way as testutil::build builds them from the specs
in kernel_tests.rs (the test checks that the two agree byte for byte):
  superframe_v4.pcap / superframe_v6.pcap hold them as injected, header first.

Needs: ip (iproute2), ethtool, tshark. Usage: python3 capture.py [OUTPUT_DIR]
"""

import ctypes
import os
import socket
import struct
import subprocess
import sys
import time

ETH_P_ALL = 0x0003
SOL_PACKET = 263
PACKET_VNET_HDR = 15

MAC_A = bytes([0x52, 0x54, 0x00, 0x00, 0x00, 0x01])
MAC_B = bytes([0x52, 0x54, 0x00, 0x00, 0x00, 0x02])
V4_A = bytes([198, 18, 0, 1])
V4_B = bytes([198, 18, 0, 2])
V6_A = bytes.fromhex("20010db8000000000000000000000001")
V6_B = bytes.fromhex("20010db8000000000000000000000002")
TIMESTAMPS = bytes([1, 1, 8, 10, 0x01, 0x02, 0x03, 0x04, 0x0A, 0x0B, 0x0C, 0x0D])

FIN, PSH, ACK, CWR = 0x01, 0x08, 0x10, 0x80


def csum(data):
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack("!%dH" % (len(data) // 2), data))
    while s > 0xFFFF:
        s = (s & 0xFFFF) + (s >> 16)
    return s


def payload(n, offset=0):
    return bytes(((i * 31) ^ (i >> 8)) & 0xFF for i in range(offset, offset + n))


def superframe(v6, payload_len, flags):
    """Ethernet/IP/TCP with timestamps, the TCP checksum field holding the pseudo-header sum
    over the whole TCP length (what the kernel leaves for NEEDS_CSUM)."""
    tcp_len = 32 + payload_len
    tcp = struct.pack("!HHIIBBHHH", 45678, 5201, 0x10000000, 0x20000000, 8 << 4, flags, 502, 0, 0)
    tcp += TIMESTAMPS + payload(payload_len)
    if v6:
        ip = struct.pack("!IHBB", (6 << 28) | 0x12345, tcp_len, 6, 64) + V6_A + V6_B
        pseudo = V6_A + V6_B + struct.pack("!IxxxB", tcp_len, 6)
        ethertype = 0x86DD
    else:
        ip = struct.pack("!BBHHHBBH", 0x45, 0, 20 + tcp_len, 0x4242, 0x4000, 64, 6, 0) + V4_A + V4_B
        ip = ip[:10] + struct.pack("!H", 0xFFFF - csum(ip)) + ip[12:]
        pseudo = V4_A + V4_B + struct.pack("!xBH", 6, tcp_len)
        ethertype = 0x0800
    tcp = tcp[:16] + struct.pack("!H", csum(pseudo)) + tcp[18:]
    return MAC_B + MAC_A + struct.pack("!H", ethertype) + ip + tcp


def vnet_header(v6, mss, ecn):
    l4 = 54 if v6 else 34
    gso_type = (4 if v6 else 1) | (0x80 if ecn else 0)
    # Little-endian: what the kernel uses on this (x86_64) host without TUNSETVNETBE.
    return struct.pack("<BBHHHH", 1, gso_type, l4 + 32, mss, l4, 16)


CASES = {
    # name: (v6, payload, mss, flags)
    "v4": (False, 3700, 1000, ACK | PSH | CWR),
    "v6": (True, 2500, 1000, ACK | PSH | FIN),
}


def write_pcap(path, records, linktype=1):
    with open(path, "wb") as f:
        f.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 262144, linktype))
        for r in records:
            f.write(struct.pack("<IIII", 0, 0, len(r), len(r)))
            f.write(r)


def read_pcap(path):
    data = open(path, "rb").read()
    assert data[:4] == bytes([0xD4, 0xC3, 0xB2, 0xA1]), "tshark was asked for -F pcap"
    out, at = [], 24
    while at < len(data):
        incl, orig = struct.unpack("<II", data[at + 8 : at + 16])
        assert incl == orig
        out.append(data[at + 16 : at + 16 + incl])
        at += 16 + incl
    return out


def run(*args, ns=None):
    cmd = (["ip", "netns", "exec", ns] if ns else []) + list(args)
    subprocess.run(cmd, check=True)


CLONE_NEWNET = 0x40000000
LIBC = ctypes.CDLL(None, use_errno=True)


def setns(fd):
    if LIBC.setns(fd, CLONE_NEWNET) != 0:
        raise OSError(ctypes.get_errno(), "setns")


def in_ns(ns):
    fd = os.open("/run/netns/" + ns, os.O_RDONLY)
    setns(fd)
    os.close(fd)


def main():
    out_dir = sys.argv[1] if len(sys.argv) > 1 else os.path.dirname(os.path.abspath(__file__))
    tag = str(os.getpid())
    ns_a, ns_b = "offl-a-" + tag, "offl-b-" + tag
    home = os.open("/proc/self/ns/net", os.O_RDONLY)
    try:
        run("ip", "netns", "add", ns_a)
        run("ip", "netns", "add", ns_b)
        run("ip", "link", "add", "offa", "netns", ns_a, "address", "52:54:00:00:00:01", "type", "veth",
            "peer", "name", "offb", "netns", ns_b, "address", "52:54:00:00:00:02")
        run("ip", "addr", "add", "198.18.200.1/24", "dev", "offa", ns=ns_a)
        run("ip", "addr", "add", "198.18.200.2/24", "dev", "offb", ns=ns_b)
        run("ethtool", "-K", "offa", "tso", "off", "tx", "off", ns=ns_a)
        run("ethtool", "-K", "offb", "gro", "on", ns=ns_b)
        run("ip", "link", "set", "offa", "up", ns=ns_a)
        run("ip", "link", "set", "offb", "up", ns=ns_b)
        run("sh", "-c", "echo 1000000 > /sys/class/net/offb/gro_flush_timeout; "
            "echo 10 > /sys/class/net/offb/napi_defer_hard_irqs", ns=ns_b)
        time.sleep(1)

        for name, (v6, payload_len, mss, flags) in CASES.items():
            frame = superframe(v6, payload_len, flags)
            header = vnet_header(v6, mss, bool(flags & CWR))
            write_pcap(os.path.join(out_dir, "superframe_%s.pcap" % name), [header + frame], linktype=147)
            segments = -(-payload_len // mss)

            # 1. Kernel GSO.
            tso_path = os.path.join(out_dir, "kernel_tso_%s.pcap" % name)
            tshark = subprocess.Popen(
                ["ip", "netns", "exec", ns_a, "tshark", "-q", "-i", "offa", "-f", "tcp", "-c", str(segments),
                 "-a", "duration:10", "-F", "pcap", "-w", tso_path],
                stderr=subprocess.PIPE, text=True)
            line = ""
            while "Capturing on" not in line:
                line = tshark.stderr.readline()
                if not line:
                    raise SystemExit("tshark did not start")
            time.sleep(2)  # it says so a little before it really captures
            in_ns(ns_a)
            s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
            s.setsockopt(SOL_PACKET, PACKET_VNET_HDR, 1)
            s.bind(("offa", 0))
            s.send(header + frame)
            s.close()
            setns(home)
            tshark.wait(timeout=15)
            kernel_segments = read_pcap(tso_path)
            assert len(kernel_segments) == segments, "captured %d of %d" % (len(kernel_segments), segments)

            # 2. Kernel GRO, fed the kernel's segments.
            in_ns(ns_b)
            rx = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
            rx.setsockopt(SOL_PACKET, PACKET_VNET_HDR, 1)
            rx.bind(("offb", 0))
            rx.settimeout(0.5)
            in_ns(ns_a)
            tx = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
            tx.bind(("offa", 0))
            for seg in kernel_segments:
                tx.send(seg)
            tx.close()
            setns(home)
            merged, total = [], 0
            try:
                while total < payload_len:
                    got = rx.recv(70000)
                    f = got[10:]
                    if f[12:14] not in (b"\x08\x00", b"\x86\xdd"):
                        continue
                    merged.append(got)
                    total += len(f) - (14 + (40 if v6 else 20) + 32)
            except socket.timeout:
                pass
            rx.close()
            write_pcap(os.path.join(out_dir, "kernel_gro_%s.pcap" % name), merged, linktype=147)
            print("%s: %d segments from the kernel's GSO, %d frames from its GRO" % (name, segments, len(merged)))
    finally:
        try:
            setns(home)
        finally:
            subprocess.run(["ip", "netns", "del", ns_a])
            subprocess.run(["ip", "netns", "del", ns_b])


if __name__ == "__main__":
    main()
