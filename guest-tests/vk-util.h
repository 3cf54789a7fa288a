/* Vulkan helpers shared by the vk-* guest tests.
 *
 * Every program runs on Mesa's Venus driver, the Vulkan driver that forwards
 * to the host through a virtio-gpu device. vk_open() picks that device by
 * name and driver ID and fails when there is none: the guest's own lavapipe
 * (llvmpipe) device is listed but never used. Every error ends the program
 * with a FAIL line (common.h).
 */
#ifndef GUEST_TESTS_VK_UTIL_H
#define GUEST_TESTS_VK_UTIL_H

#include <stddef.h>
#include <stdint.h>

#include <vulkan/vulkan.h>

#include "common.h"

/* How long any single wait for the GPU may take before the test fails. */
#define VK_WAIT_SECONDS 60

struct vk {
    VkInstance instance;
    VkPhysicalDevice physical;
    VkPhysicalDeviceProperties props;
    VkPhysicalDeviceDriverProperties driver; /* zeroed below Vulkan 1.2 */
    VkPhysicalDeviceMemoryProperties memory;
    uint32_t queue_family;
    VkDevice device;
    VkQueue queue;
    VkCommandPool pool;
};

/* A buffer with its own memory; map is the persistent mapping, or NULL. */
struct vk_buffer {
    VkBuffer buffer;
    VkDeviceMemory memory;
    VkDeviceSize size;
    uint32_t memory_type;
    void *map;
};

const char *vk_result_text(VkResult result);

/* Fails the test unless result is VK_SUCCESS; what names the call. */
void vk_check(VkResult result, const char *what);

/* Creates the instance, lists every physical device (one info line each),
 * selects the Venus device (or fails), and creates a device with one queue
 * from the first family that has all of queue_flags, plus a command pool. */
void vk_open(struct vk *vk, VkQueueFlags queue_flags);
/* vk_open with these device extensions enabled (fails if one is missing). */
void vk_open_with(struct vk *vk, VkQueueFlags queue_flags, const char *const *extensions,
                  uint32_t extension_count);
void vk_close(struct vk *vk);

/* Is this physical device Mesa's Venus driver? Sets *why to the reason when
 * it is not. */
int vk_is_venus(const VkPhysicalDeviceProperties *props,
                const VkPhysicalDeviceDriverProperties *driver, const char **why);

/* The index of the first memory type allowed by type_bits that has all of
 * flags, or -1. */
int vk_find_memory_type(const struct vk *vk, uint32_t type_bits, VkMemoryPropertyFlags flags);

/* Text for memory property flags, e.g. "DEVICE_LOCAL|HOST_VISIBLE". */
const char *vk_memory_flags_text(VkMemoryPropertyFlags flags, char *buf, size_t len);

/* A buffer of size bytes in memory with all of flags (fails if there is no
 * such memory type); mapped persistently when flags has HOST_VISIBLE. */
void vk_buffer_create(struct vk *vk, struct vk_buffer *buf, VkDeviceSize size,
                      VkBufferUsageFlags usage, VkMemoryPropertyFlags flags);
void vk_buffer_destroy(struct vk *vk, struct vk_buffer *buf);

/* A colour attachment to render into and copy from: an image of width x
 * height in format (in whatever memory it accepts), its view, a render pass
 * of one subpass that ends with the image in TRANSFER_SRC_OPTIMAL, ready for
 * a copy, and a framebuffer. */
struct vk_target {
    VkImage image;
    VkDeviceMemory memory;
    VkImageView view;
    VkRenderPass pass;
    VkFramebuffer framebuffer;
};

void vk_target_create(struct vk *vk, struct vk_target *t, VkFormat format, uint32_t width,
                      uint32_t height, VkAttachmentLoadOp load);
void vk_target_destroy(struct vk *vk, struct vk_target *t);

VkShaderModule vk_shader(struct vk *vk, const uint32_t *code, size_t size);

/* A primary command buffer in the recording state. */
VkCommandBuffer vk_begin(struct vk *vk);

/* Ends, submits and waits (at most VK_WAIT_SECONDS) for cmd, then frees it.
 * Returns the seconds from submission to the end of the wait. */
double vk_submit_wait(struct vk *vk, VkCommandBuffer cmd, const char *what);

/* A monotonic clock in seconds. */
double vk_now(void);

#endif
