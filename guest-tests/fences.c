/* fences: many GL draws in flight, each followed by a fence, then waited on
 * one by one.
 *
 * usage: fences [--expect-renderer TEXT] [--native] [--count N]
 *
 *   --expect-renderer TEXT  fail unless GL_RENDERER contains TEXT
 *   --native                require EGL_ANDROID_native_fence_sync and real
 *                           sync fds (on virtio-gpu: the driver's out-fences)
 *                           rather than already-signalled stubs. Without it,
 *                           native fences are used when offered (stubs
 *                           allowed), else EGL_KHR_fence_sync.
 *   --count N               number of draws and fences, 1..64 (default 32)
 *
 * Draw i fills the rows of band i and of every band above it (bands are 4
 * rows high) with colour i, using a fragment shader that loops so the draws
 * take some time; then a fence is created and the draw flushed. No draw is
 * waited for until all are submitted. Then, for each fence in order:
 *   - waiting on it must succeed, and its status must then be "signalled";
 *   - every earlier fence must be signalled too (fences signal in order);
 *   - with sync fds: the fd must poll readable, and the fence's signal time
 *     (SYNC_IOC_FILE_INFO) must not be earlier than the moment the fence was
 *     created, nor earlier than the previous fence's signal time. A fence
 *     whose signal time predates this program is a stub the implementation
 *     handed out because the work was already done (llvmpipe does this); it
 *     is allowed, and exempt from these two checks, unless --native;
 *   - band i must read back as colour i: later draws never touch it.
 */
#include <linux/sync_file.h>
#include <poll.h>
#include <stdint.h>
#include <string.h>
#include <sys/ioctl.h>
#include <time.h>
#include <unistd.h>

#include "common.h"
#include "gl-util.h"

const char *const test_name = "fences";

#define MAX_COUNT 64
#define BAND 4
#define WIDTH 64
#define WAIT_NS 10000000000ull /* 10 s per fence */

static const char vertex_source[] =
    "attribute vec2 position;\n"
    "void main() { gl_Position = vec4(position, 0.0, 1.0); }\n";
/* The loop is busy work whose result is never used: step(2.0, acc) is 0
 * because fract() stays below 1, so the output is exactly `colour`. */
static const char fragment_source[] =
    "#ifdef GL_FRAGMENT_PRECISION_HIGH\n"
    "precision highp float;\n"
    "#else\n"
    "precision mediump float;\n"
    "#endif\n"
    "uniform vec4 colour;\n"
    "uniform float seed;\n"
    "void main() {\n"
    "    float acc = seed;\n"
    "    for (int k = 0; k < 200; k++)\n"
    "        acc = fract(acc * 1.37 + 0.11);\n"
    "    gl_FragColor = mix(colour, vec4(acc), step(2.0, acc));\n"
    "}\n";
static const GLfloat quad[] = { -1, -1, 1, -1, -1, 1, 1, 1 };

static PFNEGLCREATESYNCKHRPROC create_sync;
static PFNEGLCLIENTWAITSYNCKHRPROC client_wait_sync;
static PFNEGLGETSYNCATTRIBKHRPROC get_sync_attrib;
static PFNEGLDESTROYSYNCKHRPROC destroy_sync;
static PFNEGLDUPNATIVEFENCEFDANDROIDPROC dup_native_fence_fd;

struct fence {
    EGLSyncKHR sync;
    int fd;             /* sync file, or -1 without native fences */
    uint64_t created;   /* CLOCK_MONOTONIC ns, just before creation */
    uint64_t signalled; /* signal time from the sync file, 0 if unknown */
};

static uint64_t program_start; /* CLOCK_MONOTONIC ns */
static int require_native;
static int stubs; /* sync fds that were already-signalled stubs */

static struct fence fences[MAX_COUNT];

static uint64_t now_ns(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static void band_colour(int i, unsigned char rgba[4])
{
    rgba[0] = (unsigned char)(i * 8);
    rgba[1] = (unsigned char)(255 - i * 8);
    rgba[2] = (unsigned char)(i * 53);
    rgba[3] = 255;
}

static void *proc(const char *name)
{
    void *p = (void *)eglGetProcAddress(name);

    if (!p)
        fail("eglGetProcAddress(%s) returned NULL", name);
    return p;
}

static int is_signalled(EGLDisplay dpy, int i)
{
    EGLint status = 0;

    if (!get_sync_attrib(dpy, fences[i].sync, EGL_SYNC_STATUS_KHR, &status))
        fail("eglGetSyncAttribKHR on fence %d: 0x%x", i, eglGetError());
    return status == EGL_SIGNALED_KHR;
}

/* Reads the sync file's state; returns 1 if signalled, 0 if still pending.
 * When signalled, records its signal time: that of its last fence. */
static int sync_file_state(int i, char *driver, size_t size)
{
    struct sync_fence_info info[8];
    struct sync_file_info file;
    uint64_t last = 0;

    memset(info, 0, sizeof(info));
    memset(&file, 0, sizeof(file));
    file.num_fences = 8;
    file.sync_fence_info = (uint64_t)(uintptr_t)info;
    if (ioctl(fences[i].fd, SYNC_IOC_FILE_INFO, &file) != 0)
        fail("SYNC_IOC_FILE_INFO on fence %d: %m", i);
    for (unsigned n = 0; n < file.num_fences && n < 8; n++) {
        if (info[n].status < 0)
            fail("fence %d signalled an error (%d)", i, info[n].status);
        if (info[n].timestamp_ns > last)
            last = info[n].timestamp_ns;
    }
    if (file.status < 0)
        fail("fence %d signalled an error (%d)", i, file.status);
    if (driver)
        snprintf(driver, size, "%s/%s", info[0].driver_name, info[0].obj_name);
    if (file.status == 1)
        fences[i].signalled = last;
    return file.status == 1;
}

static void submit(EGLDisplay dpy, GLuint program, int i, int count, int native)
{
    static const EGLint native_attribs[] = {
        EGL_SYNC_NATIVE_FENCE_FD_ANDROID, EGL_NO_NATIVE_FENCE_FD_ANDROID, EGL_NONE,
    };
    unsigned char c[4];

    band_colour(i, c);
    glUniform4f(glGetUniformLocation(program, "colour"), c[0] / 255.0f, c[1] / 255.0f,
                c[2] / 255.0f, c[3] / 255.0f);
    glUniform1f(glGetUniformLocation(program, "seed"), (GLfloat)i / (GLfloat)count);
    glScissor(0, i * BAND, WIDTH, (count - i) * BAND);
    glDrawArrays(GL_TRIANGLE_STRIP, 0, 4);
    check_gl("drawing");

    fences[i].created = now_ns();
    fences[i].fd = -1;
    fences[i].sync = create_sync(dpy, native ? EGL_SYNC_NATIVE_FENCE_ANDROID : EGL_SYNC_FENCE_KHR,
                                 native ? native_attribs : NULL);
    if (fences[i].sync == EGL_NO_SYNC_KHR)
        fail("eglCreateSyncKHR for draw %d: 0x%x", i, eglGetError());
    glFlush();
    if (native) {
        fences[i].fd = dup_native_fence_fd(dpy, fences[i].sync);
        if (fences[i].fd < 0)
            fail("eglDupNativeFenceFDANDROID for draw %d: 0x%x", i, eglGetError());
    }
}

static void check(EGLDisplay dpy, int i)
{
    unsigned char want[4], got[BAND][WIDTH][4];
    struct pollfd pfd = { .fd = fences[i].fd, .events = POLLIN };
    EGLint result;

    if (fences[i].fd >= 0) {
        if (poll(&pfd, 1, (int)(WAIT_NS / 1000000)) != 1)
            fail("sync fd of fence %d not readable within 10 s", i);
        if (!sync_file_state(i, NULL, 0))
            fail("sync fd of fence %d polls readable but is not signalled", i);
        if (fences[i].signalled < program_start) {
            if (require_native)
                fail("fence %d is an already-signalled stub (signal time %.3f s before this "
                     "program started), not a real out-fence",
                     i, (program_start - fences[i].signalled) / 1e9);
            stubs++;
        } else {
            if (fences[i].signalled < fences[i].created)
                fail("fence %d signalled %llu ns before it was created", i,
                     (unsigned long long)(fences[i].created - fences[i].signalled));
            for (int j = i - 1; j >= 0; j--) {
                if (fences[j].signalled < program_start)
                    continue; /* a stub */
                if (fences[i].signalled < fences[j].signalled)
                    fail("fence %d signalled before the earlier fence %d", i, j);
                break;
            }
        }
    }
    result = client_wait_sync(dpy, fences[i].sync, 0, WAIT_NS);
    if (result != EGL_CONDITION_SATISFIED_KHR)
        fail("eglClientWaitSyncKHR on fence %d returned 0x%x (error 0x%x)", i, result,
             eglGetError());
    if (!is_signalled(dpy, i))
        fail("fence %d waited for but its status is not signalled", i);
    for (int j = 0; j < i; j++) {
        if (!is_signalled(dpy, j))
            fail("fence %d is signalled but the earlier fence %d is not", i, j);
        if (fences[j].fd >= 0 && !sync_file_state(j, NULL, 0))
            fail("sync fd of fence %d is signalled but the earlier one of %d is not", i, j);
    }

    band_colour(i, want);
    glReadPixels(0, i * BAND, WIDTH, BAND, GL_RGBA, GL_UNSIGNED_BYTE, got);
    check_gl("glReadPixels");
    for (int y = 0; y < BAND; y++) {
        for (int x = 0; x < WIDTH; x++) {
            if (memcmp(got[y][x], want, 4) != 0)
                fail("band %d pixel (%d, %d): got (%d, %d, %d, %d), expected (%d, %d, %d, %d)", i,
                     x, y, got[y][x][0], got[y][x][1], got[y][x][2], got[y][x][3], want[0],
                     want[1], want[2], want[3]);
        }
    }
}

int main(int argc, char **argv)
{
    const char *expect_renderer = NULL;
    int native, count = 32, pending = 0;
    const char *exts;
    char driver[80] = "";
    EGLDisplay dpy;
    GLuint program;
    uint64_t start;

    program_start = now_ns();
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--expect-renderer") == 0 && i + 1 < argc)
            expect_renderer = argv[++i];
        else if (strcmp(argv[i], "--native") == 0)
            require_native = 1;
        else if (strcmp(argv[i], "--count") == 0 && i + 1 < argc)
            count = (int)parse_number("--count", argv[++i], 1, MAX_COUNT);
        else
            fail("bad argument '%s' (see the source for usage)", argv[i]);
    }
    dpy = gl_setup(expect_renderer);
    exts = eglQueryString(dpy, EGL_EXTENSIONS);
    if (!has_extension(exts, "EGL_KHR_fence_sync"))
        fail("EGL_KHR_fence_sync is missing");
    native = has_extension(exts, "EGL_ANDROID_native_fence_sync");
    if (require_native && !native)
        fail("EGL_ANDROID_native_fence_sync is missing");
    create_sync = (PFNEGLCREATESYNCKHRPROC)proc("eglCreateSyncKHR");
    client_wait_sync = (PFNEGLCLIENTWAITSYNCKHRPROC)proc("eglClientWaitSyncKHR");
    get_sync_attrib = (PFNEGLGETSYNCATTRIBKHRPROC)proc("eglGetSyncAttribKHR");
    destroy_sync = (PFNEGLDESTROYSYNCKHRPROC)proc("eglDestroySyncKHR");
    if (native)
        dup_native_fence_fd = (PFNEGLDUPNATIVEFENCEFDANDROIDPROC)proc("eglDupNativeFenceFDANDROID");
    note("%d draws, %s", count,
         native ? "EGL_ANDROID_native_fence_sync (sync fds)" : "EGL_KHR_fence_sync");

    make_framebuffer(WIDTH, count * BAND);
    program = build_program(vertex_source, fragment_source);
    glVertexAttribPointer(0, 2, GL_FLOAT, GL_FALSE, 0, quad);
    glEnableVertexAttribArray(0);
    glEnable(GL_SCISSOR_TEST);
    glClearColor(0, 0, 0, 1);
    glClear(GL_COLOR_BUFFER_BIT);

    start = now_ns();
    for (int i = 0; i < count; i++) {
        submit(dpy, program, i, count, native);
        /* Informational: was the work still in flight right after submission?
         * (A signalled sync file names no driver, so look at the first.) */
        if (native ? !sync_file_state(i, i == 0 ? driver : NULL, sizeof(driver))
                   : !is_signalled(dpy, i))
            pending++;
    }
    note("%d of %d fences were still pending right after their submission", pending, count);
    if (native)
        note("the first sync fd's fence: %s", driver);
    for (int i = 0; i < count; i++)
        check(dpy, i);
    if (stubs)
        note("%d of %d sync fds were already-signalled stubs", stubs, count);
    note("all %d fences signalled in order and guarded correct pixels (%.1f ms)", count,
         (now_ns() - start) / 1e6);

    for (int i = 0; i < count; i++) {
        destroy_sync(dpy, fences[i].sync);
        if (fences[i].fd >= 0)
            close(fences[i].fd);
    }
    pass();
}
