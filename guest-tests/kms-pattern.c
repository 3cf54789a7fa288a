/* kms-pattern: put a known image on the first connected display and hold it
 * there so the host can take a screendump and compare it pixel for pixel.
 *
 * usage: kms-pattern [--seed N] [--hold SECONDS] [--wait-for FILE]
 *
 *   --seed N         pattern variant, 0..255 (default 0)
 *   --hold SECONDS   keep the image up this long at most (default 60)
 *   --wait-for FILE  stop holding as soon as FILE exists (the host creates it
 *                    after its screendump)
 *
 * Prints "READY WIDTHxHEIGHT" once the image is on the CRTC and flushed,
 * then holds it until the hold time is over, FILE appears, or SIGTERM/SIGINT.
 * The pattern is defined in README.md; pattern_pixel() below is the
 * reference, and the real-guest suite (e2e/src/picture.rs) computes the same
 * thing on the host.
 */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdint.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>
#include <drm_fourcc.h>
#include <xf86drm.h>
#include <xf86drmMode.h>

#include "common.h"

const char *const test_name = "kms-pattern";

static volatile sig_atomic_t stop_requested;

static void on_signal(int sig)
{
    (void)sig;
    stop_requested = 1;
}

/* The reference pattern, as 0x00RRGGBB. Top half: 8 vertical colour bands;
 * bottom half: a gradient. See README.md. */
static uint32_t pattern_pixel(uint32_t x, uint32_t y, uint32_t width, uint32_t height, uint32_t seed)
{
    uint32_t r, g, b;

    if (y < height / 2) {
        uint32_t band = (x * 8 / width + seed) % 8;

        r = (band & 1) ? 255 : 0;
        g = (band & 2) ? 255 : 0;
        b = (band & 4) ? 255 : 0;
    } else {
        r = (x + seed) & 255;
        g = y & 255;
        b = (x ^ y ^ seed) & 255;
    }
    return r << 16 | g << 8 | b;
}

static drmModeConnector *find_connector(int fd, drmModeRes *res)
{
    for (int i = 0; i < res->count_connectors; i++) {
        drmModeConnector *conn = drmModeGetConnector(fd, res->connectors[i]);

        if (conn && conn->connection == DRM_MODE_CONNECTED && conn->count_modes > 0)
            return conn;
        drmModeFreeConnector(conn);
    }
    return NULL;
}

static drmModeModeInfo *preferred_mode(drmModeConnector *conn)
{
    for (int i = 0; i < conn->count_modes; i++) {
        if (conn->modes[i].type & DRM_MODE_TYPE_PREFERRED)
            return &conn->modes[i];
    }
    return &conn->modes[0];
}

/* The CRTC the connector's encoder drives now, else the first it can drive. */
static uint32_t find_crtc(int fd, drmModeRes *res, drmModeConnector *conn)
{
    for (int i = 0; i < conn->count_encoders; i++) {
        drmModeEncoder *enc = drmModeGetEncoder(fd, conn->encoders[i]);
        uint32_t crtc = 0;

        if (!enc)
            continue;
        if (enc->encoder_id == conn->encoder_id && enc->crtc_id)
            crtc = enc->crtc_id;
        for (int c = 0; !crtc && c < res->count_crtcs; c++) {
            if (enc->possible_crtcs & (1u << c))
                crtc = res->crtcs[c];
        }
        drmModeFreeEncoder(enc);
        if (crtc)
            return crtc;
    }
    return 0;
}

static void hold(long seconds, const char *wait_for)
{
    struct timespec tick = { 0, 100 * 1000 * 1000 };

    for (long ticks = seconds * 10; ticks > 0 && !stop_requested; ticks--) {
        if (wait_for && access(wait_for, F_OK) == 0) {
            note("%s appeared", wait_for);
            return;
        }
        nanosleep(&tick, NULL);
    }
    note(stop_requested ? "stopped by a signal" : "hold time over");
}

int main(int argc, char **argv)
{
    long seed = 0, hold_seconds = 60;
    const char *wait_for = NULL;
    uint32_t handle, pitch, fb_id, crtc_id, width, height;
    uint64_t size, offset;
    drmModeRes *res;
    drmModeConnector *conn;
    drmModeModeInfo *mode;
    uint8_t *map;
    int fd;

    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--seed") == 0 && i + 1 < argc)
            seed = parse_number("--seed", argv[++i], 0, 255);
        else if (strcmp(argv[i], "--hold") == 0 && i + 1 < argc)
            hold_seconds = parse_number("--hold", argv[++i], 0, 86400);
        else if (strcmp(argv[i], "--wait-for") == 0 && i + 1 < argc)
            wait_for = argv[++i];
        else
            fail("bad argument '%s' (see the source for usage)", argv[i]);
    }
    signal(SIGTERM, on_signal);
    signal(SIGINT, on_signal);

    fd = open("/dev/dri/card0", O_RDWR | O_CLOEXEC);
    if (fd < 0)
        fail("cannot open /dev/dri/card0: %m");
    res = drmModeGetResources(fd);
    if (!res)
        fail("drmModeGetResources: %m");
    conn = find_connector(fd, res);
    if (!conn)
        fail("no connected connector with modes");
    mode = preferred_mode(conn);
    width = mode->hdisplay;
    height = mode->vdisplay;
    crtc_id = find_crtc(fd, res, conn);
    if (!crtc_id)
        fail("no CRTC for connector %u", conn->connector_id);
    note("connector %u, CRTC %u, mode %s (%ux%u), seed %ld", conn->connector_id, crtc_id,
         mode->name, width, height, seed);

    if (drmModeCreateDumbBuffer(fd, width, height, 32, 0, &handle, &pitch, &size) != 0)
        fail("creating a %ux%u dumb buffer: %m", width, height);
    if (drmModeMapDumbBuffer(fd, handle, &offset) != 0)
        fail("preparing the dumb buffer mapping: %m");
    map = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, (off_t)offset);
    if (map == MAP_FAILED)
        fail("mapping the dumb buffer: %m");
    for (uint32_t y = 0; y < height; y++) {
        uint32_t *row = (uint32_t *)(map + (size_t)y * pitch);

        for (uint32_t x = 0; x < width; x++)
            row[x] = 0xff000000u | pattern_pixel(x, y, width, height, (uint32_t)seed);
    }

    uint32_t handles[4] = { handle }, pitches[4] = { pitch }, offsets[4] = { 0 };
    if (drmModeAddFB2(fd, width, height, DRM_FORMAT_XRGB8888, handles, pitches, offsets, &fb_id, 0) != 0)
        fail("drmModeAddFB2: %m");
    if (drmModeSetCrtc(fd, crtc_id, fb_id, 0, 0, &conn->connector_id, 1, mode) != 0)
        fail("drmModeSetCrtc: %m");
    /* No clip rectangles: the whole framebuffer is dirty. */
    if (drmModeDirtyFB(fd, fb_id, NULL, 0) != 0 && errno != ENOSYS)
        fail("drmModeDirtyFB: %m");

    printf("READY %ux%u\n", width, height);
    fflush(stdout);
    hold(hold_seconds, wait_for);

    drmModeRmFB(fd, fb_id);
    munmap(map, size);
    drmModeDestroyDumbBuffer(fd, handle);
    drmModeFreeConnector(conn);
    drmModeFreeResources(res);
    close(fd);
    pass();
}
