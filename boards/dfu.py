"""The DFU file suffix, as dfu-util's `dfu-suffix -a` appends it, without dfu-util.

OrangeCrab's bootloader takes bitstreams over USB DFU, and its amaranth-boards
platform ends the build with `dfu-suffix -v 1209 -p 5af0 -a top.bit`. The
suffix is 16 bytes (USB DFU 1.1, appendix B): bcdDevice, idProduct,
idVendor, bcdDFU 0x0100, the signature "UFD", its length 16, and a CRC-32
of the file and the suffix's first 12 bytes (the CRC register is not
inverted at the end, so it is zlib's CRC-32 inverted). Written here so the
build needs only pip-installed tools; equal byte for byte to dfu-suffix
0.11's output (tests/boards/test_build.py).
"""
import argparse
import struct
import zlib
from pathlib import Path

__all__ = ["dfu_suffix", "add_suffix_cli"]


def dfu_suffix(data: bytes, vid: int, pid: int, did: int = 0xFFFF) -> bytes:
    """The 16-byte suffix for file contents `data`."""
    head = struct.pack("<HHHH", did, pid, vid, 0x0100) + b"UFD" + bytes([16])
    return head + struct.pack("<I", zlib.crc32(data + head) ^ 0xFFFFFFFF)


def add_suffix_cli(argv, cwd="."):
    """`dfu-suffix -v VID -p PID [-d DID] -a FILE` (the options the platforms use)."""
    p = argparse.ArgumentParser(prog="dfu-suffix")
    p.add_argument("-v", dest="vid", type=lambda s: int(s, 16), required=True)
    p.add_argument("-p", dest="pid", type=lambda s: int(s, 16), required=True)
    p.add_argument("-d", dest="did", type=lambda s: int(s, 16), default=0xFFFF)
    p.add_argument("-a", dest="file", required=True)
    args = p.parse_args(argv)
    path = Path(cwd) / args.file
    data = path.read_bytes()
    path.write_bytes(data + dfu_suffix(data, args.vid, args.pid, args.did))
