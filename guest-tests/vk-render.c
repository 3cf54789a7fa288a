/* vk-render: render a known scene offscreen on the Venus device and compare
 * it with the image computed on the CPU.
 *
 * usage: vk-render [--dump FILE]
 *
 * A 256x256 R8G8B8A8_UNORM colour attachment is cleared and four shapes are
 * drawn over it in this order, each in one solid colour (coordinates in
 * pixels, (0, 0) at the top left, x to the right, y down; pixel (x, y) covers
 * [x, x+1) x [y, y+1) and its centre is (x + 0.5, y + 0.5)):
 *
 *   clear                                   ( 32,  64,  96, 255)
 *   A  rectangle [16, 112) x [24, 200)      (230,  40,  10, 255)
 *   B  rectangle [80, 240) x [64, 144)      ( 20, 210,  60, 200)
 *   C  triangle (48, 240) (240, 200) (176, 120)   (250, 220, 17, 128)
 *   D  rectangle [8, 9) x [8, 248), one pixel wide  (101, 102, 103, 104)
 *
 * Rectangles are two triangles each; blending is off, so a later shape
 * replaces what is under it. The image is copied to a HOST_VISIBLE buffer
 * and every pixel is compared, all four channels exactly. The only pixels not
 * compared are those whose centre is less than half a pixel from an edge of
 * triangle C (so that it is not clearly inside or outside C) and that D does
 * not cover; the rectangles' edges lie on pixel boundaries, so none of their
 * pixels is in doubt. The skipped pixels must be fewer than 2% of the image,
 * and every shape must have pixels that were compared. --dump writes the
 * rendered image as a binary PPM (alpha dropped).
 */
#include <math.h>
#include <string.h>

#include "vk-util.h"
#include "vk-render.frag.h"
#include "vk-render.vert.h"

const char *const test_name = "vk-render";

#define SIZE 256
#define EDGE_MARGIN 0.5

struct colour {
    uint8_t r, g, b, a;
};

static const struct colour clear_colour = { 32, 64, 96, 255 };

struct shape {
    char name;
    int triangle;        /* 0: rectangle [x0, x1) x [y0, y1) */
    float x0, y0, x1, y1; /* rectangle */
    float corners[3][2];  /* triangle */
    struct colour colour;
};

static const struct shape shapes[] = {
    { 'A', 0, 16, 24, 112, 200, { { 0 } }, { 230, 40, 10, 255 } },
    { 'B', 0, 80, 64, 240, 144, { { 0 } }, { 20, 210, 60, 200 } },
    { 'C', 1, 0, 0, 0, 0, { { 48, 240 }, { 240, 200 }, { 176, 120 } }, { 250, 220, 17, 128 } },
    { 'D', 0, 8, 8, 9, 248, { { 0 } }, { 101, 102, 103, 104 } },
};
#define SHAPES ((int)(sizeof(shapes) / sizeof(shapes[0])))

struct push {
    float colour[4];
    float size[2];
};

/* Signed distance in pixels from (px, py) to the line through corners a and
 * b of triangle t, positive on the side of the third corner. */
static double edge_distance(const struct shape *t, int a, int b, double px, double py)
{
    const float *pa = t->corners[a], *pb = t->corners[b], *pc = t->corners[3 - a - b];
    double ex = pb[0] - pa[0], ey = pb[1] - pa[1];
    double d = (ex * (py - pa[1]) - ey * (px - pa[0])) / hypot(ex, ey);
    double side = ex * (pc[1] - pa[1]) - ey * (pc[0] - pa[0]);

    return side > 0 ? d : -d;
}

/* 1 if the centre of pixel (x, y) is inside the shape, 0 if outside, -1 if
 * it is too close to a slanted edge to say. */
static int covers(const struct shape *s, int x, int y)
{
    double px = x + 0.5, py = y + 0.5, nearest = INFINITY;

    if (!s->triangle)
        return px > s->x0 && px < s->x1 && py > s->y0 && py < s->y1;
    for (int e = 0; e < 3; e++) {
        double d = edge_distance(s, e, (e + 1) % 3, px, py);

        if (d < nearest)
            nearest = d;
    }
    if (nearest >= EDGE_MARGIN)
        return 1;
    if (nearest <= -EDGE_MARGIN)
        return 0;
    return -1;
}

/* The expected colour of pixel (x, y) and the shape that gives it ('-' for
 * the clear colour); 0 if it cannot be told. */
static int expected(int x, int y, struct colour *want, char *from)
{
    *want = clear_colour;
    *from = '-';
    for (int i = 0; i < SHAPES; i++) {
        int c = covers(&shapes[i], x, y);

        if (c < 0) {
            /* In doubt, unless a later shape covers it for sure. */
            int later = 0;

            for (int j = i + 1; j < SHAPES && !later; j++)
                later = covers(&shapes[j], x, y) == 1;
            if (!later)
                return 0;
            continue;
        }
        if (c) {
            *want = shapes[i].colour;
            *from = shapes[i].name;
        }
    }
    return 1;
}

static void add_vertices(float *v, int *n, const struct shape *s)
{
    if (s->triangle) {
        for (int i = 0; i < 3; i++) {
            v[(*n)++] = s->corners[i][0];
            v[(*n)++] = s->corners[i][1];
        }
        return;
    }
    const float quad[6][2] = {
        { s->x0, s->y0 }, { s->x1, s->y0 }, { s->x1, s->y1 },
        { s->x0, s->y0 }, { s->x1, s->y1 }, { s->x0, s->y1 },
    };
    for (int i = 0; i < 6; i++) {
        v[(*n)++] = quad[i][0];
        v[(*n)++] = quad[i][1];
    }
}

static void dump(const char *path, const uint8_t *pixels)
{
    FILE *f = fopen(path, "wb");

    if (!f)
        fail("cannot write %s", path);
    fprintf(f, "P6\n%d %d\n255\n", SIZE, SIZE);
    for (int i = 0; i < SIZE * SIZE; i++)
        fwrite(pixels + 4 * i, 1, 3, f);
    if (fclose(f) != 0)
        fail("cannot write %s", path);
    note("wrote %s", path);
}

int main(int argc, char **argv)
{
    const char *dump_path = NULL;
    struct vk vk;
    struct vk_buffer vertices, readback;
    struct vk_target target;
    VkPipelineLayout layout;
    VkPipeline pipeline;
    VkShaderModule vert, frag;
    float vertex_data[SHAPES * 12];
    int first_vertex[SHAPES + 1], floats = 0;

    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--dump") == 0 && i + 1 < argc)
            dump_path = argv[++i];
        else
            fail("bad argument '%s' (usage: vk-render [--dump FILE])", argv[i]);
    }
    double start = vk_now();
    vk_open(&vk, VK_QUEUE_GRAPHICS_BIT);
    note("Vulkan set up in %.2f s", vk_now() - start);

    const VkMemoryPropertyFlags host =
        VK_MEMORY_PROPERTY_HOST_VISIBLE_BIT | VK_MEMORY_PROPERTY_HOST_COHERENT_BIT;
    for (int i = 0; i < SHAPES; i++) {
        first_vertex[i] = floats / 2;
        add_vertices(vertex_data, &floats, &shapes[i]);
    }
    first_vertex[SHAPES] = floats / 2;
    vk_buffer_create(&vk, &vertices, sizeof(vertex_data), VK_BUFFER_USAGE_VERTEX_BUFFER_BIT, host);
    memcpy(vertices.map, vertex_data, sizeof(vertex_data));
    vk_buffer_create(&vk, &readback, SIZE * SIZE * 4, VK_BUFFER_USAGE_TRANSFER_DST_BIT, host);
    memset(readback.map, 0x5a, SIZE * SIZE * 4);

    vk_target_create(&vk, &target, VK_FORMAT_R8G8B8A8_UNORM, SIZE, SIZE,
                     VK_ATTACHMENT_LOAD_OP_CLEAR);

    VkPushConstantRange push_range = {
        .stageFlags = VK_SHADER_STAGE_VERTEX_BIT | VK_SHADER_STAGE_FRAGMENT_BIT,
        .size = sizeof(struct push),
    };
    VkPipelineLayoutCreateInfo layout_info = {
        .sType = VK_STRUCTURE_TYPE_PIPELINE_LAYOUT_CREATE_INFO,
        .pushConstantRangeCount = 1,
        .pPushConstantRanges = &push_range,
    };
    vk_check(vkCreatePipelineLayout(vk.device, &layout_info, NULL, &layout),
             "vkCreatePipelineLayout");
    vert = vk_shader(&vk, vk_render_vert, sizeof(vk_render_vert));
    frag = vk_shader(&vk, vk_render_frag, sizeof(vk_render_frag));
    VkPipelineShaderStageCreateInfo stages[2] = {
        { .sType = VK_STRUCTURE_TYPE_PIPELINE_SHADER_STAGE_CREATE_INFO,
          .stage = VK_SHADER_STAGE_VERTEX_BIT, .module = vert, .pName = "main" },
        { .sType = VK_STRUCTURE_TYPE_PIPELINE_SHADER_STAGE_CREATE_INFO,
          .stage = VK_SHADER_STAGE_FRAGMENT_BIT, .module = frag, .pName = "main" },
    };
    VkVertexInputBindingDescription binding = { 0, 2 * sizeof(float), VK_VERTEX_INPUT_RATE_VERTEX };
    VkVertexInputAttributeDescription attribute = { 0, 0, VK_FORMAT_R32G32_SFLOAT, 0 };
    VkPipelineVertexInputStateCreateInfo vertex_input = {
        .sType = VK_STRUCTURE_TYPE_PIPELINE_VERTEX_INPUT_STATE_CREATE_INFO,
        .vertexBindingDescriptionCount = 1,
        .pVertexBindingDescriptions = &binding,
        .vertexAttributeDescriptionCount = 1,
        .pVertexAttributeDescriptions = &attribute,
    };
    VkPipelineInputAssemblyStateCreateInfo assembly = {
        .sType = VK_STRUCTURE_TYPE_PIPELINE_INPUT_ASSEMBLY_STATE_CREATE_INFO,
        .topology = VK_PRIMITIVE_TOPOLOGY_TRIANGLE_LIST,
    };
    VkViewport viewport = { 0, 0, SIZE, SIZE, 0, 1 };
    VkRect2D scissor = { { 0, 0 }, { SIZE, SIZE } };
    VkPipelineViewportStateCreateInfo viewport_state = {
        .sType = VK_STRUCTURE_TYPE_PIPELINE_VIEWPORT_STATE_CREATE_INFO,
        .viewportCount = 1,
        .pViewports = &viewport,
        .scissorCount = 1,
        .pScissors = &scissor,
    };
    VkPipelineRasterizationStateCreateInfo raster = {
        .sType = VK_STRUCTURE_TYPE_PIPELINE_RASTERIZATION_STATE_CREATE_INFO,
        .polygonMode = VK_POLYGON_MODE_FILL,
        .cullMode = VK_CULL_MODE_NONE,
        .frontFace = VK_FRONT_FACE_COUNTER_CLOCKWISE,
        .lineWidth = 1.0f,
    };
    VkPipelineMultisampleStateCreateInfo multisample = {
        .sType = VK_STRUCTURE_TYPE_PIPELINE_MULTISAMPLE_STATE_CREATE_INFO,
        .rasterizationSamples = VK_SAMPLE_COUNT_1_BIT,
    };
    VkPipelineColorBlendAttachmentState blend_attachment = {
        .colorWriteMask = VK_COLOR_COMPONENT_R_BIT | VK_COLOR_COMPONENT_G_BIT |
                          VK_COLOR_COMPONENT_B_BIT | VK_COLOR_COMPONENT_A_BIT,
    };
    VkPipelineColorBlendStateCreateInfo blend = {
        .sType = VK_STRUCTURE_TYPE_PIPELINE_COLOR_BLEND_STATE_CREATE_INFO,
        .attachmentCount = 1,
        .pAttachments = &blend_attachment,
    };
    VkGraphicsPipelineCreateInfo pipeline_info = {
        .sType = VK_STRUCTURE_TYPE_GRAPHICS_PIPELINE_CREATE_INFO,
        .stageCount = 2,
        .pStages = stages,
        .pVertexInputState = &vertex_input,
        .pInputAssemblyState = &assembly,
        .pViewportState = &viewport_state,
        .pRasterizationState = &raster,
        .pMultisampleState = &multisample,
        .pColorBlendState = &blend,
        .layout = layout,
        .renderPass = target.pass,
    };
    vk_check(vkCreateGraphicsPipelines(vk.device, VK_NULL_HANDLE, 1, &pipeline_info, NULL,
                                       &pipeline),
             "vkCreateGraphicsPipelines");

    /* Record: clear, the shapes in order, copy to the readback buffer. */
    note("pipeline created %.2f s after the start", vk_now() - start);
    VkCommandBuffer cmd = vk_begin(&vk);
    VkClearValue clear = { .color = { .float32 = {
        clear_colour.r / 255.0f, clear_colour.g / 255.0f, clear_colour.b / 255.0f,
        clear_colour.a / 255.0f } } };
    VkRenderPassBeginInfo begin = {
        .sType = VK_STRUCTURE_TYPE_RENDER_PASS_BEGIN_INFO,
        .renderPass = target.pass,
        .framebuffer = target.framebuffer,
        .renderArea = scissor,
        .clearValueCount = 1,
        .pClearValues = &clear,
    };
    VkDeviceSize zero = 0;
    vkCmdBeginRenderPass(cmd, &begin, VK_SUBPASS_CONTENTS_INLINE);
    vkCmdBindPipeline(cmd, VK_PIPELINE_BIND_POINT_GRAPHICS, pipeline);
    vkCmdBindVertexBuffers(cmd, 0, 1, &vertices.buffer, &zero);
    for (int i = 0; i < SHAPES; i++) {
        const struct colour *c = &shapes[i].colour;
        struct push push = {
            { c->r / 255.0f, c->g / 255.0f, c->b / 255.0f, c->a / 255.0f },
            { SIZE, SIZE },
        };

        vkCmdPushConstants(cmd, layout, VK_SHADER_STAGE_VERTEX_BIT | VK_SHADER_STAGE_FRAGMENT_BIT,
                           0, sizeof(push), &push);
        vkCmdDraw(cmd, (uint32_t)(first_vertex[i + 1] - first_vertex[i]), 1,
                  (uint32_t)first_vertex[i], 0);
    }
    vkCmdEndRenderPass(cmd);
    VkBufferImageCopy region = {
        .imageSubresource = { VK_IMAGE_ASPECT_COLOR_BIT, 0, 0, 1 },
        .imageExtent = { SIZE, SIZE, 1 },
    };
    vkCmdCopyImageToBuffer(cmd, target.image, VK_IMAGE_LAYOUT_TRANSFER_SRC_OPTIMAL, readback.buffer, 1,
                           &region);
    VkMemoryBarrier to_host = {
        .sType = VK_STRUCTURE_TYPE_MEMORY_BARRIER,
        .srcAccessMask = VK_ACCESS_TRANSFER_WRITE_BIT,
        .dstAccessMask = VK_ACCESS_HOST_READ_BIT,
    };
    vkCmdPipelineBarrier(cmd, VK_PIPELINE_STAGE_TRANSFER_BIT, VK_PIPELINE_STAGE_HOST_BIT, 0, 1,
                         &to_host, 0, NULL, 0, NULL);
    double gpu = vk_submit_wait(&vk, cmd, "render and copy");
    note("rendered %d shapes at %dx%d and copied them out in %.3f s", SHAPES, SIZE, SIZE, gpu);

    /* Compare. */
    const uint8_t *pixels = readback.map;
    int checked = 0, skipped = 0, wrong = 0, first_x = -1, first_y = -1;
    int per_shape[128] = { 0 };
    double cpu = vk_now();
    for (int y = 0; y < SIZE; y++) {
        for (int x = 0; x < SIZE; x++) {
            const uint8_t *got = pixels + 4 * (y * SIZE + x);
            struct colour want;
            char from;

            if (!expected(x, y, &want, &from)) {
                skipped++;
                continue;
            }
            checked++;
            per_shape[(int)from]++;
            if ((got[0] != want.r || got[1] != want.g || got[2] != want.b || got[3] != want.a) &&
                wrong++ == 0) {
                first_x = x;
                first_y = y;
            }
        }
    }
    note("compared %d pixels (clear %d, A %d, B %d, C %d, D %d) in %.2f s, skipped %d next to "
         "C's edges", checked, per_shape['-'], per_shape['A'], per_shape['B'], per_shape['C'],
         per_shape['D'], vk_now() - cpu, skipped);
    if (dump_path)
        dump(dump_path, pixels);
    if (wrong) {
        const uint8_t *got = pixels + 4 * (first_y * SIZE + first_x);
        struct colour want;
        char from;

        expected(first_x, first_y, &want, &from);
        fail("%d pixels wrong; first at (%d, %d): got (%d, %d, %d, %d), expected (%d, %d, %d, %d) "
             "from %c", wrong, first_x, first_y, got[0], got[1], got[2], got[3], want.r, want.g,
             want.b, want.a, from);
    }
    if (skipped * 50 >= SIZE * SIZE)
        fail("%d pixels skipped, too many for a meaningful check", skipped);
    for (int i = 0; i < SHAPES; i++) {
        if (per_shape[(int)shapes[i].name] == 0)
            fail("no pixel of shape %c was checked", shapes[i].name);
    }

    vkDestroyPipeline(vk.device, pipeline, NULL);
    vkDestroyPipelineLayout(vk.device, layout, NULL);
    vkDestroyShaderModule(vk.device, vert, NULL);
    vkDestroyShaderModule(vk.device, frag, NULL);
    vk_target_destroy(&vk, &target);
    vk_buffer_destroy(&vk, &vertices);
    vk_buffer_destroy(&vk, &readback);
    vk_close(&vk);
    pass();
}
