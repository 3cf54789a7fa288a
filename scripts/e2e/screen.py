#!/usr/bin/env python3
"""Take a QEMU screendump over QMP and compare it with the kms-pattern image.

usage: screen.py --qmp SOCKET --out FILE.ppm --size WxH --seed N [--tries N]
       screen.py --compare-only --out FILE.ppm --size WxH --seed N
       screen.py --qmp SOCKET --out FILE.png --format png    (a screenshot, no check)
       screen.py --qmp SOCKET --out FILE.png|FILE.ppm --picture [--wait S] [--size WxH]
       screen.py --picture --compare-only --out FILE.ppm
       screen.py --compare-only --out FILE.png --size WxH --seed N --share-frame
       screen.py --compare-only --out FILE.png --black

--picture polls screendumps (--interval apart, for at most --wait seconds)
until the screen shows a rendered picture rather than one flat colour, a
blank screen or a line of text: the background is the most common colour of
the whole screen, and in the centre region (the middle half each way) at
least --min-share of the pixels must differ from it, in at least
--min-colours distinct colours (kmscube's shaded cube gives hundreds). With
--size the screendump must also have that size. FILE gets the picture that
passed, or the last screendump when none did (PNG or PPM by FILE's name);
QMP's own file is FILE.qmp.ppm, removed after. It stops early when QEMU is
gone (its QMP socket refuses or vanished).

The screendump is written by QEMU itself, so FILE must be a path QEMU can
write (QEMU runs inside the testbed root; paths in the project are the same
inside and outside). The guest may still be flushing when the first
screendump is taken, so a mismatch is retried (--tries, 0.5 s apart) before
it counts. Prints one line saying what matched or what did not; exit status
0 on a match, 1 otherwise. On a mismatch FILE is kept and the expected image
is written next to it as FILE.expected.ppm. --compare-only checks an
existing FILE without QMP (a VNC viewer's screenshot, or for debugging the
check itself); --share-frame compares with share-buffer's frame instead of
the pattern, --black checks that every pixel is black.

The pattern (see guest-tests/README.md; reference: pattern_pixel() in
guest-tests/kms-pattern.c), for a W x H image and seed s:
  y <  H/2: band = (x*8//W + s) % 8; R, G, B = 255 if bit 0, 1, 2 of band
  y >= H/2: R = (x + s) & 255, G = y & 255, B = (x ^ y ^ s) & 255
"""
import argparse
import json
import os
import socket
import struct
import sys
import time
import zlib


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


def read_png(data, path):
    """(width, height, RGB bytes) of an 8-bit RGB or RGBA, non-interlaced PNG (what QEMU's
    screendump writes, e.g. for `virsh screenshot`)."""
    pos, idat, header = 8, b"", None
    while pos + 8 <= len(data):
        length, tag = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + length]
        if tag == b"IHDR":
            header = struct.unpack(">IIBBBBB", body)
        elif tag == b"IDAT":
            idat += body
        pos += 12 + length
    if header is None:
        raise RuntimeError(f"{path}: a PNG without IHDR")
    width, height, depth, colour, _, _, interlace = header
    channels = {2: 3, 6: 4}.get(colour)
    if depth != 8 or channels is None or interlace != 0:
        raise RuntimeError(f"{path}: PNG depth {depth}, colour type {colour}, interlace {interlace}")
    raw, stride = zlib.decompress(idat), width * channels
    rows, prev = [], bytearray(stride)
    for y in range(height):
        kind, line = raw[y * (stride + 1)], bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
        for i in range(stride):
            a = line[i - channels] if i >= channels else 0
            b, c = prev[i], prev[i - channels] if i >= channels else 0
            if kind == 1:
                line[i] = (line[i] + a) & 255
            elif kind == 2:
                line[i] = (line[i] + b) & 255
            elif kind == 3:
                line[i] = (line[i] + (a + b) // 2) & 255
            elif kind == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                pred = a if pa <= pb and pa <= pc else (b if pb <= pc else c)
                line[i] = (line[i] + pred) & 255
        rows.append(bytes(line))
        prev = line
    pixels = b"".join(rows)
    if channels == 4:
        pixels = b"".join(pixels[i:i + 3] for i in range(0, len(pixels), 4))
    return width, height, pixels


def read_ppm(path):
    """Returns (width, height, RGB bytes) of a binary (P6) 8-bit PPM, or of a PNG (QEMU writes
    either, whatever the file is called)."""
    with open(path, "rb") as f:
        data = f.read()
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return read_png(data, path)
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


def write_png(path, width, height, pixels):
    """Writes packed RGB pixels as an 8-bit RGB PNG."""
    stride = width * 3
    raw = b"".join(b"\x00" + pixels[y * stride:(y + 1) * stride] for y in range(height))

    def chunk(tag, body):
        return (struct.pack(">I", len(body)) + tag + body
                + struct.pack(">I", zlib.crc32(tag + body) & 0xFFFFFFFF))

    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n")
        f.write(chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)))
        f.write(chunk(b"IDAT", zlib.compress(raw, 6)))
        f.write(chunk(b"IEND", b""))


def write_image(path, width, height, pixels):
    if path.endswith(".png"):
        write_png(path, width, height, pixels)
    else:
        write_ppm(path, width, height,
                  [pixels[y * width * 3:(y + 1) * width * 3] for y in range(height)])


def picture_stats(width, height, pixels, step=2):
    """What the screen shows, from every step-th pixel each way: (background,
    share of the centre region that is not the background, distinct colours
    there). The background is the most common colour of the whole screen; the
    centre region is the middle half in both directions."""
    stride = width * 3
    counts = {}
    for y in range(0, height, step * 2):
        row = pixels[y * stride:(y + 1) * stride]
        for x in range(0, width, step * 2):
            colour = row[x * 3:x * 3 + 3]
            counts[colour] = counts.get(colour, 0) + 1
    background = max(counts, key=counts.get) if counts else b"\0\0\0"
    colours, other, total = set(), 0, 0
    for y in range(height // 4, height - height // 4, step):
        row = pixels[y * stride:(y + 1) * stride]
        for x in range(width // 4, width - width // 4, step):
            colour = row[x * 3:x * 3 + 3]
            total += 1
            if colour != background:
                other += 1
                colours.add(colour)
    return tuple(background), (other / total if total else 0.0), len(colours)


def describe_picture(width, height, stats):
    background, share, colours = stats
    return (f"{width}x{height}, background {background}, centre {share:.1%} other pixels "
            f"in {colours} colours")


def shows_picture(stats, min_share, min_colours):
    _, share, colours = stats
    return share >= min_share and colours >= min_colours


def wait_picture(args):
    """The --picture mode; returns the exit status."""
    want = tuple(int(v) for v in args.size.split("x")) if args.size else None
    qmp_file = args.out + ".qmp.ppm"
    deadline = time.monotonic() + args.wait
    verdict, last, attempt = "no screendump taken", None, 0
    while True:
        attempt += 1
        try:
            if args.compare_only:
                width, height, pixels = read_ppm(args.out)
            else:
                qmp_screendump(args.qmp, qmp_file)
                width, height, pixels = read_ppm(qmp_file)
        except (FileNotFoundError, ConnectionRefusedError) as e:
            verdict = f"screendump failed: {e} (QEMU gone?)"
            break
        except (OSError, RuntimeError, ValueError) as e:
            verdict = f"screendump failed: {e}"
        else:
            last = (width, height, pixels)
            stats = picture_stats(width, height, pixels)
            verdict = describe_picture(width, height, stats)
            if want and (width, height) != want:
                verdict += f", expected {want[0]}x{want[1]}"
            elif shows_picture(stats, args.min_share, args.min_colours):
                if not args.compare_only:
                    write_image(args.out, width, height, pixels)
                    os.remove(qmp_file)
                print(f"screendump shows a picture: {verdict} (try {attempt}, kept {args.out})")
                return 0
        if args.compare_only or time.monotonic() + args.interval > deadline:
            break
        time.sleep(args.interval)
    if last and not args.compare_only:
        write_image(args.out, *last)
    if os.path.exists(qmp_file):
        os.remove(qmp_file)
    kept = f"; kept the last screendump in {args.out}" if last and not args.compare_only else ""
    print(f"no picture on the screen after {attempt} screendumps: {verdict} "
          f"(need {args.min_share:.0%} of the centre in >= {args.min_colours} colours{kept})")
    return 1


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


def share_frame_rows(width, height, seed):
    """share-buffer's frame for seed (share_frame_pixel() in guest-tests/share-render.c: 16x4
    tiles of one colour each, an RGBA word per pixel), as a scanout shows those words: as
    XRGB8888, so red is the word's byte 2, green byte 1, blue byte 0."""
    rows = []
    for y in range(height):
        row = bytearray()
        for x in range(width):
            tile = (y // 4) * (width // 16) + x // 16
            v = (tile * 0x9E3779B1 + seed) & 0xFFFFFFFF
            v ^= v >> 15
            v = (v * 0x2C1B3C6D) & 0xFFFFFFFF
            v ^= v >> 13
            row += bytes(((v >> 16) & 255, (v >> 8) & 255, v & 255))
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
    parser.add_argument("--share-frame", action="store_true",
                        help="compare with share-buffer's frame for --seed, not kms-pattern's")
    parser.add_argument("--black", action="store_true",
                        help="--compare-only: every pixel must be black")
    parser.add_argument("--picture", action="store_true",
                        help="wait until the screen shows a picture, not one flat colour")
    parser.add_argument("--wait", type=float, default=30, help="--picture: at most this long (s)")
    parser.add_argument("--interval", type=float, default=0.5,
                        help="--picture: between screendumps (s)")
    parser.add_argument("--min-share", type=float, default=0.05,
                        help="--picture: share of the centre that is not the background")
    parser.add_argument("--min-colours", type=int, default=16,
                        help="--picture: distinct colours in the centre, background aside")
    args = parser.parse_args()
    if args.picture:
        if not args.compare_only and not args.qmp:
            parser.error("--qmp is required unless --compare-only is given")
        return wait_picture(args)
    if args.format:
        qmp_screendump(args.qmp, args.out, args.format)
        return 0
    if args.black:
        width, height, pixels = read_ppm(args.out)
        lit = sum(1 for b in pixels if b)
        print(f"{args.out}: {width}x{height}, {lit} of {len(pixels)} channel values not 0")
        return 0 if lit == 0 else 1
    if not args.size or args.seed is None:
        parser.error("--size and --seed are needed to compare")
    width, height = (int(v) for v in args.size.split("x"))
    if args.share_frame:
        rows = share_frame_rows(width, height, args.seed)
    else:
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
            what = "share-buffer's frame" if args.share_frame else "pattern"
            print(f"{os.path.basename(args.out)} {width}x{height} matches {what} seed "
                  f"{args.seed} exactly (try {attempt})")
            return 0
        verdict = (f"{wrong} of {width * height} pixels differ from pattern seed "
                   f"{args.seed}; first: {first}")
    if not args.compare_only:
        write_ppm(args.out + ".expected.ppm", width, height, rows)
    print(f"{verdict} (after {args.tries} tries; kept {args.out})")
    return 1


if __name__ == "__main__":
    sys.exit(main())
