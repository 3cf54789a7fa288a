/* Vulkan helpers shared by the vk-* guest tests; see vk-util.h. */
#include <string.h>
#include <time.h>

#include "vk-util.h"

const char *vk_result_text(VkResult result)
{
    switch (result) {
    case VK_SUCCESS: return "VK_SUCCESS";
    case VK_NOT_READY: return "VK_NOT_READY";
    case VK_TIMEOUT: return "VK_TIMEOUT";
    case VK_INCOMPLETE: return "VK_INCOMPLETE";
    case VK_ERROR_OUT_OF_HOST_MEMORY: return "VK_ERROR_OUT_OF_HOST_MEMORY";
    case VK_ERROR_OUT_OF_DEVICE_MEMORY: return "VK_ERROR_OUT_OF_DEVICE_MEMORY";
    case VK_ERROR_INITIALIZATION_FAILED: return "VK_ERROR_INITIALIZATION_FAILED";
    case VK_ERROR_DEVICE_LOST: return "VK_ERROR_DEVICE_LOST";
    case VK_ERROR_MEMORY_MAP_FAILED: return "VK_ERROR_MEMORY_MAP_FAILED";
    case VK_ERROR_LAYER_NOT_PRESENT: return "VK_ERROR_LAYER_NOT_PRESENT";
    case VK_ERROR_EXTENSION_NOT_PRESENT: return "VK_ERROR_EXTENSION_NOT_PRESENT";
    case VK_ERROR_FEATURE_NOT_PRESENT: return "VK_ERROR_FEATURE_NOT_PRESENT";
    case VK_ERROR_INCOMPATIBLE_DRIVER: return "VK_ERROR_INCOMPATIBLE_DRIVER";
    case VK_ERROR_TOO_MANY_OBJECTS: return "VK_ERROR_TOO_MANY_OBJECTS";
    case VK_ERROR_FORMAT_NOT_SUPPORTED: return "VK_ERROR_FORMAT_NOT_SUPPORTED";
    case VK_ERROR_FRAGMENTED_POOL: return "VK_ERROR_FRAGMENTED_POOL";
    case VK_ERROR_OUT_OF_POOL_MEMORY: return "VK_ERROR_OUT_OF_POOL_MEMORY";
    case VK_ERROR_INVALID_EXTERNAL_HANDLE: return "VK_ERROR_INVALID_EXTERNAL_HANDLE";
    case VK_ERROR_UNKNOWN: return "VK_ERROR_UNKNOWN";
    default: return "unknown VkResult";
    }
}

void vk_check(VkResult result, const char *what)
{
    if (result != VK_SUCCESS)
        fail("%s: %s (%d)", what, vk_result_text(result), result);
}

double vk_now(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

int vk_is_venus(const VkPhysicalDeviceProperties *props,
                const VkPhysicalDeviceDriverProperties *driver, const char **why)
{
    if (!strstr(props->deviceName, "Venus")) {
        *why = "name without \"Venus\"";
        return 0;
    }
    if (props->apiVersion >= VK_API_VERSION_1_2 && driver->driverID != VK_DRIVER_ID_MESA_VENUS) {
        *why = "driver ID is not VK_DRIVER_ID_MESA_VENUS";
        return 0;
    }
    *why = NULL;
    return 1;
}

static const char *device_type_text(VkPhysicalDeviceType type)
{
    switch (type) {
    case VK_PHYSICAL_DEVICE_TYPE_INTEGRATED_GPU: return "integrated GPU";
    case VK_PHYSICAL_DEVICE_TYPE_DISCRETE_GPU: return "discrete GPU";
    case VK_PHYSICAL_DEVICE_TYPE_VIRTUAL_GPU: return "virtual GPU";
    case VK_PHYSICAL_DEVICE_TYPE_CPU: return "CPU";
    default: return "other";
    }
}

/* Properties of one physical device; the driver properties only from 1.2. */
static void device_properties(VkPhysicalDevice dev, VkPhysicalDeviceProperties *props,
                              VkPhysicalDeviceDriverProperties *driver)
{
    memset(driver, 0, sizeof(*driver));
    vkGetPhysicalDeviceProperties(dev, props);
    if (props->apiVersion >= VK_API_VERSION_1_2) {
        VkPhysicalDeviceProperties2 props2 = {
            .sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_PROPERTIES_2,
            .pNext = driver,
        };

        driver->sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_DRIVER_PROPERTIES;
        vkGetPhysicalDeviceProperties2(dev, &props2);
    }
}

static void select_venus(struct vk *vk)
{
    VkPhysicalDevice devices[16];
    uint32_t count = 16;
    int found = -1;
    VkResult result = vkEnumeratePhysicalDevices(vk->instance, &count, devices);

    if (result != VK_INCOMPLETE)
        vk_check(result, "vkEnumeratePhysicalDevices");
    if (count == 0)
        fail("no Vulkan physical device at all");
    for (uint32_t i = 0; i < count; i++) {
        VkPhysicalDeviceProperties props;
        VkPhysicalDeviceDriverProperties driver;
        const char *why;

        device_properties(devices[i], &props, &driver);
        note("device %u: %s (%s, driver ID %d, API %u.%u.%u)", i, props.deviceName,
             device_type_text(props.deviceType), driver.driverID,
             VK_API_VERSION_MAJOR(props.apiVersion), VK_API_VERSION_MINOR(props.apiVersion),
             VK_API_VERSION_PATCH(props.apiVersion));
        if (vk_is_venus(&props, &driver, &why)) {
            if (found < 0) {
                found = (int)i;
                vk->physical = devices[i];
                vk->props = props;
                vk->driver = driver;
            }
        }
    }
    if (found < 0)
        fail("no Venus device among the %u physical devices (virtio-gpu without Venus, or "
             "Mesa's virtio ICD did not load)", count);
    note("using device %d: %s", found, vk->props.deviceName);
    if (vk->driver.driverID)
        note("driver: %s, %s", vk->driver.driverName, vk->driver.driverInfo);
}

void vk_open(struct vk *vk, VkQueueFlags queue_flags)
{
    vk_open_with(vk, queue_flags, NULL, 0);
}

void vk_open_with(struct vk *vk, VkQueueFlags queue_flags, const char *const *extensions,
                  uint32_t extension_count)
{
    VkApplicationInfo app = {
        .sType = VK_STRUCTURE_TYPE_APPLICATION_INFO,
        .pApplicationName = test_name,
        .apiVersion = VK_API_VERSION_1_2,
    };
    VkInstanceCreateInfo instance_info = {
        .sType = VK_STRUCTURE_TYPE_INSTANCE_CREATE_INFO,
        .pApplicationInfo = &app,
    };
    VkQueueFamilyProperties families[16];
    uint32_t family_count = 16;
    float priority = 1.0f;

    memset(vk, 0, sizeof(*vk));
    vk_check(vkCreateInstance(&instance_info, NULL, &vk->instance), "vkCreateInstance");
    select_venus(vk);
    vkGetPhysicalDeviceMemoryProperties(vk->physical, &vk->memory);

    vkGetPhysicalDeviceQueueFamilyProperties(vk->physical, &family_count, families);
    vk->queue_family = UINT32_MAX;
    for (uint32_t i = 0; i < family_count; i++) {
        if ((families[i].queueFlags & queue_flags) == queue_flags) {
            vk->queue_family = i;
            break;
        }
    }
    if (vk->queue_family == UINT32_MAX)
        fail("the Venus device has no queue family with flags 0x%x", queue_flags);

    VkDeviceQueueCreateInfo queue_info = {
        .sType = VK_STRUCTURE_TYPE_DEVICE_QUEUE_CREATE_INFO,
        .queueFamilyIndex = vk->queue_family,
        .queueCount = 1,
        .pQueuePriorities = &priority,
    };
    VkDeviceCreateInfo device_info = {
        .sType = VK_STRUCTURE_TYPE_DEVICE_CREATE_INFO,
        .queueCreateInfoCount = 1,
        .pQueueCreateInfos = &queue_info,
        .enabledExtensionCount = extension_count,
        .ppEnabledExtensionNames = extensions,
    };
    vk_check(vkCreateDevice(vk->physical, &device_info, NULL, &vk->device), "vkCreateDevice");
    vkGetDeviceQueue(vk->device, vk->queue_family, 0, &vk->queue);

    VkCommandPoolCreateInfo pool_info = {
        .sType = VK_STRUCTURE_TYPE_COMMAND_POOL_CREATE_INFO,
        .flags = VK_COMMAND_POOL_CREATE_TRANSIENT_BIT,
        .queueFamilyIndex = vk->queue_family,
    };
    vk_check(vkCreateCommandPool(vk->device, &pool_info, NULL, &vk->pool), "vkCreateCommandPool");
}

void vk_close(struct vk *vk)
{
    vk_check(vkDeviceWaitIdle(vk->device), "vkDeviceWaitIdle");
    vkDestroyCommandPool(vk->device, vk->pool, NULL);
    vkDestroyDevice(vk->device, NULL);
    vkDestroyInstance(vk->instance, NULL);
}

int vk_find_memory_type(const struct vk *vk, uint32_t type_bits, VkMemoryPropertyFlags flags)
{
    for (uint32_t i = 0; i < vk->memory.memoryTypeCount; i++) {
        if ((type_bits & (1u << i)) && (vk->memory.memoryTypes[i].propertyFlags & flags) == flags)
            return (int)i;
    }
    return -1;
}

const char *vk_memory_flags_text(VkMemoryPropertyFlags flags, char *buf, size_t len)
{
    static const struct {
        VkMemoryPropertyFlags flag;
        const char *name;
    } names[] = {
        { VK_MEMORY_PROPERTY_DEVICE_LOCAL_BIT, "DEVICE_LOCAL" },
        { VK_MEMORY_PROPERTY_HOST_VISIBLE_BIT, "HOST_VISIBLE" },
        { VK_MEMORY_PROPERTY_HOST_COHERENT_BIT, "HOST_COHERENT" },
        { VK_MEMORY_PROPERTY_HOST_CACHED_BIT, "HOST_CACHED" },
        { VK_MEMORY_PROPERTY_LAZILY_ALLOCATED_BIT, "LAZILY_ALLOCATED" },
        { VK_MEMORY_PROPERTY_PROTECTED_BIT, "PROTECTED" },
    };
    size_t used = 0;

    buf[0] = '\0';
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
        if (flags & names[i].flag)
            used += snprintf(buf + used, used < len ? len - used : 0, "%s%s", used ? "|" : "",
                             names[i].name);
    }
    if (used == 0)
        snprintf(buf, len, "none");
    return buf;
}

void vk_buffer_create(struct vk *vk, struct vk_buffer *buf, VkDeviceSize size,
                      VkBufferUsageFlags usage, VkMemoryPropertyFlags flags)
{
    VkBufferCreateInfo info = {
        .sType = VK_STRUCTURE_TYPE_BUFFER_CREATE_INFO,
        .size = size,
        .usage = usage,
        .sharingMode = VK_SHARING_MODE_EXCLUSIVE,
    };
    VkMemoryRequirements req;
    int type;
    char text[128];

    memset(buf, 0, sizeof(*buf));
    buf->size = size;
    vk_check(vkCreateBuffer(vk->device, &info, NULL, &buf->buffer), "vkCreateBuffer");
    vkGetBufferMemoryRequirements(vk->device, buf->buffer, &req);
    type = vk_find_memory_type(vk, req.memoryTypeBits, flags);
    if (type < 0)
        fail("no memory type with %s for a buffer (allowed types 0x%x)",
             vk_memory_flags_text(flags, text, sizeof(text)), req.memoryTypeBits);
    buf->memory_type = (uint32_t)type;

    VkMemoryAllocateInfo alloc = {
        .sType = VK_STRUCTURE_TYPE_MEMORY_ALLOCATE_INFO,
        .allocationSize = req.size,
        .memoryTypeIndex = buf->memory_type,
    };
    vk_check(vkAllocateMemory(vk->device, &alloc, NULL, &buf->memory), "vkAllocateMemory");
    vk_check(vkBindBufferMemory(vk->device, buf->buffer, buf->memory, 0), "vkBindBufferMemory");
    if (flags & VK_MEMORY_PROPERTY_HOST_VISIBLE_BIT)
        vk_check(vkMapMemory(vk->device, buf->memory, 0, VK_WHOLE_SIZE, 0, &buf->map),
                 "vkMapMemory");
}

void vk_buffer_destroy(struct vk *vk, struct vk_buffer *buf)
{
    if (buf->map)
        vkUnmapMemory(vk->device, buf->memory);
    vkDestroyBuffer(vk->device, buf->buffer, NULL);
    vkFreeMemory(vk->device, buf->memory, NULL);
    memset(buf, 0, sizeof(*buf));
}

void vk_target_create(struct vk *vk, struct vk_target *t, VkFormat format, uint32_t width,
                      uint32_t height, VkAttachmentLoadOp load)
{
    VkImageCreateInfo image_info = {
        .sType = VK_STRUCTURE_TYPE_IMAGE_CREATE_INFO,
        .imageType = VK_IMAGE_TYPE_2D,
        .format = format,
        .extent = { width, height, 1 },
        .mipLevels = 1,
        .arrayLayers = 1,
        .samples = VK_SAMPLE_COUNT_1_BIT,
        .tiling = VK_IMAGE_TILING_OPTIMAL,
        .usage = VK_IMAGE_USAGE_COLOR_ATTACHMENT_BIT | VK_IMAGE_USAGE_TRANSFER_SRC_BIT,
        .sharingMode = VK_SHARING_MODE_EXCLUSIVE,
        .initialLayout = VK_IMAGE_LAYOUT_UNDEFINED,
    };
    VkMemoryRequirements req;
    int type;

    memset(t, 0, sizeof(*t));
    vk_check(vkCreateImage(vk->device, &image_info, NULL, &t->image), "vkCreateImage");
    vkGetImageMemoryRequirements(vk->device, t->image, &req);
    type = vk_find_memory_type(vk, req.memoryTypeBits, VK_MEMORY_PROPERTY_DEVICE_LOCAL_BIT);
    if (type < 0)
        type = vk_find_memory_type(vk, req.memoryTypeBits, 0);
    if (type < 0)
        fail("no memory type for the image (allowed types 0x%x)", req.memoryTypeBits);
    VkMemoryAllocateInfo alloc = {
        .sType = VK_STRUCTURE_TYPE_MEMORY_ALLOCATE_INFO,
        .allocationSize = req.size,
        .memoryTypeIndex = (uint32_t)type,
    };
    vk_check(vkAllocateMemory(vk->device, &alloc, NULL, &t->memory), "vkAllocateMemory");
    vk_check(vkBindImageMemory(vk->device, t->image, t->memory, 0), "vkBindImageMemory");
    VkImageViewCreateInfo view_info = {
        .sType = VK_STRUCTURE_TYPE_IMAGE_VIEW_CREATE_INFO,
        .image = t->image,
        .viewType = VK_IMAGE_VIEW_TYPE_2D,
        .format = format,
        .subresourceRange = { VK_IMAGE_ASPECT_COLOR_BIT, 0, 1, 0, 1 },
    };
    vk_check(vkCreateImageView(vk->device, &view_info, NULL, &t->view), "vkCreateImageView");

    VkAttachmentDescription attachment = {
        .format = format,
        .samples = VK_SAMPLE_COUNT_1_BIT,
        .loadOp = load,
        .storeOp = VK_ATTACHMENT_STORE_OP_STORE,
        .stencilLoadOp = VK_ATTACHMENT_LOAD_OP_DONT_CARE,
        .stencilStoreOp = VK_ATTACHMENT_STORE_OP_DONT_CARE,
        .initialLayout = VK_IMAGE_LAYOUT_UNDEFINED,
        .finalLayout = VK_IMAGE_LAYOUT_TRANSFER_SRC_OPTIMAL,
    };
    VkAttachmentReference colour_ref = { 0, VK_IMAGE_LAYOUT_COLOR_ATTACHMENT_OPTIMAL };
    VkSubpassDescription subpass = {
        .pipelineBindPoint = VK_PIPELINE_BIND_POINT_GRAPHICS,
        .colorAttachmentCount = 1,
        .pColorAttachments = &colour_ref,
    };
    /* The copy after the render pass reads what the subpass wrote. */
    VkSubpassDependency dependency = {
        .srcSubpass = 0,
        .dstSubpass = VK_SUBPASS_EXTERNAL,
        .srcStageMask = VK_PIPELINE_STAGE_COLOR_ATTACHMENT_OUTPUT_BIT,
        .dstStageMask = VK_PIPELINE_STAGE_TRANSFER_BIT,
        .srcAccessMask = VK_ACCESS_COLOR_ATTACHMENT_WRITE_BIT,
        .dstAccessMask = VK_ACCESS_TRANSFER_READ_BIT,
    };
    VkRenderPassCreateInfo pass_info = {
        .sType = VK_STRUCTURE_TYPE_RENDER_PASS_CREATE_INFO,
        .attachmentCount = 1,
        .pAttachments = &attachment,
        .subpassCount = 1,
        .pSubpasses = &subpass,
        .dependencyCount = 1,
        .pDependencies = &dependency,
    };
    vk_check(vkCreateRenderPass(vk->device, &pass_info, NULL, &t->pass), "vkCreateRenderPass");
    VkFramebufferCreateInfo framebuffer_info = {
        .sType = VK_STRUCTURE_TYPE_FRAMEBUFFER_CREATE_INFO,
        .renderPass = t->pass,
        .attachmentCount = 1,
        .pAttachments = &t->view,
        .width = width,
        .height = height,
        .layers = 1,
    };
    vk_check(vkCreateFramebuffer(vk->device, &framebuffer_info, NULL, &t->framebuffer),
             "vkCreateFramebuffer");
}

void vk_target_destroy(struct vk *vk, struct vk_target *t)
{
    vkDestroyFramebuffer(vk->device, t->framebuffer, NULL);
    vkDestroyRenderPass(vk->device, t->pass, NULL);
    vkDestroyImageView(vk->device, t->view, NULL);
    vkDestroyImage(vk->device, t->image, NULL);
    vkFreeMemory(vk->device, t->memory, NULL);
    memset(t, 0, sizeof(*t));
}

VkShaderModule vk_shader(struct vk *vk, const uint32_t *code, size_t size)
{
    VkShaderModuleCreateInfo info = {
        .sType = VK_STRUCTURE_TYPE_SHADER_MODULE_CREATE_INFO,
        .codeSize = size,
        .pCode = code,
    };
    VkShaderModule module;

    vk_check(vkCreateShaderModule(vk->device, &info, NULL, &module), "vkCreateShaderModule");
    return module;
}

VkCommandBuffer vk_begin(struct vk *vk)
{
    VkCommandBufferAllocateInfo alloc = {
        .sType = VK_STRUCTURE_TYPE_COMMAND_BUFFER_ALLOCATE_INFO,
        .commandPool = vk->pool,
        .level = VK_COMMAND_BUFFER_LEVEL_PRIMARY,
        .commandBufferCount = 1,
    };
    VkCommandBufferBeginInfo begin = {
        .sType = VK_STRUCTURE_TYPE_COMMAND_BUFFER_BEGIN_INFO,
        .flags = VK_COMMAND_BUFFER_USAGE_ONE_TIME_SUBMIT_BIT,
    };
    VkCommandBuffer cmd;

    vk_check(vkAllocateCommandBuffers(vk->device, &alloc, &cmd), "vkAllocateCommandBuffers");
    vk_check(vkBeginCommandBuffer(cmd, &begin), "vkBeginCommandBuffer");
    return cmd;
}

double vk_submit_wait(struct vk *vk, VkCommandBuffer cmd, const char *what)
{
    VkFenceCreateInfo fence_info = { .sType = VK_STRUCTURE_TYPE_FENCE_CREATE_INFO };
    VkSubmitInfo submit = {
        .sType = VK_STRUCTURE_TYPE_SUBMIT_INFO,
        .commandBufferCount = 1,
        .pCommandBuffers = &cmd,
    };
    VkFence fence;
    VkResult result;
    double start;

    vk_check(vkEndCommandBuffer(cmd), "vkEndCommandBuffer");
    vk_check(vkCreateFence(vk->device, &fence_info, NULL, &fence), "vkCreateFence");
    start = vk_now();
    vk_check(vkQueueSubmit(vk->queue, 1, &submit, fence), "vkQueueSubmit");
    result = vkWaitForFences(vk->device, 1, &fence, VK_TRUE, VK_WAIT_SECONDS * 1000000000ull);
    if (result == VK_TIMEOUT)
        fail("%s: the GPU did not finish within %d s", what, VK_WAIT_SECONDS);
    vk_check(result, "vkWaitForFences");
    start = vk_now() - start;
    vkDestroyFence(vk->device, fence, NULL);
    vkFreeCommandBuffers(vk->device, vk->pool, 1, &cmd);
    return start;
}
