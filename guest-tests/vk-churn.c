/* vk-churn: allocate, map, use, unmap and free host-visible memory over and
 * over, with checkpoints at which the host can measure the device backend.
 *
 * usage: vk-churn [N] [--warmup W] [--phases K] [--wait-dir DIR]
 *                 [--wait-timeout S]
 *
 *   N               cycles in all (default 2000, at least 10)
 *   --warmup W      cycles before the first checkpoint (default N/10)
 *   --phases K      the cycles after the warm-up are split into K phases
 *                   (default 4), each ending in a checkpoint
 *   --wait-dir DIR  at each checkpoint, wait for DIR/churn-sampled-<k>
 *                   before going on (the e2e suite uses /results, the host's
 *                   run dir for this guest, and creates the file once it has
 *                   measured the backend)
 *   --wait-timeout S  fail if such a file has not appeared after S seconds
 *                   (default 120)
 *
 * One cycle: vkAllocateMemory of a HOST_VISIBLE|HOST_COHERENT type,
 * vkMapMemory of all of it, a write of one 32-bit word in every 4 KiB page
 * plus the last word (values depend on the cycle and the page), a read of
 * all of them back, vkUnmapMemory, vkFreeMemory. Every 8th cycle also has
 * the GPU fill the allocation (vkCmdFillBuffer through a buffer bound to it,
 * all but the last size mod 256 bytes) between the CPU's check and the unmap,
 * and the CPU must then read the fill value at every one of those words that
 * was filled: the mapping is the memory the GPU uses, not a copy. Cycle i allocates
 * 4 KiB << (i mod 11) bytes (4 KiB .. 4 MiB), below 4 MiB two of three
 * cycles add 1 to 5 pages and one of those then takes 1000 bytes off, so
 * sizes that are not a power of two nor a multiple of the page size occur.
 *
 * Checkpoint k (0 after the warm-up, then 1..K after each phase) prints
 *
 *   vk-churn: phase <k> done: <cycles> cycles so far
 *
 * after vkDeviceWaitIdle, with no allocation alive; then, with --wait-dir,
 * waits for the host. Any failed call or wrong word fails the test.
 */
#include <errno.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "vk-util.h"

const char *const test_name = "vk-churn";

#define PAGE 4096u
#define MAX_SIZE (4u << 20)

static VkDeviceSize cycle_size(long i)
{
    VkDeviceSize size = (VkDeviceSize)PAGE << (i % 11);

    if (size < MAX_SIZE && i % 3 != 0) {
        size += PAGE * (VkDeviceSize)(1 + i % 5);
        if (i % 3 == 2)
            size -= 1000;
    }
    return size;
}

static uint32_t word_value(long cycle, size_t index)
{
    uint32_t x = (uint32_t)cycle * 0x9e3779b1u ^ (uint32_t)index * 0x7f4a7c15u;

    x ^= x >> 16;
    x *= 0x45d9f3bu;
    return x ^ (x >> 16);
}

struct stats {
    long gpu_checks;
    /* Mappings whose first write needed time to stick (see settle). */
    long late_maps;
    double seconds;
    VkDeviceSize bytes, min_size, max_size;
};

#define GPU_CHECK_EVERY 8
/* How long (in 1 ms steps) a fresh mapping may take to keep a write. */
#define SETTLE_TRIES 1000

/* The words a cycle writes: one per page, at a place that moves with the
 * page, and the last one. */
static size_t sample_word(size_t p, size_t pages, size_t words)
{
    size_t w = p < pages ? p * (PAGE / 4) + (p * 17) % (PAGE / 4) : words - 1;

    return w < words ? w : words - 1;
}

/* The GPU fills the first fill_bytes of memory (alloc_size bytes of memory
 * type type) with value. */
static void gpu_fill(struct vk *vk, VkDeviceMemory memory, uint32_t type, VkDeviceSize alloc_size,
                     VkDeviceSize fill_bytes, uint32_t value, long i)
{
    VkBufferCreateInfo info = {
        .sType = VK_STRUCTURE_TYPE_BUFFER_CREATE_INFO,
        .size = fill_bytes,
        .usage = VK_BUFFER_USAGE_TRANSFER_DST_BIT,
        .sharingMode = VK_SHARING_MODE_EXCLUSIVE,
    };
    VkMemoryBarrier to_host = {
        .sType = VK_STRUCTURE_TYPE_MEMORY_BARRIER,
        .srcAccessMask = VK_ACCESS_TRANSFER_WRITE_BIT,
        .dstAccessMask = VK_ACCESS_HOST_READ_BIT,
    };
    VkMemoryRequirements req;
    VkBuffer buffer;
    VkResult result;

    result = vkCreateBuffer(vk->device, &info, NULL, &buffer);
    if (result != VK_SUCCESS)
        fail("cycle %ld: vkCreateBuffer: %s", i, vk_result_text(result));
    vkGetBufferMemoryRequirements(vk->device, buffer, &req);
    if (!(req.memoryTypeBits & (1u << type)) || req.size > alloc_size)
        fail("cycle %ld: a buffer of %llu bytes cannot use the allocation (types 0x%x, %llu "
             "bytes)", i, (unsigned long long)fill_bytes, req.memoryTypeBits,
             (unsigned long long)req.size);
    result = vkBindBufferMemory(vk->device, buffer, memory, 0);
    if (result != VK_SUCCESS)
        fail("cycle %ld: vkBindBufferMemory: %s", i, vk_result_text(result));
    VkCommandBuffer cmd = vk_begin(vk);
    vkCmdFillBuffer(cmd, buffer, 0, fill_bytes, value);
    vkCmdPipelineBarrier(cmd, VK_PIPELINE_STAGE_TRANSFER_BIT, VK_PIPELINE_STAGE_HOST_BIT, 0, 1,
                         &to_host, 0, NULL, 0, NULL);
    vk_submit_wait(vk, cmd, "fill");
    vkDestroyBuffer(vk->device, buffer, NULL);
}

/* Under TCG, QEMU's generic vhost-user device can answer a shared memory
 * map before every vCPU sees it: a write made right after vkMapMemory may
 * still land in the window's previous contents (observed only with this
 * device, never with QEMU's built-in one; see guest-tests/README.md). Wait,
 * boundedly, until a sentinel written to the first word reads back, and count
 * the mappings that needed it. Everything after is checked strictly. */
static void settle(volatile uint32_t *map, long i, struct stats *st)
{
    const uint32_t sentinel = 0xa5000000u ^ (uint32_t)i;

    for (int tries = 0; tries < SETTLE_TRIES; tries++) {
        map[0] = sentinel;
        if (map[0] == sentinel) {
            if (tries)
                st->late_maps++;
            return;
        }
        usleep(1000);
    }
    fail("cycle %ld: the mapping never kept a write (%d ms)", i, SETTLE_TRIES);
}

static void cycle(struct vk *vk, uint32_t type, long i, struct stats *st)
{
    const VkDeviceSize size = cycle_size(i);
    const size_t words = size / 4, pages = (size + PAGE - 1) / PAGE;
    VkMemoryAllocateInfo alloc = {
        .sType = VK_STRUCTURE_TYPE_MEMORY_ALLOCATE_INFO,
        .allocationSize = size,
        .memoryTypeIndex = type,
    };
    VkDeviceMemory memory;
    VkResult result;
    uint32_t *map;
    void *ptr;

    result = vkAllocateMemory(vk->device, &alloc, NULL, &memory);
    if (result != VK_SUCCESS)
        fail("cycle %ld: vkAllocateMemory of %llu bytes: %s", i, (unsigned long long)size,
             vk_result_text(result));
    result = vkMapMemory(vk->device, memory, 0, VK_WHOLE_SIZE, 0, &ptr);
    if (result != VK_SUCCESS)
        fail("cycle %ld: vkMapMemory of %llu bytes: %s", i, (unsigned long long)size,
             vk_result_text(result));
    map = ptr;
    settle(map, i, st);
    for (size_t p = 0; p <= pages; p++) {
        size_t w = sample_word(p, pages, words);

        map[w] = word_value(i, w);
    }
    for (size_t p = 0; p <= pages; p++) {
        size_t w = sample_word(p, pages, words);

        if (map[w] != word_value(i, w))
            fail("cycle %ld: %llu bytes: word %zu reads 0x%08x after writing 0x%08x", i,
                 (unsigned long long)size, w, map[w], word_value(i, w));
    }
    if (i % GPU_CHECK_EVERY == 0) {
        /* A buffer's size may be rounded up for alignment: stay below it. */
        const VkDeviceSize fill_bytes = size & ~(VkDeviceSize)255;
        const uint32_t fill = ~word_value(i, 0);

        gpu_fill(vk, memory, type, size, fill_bytes, fill, i);
        for (size_t p = 0; p <= pages; p++) {
            size_t w = sample_word(p, pages, words);

            if (w * 4 < fill_bytes && map[w] != fill)
                fail("cycle %ld: %llu bytes: word %zu reads 0x%08x after the GPU filled it "
                     "with 0x%08x", i, (unsigned long long)size, w, map[w], fill);
        }
        st->gpu_checks++;
    }
    vkUnmapMemory(vk->device, memory);
    vkFreeMemory(vk->device, memory, NULL);

    st->bytes += size;
    if (!st->min_size || size < st->min_size)
        st->min_size = size;
    if (size > st->max_size)
        st->max_size = size;
}

static void wait_for_host(const char *dir, int k, long timeout)
{
    char path[4096];
    struct stat sb;
    double deadline = vk_now() + timeout;

    snprintf(path, sizeof(path), "%s/churn-sampled-%d", dir, k);
    while (stat(path, &sb) != 0) {
        if (errno != ENOENT)
            fail("waiting for %s: %s", path, strerror(errno));
        if (vk_now() > deadline)
            fail("%s did not appear within %ld s", path, timeout);
        usleep(50 * 1000);
    }
}

int main(int argc, char **argv)
{
    long total = 2000, warmup = -1, phases = 4, timeout = 120, done = 0;
    const char *wait_dir = NULL;
    struct vk vk;
    int type;

    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--warmup") == 0 && i + 1 < argc)
            warmup = parse_number("--warmup", argv[++i], 0, 1000000);
        else if (strcmp(argv[i], "--phases") == 0 && i + 1 < argc)
            phases = parse_number("--phases", argv[++i], 1, 100);
        else if (strcmp(argv[i], "--wait-dir") == 0 && i + 1 < argc)
            wait_dir = argv[++i];
        else if (strcmp(argv[i], "--wait-timeout") == 0 && i + 1 < argc)
            timeout = parse_number("--wait-timeout", argv[++i], 1, 3600);
        else if (argv[i][0] != '-')
            total = parse_number("N", argv[i], 10, 10000000);
        else
            fail("bad argument '%s' (usage: vk-churn [N] [--warmup W] [--phases K] "
                 "[--wait-dir DIR] [--wait-timeout S])", argv[i]);
    }
    if (warmup < 0)
        warmup = total / 10;
    if (warmup + phases > total)
        fail("%ld cycles are too few for a warm-up of %ld and %ld phases", total, warmup, phases);

    vk_open(&vk, VK_QUEUE_COMPUTE_BIT);
    type = vk_find_memory_type(&vk, UINT32_MAX,
                               VK_MEMORY_PROPERTY_HOST_VISIBLE_BIT |
                                   VK_MEMORY_PROPERTY_HOST_COHERENT_BIT);
    if (type < 0)
        fail("no HOST_VISIBLE|HOST_COHERENT memory type");
    note("%ld cycles: warm-up %ld, then %ld phases; memory type %d", total, warmup, phases, type);

    for (int k = 0; k <= phases; k++) {
        long end = k == 0 ? warmup : warmup + (total - warmup) * k / phases, first = done;
        struct stats st = { 0 };
        double start = vk_now();

        for (; done < end; done++)
            cycle(&vk, (uint32_t)type, done, &st);
        vk_check(vkDeviceWaitIdle(vk.device), "vkDeviceWaitIdle");
        st.seconds = vk_now() - start;
        if (done > first)
            note("%s %d: %ld cycles in %.1f s (%.0f/s), %llu KiB .. %llu KiB, %llu MiB in all, "
                 "%ld GPU fills checked, %ld mappings late to keep their first write",
                 k == 0 ? "warm-up" : "phase", k, done - first, st.seconds,
                 (done - first) / st.seconds, (unsigned long long)(st.min_size >> 10),
                 (unsigned long long)(st.max_size >> 10), (unsigned long long)(st.bytes >> 20),
                 st.gpu_checks, st.late_maps);
        note("phase %d done: %ld cycles so far", k, done);
        if (wait_dir)
            wait_for_host(wait_dir, k, timeout);
    }
    vk_close(&vk);
    pass();
}
