/* share-buffer: one guest's GPU memory shared with another guest on the same
 * vgpud, zero copy, through vgpud's share context (capset 20) and nothing but
 * stock virtio-gpu DRM ioctls (docs/share-protocol.md).
 *
 * usage: share-buffer export SEED PAGES
 *        share-buffer import UUID SEED PAGES FENCE
 *        share-buffer offer PAGES COUNT WAIT_FILE
 *        share-buffer moves UUID1 UUID2 SEED PAGES
 *
 * export: a share context and a reply blob; on a second DRM file a Venus
 *   context and a mappable HOST3D blob (blob id 0: memory the renderer
 *   allocates) of PAGES pages; a frame for SEED rendered with Vulkan on the
 *   Venus device (share-render.c) and copied into the blob's mapping; EXPORT
 *   of that resource from the share context; prints
 *   "SHARE-UUID <32 hex digits> FENCE <handle>", the handle of a fence point
 *   on every timeline of this VM (EXPORT_FENCE_ALL). Then waits (up to 120 s)
 *   until the first 16 bytes of its last page read "IMPORTED <seed>": written
 *   by the other guest through its own mapping of these very pages.
 * import: a share context and a reply blob; WAIT_FENCES on the exporter's
 *   fence handle (the EXECBUFFER's out-fence must signal); IMPORT the UUID; the answered
 *   size must be PAGES pages; RESOURCE_CREATE_BLOB (HOST3D, the answered blob
 *   id) on the share context; MAP + mmap; every pixel must be the frame's
 *   for SEED (the last page's first 16 bytes aside); writes "IMPORTED <seed>"
 *   there.
 * show: import as above on the card node, then the frame becomes this VM's
 *   scanout (a framebuffer on the imported resource: SET_SCANOUT_BLOB), prints
 *   "SHOWN WxH"; once WAIT_FILE exists writes "IMPORTED <seed>" (the exporter
 *   then frees the buffer) and holds the scanout until WAIT_FILE.gone exists.
 * offer: COUNT host blobs of blob id 0 (memory the daemon owns, whatever the
 *   device's renderer), made on the share context without the MAPPABLE flag
 *   (never mapped here) and exported; prints "SHARE-UUID <hex>" for each.
 *   Its own first UUID it may not import (the policy never lets a VM import
 *   from itself): IMPORT must answer NO_SUCH, as for a UUID that names nothing.
 *   Then holds until WAIT_FILE exists.
 * moves: for a daemon whose --share-budget holds one of these buffers. Imports
 *   UUID1 dynamically, maps it and writes the pattern for SEED; imports UUID2
 *   dynamically and maps it: the budget is exceeded, so the first buffer is
 *   moved out. Before reading the events, a stream the daemon must refuse
 *   whole (a READ_EVENTS, then a command with a reserved word that is not 0):
 *   the ioctl succeeds and the fence signals, both reply slots inside the
 *   reply blob read INVALID, one outside it stays untouched, and the
 *   READ_EVENTS did not run: READ_EVENTS must then say MOVED for the first
 *   buffer. Its old mapping reads zeros now, and a write to it is dropped.
 *   As docs/share-protocol.md says: a new resource on the same blob id,
 *   mapped, must hold the pattern word for word (moved back bit-exact); then
 *   the old handle is closed, and now the second buffer must have been moved.
 *   WAIT_FENCES on a handle never given out answers NO_SUCH.
 *
 * Replies come back in the reply blob once the EXECBUFFER's out-fence (ring
 * 0) has signalled.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <poll.h>
#include <stdint.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include <drm_fourcc.h>
#include <virtgpu_drm.h>
#include <xf86drm.h>
#include <xf86drmMode.h>

#include "common.h"
#include "share-render.h"

const char *const test_name = "share-buffer";

#define CAPSET_SHARE 20
#define CAPSET_VENUS 4
#define PAGE 4096u
#define TIMEOUT_MS 10000
#define MARK_LEN 16

/* Share context ops and statuses (protocol/src/share.rs). */
#define OP_SET_REPLY_BLOB 1
#define OP_EXPORT 2
#define OP_IMPORT 3
#define OP_EXPORT_FENCE 6
#define OP_WAIT_FENCES 7
#define EXPORT_FENCE_ALL 0xffffffffu
#define OP_READ_EVENTS 8
#define EVENT_MOVED 1
#define NO_REPLY 0xffffffffu
#define STATUS_INVALID 1
#define STATUS_NO_SUCH 2
/* A reply slot's status before the daemon writes it: no status has this value. */
#define UNWRITTEN 0xffffffffu

struct bo {
    uint32_t handle, res;
    size_t size;
    uint8_t *map;
};

static int open_render_node(void)
{
    for (int minor = 128; minor < 192; minor++) {
        char path[64];
        drmVersionPtr version;
        int fd;

        snprintf(path, sizeof(path), "/dev/dri/renderD%d", minor);
        fd = open(path, O_RDWR | O_CLOEXEC);
        if (fd < 0)
            continue;
        version = drmGetVersion(fd);
        if (version && strcmp(version->name, "virtio_gpu") == 0) {
            drmFreeVersion(version);
            return fd;
        }
        if (version)
            drmFreeVersion(version);
        close(fd);
    }
    fail("no virtio_gpu render node in /dev/dri");
}

static void check_device(int fd)
{
    uint64_t caps = 0;
    struct drm_virtgpu_getparam args = {
        .param = VIRTGPU_PARAM_SUPPORTED_CAPSET_IDs,
        .value = (uintptr_t)&caps,
    };

    if (drmIoctl(fd, DRM_IOCTL_VIRTGPU_GETPARAM, &args) != 0)
        fail("GETPARAM SUPPORTED_CAPSET_IDs: %m");
    if (!(caps & (1ull << CAPSET_SHARE)))
        fail("the device offers no share capset (capsets 0x%" PRIx64 ")", caps);
}

static void context_init(int fd, uint64_t capset)
{
    struct drm_virtgpu_context_set_param params[] = {
        { VIRTGPU_CONTEXT_PARAM_CAPSET_ID, capset },
        { VIRTGPU_CONTEXT_PARAM_NUM_RINGS, 1 },
    };
    struct drm_virtgpu_context_init args = { .num_params = 2, .ctx_set_params = (uintptr_t)params };

    if (drmIoctl(fd, DRM_IOCTL_VIRTGPU_CONTEXT_INIT, &args) != 0)
        fail("CONTEXT_INIT with capset %" PRIu64 ": %m", capset);
}

static void map_bo(int fd, struct bo *b)
{
    struct drm_virtgpu_map args = { .handle = b->handle };
    void *ptr;

    if (drmIoctl(fd, DRM_IOCTL_VIRTGPU_MAP, &args) != 0)
        fail("MAP of resource %u: %m", b->res);
    ptr = mmap(NULL, b->size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, (off_t)args.offset);
    if (ptr == MAP_FAILED)
        fail("mmap of resource %u: %m", b->res);
    b->map = ptr;
}

static struct bo create_unmapped(int fd, uint32_t blob_mem, uint64_t blob_id, size_t size,
                                 uint32_t flags)
{
    struct drm_virtgpu_resource_create_blob args = {
        .blob_mem = blob_mem,
        .blob_flags = flags,
        .size = size,
        .blob_id = blob_id,
    };
    struct bo b = { .size = size };

    if (drmIoctl(fd, DRM_IOCTL_VIRTGPU_RESOURCE_CREATE_BLOB, &args) != 0)
        fail("RESOURCE_CREATE_BLOB (mem %u, blob id %" PRIu64 ", %zu bytes): %m", blob_mem,
             blob_id, size);
    b.handle = args.bo_handle;
    b.res = args.res_handle;
    return b;
}

static struct bo create_blob(int fd, uint32_t blob_mem, uint64_t blob_id, size_t size)
{
    struct bo b = create_unmapped(fd, blob_mem, blob_id, size, VIRTGPU_BLOB_FLAG_USE_MAPPABLE);

    map_bo(fd, &b);
    return b;
}

/* Submits `words` on ring 0 with an out-fence and waits for it. */
static void submit(int fd, const uint32_t *words, uint32_t count, const uint32_t *handles,
                   uint32_t nhandles)
{
    struct drm_virtgpu_execbuffer args = {
        .flags = VIRTGPU_EXECBUF_RING_IDX | VIRTGPU_EXECBUF_FENCE_FD_OUT,
        .size = count * 4,
        .command = (uintptr_t)words,
        .bo_handles = (uintptr_t)handles,
        .num_bo_handles = nhandles,
        .fence_fd = -1,
        .ring_idx = 0,
    };
    struct pollfd p;
    int n;

    if (drmIoctl(fd, DRM_IOCTL_VIRTGPU_EXECBUFFER, &args) != 0)
        fail("EXECBUFFER on the share context: %m");
    p = (struct pollfd){ .fd = args.fence_fd, .events = POLLIN };
    do
        n = poll(&p, 1, TIMEOUT_MS);
    while (n < 0 && errno == EINTR);
    if (n <= 0)
        fail("the share context's out-fence did not signal within %d s", TIMEOUT_MS / 1000);
    close(args.fence_fd);
}

/* A reply blob named to the device; returns it. */
static struct bo replies(int fd)
{
    struct bo r = create_blob(fd, VIRTGPU_BLOB_MEM_GUEST, 0, PAGE);
    uint32_t cmd[] = { OP_SET_REPLY_BLOB, 24, NO_REPLY, 0, r.res, 0 };

    submit(fd, cmd, 6, &r.handle, 1);
    return r;
}

/* The reply at offset 0: fails unless its status is OK; returns the payload. */
static const uint8_t *reply_ok(struct bo *r, const char *what, uint32_t len)
{
    uint32_t status, got;

    memcpy(&status, r->map, 4);
    memcpy(&got, r->map + 4, 4);
    if (status != 0)
        fail("%s: status %u", what, status);
    if (got != len)
        fail("%s: a %u-byte reply, expected %u", what, got, len);
    return r->map + 8;
}

/* The status and length of the reply at `offset` of the reply blob. */
static void reply_at(struct bo *r, size_t offset, uint32_t *status, uint32_t *len)
{
    memcpy(status, r->map + offset, 4);
    memcpy(len, r->map + offset + 4, 4);
}

/* Hex UUID to bytes. */
static void parse_uuid(const char *hex, uint8_t out[16])
{
    if (strlen(hex) != 32)
        fail("UUID '%s' is not 32 hex digits", hex);
    for (int i = 0; i < 16; i++) {
        unsigned byte;

        if (sscanf(hex + 2 * i, "%2x", &byte) != 1)
            fail("UUID '%s' is not hex", hex);
        out[i] = (uint8_t)byte;
    }
}

static uint32_t pattern(uint32_t i, uint32_t seed)
{
    uint32_t x = i * 0x9e3779b1u + seed;

    x ^= x >> 15;
    x *= 0x2c1b3c6du;
    return x ^ (x >> 13);
}

static void mark(char out[MARK_LEN + 1], uint32_t seed)
{
    snprintf(out, MARK_LEN + 1, "IMPORTED %06u", seed % 1000000);
}

static void do_export(int fd, uint32_t seed, size_t pages)
{
    struct bo r = replies(fd);
    int venus = open_render_node();
    struct bo buf;

    context_init(venus, CAPSET_VENUS);
    buf = create_blob(venus, VIRTGPU_BLOB_MEM_HOST3D, 0, pages * PAGE);
    uint32_t cmd[] = { OP_EXPORT, 24, 0, 0, buf.res, 0 };
    uint32_t handles[] = { r.handle };
    const uint8_t *uuid;
    uint8_t *last = buf.map + (pages - 1) * PAGE;
    char want[MARK_LEN + 1], hex[33];
    struct timespec start, now;

    share_render_frame(seed, pages * PAGE, buf.map);
    memset(r.map, 0xee, 64);
    submit(fd, cmd, 6, handles, 1);
    uuid = reply_ok(&r, "EXPORT", 16);
    for (int i = 0; i < 16; i++)
        snprintf(hex + 2 * i, 3, "%02x", uuid[i]);
    note("exported %zu pages of renderer memory holding the frame (resource %u)", pages,
         buf.res);
    /* A point on every timeline of this VM: what the importer waits for. */
    uint32_t fence_cmd[] = { OP_EXPORT_FENCE, 24, 0, 0, EXPORT_FENCE_ALL, 0 };
    uint64_t handle;

    submit(fd, fence_cmd, 6, handles, 1);
    memcpy(&handle, reply_ok(&r, "EXPORT_FENCE", 8), 8);
    printf("SHARE-UUID %s FENCE %" PRIu64 "\n", hex, handle);
    fflush(stdout);

    mark(want, seed);
    clock_gettime(CLOCK_MONOTONIC, &start);
    for (;;) {
        if (memcmp(last, want, MARK_LEN) == 0)
            break;
        clock_gettime(CLOCK_MONOTONIC, &now);
        if (now.tv_sec - start.tv_sec > 120)
            fail("no importer wrote '%s' into the shared pages within 120 s", want);
        usleep(20000);
    }
    note("the importer wrote '%s' into these pages: the same memory, both ways", want);
    pass();
}

/* Waits for the exporter's fence, imports `uuid_hex`, maps it and checks every pixel is the
 * exporter's frame for `seed`. */
static struct bo import_frame(int fd, const char *uuid_hex, uint32_t seed, size_t pages,
                              uint64_t fence)
{
    struct bo r = replies(fd);

    /* The exporter's fence point first: this EXECBUFFER's out-fence signals once it passed. */
    uint32_t wait[8] = { OP_WAIT_FENCES, 32, NO_REPLY, 0, 1, 0 };

    memcpy(&wait[6], &fence, 8);
    submit(fd, wait, 8, &r.handle, 1);
    note("waited for the exporter's fence %" PRIu64, fence);
    uint32_t cmd[10] = { OP_IMPORT, 40, 0, 0 };
    uint64_t blob_id, size;
    const uint8_t *payload;
    struct bo shared;
    const uint32_t *words;
    size_t wrong = 0, first = 0, checked = 0;

    parse_uuid(uuid_hex, (uint8_t *)&cmd[4]);
    memset(r.map, 0xee, 64);
    submit(fd, cmd, 10, &r.handle, 1);
    payload = reply_ok(&r, "IMPORT", 16);
    memcpy(&blob_id, payload, 8);
    memcpy(&size, payload + 8, 8);
    if (size != pages * PAGE)
        fail("IMPORT answered %" PRIu64 " bytes, expected %zu", size, pages * PAGE);
    note("imported %s: blob id %" PRIu64 ", %" PRIu64 " bytes", uuid_hex, blob_id, size);

    shared = create_blob(fd, VIRTGPU_BLOB_MEM_HOST3D, blob_id, size);
    words = (const uint32_t *)shared.map;
    for (size_t i = 0; i < size / 4; i++) {
        /* The last page's first words are where the marker goes. */
        if (i >= (size - PAGE) / 4 && i < (size - PAGE + MARK_LEN) / 4)
            continue;
        checked++;
        if (words[i] != share_frame_pixel((uint32_t)i, seed) && wrong++ == 0)
            first = i;
    }
    if (wrong)
        fail("%zu of %zu pixels differ from the exporter's frame; first at (%zu, %zu): 0x%08x, "
             "expected 0x%08x", wrong, checked, first % SHARE_FRAME_WIDTH,
             first / SHARE_FRAME_WIDTH, words[first], share_frame_pixel((uint32_t)first, seed));
    note("all %zu pixels are the exporter's frame (resource %u, mapped)", checked, shared.res);
    return shared;
}

/* Tells the exporter its pages were seen here: it then frees them. */
static void write_mark(struct bo *shared, uint32_t seed)
{
    char m[MARK_LEN + 1];

    mark(m, seed);
    memcpy(shared->map + shared->size - PAGE, m, MARK_LEN);
    note("wrote '%s' for the exporter to see", m);
}

static void do_import(int fd, const char *uuid_hex, uint32_t seed, size_t pages, uint64_t fence)
{
    struct bo shared = import_frame(fd, uuid_hex, seed, pages, fence);

    write_mark(&shared, seed);
    pass();
}

static void wait_file(const char *path)
{
    for (int i = 0; i < 1200 && access(path, F_OK) != 0; i++)
        usleep(100000);
    if (access(path, F_OK) != 0)
        fail("%s did not appear within 120 s", path);
}

/* The imported frame as this VM's scanout: a framebuffer on the imported resource (the driver
 * sends SET_SCANOUT_BLOB, then RESOURCE_FLUSH). The connector's mode must be the frame's size
 * (the VM's resolution setting): a plane covers its whole CRTC. */
static void scan_out(int fd, struct bo *shared)
{
    uint32_t width = SHARE_FRAME_WIDTH, height = (uint32_t)(shared->size / (SHARE_FRAME_WIDTH * 4));
    drmModeRes *res = drmModeGetResources(fd);
    drmModeConnector *conn = NULL;
    drmModeModeInfo *mode = NULL;
    uint32_t crtc, fb;

    if (!res)
        fail("drmModeGetResources: %m");
    for (int i = 0; i < res->count_connectors && !conn; i++) {
        conn = drmModeGetConnector(fd, res->connectors[i]);
        if (conn && conn->connection != DRM_MODE_CONNECTED) {
            drmModeFreeConnector(conn);
            conn = NULL;
        }
    }
    if (!conn)
        fail("no connected connector");
    for (int i = 0; i < conn->count_modes && !mode; i++)
        if (conn->modes[i].hdisplay == width && conn->modes[i].vdisplay == height)
            mode = &conn->modes[i];
    if (!mode)
        fail("no %ux%u mode on connector %u (resolution setting?)", width, height,
             conn->connector_id);
    if (res->count_crtcs < 1)
        fail("no CRTC");
    crtc = res->crtcs[0];
    uint32_t handles[4] = { shared->handle }, pitches[4] = { width * 4 }, offsets[4] = { 0 };
    if (drmModeAddFB2(fd, width, height, DRM_FORMAT_XRGB8888, handles, pitches, offsets, &fb, 0))
        fail("drmModeAddFB2 on the imported resource: %m");
    if (drmModeSetCrtc(fd, crtc, fb, 0, 0, &conn->connector_id, 1, mode))
        fail("drmModeSetCrtc: %m");
    if (drmModeDirtyFB(fd, fb, NULL, 0) != 0 && errno != ENOSYS)
        fail("drmModeDirtyFB: %m");
    note("the imported frame is the scanout: %ux%u, resource %u", width, height, shared->res);
}

/* show: import as above, make the frame this VM's scanout, print SHOWN, and once WAIT_FILE
 * exists tell the exporter (which then frees the buffer); hold the scanout until
 * WAIT_FILE.gone exists. */
static void do_show(int fd, const char *uuid_hex, uint32_t seed, size_t pages, uint64_t fence,
                    const char *wait)
{
    struct bo shared = import_frame(fd, uuid_hex, seed, pages, fence);
    char gone[512];

    scan_out(fd, &shared);
    printf("SHOWN %ux%zu\n", SHARE_FRAME_WIDTH, shared.size / (SHARE_FRAME_WIDTH * 4));
    fflush(stdout);
    wait_file(wait);
    write_mark(&shared, seed);
    snprintf(gone, sizeof(gone), "%s.gone", wait);
    wait_file(gone);
    pass();
}

static void do_offer(int fd, size_t pages, int count, const char *wait_file)
{
    struct bo r = replies(fd);

    for (int i = 0; i < count; i++) {
        /* Not mappable here: the guest kernel maps mappable host blobs at once,
         * and a buffer its exporter maps is busy, never moved. */
        struct bo b = create_unmapped(fd, VIRTGPU_BLOB_MEM_HOST3D, 0, pages * PAGE, 0);
        uint32_t cmd[] = { OP_EXPORT, 24, 0, 0, b.res, 0 };
        const uint8_t *uuid;
        char hex[33];

        submit(fd, cmd, 6, &r.handle, 1);
        uuid = reply_ok(&r, "EXPORT", 16);
        for (int k = 0; k < 16; k++)
            snprintf(hex + 2 * k, 3, "%02x", uuid[k]);
        note("offered resource %u, %zu pages of daemon memory", b.res, pages);
        printf("SHARE-UUID %s\n", hex);
        fflush(stdout);
        if (i == 0) {
            /* Never from oneself: refused by the policy, answered as an unknown UUID. */
            uint32_t imp[10] = { OP_IMPORT, 40, 0, 0 };
            uint32_t status, len;

            memcpy(&imp[4], uuid, 16);
            memset(r.map, 0xee, 64);
            submit(fd, imp, 10, &r.handle, 1);
            reply_at(&r, 0, &status, &len);
            if (status != STATUS_NO_SUCH || len != 0)
                fail("IMPORT of its own buffer: status %u (%u bytes), expected NO_SUCH", status,
                     len);
            note("IMPORT of its own buffer answered NO_SUCH (the policy refuses it)");
        }
    }
    for (int i = 0; i < 36000 && access(wait_file, F_OK) != 0; i++)
        usleep(100000);
    pass();
}

/* IMPORT (dynamic) `uuid_hex`, create and map the resource; its blob id in `blob`. */
static struct bo import_mapped(int fd, struct bo *r, const char *uuid_hex, size_t size,
                               uint64_t *blob)
{
    uint32_t cmd[10] = { OP_IMPORT, 40, 0, 0, 0, 0, 0, 0, 1, 0 };
    const uint8_t *payload;
    uint64_t blob_id, got;

    parse_uuid(uuid_hex, (uint8_t *)&cmd[4]);
    submit(fd, cmd, 10, &r->handle, 1);
    payload = reply_ok(r, "IMPORT", 16);
    memcpy(&blob_id, payload, 8);
    memcpy(&got, payload + 8, 8);
    if (got != size)
        fail("IMPORT answered %" PRIu64 " bytes, expected %zu", got, size);
    *blob = blob_id;
    return create_blob(fd, VIRTGPU_BLOB_MEM_HOST3D, blob_id, size);
}

/* A stream the daemon must refuse whole: READ_EVENTS (reply at 0), then an
 * UNPIN whose reserved word is 1 (reply at 64), then a PIN whose reply would
 * lie past the reply blob. The ioctl succeeds and its fence signals (a stock
 * kernel does not pass the error on); the slots inside the blob read INVALID,
 * the one outside is not written, and nothing ran (checked by the caller: the
 * events are still there). */
static void refused_stream(int fd, struct bo *r, uint32_t res)
{
    uint32_t cmd[] = {
        OP_READ_EVENTS, 24, 0, 0, 16, 0,
        5 /* UNPIN */, 24, 64, 1 /* reserved: must be 0 */, res, 0,
        4 /* PIN */, 24, (uint32_t)r->size - 4, 0, res, 0,
    };
    uint32_t status, len, last;

    memset(r->map, 0xff, r->size);
    submit(fd, cmd, 18, &r->handle, 1);
    for (size_t at = 0; at <= 64; at += 64) {
        reply_at(r, at, &status, &len);
        if (status != STATUS_INVALID || len != 0)
            fail("refused stream: the slot at %zu reads status %u (%u bytes), expected INVALID",
                 at, status, len);
    }
    memcpy(&last, r->map + r->size - 4, 4);
    if (last != UNWRITTEN)
        fail("refused stream: the slot past the reply blob's end was written (0x%08x)", last);
    note("a malformed stream: the ioctl and its fence succeeded, its slots read INVALID");
}

/* READ_EVENTS: whether a MOVED event for `res` is among them. */
static int moved(int fd, struct bo *r, uint32_t res)
{
    uint32_t cmd[] = { OP_READ_EVENTS, 24, 0, 0, 16, 0 };
    const uint8_t *payload;
    uint32_t count, kind, id;
    int found = 0;

    submit(fd, cmd, 6, &r->handle, 1);
    memcpy(&count, r->map + 4, 4);
    if (count < 8)
        fail("READ_EVENTS: a %u-byte reply", count);
    payload = reply_ok(r, "READ_EVENTS", count);
    memcpy(&count, payload, 4);
    for (uint32_t i = 0; i < count && i < 16; i++) {
        memcpy(&kind, payload + 8 + 24 * i, 4);
        memcpy(&id, payload + 12 + 24 * i, 4);
        note("event %u for resource %u", kind, id);
        found |= kind == EVENT_MOVED && id == res;
    }
    return found;
}

static void do_moves(int fd, const char *first, const char *second, uint32_t seed, size_t pages)
{
    struct bo r = replies(fd);
    size_t size = pages * PAGE, wrong = 0, nonzero = 0;
    uint64_t first_blob, second_blob;
    struct bo a = import_mapped(fd, &r, first, size, &first_blob), b, again;
    volatile uint32_t *words = (uint32_t *)a.map;

    for (size_t i = 0; i < size / 4; i++)
        words[i] = pattern((uint32_t)i, seed);
    note("wrote the pattern into the first buffer (resource %u)", a.res);
    b = import_mapped(fd, &r, second, size, &second_blob);
    note("mapped the second buffer (resource %u)", b.res);
    refused_stream(fd, &r, b.res);
    if (!moved(fd, &r, a.res))
        fail("no MOVED event for the first buffer after the second was mapped");
    /* The mapping a move took away reads zeros, and writes to it go nowhere. */
    for (size_t i = 0; i < size / 4; i++)
        nonzero += words[i] != 0;
    words[1] = 0x5eed;
    if (nonzero || words[1] != 0)
        fail("the moved-out mapping reads %zu nonzero words, and 0x%x after a write", nonzero,
             words[1]);
    note("the moved-out mapping reads zeros, and a write to it is dropped");
    /* docs/share-protocol.md: a new resource on the same blob id maps it again. */
    again = create_blob(fd, VIRTGPU_BLOB_MEM_HOST3D, first_blob, size);
    munmap(a.map, size);
    struct drm_gem_close close_args = { .handle = a.handle };
    if (drmIoctl(fd, DRM_IOCTL_GEM_CLOSE, &close_args) != 0)
        fail("GEM_CLOSE of the moved import: %m");
    words = (uint32_t *)again.map;
    for (size_t i = 0; i < size / 4; i++)
        wrong += words[i] != pattern((uint32_t)i, seed);
    if (wrong)
        fail("%zu of %zu words differ after the buffer came back", wrong, size / 4);
    note("the first buffer came back bit-exact (resource %u, blob id %" PRIu64 " again)",
         again.res, first_blob);
    if (!moved(fd, &r, b.res))
        fail("no MOVED event for the second buffer after the first came back");

    uint32_t wait[8] = { OP_WAIT_FENCES, 32, 0, 0, 1, 0, 0x7fffffff, 0 };
    uint32_t status, len;

    memset(r.map, 0xee, 64);
    submit(fd, wait, 8, &r.handle, 1);
    reply_at(&r, 0, &status, &len);
    if (status != STATUS_NO_SUCH)
        fail("WAIT_FENCES on a handle never given out: status %u, expected NO_SUCH", status);
    note("WAIT_FENCES on a handle never given out answered NO_SUCH");
    pass();
}

int main(int argc, char **argv)
{
    int fd;

    if (argc == 5 && strcmp(argv[1], "offer") == 0) {
        fd = open_render_node();
        check_device(fd);
        context_init(fd, CAPSET_SHARE);
        do_offer(fd, (size_t)parse_number("PAGES", argv[2], 1, 4096),
                 (int)parse_number("COUNT", argv[3], 1, 16), argv[4]);
    }
    if (argc == 6 && strcmp(argv[1], "moves") == 0) {
        fd = open_render_node();
        check_device(fd);
        context_init(fd, CAPSET_SHARE);
        do_moves(fd, argv[2], argv[3], (uint32_t)parse_number("SEED", argv[4], 0, 999999),
                 (size_t)parse_number("PAGES", argv[5], 1, 4096));
    }

    if (argc == 4 && strcmp(argv[1], "export") == 0) {
        fd = open_render_node();
        check_device(fd);
        context_init(fd, CAPSET_SHARE);
        do_export(fd, (uint32_t)parse_number("SEED", argv[2], 0, 999999),
                  (size_t)parse_number("PAGES", argv[3], 1, 4096));
    }
    if (argc == 6 && strcmp(argv[1], "import") == 0) {
        fd = open_render_node();
        check_device(fd);
        context_init(fd, CAPSET_SHARE);
        do_import(fd, argv[2], (uint32_t)parse_number("SEED", argv[3], 0, 999999),
                  (size_t)parse_number("PAGES", argv[4], 1, 4096),
                  (uint64_t)parse_number("FENCE", argv[5], 0, 1L << 40));
    }
    if (argc == 7 && strcmp(argv[1], "show") == 0) {
        /* The card node: this one also sets a mode. */
        fd = open("/dev/dri/card0", O_RDWR | O_CLOEXEC);
        if (fd < 0)
            fail("cannot open /dev/dri/card0: %m");
        check_device(fd);
        context_init(fd, CAPSET_SHARE);
        do_show(fd, argv[2], (uint32_t)parse_number("SEED", argv[3], 0, 999999),
                (size_t)parse_number("PAGES", argv[4], 1, 4096),
                (uint64_t)parse_number("FENCE", argv[5], 0, 1L << 40), argv[6]);
    }
    fail("usage: share-buffer export SEED PAGES | import UUID SEED PAGES FENCE | "
         "show UUID SEED PAGES FENCE WAIT_FILE | offer PAGES "
         "COUNT "
         "WAIT_FILE | moves UUID1 UUID2 SEED PAGES");
}
