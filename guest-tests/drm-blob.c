/* drm-blob: the virtio-gpu DRM interface that Venus builds on, driven with
 * raw ioctls: feature parameters, the Venus capset, a context with several
 * rings, blob resources mapped into the process, and command submission with
 * fences on ring 0.
 *
 * usage: drm-blob
 *
 * Steps (any failure ends the test):
 *
 *  1. Opens the first render node whose driver is virtio_gpu.
 *  2. GETPARAM: 3D_FEATURES, RESOURCE_BLOB, HOST_VISIBLE and CONTEXT_INIT must
 *     be 1 and SUPPORTED_CAPSET_IDs must include Venus (capset 4); the other
 *     parameters are printed.
 *  3. GET_CAPS of the Venus capset: the wire format version must not be 0;
 *     prints it and the capset's blob-id-0 and multiple-timeline flags.
 *  4. CONTEXT_INIT with capset 4, 8 rings and POLL_RINGS_MASK = ring 0 (plus a
 *     debug name when the kernel takes one). A second CONTEXT_INIT on the
 *     same file must be refused.
 *  5. RESOURCE_CREATE_BLOB, 1 MiB each: a BLOB_MEM_GUEST blob (guest pages)
 *     and, when the capset allows blob id 0, a BLOB_MEM_HOST3D blob with blob
 *     id 0 (the Venus renderer backs it with shared memory of its own, which
 *     the device maps into its host-visible window: RESOURCE_MAP_BLOB), both
 *     USE_MAPPABLE. RESOURCE_INFO must report the size; each is mapped (MAP
 *     + mmap), filled with a pattern, unmapped, mapped again and read back
 *     word for word.
 *  6. EXECBUFFER with an empty command stream (size 0, the form Mesa's Venus
 *     driver itself uses for a bare fence), RING_IDX ring 0 and
 *     FENCE_FD_OUT, four times with both blobs in the buffer list, all
 *     submitted before any is waited for; once without RING_IDX (the
 *     context's default timeline); twice on ring 0 without an out-fence. Each
 *     out-fence must poll readable within 10 s and report itself signalled
 *     (SYNC_IOC_FILE_INFO).
 *  7. With the HOST3D blob: a minimal Venus command stream of three transport
 *     commands (set the reply stream to the blob, seek it to 0,
 *     vkEnumerateInstanceVersion with a reply), on ring 0 with an out-fence.
 *     Once the fence signals, the reply must be in the blob's mapping:
 *     command type 137, VK_SUCCESS and a Vulkan 1.x version. This is the
 *     renderer writing into host memory that the guest reads through the
 *     host-visible window.
 *  8. EXECBUFFER on ring 8 (= the number of rings) must fail with EINVAL.
 *  9. Every ring-0 submission must have produced one
 *     VIRTGPU_EVENT_FENCE_SIGNALED event on the DRM file (read within 10 s).
 * 10. WAIT on both blobs, unmap, close.
 * 11. When the capset allows blob id 0: 256 HOST3D blobs of 64 KiB, all
 *     mapped at once (each is a live mapping in the device's window, and so a
 *     memory region of the VM to QEMU), each filled with its own pattern; all
 *     are read back word for word while all are mapped, then freed.
 *
 * Rings 1 and up are the Venus renderer's per-queue timelines: it retires a
 * fence on such a ring only after a VkQueue has been bound to the ring, which
 * takes a Vulkan instance, device and queue made through the protocol. The
 * vk-* tests do that through Mesa; here those rings are only opened (step 4)
 * and bounded (step 8).
 */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdint.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <linux/sync_file.h>
#include <virtgpu_drm.h>
#include <xf86drm.h>

#include "common.h"

const char *const test_name = "drm-blob";

#define CAPSET_VENUS 4
#define NUM_RINGS 8
#define BLOB_SIZE (1u << 20)
#define MANY_BLOBS 256
#define MANY_BLOB_SIZE (64u << 10)
#define TIMEOUT_MS 10000

/* Venus protocol constants used by the reply round trip (step 7). */
#define VN_CMD_ENUMERATE_INSTANCE_VERSION 137
#define VN_CMD_SET_REPLY_COMMAND_STREAM 178
#define VN_CMD_SEEK_REPLY_COMMAND_STREAM 179
#define VN_CMD_FLAG_GENERATE_REPLY 1

/* The leading words of the Venus capset (struct virgl_renderer_capset_venus). */
#define CAPSET_WORD_WIRE_FORMAT 0
#define CAPSET_WORD_VK_XML 1
#define CAPSET_WORD_BLOB_ID_0 4
#define CAPSET_WORD_MULTIPLE_TIMELINES 38
#define CAPSET_WORDS 39

#ifndef VIRTGPU_PARAM_EXPLICIT_DEBUG_NAME
#define VIRTGPU_PARAM_EXPLICIT_DEBUG_NAME 8
#endif
#ifndef VIRTGPU_CONTEXT_PARAM_DEBUG_NAME
#define VIRTGPU_CONTEXT_PARAM_DEBUG_NAME 4
#endif

struct blob {
    const char *name;
    uint32_t handle, res;
    uint32_t *map;
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
            note("using %s", path);
            return fd;
        }
        if (version)
            drmFreeVersion(version);
        close(fd);
    }
    fail("no virtio_gpu render node in /dev/dri");
}

static int getparam(int fd, uint64_t param, uint64_t *value)
{
    /* The kernel writes an int: start from zero. */
    struct drm_virtgpu_getparam args = { .param = param, .value = (uintptr_t)value };

    *value = 0;
    return drmIoctl(fd, DRM_IOCTL_VIRTGPU_GETPARAM, &args);
}

static void check_params(int fd, int *debug_name)
{
    static const struct {
        uint64_t param;
        const char *name;
        int required;
    } params[] = {
        { VIRTGPU_PARAM_3D_FEATURES, "3D_FEATURES", 1 },
        { VIRTGPU_PARAM_CAPSET_QUERY_FIX, "CAPSET_QUERY_FIX", 0 },
        { VIRTGPU_PARAM_RESOURCE_BLOB, "RESOURCE_BLOB", 1 },
        { VIRTGPU_PARAM_HOST_VISIBLE, "HOST_VISIBLE", 1 },
        { VIRTGPU_PARAM_CROSS_DEVICE, "CROSS_DEVICE", 0 },
        { VIRTGPU_PARAM_CONTEXT_INIT, "CONTEXT_INIT", 1 },
        { VIRTGPU_PARAM_EXPLICIT_DEBUG_NAME, "EXPLICIT_DEBUG_NAME", 0 },
    };
    uint64_t value;

    for (size_t i = 0; i < sizeof(params) / sizeof(params[0]); i++) {
        if (getparam(fd, params[i].param, &value) != 0) {
            if (params[i].required)
                fail("GETPARAM %s: %m", params[i].name);
            note("GETPARAM %s: %m", params[i].name);
            continue;
        }
        note("GETPARAM %s = %llu", params[i].name, (unsigned long long)value);
        if (params[i].required && value != 1)
            fail("GETPARAM %s is %llu, not 1", params[i].name, (unsigned long long)value);
        if (params[i].param == VIRTGPU_PARAM_EXPLICIT_DEBUG_NAME)
            *debug_name = value == 1;
    }
    if (getparam(fd, VIRTGPU_PARAM_SUPPORTED_CAPSET_IDs, &value) != 0)
        fail("GETPARAM SUPPORTED_CAPSET_IDs: %m");
    note("GETPARAM SUPPORTED_CAPSET_IDs = 0x%llx", (unsigned long long)value);
    if (!(value & (1u << CAPSET_VENUS)))
        fail("the device offers no Venus capset (id %d)", CAPSET_VENUS);
}

/* Returns whether the capset allows HOST3D blobs with blob id 0. */
static int check_capset(int fd)
{
    uint32_t words[CAPSET_WORDS];
    struct drm_virtgpu_get_caps args = {
        .cap_set_id = CAPSET_VENUS,
        .cap_set_ver = 0,
        .addr = (uintptr_t)words,
        .size = sizeof(words),
    };

    memset(words, 0, sizeof(words));
    if (drmIoctl(fd, DRM_IOCTL_VIRTGPU_GET_CAPS, &args) != 0)
        fail("GET_CAPS of the Venus capset: %m");
    note("Venus capset: wire format %u, vk.xml %u.%u.%u, blob id 0: %s, multiple timelines: %s",
         words[CAPSET_WORD_WIRE_FORMAT], words[CAPSET_WORD_VK_XML] >> 22,
         (words[CAPSET_WORD_VK_XML] >> 12) & 0x3ff, words[CAPSET_WORD_VK_XML] & 0xfff,
         words[CAPSET_WORD_BLOB_ID_0] ? "yes" : "no",
         words[CAPSET_WORD_MULTIPLE_TIMELINES] ? "yes" : "no");
    if (words[CAPSET_WORD_WIRE_FORMAT] == 0)
        fail("the Venus capset's wire format version is 0");
    return words[CAPSET_WORD_BLOB_ID_0] != 0;
}

static void context_init(int fd, int debug_name)
{
    struct drm_virtgpu_context_set_param params[4] = {
        { VIRTGPU_CONTEXT_PARAM_CAPSET_ID, CAPSET_VENUS },
        { VIRTGPU_CONTEXT_PARAM_NUM_RINGS, NUM_RINGS },
        { VIRTGPU_CONTEXT_PARAM_POLL_RINGS_MASK, 1u << 0 },
        { VIRTGPU_CONTEXT_PARAM_DEBUG_NAME, (uintptr_t)test_name },
    };
    struct drm_virtgpu_context_init args = {
        .num_params = debug_name ? 4 : 3,
        .ctx_set_params = (uintptr_t)params,
    };

    if (drmIoctl(fd, DRM_IOCTL_VIRTGPU_CONTEXT_INIT, &args) != 0)
        fail("CONTEXT_INIT (Venus, %d rings): %m", NUM_RINGS);
    note("CONTEXT_INIT: Venus capset, %d rings, ring 0 polled%s", NUM_RINGS,
         debug_name ? ", debug name set" : "");
    if (drmIoctl(fd, DRM_IOCTL_VIRTGPU_CONTEXT_INIT, &args) == 0)
        fail("a second CONTEXT_INIT on the same file succeeded");
    note("second CONTEXT_INIT refused: %m");
}

static uint32_t pattern(uint32_t i, uint32_t seed)
{
    uint32_t x = i * 0x9e3779b1u + seed;

    x ^= x >> 15;
    x *= 0x2c1b3c6du;
    return x ^ (x >> 13);
}

static uint32_t *map_blob(int fd, struct blob *b)
{
    struct drm_virtgpu_map args = { .handle = b->handle };
    void *ptr;

    if (drmIoctl(fd, DRM_IOCTL_VIRTGPU_MAP, &args) != 0)
        fail("MAP of the %s blob: %m", b->name);
    ptr = mmap(NULL, BLOB_SIZE, PROT_READ | PROT_WRITE, MAP_SHARED, fd, (off_t)args.offset);
    if (ptr == MAP_FAILED)
        fail("mmap of the %s blob: %m", b->name);
    return ptr;
}

static void create_blob(int fd, struct blob *b, const char *name, uint32_t blob_mem)
{
    struct drm_virtgpu_resource_create_blob args = {
        .blob_mem = blob_mem,
        .blob_flags = VIRTGPU_BLOB_FLAG_USE_MAPPABLE,
        .size = BLOB_SIZE,
        .blob_id = 0,
    };
    struct drm_virtgpu_resource_info info;
    const size_t words = BLOB_SIZE / 4;
    size_t wrong = 0, first = 0;

    b->name = name;
    if (drmIoctl(fd, DRM_IOCTL_VIRTGPU_RESOURCE_CREATE_BLOB, &args) != 0)
        fail("RESOURCE_CREATE_BLOB (%s, mappable, %u bytes): %m", name, BLOB_SIZE);
    b->handle = args.bo_handle;
    b->res = args.res_handle;
    memset(&info, 0, sizeof(info));
    info.bo_handle = b->handle;
    if (drmIoctl(fd, DRM_IOCTL_VIRTGPU_RESOURCE_INFO, &info) != 0)
        fail("RESOURCE_INFO of the %s blob: %m", name);
    if (info.res_handle != b->res || info.size != BLOB_SIZE)
        fail("RESOURCE_INFO of the %s blob: resource %u, %u bytes; expected %u, %u bytes", name,
             info.res_handle, info.size, b->res, BLOB_SIZE);

    b->map = map_blob(fd, b);
    for (size_t i = 0; i < words; i++)
        b->map[i] = pattern((uint32_t)i, b->res);
    if (munmap(b->map, BLOB_SIZE) != 0)
        fail("munmap of the %s blob: %m", name);
    b->map = map_blob(fd, b);
    for (size_t i = 0; i < words; i++) {
        if (b->map[i] != pattern((uint32_t)i, b->res) && wrong++ == 0)
            first = i;
    }
    if (wrong)
        fail("%s blob: %zu of %zu words wrong after unmapping and mapping again; first at byte "
             "%zu: 0x%08x, expected 0x%08x", name, wrong, words, first * 4, b->map[first],
             pattern((uint32_t)first, b->res));
    note("%s blob: resource %u, %u KiB, mapped, written, mapped again, all words read back",
         name, b->res, BLOB_SIZE >> 10);
}

/* Step 11: MANY_BLOBS host blobs mapped at the same time. */
static void many_blobs(int fd)
{
    static uint32_t handles[MANY_BLOBS];
    static uint32_t *maps[MANY_BLOBS];
    const size_t words = MANY_BLOB_SIZE / 4;

    for (uint32_t b = 0; b < MANY_BLOBS; b++) {
        struct drm_virtgpu_resource_create_blob args = {
            .blob_mem = VIRTGPU_BLOB_MEM_HOST3D,
            .blob_flags = VIRTGPU_BLOB_FLAG_USE_MAPPABLE,
            .size = MANY_BLOB_SIZE,
            .blob_id = 0,
        };
        struct drm_virtgpu_map map = { 0 };
        void *ptr;

        if (drmIoctl(fd, DRM_IOCTL_VIRTGPU_RESOURCE_CREATE_BLOB, &args) != 0)
            fail("RESOURCE_CREATE_BLOB %u of %d (HOST3D, %u KiB): %m", b + 1, MANY_BLOBS,
                 MANY_BLOB_SIZE >> 10);
        handles[b] = args.bo_handle;
        map.handle = args.bo_handle;
        if (drmIoctl(fd, DRM_IOCTL_VIRTGPU_MAP, &map) != 0)
            fail("MAP of blob %u of %d: %m", b + 1, MANY_BLOBS);
        ptr = mmap(NULL, MANY_BLOB_SIZE, PROT_READ | PROT_WRITE, MAP_SHARED, fd,
                   (off_t)map.offset);
        if (ptr == MAP_FAILED)
            fail("mmap of blob %u of %d: %m", b + 1, MANY_BLOBS);
        maps[b] = ptr;
        for (size_t i = 0; i < words; i++)
            maps[b][i] = pattern((uint32_t)i, b + 1);
    }
    for (uint32_t b = 0; b < MANY_BLOBS; b++) {
        for (size_t i = 0; i < words; i++) {
            if (maps[b][i] != pattern((uint32_t)i, b + 1))
                fail("blob %u of %d, all mapped: byte %zu reads 0x%08x, expected 0x%08x",
                     b + 1, MANY_BLOBS, i * 4, maps[b][i], pattern((uint32_t)i, b + 1));
        }
    }
    for (uint32_t b = 0; b < MANY_BLOBS; b++) {
        struct drm_gem_close close_args = { .handle = handles[b] };

        if (munmap(maps[b], MANY_BLOB_SIZE) != 0)
            fail("munmap of blob %u: %m", b + 1);
        if (drmIoctl(fd, DRM_IOCTL_GEM_CLOSE, &close_args) != 0)
            fail("GEM_CLOSE of blob %u: %m", b + 1);
    }
    note("%d HOST3D blobs of %u KiB mapped at once: each written, all read back while all "
         "were mapped, all freed", MANY_BLOBS, MANY_BLOB_SIZE >> 10);
}

/* EXECBUFFER; returns the out-fence fd (-1 without FENCE_FD_OUT) or, with
 * expect_error, the errno. */
static int execbuffer(int fd, uint32_t flags, uint32_t ring, const void *cmd, uint32_t size,
                      const uint32_t *handles, uint32_t count, int expect_error)
{
    struct drm_virtgpu_execbuffer args = {
        .flags = flags,
        .size = size,
        .command = (uintptr_t)cmd,
        .bo_handles = (uintptr_t)handles,
        .num_bo_handles = count,
        .fence_fd = -1,
        .ring_idx = ring,
    };

    if (drmIoctl(fd, DRM_IOCTL_VIRTGPU_EXECBUFFER, &args) != 0) {
        if (expect_error)
            return errno;
        fail("EXECBUFFER (flags 0x%x, ring %u, %u bytes): %m", flags, ring, size);
    }
    if (expect_error)
        fail("EXECBUFFER on ring %u (of %d) succeeded", ring, NUM_RINGS);
    if ((flags & VIRTGPU_EXECBUF_FENCE_FD_OUT) && args.fence_fd < 0)
        fail("EXECBUFFER with FENCE_FD_OUT returned no fence fd");
    return (flags & VIRTGPU_EXECBUF_FENCE_FD_OUT) ? args.fence_fd : -1;
}

static void wait_fence(int fence, const char *what)
{
    struct pollfd p = { .fd = fence, .events = POLLIN };
    struct sync_file_info info;
    int n;

    do
        n = poll(&p, 1, TIMEOUT_MS);
    while (n < 0 && errno == EINTR);
    if (n < 0)
        fail("poll on the out-fence of %s: %m", what);
    if (n == 0)
        fail("the out-fence of %s did not signal within %d s", what, TIMEOUT_MS / 1000);
    memset(&info, 0, sizeof(info));
    if (ioctl(fence, SYNC_IOC_FILE_INFO, &info) != 0)
        fail("SYNC_IOC_FILE_INFO on the out-fence of %s: %m", what);
    if (info.status != 1)
        fail("the out-fence of %s polls readable but has status %d", what, info.status);
    close(fence);
}

/* Appends little-endian words to a command stream. */
struct stream {
    uint32_t words[32];
    uint32_t count;
};

static void put32(struct stream *s, uint32_t v)
{
    s->words[s->count++] = v;
}

static void put64(struct stream *s, uint64_t v)
{
    put32(s, (uint32_t)v);
    put32(s, (uint32_t)(v >> 32));
}

static void reply_round_trip(int fd, struct blob *host)
{
    const uint32_t reply_size = 4096;
    struct stream s = { .count = 0 };
    uint32_t *reply = host->map;
    int fence;

    /* vkSetReplyCommandStreamMESA(&{resource, offset 0, size}) */
    put32(&s, VN_CMD_SET_REPLY_COMMAND_STREAM);
    put32(&s, 0);
    put64(&s, 1); /* the pointer is not NULL */
    put32(&s, host->res);
    put64(&s, 0);
    put64(&s, reply_size);
    /* vkSeekReplyCommandStreamMESA(0) */
    put32(&s, VN_CMD_SEEK_REPLY_COMMAND_STREAM);
    put32(&s, 0);
    put64(&s, 0);
    /* vkEnumerateInstanceVersion(&version), with a reply */
    put32(&s, VN_CMD_ENUMERATE_INSTANCE_VERSION);
    put32(&s, VN_CMD_FLAG_GENERATE_REPLY);
    put64(&s, 1);

    memset(reply, 0xa5, 64);
    fence = execbuffer(fd, VIRTGPU_EXECBUF_RING_IDX | VIRTGPU_EXECBUF_FENCE_FD_OUT, 0, s.words,
                       s.count * 4, &host->handle, 1, 0);
    wait_fence(fence, "the Venus command stream");
    /* Reply: command type, VkResult, pointer marker (64 bits), version. */
    if (reply[0] != VN_CMD_ENUMERATE_INSTANCE_VERSION || reply[1] != 0 || reply[2] != 1 ||
        reply[3] != 0)
        fail("no Venus reply in the HOST3D blob after the fence: words 0x%08x 0x%08x 0x%08x "
             "0x%08x 0x%08x (expected %d, 0, 1, 0, version)", reply[0], reply[1], reply[2],
             reply[3], reply[4], VN_CMD_ENUMERATE_INSTANCE_VERSION);
    if (reply[4] >> 29 != 0 || (reply[4] >> 22 & 0x7f) != 1)
        fail("the Venus reply holds version 0x%08x, not Vulkan 1.x", reply[4]);
    note("Venus command stream of %u bytes: the renderer replied in the HOST3D blob: "
         "vkEnumerateInstanceVersion = %u.%u.%u", s.count * 4, reply[4] >> 22 & 0x7f,
         reply[4] >> 12 & 0x3ff, reply[4] & 0xfff);
}

static void read_events(int fd, int expected)
{
    int seen = 0;

    while (seen < expected) {
        struct pollfd p = { .fd = fd, .events = POLLIN };
        char buf[1024];
        ssize_t n;
        int r = poll(&p, 1, TIMEOUT_MS);

        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0)
            fail("poll on the DRM file: %m");
        if (r == 0)
            fail("%d of %d fence events arrived within %d s", seen, expected, TIMEOUT_MS / 1000);
        n = read(fd, buf, sizeof(buf));
        if (n < 0)
            fail("reading DRM events: %m");
        for (ssize_t off = 0; off + (ssize_t)sizeof(struct drm_event) <= n;) {
            struct drm_event e;

            memcpy(&e, buf + off, sizeof(e));
            if (e.type != VIRTGPU_EVENT_FENCE_SIGNALED || e.length != sizeof(e))
                fail("unexpected DRM event: type 0x%x, length %u", e.type, e.length);
            seen++;
            off += e.length;
        }
    }
    struct pollfd p = { .fd = fd, .events = POLLIN };
    if (poll(&p, 1, 200) > 0)
        fail("more fence events than ring-0 submissions (%d)", expected);
    note("%d fence events (VIRTGPU_EVENT_FENCE_SIGNALED), one per ring-0 submission", seen);
}

int main(int argc, char **argv)
{
    const uint32_t ring0 = VIRTGPU_EXECBUF_RING_IDX, out = VIRTGPU_EXECBUF_FENCE_FD_OUT;
    struct blob guest = { 0 }, host = { 0 };
    uint32_t handles[2];
    int fd, debug_name = 0, blob_id_0, fences[4], events = 0, err;

    (void)argv;
    if (argc != 1)
        fail("no arguments expected (usage: drm-blob)");
    fd = open_render_node();
    check_params(fd, &debug_name);
    blob_id_0 = check_capset(fd);
    context_init(fd, debug_name);

    create_blob(fd, &guest, "GUEST", VIRTGPU_BLOB_MEM_GUEST);
    handles[0] = guest.handle;
    if (blob_id_0) {
        create_blob(fd, &host, "HOST3D", VIRTGPU_BLOB_MEM_HOST3D);
        handles[1] = host.handle;
    } else {
        note("the capset does not allow HOST3D blobs with blob id 0: HOST3D blob and Venus "
             "reply skipped (the vk-* tests map HOST3D blobs through Mesa)");
    }

    for (int i = 0; i < 4; i++)
        fences[i] = execbuffer(fd, ring0 | out, 0, NULL, 0, handles, blob_id_0 ? 2 : 1, 0);
    events += 4;
    for (int i = 0; i < 4; i++)
        wait_fence(fences[i], "an empty submission on ring 0");
    note("4 empty submissions on ring 0 with both blobs listed: all out-fences signalled");
    wait_fence(execbuffer(fd, out, 0, NULL, 0, NULL, 0, 0),
               "an empty submission without a ring index");
    note("empty submission on the context's default timeline: out-fence signalled");
    for (int i = 0; i < 2; i++)
        execbuffer(fd, ring0, 0, NULL, 0, NULL, 0, 0);
    events += 2;

    if (blob_id_0) {
        reply_round_trip(fd, &host);
        events++;
    }

    err = execbuffer(fd, ring0 | out, NUM_RINGS, NULL, 0, NULL, 0, 1);
    if (err != EINVAL)
        fail("EXECBUFFER on ring %d (of %d): %s, expected EINVAL", NUM_RINGS, NUM_RINGS,
             strerror(err));
    note("EXECBUFFER on ring %d refused: %s", NUM_RINGS, strerror(err));

    read_events(fd, events);

    for (int i = 0; i < (blob_id_0 ? 2 : 1); i++) {
        struct blob *b = i ? &host : &guest;
        struct drm_virtgpu_3d_wait wait = { .handle = b->handle };
        struct drm_gem_close close_args = { .handle = b->handle };

        if (drmIoctl(fd, DRM_IOCTL_VIRTGPU_WAIT, &wait) != 0)
            fail("WAIT on the %s blob: %m", b->name);
        if (munmap(b->map, BLOB_SIZE) != 0)
            fail("munmap of the %s blob: %m", b->name);
        if (drmIoctl(fd, DRM_IOCTL_GEM_CLOSE, &close_args) != 0)
            fail("GEM_CLOSE of the %s blob: %m", b->name);
    }
    if (blob_id_0)
        many_blobs(fd);
    close(fd);
    pass();
}
