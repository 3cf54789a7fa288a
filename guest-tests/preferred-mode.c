/*
 * An LD_PRELOAD library for benchmarks: drmModeGetConnector() keeps only the connector's
 * preferred modes (the resolution the device asked for), so that a program that always takes
 * the largest mode on the list (glmark2-drm) runs at the same, explicit resolution on every
 * device. A connector without a preferred mode is left as it is.
 *
 *   LD_PRELOAD=target/guest-tests/preferred-mode.so glmark2-drm
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stddef.h>
#include <xf86drmMode.h>

drmModeConnectorPtr drmModeGetConnector(int fd, uint32_t connector_id)
{
    static drmModeConnectorPtr (*real)(int, uint32_t);
    if (!real)
        real = (drmModeConnectorPtr(*)(int, uint32_t))dlsym(RTLD_NEXT, "drmModeGetConnector");
    if (!real)
        return NULL;
    drmModeConnectorPtr c = real(fd, connector_id);
    if (!c)
        return NULL;
    int kept = 0;
    for (int i = 0; i < c->count_modes; i++) {
        if (c->modes[i].type & DRM_MODE_TYPE_PREFERRED)
            c->modes[kept++] = c->modes[i];
    }
    if (kept > 0)
        c->count_modes = kept;
    return c;
}
