/* vk-info: is Mesa's Venus driver there, on a virtio-gpu device?
 *
 * usage: vk-info
 *
 * Lists every Vulkan physical device (name, type, driver ID, API version).
 * Passes only if one of them is Venus: its name contains "Venus" (Mesa names
 * it "Virtio-GPU Venus (<host device>)") and, for Vulkan 1.2 and later, its
 * driver ID is VK_DRIVER_ID_MESA_VENUS. Of that device it then prints the
 * memory heaps and types and the queue families, creates a logical device on
 * it, and requires a memory type that is HOST_VISIBLE and HOST_COHERENT (the
 * memory the other vk-* tests map) and a queue family with graphics and
 * compute.
 */
#include <string.h>

#include "vk-util.h"

const char *const test_name = "vk-info";

int main(int argc, char **argv)
{
    struct vk vk;
    VkQueueFamilyProperties families[16];
    uint32_t family_count = 16, extension_count = 0;
    char text[128];

    (void)argv;
    if (argc != 1)
        fail("no arguments expected (usage: vk-info)");
    vk_open(&vk, VK_QUEUE_GRAPHICS_BIT | VK_QUEUE_COMPUTE_BIT);

    note("API %u.%u.%u, driver version 0x%x, vendor 0x%04x, device 0x%04x",
         VK_API_VERSION_MAJOR(vk.props.apiVersion), VK_API_VERSION_MINOR(vk.props.apiVersion),
         VK_API_VERSION_PATCH(vk.props.apiVersion), vk.props.driverVersion, vk.props.vendorID,
         vk.props.deviceID);
    vk_check(vkEnumerateDeviceExtensionProperties(vk.physical, NULL, &extension_count, NULL),
             "vkEnumerateDeviceExtensionProperties");
    note("%u device extensions", extension_count);
    for (uint32_t i = 0; i < vk.memory.memoryHeapCount; i++)
        note("memory heap %u: %llu MiB%s", i,
             (unsigned long long)(vk.memory.memoryHeaps[i].size >> 20),
             vk.memory.memoryHeaps[i].flags & VK_MEMORY_HEAP_DEVICE_LOCAL_BIT ? ", device local"
                                                                               : "");
    for (uint32_t i = 0; i < vk.memory.memoryTypeCount; i++)
        note("memory type %u: heap %u, %s", i, vk.memory.memoryTypes[i].heapIndex,
             vk_memory_flags_text(vk.memory.memoryTypes[i].propertyFlags, text, sizeof(text)));
    vkGetPhysicalDeviceQueueFamilyProperties(vk.physical, &family_count, families);
    for (uint32_t i = 0; i < family_count; i++)
        note("queue family %u: %u queues,%s%s%s", i, families[i].queueCount,
             families[i].queueFlags & VK_QUEUE_GRAPHICS_BIT ? " graphics" : "",
             families[i].queueFlags & VK_QUEUE_COMPUTE_BIT ? " compute" : "",
             families[i].queueFlags & VK_QUEUE_TRANSFER_BIT ? " transfer" : "");
    note("logical device created on queue family %u", vk.queue_family);

    if (vk_find_memory_type(&vk, UINT32_MAX,
                            VK_MEMORY_PROPERTY_HOST_VISIBLE_BIT |
                                VK_MEMORY_PROPERTY_HOST_COHERENT_BIT) < 0)
        fail("the Venus device has no HOST_VISIBLE|HOST_COHERENT memory type");
    vk_close(&vk);
    pass();
}
