#!/usr/bin/env python3
"""Take a QEMU screendump over QMP and compare it with the kms-pattern image.

usage: screen.py --qmp SOCKET --out FILE.ppm --size WxH --seed N [--tries N]
       screen.py --compare-only --out FILE.ppm --size WxH --seed N
       screen.py --qmp SOCKET --out FILE.png --format png    (a screenshot, no check)

The screendump is written by QEMU itself, so FILE must be a path QEMU can
write (QEMU runs inside the testbed root; paths in the project are the same
inside and outside). The guest may still be flushing when the first
screendump is taken, so a mismatch is retried (--tries, 0.5 s apart) before
it counts. Prints one line saying what matched or what did not; exit status
0 on a match, 1 otherwise. On a mismatch FILE is kept and the expected image
is written next to it as FILE.expected.ppm. --compare-only checks an
existing FILE without QMP (for debugging the check itself).

The pattern (see guest-tests/README.md; reference: pattern_pixel() in
guest-tests/kms-pattern.c), for a W x H image and seed s:
  y <  H/2: band = (x*8//W + s) % 8; R, G, B = 255 if bit 0, 1, 2 of band
  y >= H/2: R = (x + s) & 255, G = y & 255, B = (x ^ y ^ s) & 255
"""
import argparse
import json
import socket
import sys
import time


def qmp_screendump(sock_path, filename, fmt=None):
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(30)
        sock.connect(sock_path)
        stream = sock.makefile("rw", encoding="utf-8", newline="\n")

        def command(name, **arguments):
            msg = {"execute": name}
            if arguments:
                msg["arguments"] = arguments
            stream.write(json.dumps(msg) + "\n")
            stream.flush()
            while True:  # skip asynchronous events
                line = stream.readline()
                if not line:
                    raise RuntimeError(f"QMP closed the connection during {name}")
                reply = json.loads(line)
                if "error" in reply:
                    raise RuntimeError(f"QMP {name}: {reply['error'].get('desc', reply)}")
                if "return" in reply:
                    return reply["return"]

        greeting = json.loads(stream.readline())
        if "QMP" not in greeting:
            raise RuntimeError(f"not a QMP greeting: {greeting}")
        command("qmp_capabilities")
        extra = {"format": fmt} if fmt else {}
        command("screendump", filename=filename, **extra)


def read_ppm(path):
    """Returns (width, height, RGB bytes) of a binary (P6) 8-bit PPM."""
    with open(path, "rb") as f:
        data = f.read()
    fields, pos = [], 0
    while len(fields) < 4:
        while data[pos:pos + 1].isspace():
            pos += 1
        if data[pos:pos + 1] == b"#":
            pos = data.index(b"\n", pos)
            continue
        start = pos
        while not data[pos:pos + 1].isspace():
            pos += 1
        fields.append(data[start:pos].decode("ascii"))
    pos += 1  # exactly one whitespace byte before the pixels
    magic, width, height, maxval = fields[0], int(fields[1]), int(fields[2]), int(fields[3])
    if magic != "P6" or maxval != 255:
        raise RuntimeError(f"{path}: not an 8-bit binary PPM ({magic}, maxval {maxval})")
    pixels = data[pos:pos + width * height * 3]
    if len(pixels) != width * height * 3:
        raise RuntimeError(f"{path}: truncated ({len(pixels)} pixel bytes)")
    return width, height, pixels


def expected_rows(width, height, seed):
    """The pattern as one bytes object of packed RGB per row."""
    top = bytearray()
    for x in range(width):
        band = (x * 8 // width + seed) % 8
        top += bytes((255 if band & 1 else 0, 255 if band & 2 else 0, 255 if band & 4 else 0))
    top = bytes(top)
    rows = []
    for y in range(height):
        if y < height // 2:
            rows.append(top)
            continue
        row = bytearray(width * 3)
        row[0::3] = bytes((x + seed) & 255 for x in range(width))
        row[1::3] = bytes([y & 255]) * width
        row[2::3] = bytes((x ^ y ^ seed) & 255 for x in range(width))
        rows.append(bytes(row))
    return rows


def compare(pixels, width, rows):
    """Returns (number of wrong pixels, description of the first one)."""
    wrong, first = 0, None
    stride = width * 3
    for y, want in enumerate(rows):
        got = pixels[y * stride:(y + 1) * stride]
        if got == want:
            continue
        for x in range(width):
            g, w = got[x * 3:x * 3 + 3], want[x * 3:x * 3 + 3]
            if g != w:
                wrong += 1
                if first is None:
                    first = f"({x}, {y}) is {tuple(g)}, expected {tuple(w)}"
    return wrong, first


def write_ppm(path, width, height, rows):
    with open(path, "wb") as f:
        f.write(f"P6\n{width} {height}\n255\n".encode("ascii"))
        for row in rows:
            f.write(row)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--qmp")
    parser.add_argument("--compare-only", action="store_true")
    parser.add_argument("--out", required=True)
    parser.add_argument("--size")
    parser.add_argument("--seed", type=int)
    parser.add_argument("--format", help="only take a screenshot in this format (ppm, png)")
    parser.add_argument("--tries", type=int, default=6)
    args = parser.parse_args()
    if args.format:
        qmp_screendump(args.qmp, args.out, args.format)
        return 0
    if not args.size or args.seed is None:
        parser.error("--size and --seed are needed to compare")
    width, height = (int(v) for v in args.size.split("x"))
    rows = expected_rows(width, height, args.seed)
    if not args.compare_only and not args.qmp:
        parser.error("--qmp is required unless --compare-only is given")
    if args.compare_only:
        args.tries = 1

    verdict = "no screendump taken"
    for attempt in range(1, args.tries + 1):
        if attempt > 1:
            time.sleep(0.5)
        try:
            if not args.compare_only:
                qmp_screendump(args.qmp, args.out)
            got_w, got_h, pixels = read_ppm(args.out)
        except (OSError, RuntimeError, ValueError) as e:
            verdict = f"screendump failed: {e}"
            continue
        if (got_w, got_h) != (width, height):
            verdict = f"screendump is {got_w}x{got_h}, the guest set {width}x{height}"
            continue
        wrong, first = compare(pixels, width, rows)
        if wrong == 0:
            print(f"screendump {width}x{height} matches pattern seed {args.seed} "
                  f"exactly (try {attempt})")
            return 0
        verdict = (f"{wrong} of {width * height} pixels differ from pattern seed "
                   f"{args.seed}; first: {first}")
    if not args.compare_only:
        write_ppm(args.out + ".expected.ppm", width, height, rows)
    print(f"{verdict} (after {args.tries} tries; kept {args.out})")
    return 1


if __name__ == "__main__":
    sys.exit(main())
