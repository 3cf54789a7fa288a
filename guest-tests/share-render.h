/* The frame share-buffer's exporter renders with Vulkan (share-render.c). */
#ifndef GUEST_TESTS_SHARE_RENDER_H
#define GUEST_TESTS_SHARE_RENDER_H

#include <stddef.h>
#include <stdint.h>

#define SHARE_FRAME_WIDTH 256

/* The colour of pixel `index` (row-major, RGBA8 as one little-endian word). */
uint32_t share_frame_pixel(uint32_t index, uint32_t seed);

/* Renders the frame for seed, size bytes, on the Venus device and copies it
 * to dst. */
void share_render_frame(uint32_t seed, size_t size, void *dst);

#endif
