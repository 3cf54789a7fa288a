/* probe: is the virtio-gpu device there, bound, and offering what we expect?
 *
 * usage: probe [KEY=VALUE...]
 *
 * Checks that the virtio_gpu driver is bound to a virtio device, that
 * /dev/dri/card0 exists, that the driver reports at least one scanout (and
 * that KMS shows one CRTC per scanout), and that every KEY=VALUE matches a
 * line "KEY : VALUE" of /sys/kernel/debug/dri/N/virtio-gpu-features.
 * Underscores in KEY stand for spaces: resource_uuid=yes, cap_sets=0.
 */
#include <ctype.h>
#include <dirent.h>
#include <fcntl.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <xf86drm.h>
#include <xf86drmMode.h>

#include "common.h"

const char *const test_name = "probe";

#define MAX_FEATURES 64

struct feature {
    char key[256];
    char value[256];
};

static struct feature features[MAX_FEATURES];
static int feature_count;

static char *trim(char *s)
{
    char *end;

    while (isspace((unsigned char)*s))
        s++;
    end = s + strlen(s);
    while (end > s && isspace((unsigned char)end[-1]))
        *--end = '\0';
    return s;
}

/* Name of the first virtio device the virtio_gpu driver is bound to. */
static int find_bound_device(char *name, size_t size)
{
    DIR *dir = opendir("/sys/bus/virtio/drivers/virtio_gpu");
    struct dirent *entry;
    int found = 0;

    if (!dir)
        return 0;
    while (!found && (entry = readdir(dir)) != NULL) {
        if (strncmp(entry->d_name, "virtio", 6) == 0 && isdigit((unsigned char)entry->d_name[6])) {
            snprintf(name, size, "%s", entry->d_name);
            found = 1;
        }
    }
    closedir(dir);
    return found;
}

/* Read "key : value" lines from the first dri/N/virtio-gpu-features. */
static int read_features(char *path, size_t size)
{
    DIR *dir = opendir("/sys/kernel/debug/dri");
    struct dirent *entry;
    FILE *file = NULL;
    char line[256];

    if (!dir)
        fail("no /sys/kernel/debug/dri (debugfs not mounted?)");
    while (!file && (entry = readdir(dir)) != NULL) {
        if (entry->d_name[0] == '.')
            continue;
        snprintf(path, size, "/sys/kernel/debug/dri/%s/virtio-gpu-features", entry->d_name);
        file = fopen(path, "r");
    }
    closedir(dir);
    if (!file)
        return 0;
    while (fgets(line, sizeof(line), file) && feature_count < MAX_FEATURES) {
        char *colon = strchr(line, ':');

        if (!colon)
            continue;
        *colon = '\0';
        snprintf(features[feature_count].key, sizeof(features[0].key), "%s", trim(line));
        snprintf(features[feature_count].value, sizeof(features[0].value), "%s", trim(colon + 1));
        feature_count++;
    }
    fclose(file);
    return 1;
}

static const char *feature(const char *key)
{
    for (int i = 0; i < feature_count; i++) {
        if (strcmp(features[i].key, key) == 0)
            return features[i].value;
    }
    return NULL;
}

static int count_crtcs(void)
{
    int fd = open("/dev/dri/card0", O_RDWR | O_CLOEXEC);
    drmModeRes *res;
    int count;

    if (fd < 0)
        fail("cannot open /dev/dri/card0: %m");
    res = drmModeGetResources(fd);
    if (!res)
        fail("drmModeGetResources on card0: %m");
    count = res->count_crtcs;
    drmModeFreeResources(res);
    close(fd);
    return count;
}

int main(int argc, char **argv)
{
    char device[256], path[512];
    struct stat st;
    const char *scanouts_text;
    long scanouts;
    int crtcs;

    if (!find_bound_device(device, sizeof(device)))
        fail("the virtio_gpu driver is not bound to any device");
    note("virtio_gpu is bound to %s", device);

    if (stat("/dev/dri/card0", &st) != 0 || !S_ISCHR(st.st_mode))
        fail("/dev/dri/card0 is missing or not a character device");

    if (!read_features(path, sizeof(path)))
        fail("no /sys/kernel/debug/dri/*/virtio-gpu-features");
    for (int i = 0; i < feature_count; i++)
        note("%s = %s", features[i].key, features[i].value);

    scanouts_text = feature("scanouts");
    if (!scanouts_text)
        fail("%s has no 'scanouts' line", path);
    scanouts = strtol(scanouts_text, NULL, 10);
    if (scanouts < 1)
        fail("the driver reports %ld scanouts", scanouts);
    crtcs = count_crtcs();
    if (crtcs != scanouts)
        fail("KMS shows %d CRTCs for %ld scanouts", crtcs, scanouts);

    for (int i = 1; i < argc; i++) {
        char key[64];
        const char *want = strchr(argv[i], '=');
        const char *got;

        if (!want || want == argv[i] || (size_t)(want - argv[i]) >= sizeof(key))
            fail("bad argument '%s' (want KEY=VALUE)", argv[i]);
        snprintf(key, sizeof(key), "%.*s", (int)(want - argv[i]), argv[i]);
        for (char *c = key; *c; c++) {
            if (*c == '_')
                *c = ' ';
        }
        want++;
        got = feature(key);
        if (!got)
            fail("feature '%s' is not listed in %s", key, path);
        if (strcmp(got, want) != 0)
            fail("feature '%s' is '%s', expected '%s'", key, got, want);
    }
    pass();
}
