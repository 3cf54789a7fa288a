/* share-render: the frame share-buffer's exporter renders with Vulkan on the
 * Venus device.
 *
 * The frame is SHARE_FRAME_WIDTH pixels wide, R8G8B8A8_UINT, as many rows as
 * fill the buffer. It is cut into tiles of TILE_W x TILE_H pixels; a render
 * pass clears each tile (vkCmdClearAttachments, one rectangle each) to the
 * colour share_frame_pixel() gives, and the image is copied into a
 * host-visible buffer, from which the exporter copies it into the blob it
 * exports.
 *
 * Why the copy: rendering straight into memory allocated exportable
 * (VkExportMemoryAllocateInfo) is what a GPU host does, but on a host
 * whose Vulkan driver cannot export dma-bufs (lavapipe), virglrenderer
 * allocates such memory through GBM, which needs a render node; without one,
 * virgl_render_server dereferences a null GBM device and dies (this VM's
 * worker only). docs/share-protocol.md says more.
 */
#include <string.h>

#include "share-render.h"
#include "vk-util.h"

#define TILE_W 16
#define TILE_H 4
#define TILES_PER_ROW (SHARE_FRAME_WIDTH / TILE_W)

static uint32_t mix(uint32_t x)
{
    x ^= x >> 15;
    x *= 0x2c1b3c6du;
    return x ^ (x >> 13);
}

uint32_t share_frame_pixel(uint32_t index, uint32_t seed)
{
    uint32_t x = index % SHARE_FRAME_WIDTH, y = index / SHARE_FRAME_WIDTH;
    uint32_t tile = (y / TILE_H) * TILES_PER_ROW + x / TILE_W;

    return mix(tile * 0x9e3779b1u + seed);
}

static void record_frame(VkCommandBuffer cmd, const struct vk_target *target, VkBuffer buffer,
                         uint32_t height, uint32_t seed)
{
    VkRenderPassBeginInfo begin = {
        .sType = VK_STRUCTURE_TYPE_RENDER_PASS_BEGIN_INFO,
        .renderPass = target->pass,
        .framebuffer = target->framebuffer,
        .renderArea = { { 0, 0 }, { SHARE_FRAME_WIDTH, height } },
    };

    vkCmdBeginRenderPass(cmd, &begin, VK_SUBPASS_CONTENTS_INLINE);
    for (uint32_t ty = 0; ty < height / TILE_H; ty++) {
        for (uint32_t tx = 0; tx < TILES_PER_ROW; tx++) {
            uint32_t colour = share_frame_pixel(ty * TILE_H * SHARE_FRAME_WIDTH + tx * TILE_W,
                                                seed);
            VkClearAttachment clear = {
                .aspectMask = VK_IMAGE_ASPECT_COLOR_BIT,
                .colorAttachment = 0,
                .clearValue.color.uint32 = { colour & 0xff, (colour >> 8) & 0xff,
                                             (colour >> 16) & 0xff, colour >> 24 },
            };
            VkClearRect rect = {
                .rect = { { (int32_t)(tx * TILE_W), (int32_t)(ty * TILE_H) },
                          { TILE_W, TILE_H } },
                .layerCount = 1,
            };
            vkCmdClearAttachments(cmd, 1, &clear, 1, &rect);
        }
    }
    vkCmdEndRenderPass(cmd);

    VkBufferImageCopy region = {
        .imageSubresource = { VK_IMAGE_ASPECT_COLOR_BIT, 0, 0, 1 },
        .imageExtent = { SHARE_FRAME_WIDTH, height, 1 },
    };
    vkCmdCopyImageToBuffer(cmd, target->image, VK_IMAGE_LAYOUT_TRANSFER_SRC_OPTIMAL, buffer, 1,
                           &region);
    VkMemoryBarrier done = {
        .sType = VK_STRUCTURE_TYPE_MEMORY_BARRIER,
        .srcAccessMask = VK_ACCESS_TRANSFER_WRITE_BIT,
        .dstAccessMask = VK_ACCESS_HOST_READ_BIT | VK_ACCESS_MEMORY_READ_BIT,
    };
    vkCmdPipelineBarrier(cmd, VK_PIPELINE_STAGE_TRANSFER_BIT, VK_PIPELINE_STAGE_HOST_BIT, 0, 1,
                         &done, 0, NULL, 0, NULL);
}

void share_render_frame(uint32_t seed, size_t size, void *dst)
{
    struct vk vk;
    struct vk_buffer out;
    struct vk_target target;
    uint32_t height = (uint32_t)(size / (SHARE_FRAME_WIDTH * 4));
    double seconds;

    if (height == 0 || height % TILE_H || (size_t)height * SHARE_FRAME_WIDTH * 4 != size)
        fail("a frame of %zu bytes is not whole %u-pixel rows in %u-row tiles", size,
             SHARE_FRAME_WIDTH, TILE_H);
    vk_open(&vk, VK_QUEUE_GRAPHICS_BIT);
    /* Every pixel is cleared by one of the tiles: nothing to load. */
    vk_target_create(&vk, &target, VK_FORMAT_R8G8B8A8_UINT, SHARE_FRAME_WIDTH, height,
                     VK_ATTACHMENT_LOAD_OP_DONT_CARE);
    vk_buffer_create(&vk, &out, size, VK_BUFFER_USAGE_TRANSFER_DST_BIT,
                     VK_MEMORY_PROPERTY_HOST_VISIBLE_BIT | VK_MEMORY_PROPERTY_HOST_COHERENT_BIT);

    VkCommandBuffer cmd = vk_begin(&vk);
    record_frame(cmd, &target, out.buffer, height, seed);
    seconds = vk_submit_wait(&vk, cmd, "frame");
    note("rendered a %ux%u frame of %u tiles on %s in %.3f s", SHARE_FRAME_WIDTH, height,
         height / TILE_H * TILES_PER_ROW, vk.props.deviceName, seconds);
    memcpy(dst, out.map, size);

    vk_target_destroy(&vk, &target);
    vk_buffer_destroy(&vk, &out);
    vk_close(&vk);
}
