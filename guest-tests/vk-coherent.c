/* vk-coherent: HOST_COHERENT memory seen the same by the guest CPU and the
 * GPU, both ways, without flushes or invalidates.
 *
 * usage: vk-coherent
 *
 * For each size of 4 KiB, 64 KiB, 1 MiB, 4 MiB and 16 MiB, two buffers SRC
 * and DST of that size are allocated in HOST_VISIBLE|HOST_COHERENT memory
 * and mapped once, for all of the steps below (no vkFlushMappedMemoryRanges,
 * no vkInvalidateMappedMemoryRanges: coherent memory must not need them):
 *
 *   1. CPU to GPU to CPU: the CPU writes a pattern into SRC, the GPU copies
 *      SRC to DST (vkCmdCopyBuffer), the CPU reads DST: it must hold the
 *      pattern, every 32-bit word.
 *   2. GPU to CPU: the GPU fills DST with a constant (vkCmdFillBuffer), the
 *      CPU reads it through the same mapping: every word must be the
 *      constant (nothing of step 1 may be left).
 *   3. Both, with offsets: the CPU writes a second pattern into SRC, the GPU
 *      fills the first half of DST with a second constant and copies the
 *      first half of SRC into the second half of DST; the CPU checks both
 *      halves.
 *
 * The pattern of word i for seed s is a hash of (i, s), so a word at the
 * wrong place or from an earlier step shows. Prints the time of each step.
 */
#include <string.h>

#include "vk-util.h"

const char *const test_name = "vk-coherent";

static uint32_t pattern(uint32_t i, uint32_t seed)
{
    uint32_t x = i * 0x9e3779b1u ^ seed;

    x ^= x >> 16;
    x *= 0x21f0aaadu;
    x ^= x >> 15;
    return x;
}

static void write_pattern(uint32_t *words, size_t count, uint32_t seed)
{
    for (size_t i = 0; i < count; i++)
        words[i] = pattern((uint32_t)i, seed);
}

/* Fails unless words[i] == pattern(first + i, seed) (or == fill when the
 * pattern is off) for i in [0, count). */
static void check(const char *step, size_t size, const uint32_t *words, size_t count,
                  size_t first, int use_pattern, uint32_t seed_or_fill)
{
    size_t wrong = 0, at = 0;

    for (size_t i = 0; i < count; i++) {
        uint32_t want = use_pattern ? pattern((uint32_t)(first + i), seed_or_fill) : seed_or_fill;

        if (words[i] != want && wrong++ == 0)
            at = i;
    }
    if (wrong) {
        uint32_t want = use_pattern ? pattern((uint32_t)(first + at), seed_or_fill) : seed_or_fill;

        fail("%zu KiB, %s: %zu of %zu words wrong; first at byte %zu: got 0x%08x, expected "
             "0x%08x", size >> 10, step, wrong, count, at * 4, words[at], want);
    }
}

static const VkMemoryBarrier transfer_to_host = {
    .sType = VK_STRUCTURE_TYPE_MEMORY_BARRIER,
    .srcAccessMask = VK_ACCESS_TRANSFER_WRITE_BIT,
    .dstAccessMask = VK_ACCESS_HOST_READ_BIT,
};

static void to_host(VkCommandBuffer cmd)
{
    vkCmdPipelineBarrier(cmd, VK_PIPELINE_STAGE_TRANSFER_BIT, VK_PIPELINE_STAGE_HOST_BIT, 0, 1,
                         &transfer_to_host, 0, NULL, 0, NULL);
}

static void run(struct vk *vk, size_t size)
{
    const VkMemoryPropertyFlags host =
        VK_MEMORY_PROPERTY_HOST_VISIBLE_BIT | VK_MEMORY_PROPERTY_HOST_COHERENT_BIT;
    const VkBufferUsageFlags usage =
        VK_BUFFER_USAGE_TRANSFER_SRC_BIT | VK_BUFFER_USAGE_TRANSFER_DST_BIT;
    const size_t words = size / 4, half = size / 2;
    const uint32_t seed1 = 0x5eed0000u + (uint32_t)(size >> 12);
    const uint32_t seed2 = ~seed1, fill1 = 0xc0ffee00u, fill2 = 0x0badf00du;
    struct vk_buffer src, dst;
    uint32_t *s, *d;
    double t[3];
    VkCommandBuffer cmd;

    vk_buffer_create(vk, &src, size, usage, host);
    vk_buffer_create(vk, &dst, size, usage, host);
    s = src.map;
    d = dst.map;

    /* 1: CPU -> GPU copy -> CPU. */
    write_pattern(s, words, seed1);
    memset(d, 0, size);
    cmd = vk_begin(vk);
    vkCmdCopyBuffer(cmd, src.buffer, dst.buffer, 1, &(VkBufferCopy){ 0, 0, size });
    to_host(cmd);
    t[0] = vk_submit_wait(vk, cmd, "copy");
    check("GPU copy of what the CPU wrote", size, d, words, 0, 1, seed1);

    /* 2: GPU fill -> CPU. */
    cmd = vk_begin(vk);
    vkCmdFillBuffer(cmd, dst.buffer, 0, VK_WHOLE_SIZE, fill1);
    to_host(cmd);
    t[1] = vk_submit_wait(vk, cmd, "fill");
    check("GPU fill read by the CPU", size, d, words, 0, 0, fill1);

    /* 3: both, at offsets. */
    write_pattern(s, words, seed2);
    cmd = vk_begin(vk);
    vkCmdFillBuffer(cmd, dst.buffer, 0, half, fill2);
    vkCmdCopyBuffer(cmd, src.buffer, dst.buffer, 1, &(VkBufferCopy){ 0, half, half });
    to_host(cmd);
    t[2] = vk_submit_wait(vk, cmd, "fill and copy");
    check("GPU fill of the first half", size, d, words / 2, 0, 0, fill2);
    check("GPU copy into the second half", size, d + words / 2, words / 2, 0, 1, seed2);

    note("%zu KiB (memory type %u): copy %.3f s, fill %.3f s, fill + copy at offsets %.3f s: "
         "all words right", size >> 10, src.memory_type, t[0], t[1], t[2]);
    vk_buffer_destroy(vk, &src);
    vk_buffer_destroy(vk, &dst);
}

int main(int argc, char **argv)
{
    static const size_t sizes[] = { 4 << 10, 64 << 10, 1 << 20, 4 << 20, 16 << 20 };
    struct vk vk;

    (void)argv;
    if (argc != 1)
        fail("no arguments expected (usage: vk-coherent)");
    vk_open(&vk, VK_QUEUE_COMPUTE_BIT);
    for (size_t i = 0; i < sizeof(sizes) / sizeof(sizes[0]); i++)
        run(&vk, sizes[i]);
    vk_close(&vk);
    pass();
}
