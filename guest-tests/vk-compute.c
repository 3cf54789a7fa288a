/* vk-compute: a compute shader on the Venus device over a million elements,
 * checked element by element on the CPU.
 *
 * usage: vk-compute [--count N] [--rounds R]
 *
 * Two HOST_VISIBLE|HOST_COHERENT storage buffers of N 32-bit words (default
 * 1<<20, at least that many), both mapped for the whole run. In each of R
 * rounds (default 3) the CPU writes a new input stream (xorshift32, seeded
 * by the round) and fills the output with a sentinel, the GPU runs
 * shaders/vk-compute.comp over all N elements with the round's constants a
 * and b, and the CPU recomputes every element:
 *
 *   out[i] = mix(in[i] * a + (b XOR i))   (wrapping 32-bit arithmetic)
 *
 * Any difference fails. Prints the GPU time of each round (submission to
 * fence) and elements per second.
 */
#include <string.h>

#include "vk-util.h"
#include "vk-compute.comp.h"

const char *const test_name = "vk-compute";

#define GROUP_SIZE 256

struct params {
    uint32_t a, b, count;
};

/* Must match the shader. */
static uint32_t mix(uint32_t x)
{
    x ^= x >> 15;
    x *= 0x2c1b3c6du;
    x ^= x >> 12;
    x *= 0x297a2d39u;
    x ^= x >> 15;
    return x;
}

static uint32_t xorshift32(uint32_t *state)
{
    uint32_t x = *state;

    x ^= x << 13;
    x ^= x >> 17;
    x ^= x << 5;
    return *state = x;
}

int main(int argc, char **argv)
{
    long count = 1L << 20, rounds = 3;
    struct vk vk;
    struct vk_buffer in, out;
    VkDescriptorSetLayout set_layout;
    VkPipelineLayout layout;
    VkPipeline pipeline;
    VkDescriptorPool pool;
    VkDescriptorSet set;
    VkShaderModule shader;
    double gpu_total = 0;

    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--count") == 0 && i + 1 < argc)
            count = parse_number("--count", argv[++i], 1L << 20, 1L << 26);
        else if (strcmp(argv[i], "--rounds") == 0 && i + 1 < argc)
            rounds = parse_number("--rounds", argv[++i], 1, 100);
        else
            fail("bad argument '%s' (usage: vk-compute [--count N] [--rounds R])", argv[i]);
    }
    vk_open(&vk, VK_QUEUE_COMPUTE_BIT);

    const VkMemoryPropertyFlags host =
        VK_MEMORY_PROPERTY_HOST_VISIBLE_BIT | VK_MEMORY_PROPERTY_HOST_COHERENT_BIT;
    const VkDeviceSize bytes = (VkDeviceSize)count * sizeof(uint32_t);
    vk_buffer_create(&vk, &in, bytes, VK_BUFFER_USAGE_STORAGE_BUFFER_BIT, host);
    vk_buffer_create(&vk, &out, bytes, VK_BUFFER_USAGE_STORAGE_BUFFER_BIT, host);
    note("%ld elements, two buffers of %llu KiB in memory types %u and %u", count,
         (unsigned long long)(bytes >> 10), in.memory_type, out.memory_type);

    VkDescriptorSetLayoutBinding bindings[2] = {
        { .binding = 0, .descriptorType = VK_DESCRIPTOR_TYPE_STORAGE_BUFFER,
          .descriptorCount = 1, .stageFlags = VK_SHADER_STAGE_COMPUTE_BIT },
        { .binding = 1, .descriptorType = VK_DESCRIPTOR_TYPE_STORAGE_BUFFER,
          .descriptorCount = 1, .stageFlags = VK_SHADER_STAGE_COMPUTE_BIT },
    };
    VkDescriptorSetLayoutCreateInfo set_layout_info = {
        .sType = VK_STRUCTURE_TYPE_DESCRIPTOR_SET_LAYOUT_CREATE_INFO,
        .bindingCount = 2,
        .pBindings = bindings,
    };
    vk_check(vkCreateDescriptorSetLayout(vk.device, &set_layout_info, NULL, &set_layout),
             "vkCreateDescriptorSetLayout");
    VkPushConstantRange push = {
        .stageFlags = VK_SHADER_STAGE_COMPUTE_BIT,
        .size = sizeof(struct params),
    };
    VkPipelineLayoutCreateInfo layout_info = {
        .sType = VK_STRUCTURE_TYPE_PIPELINE_LAYOUT_CREATE_INFO,
        .setLayoutCount = 1,
        .pSetLayouts = &set_layout,
        .pushConstantRangeCount = 1,
        .pPushConstantRanges = &push,
    };
    vk_check(vkCreatePipelineLayout(vk.device, &layout_info, NULL, &layout),
             "vkCreatePipelineLayout");
    shader = vk_shader(&vk, vk_compute_comp, sizeof(vk_compute_comp));
    VkComputePipelineCreateInfo pipeline_info = {
        .sType = VK_STRUCTURE_TYPE_COMPUTE_PIPELINE_CREATE_INFO,
        .stage = {
            .sType = VK_STRUCTURE_TYPE_PIPELINE_SHADER_STAGE_CREATE_INFO,
            .stage = VK_SHADER_STAGE_COMPUTE_BIT,
            .module = shader,
            .pName = "main",
        },
        .layout = layout,
    };
    vk_check(vkCreateComputePipelines(vk.device, VK_NULL_HANDLE, 1, &pipeline_info, NULL,
                                      &pipeline),
             "vkCreateComputePipelines");

    VkDescriptorPoolSize pool_size = { VK_DESCRIPTOR_TYPE_STORAGE_BUFFER, 2 };
    VkDescriptorPoolCreateInfo pool_info = {
        .sType = VK_STRUCTURE_TYPE_DESCRIPTOR_POOL_CREATE_INFO,
        .maxSets = 1,
        .poolSizeCount = 1,
        .pPoolSizes = &pool_size,
    };
    vk_check(vkCreateDescriptorPool(vk.device, &pool_info, NULL, &pool), "vkCreateDescriptorPool");
    VkDescriptorSetAllocateInfo set_info = {
        .sType = VK_STRUCTURE_TYPE_DESCRIPTOR_SET_ALLOCATE_INFO,
        .descriptorPool = pool,
        .descriptorSetCount = 1,
        .pSetLayouts = &set_layout,
    };
    vk_check(vkAllocateDescriptorSets(vk.device, &set_info, &set), "vkAllocateDescriptorSets");
    VkDescriptorBufferInfo buffer_infos[2] = {
        { in.buffer, 0, VK_WHOLE_SIZE },
        { out.buffer, 0, VK_WHOLE_SIZE },
    };
    VkWriteDescriptorSet writes[2];
    for (int i = 0; i < 2; i++) {
        writes[i] = (VkWriteDescriptorSet){
            .sType = VK_STRUCTURE_TYPE_WRITE_DESCRIPTOR_SET,
            .dstSet = set,
            .dstBinding = (uint32_t)i,
            .descriptorCount = 1,
            .descriptorType = VK_DESCRIPTOR_TYPE_STORAGE_BUFFER,
            .pBufferInfo = &buffer_infos[i],
        };
    }
    vkUpdateDescriptorSets(vk.device, 2, writes, 0, NULL);

    for (long round = 0; round < rounds; round++) {
        struct params params = {
            .a = 0x9e3779b1u + 2u * (uint32_t)round,
            .b = 0x85ebca77u * (uint32_t)(round + 1),
            .count = (uint32_t)count,
        };
        uint32_t *src = in.map, *dst = out.map, state = 0x1234567u + (uint32_t)round;
        long wrong = 0, first = -1;
        double gpu, cpu;

        for (long i = 0; i < count; i++) {
            src[i] = xorshift32(&state);
            dst[i] = 0xdeadbeefu;
        }

        VkCommandBuffer cmd = vk_begin(&vk);
        vkCmdBindPipeline(cmd, VK_PIPELINE_BIND_POINT_COMPUTE, pipeline);
        vkCmdBindDescriptorSets(cmd, VK_PIPELINE_BIND_POINT_COMPUTE, layout, 0, 1, &set, 0, NULL);
        vkCmdPushConstants(cmd, layout, VK_SHADER_STAGE_COMPUTE_BIT, 0, sizeof(params), &params);
        vkCmdDispatch(cmd, (uint32_t)((count + GROUP_SIZE - 1) / GROUP_SIZE), 1, 1);
        VkMemoryBarrier to_host = {
            .sType = VK_STRUCTURE_TYPE_MEMORY_BARRIER,
            .srcAccessMask = VK_ACCESS_SHADER_WRITE_BIT,
            .dstAccessMask = VK_ACCESS_HOST_READ_BIT,
        };
        vkCmdPipelineBarrier(cmd, VK_PIPELINE_STAGE_COMPUTE_SHADER_BIT,
                             VK_PIPELINE_STAGE_HOST_BIT, 0, 1, &to_host, 0, NULL, 0, NULL);
        gpu = vk_submit_wait(&vk, cmd, "dispatch");
        gpu_total += gpu;

        cpu = vk_now();
        for (long i = 0; i < count; i++) {
            uint32_t want = mix(src[i] * params.a + (params.b ^ (uint32_t)i));

            if (dst[i] != want && wrong++ == 0)
                first = i;
        }
        cpu = vk_now() - cpu;
        if (wrong) {
            uint32_t want = mix(src[first] * params.a + (params.b ^ (uint32_t)first));

            fail("round %ld: %ld of %ld elements wrong; first at %ld: got 0x%08x, expected "
                 "0x%08x", round, wrong, count, first, dst[first], want);
        }
        note("round %ld: a=0x%08x b=0x%08x: %ld elements in %.3f s on the GPU (%.1f M/s), "
             "all correct (checked in %.2f s)", round, params.a, params.b, count, gpu,
             count / gpu / 1e6, cpu);
    }
    note("%ld elements x %ld rounds: %.0f elements/s", count, rounds,
         count * rounds / gpu_total);

    vkDestroyPipeline(vk.device, pipeline, NULL);
    vkDestroyShaderModule(vk.device, shader, NULL);
    vkDestroyPipelineLayout(vk.device, layout, NULL);
    vkDestroyDescriptorPool(vk.device, pool, NULL);
    vkDestroyDescriptorSetLayout(vk.device, set_layout, NULL);
    vk_buffer_destroy(&vk, &in);
    vk_buffer_destroy(&vk, &out);
    vk_close(&vk);
    pass();
}
