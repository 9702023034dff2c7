/* SPDX-License-Identifier: MIT */
/*
 * pid -> memory cgroup -> limits.
 *
 * Where libcgroup is used, and where not:
 *  - The memory controller's mount point comes from libcgroup
 *    (cgroup_init + cgroup_get_subsys_mount_point): it reads the mount
 *    table for us and knows both a v1 "memory" hierarchy and a cgroup2
 *    mount that has the memory controller enabled.  statfs() on the mount
 *    then tells the two apart.
 *  - The v2 mount point when it does NOT carry the memory controller
 *    (hybrid hosts) has no libcgroup query (it answers per controller), so
 *    /proc/self/mountinfo is scanned for a "cgroup2" file system.
 *  - The process's paths are parsed from /proc/PID/cgroup directly: one
 *    read gives the v2 line and the v1 memory line together, whereas
 *    libcgroup 2.0's cgroup_get_current_controller_path() answers one
 *    controller at a time and returns an error for the controller-less
 *    "0::" line on a hybrid host.
 *  - Limits are two small sysfs files read directly; libcgroup's
 *    cgroup_get_cgroup() would load every file of every controller.
 *
 * libcgroup keeps global state and is not thread-safe: probe the layout
 * from the main thread.  Its logger is switched off (modules do not log).
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/statfs.h>
#include <unistd.h>

#include <libcgroup.h>

#include "cgroup/cgroup.h"
#include "util.h"

#ifndef CGROUP2_SUPER_MAGIC
#define CGROUP2_SUPER_MAGIC 0x63677270
#endif

#define CGROUP_UNLIMITED UINT64_MAX
/* v1 reports "no limit" as PAGE_COUNTER_MAX pages, a number near 2^63. */
#define CGROUP_V1_UNLIMITED_FLOOR (1ULL << 62)

struct cgroup_layout {
	char *v1_memory_mount; /* NULL if the memory controller is not on v1 */
	char *v2_mount;	       /* NULL if no cgroup2 is mounted */
	enum cgroup_version memory_version;
};

static char *memory_mount_from_libcgroup(void)
{
	char *mount = NULL;

	cgroup_set_logger(NULL, -1, NULL);
	if (cgroup_init() != 0)
		return NULL;
	if (cgroup_get_subsys_mount_point("memory", &mount) != 0)
		return NULL;
	return mount;
}

/* The first cgroup2 mount point in mountinfo, or NULL. */
static char *v2_mount_from_mountinfo(void)
{
	char *line = NULL, *found = NULL;
	size_t cap = 0;
	FILE *file;

	file = fopen("/proc/self/mountinfo", "re");
	if (!file)
		return NULL;
	while (!found && getline(&line, &cap, file) > 0) {
		char mount_point[PATH_MAX], fstype[64];
		const char *sep;

		/* id parent major:minor root mount-point options [optional...] - fstype ... */
		if (sscanf(line, "%*s %*s %*s %*s %4095s", mount_point) != 1)
			continue;
		sep = strstr(line, " - ");
		if (!sep || sscanf(sep + 3, "%63s", fstype) != 1)
			continue;
		if (!strcmp(fstype, "cgroup2"))
			found = strdup(mount_point);
	}
	free(line);
	fclose(file);
	return found;
}

static bool file_has_word(const char *path, const char *word)
{
	char buf[512], *save = NULL, *tok;

	if (uz_read_text(path, buf, sizeof(buf)) <= 0)
		return false;
	for (tok = strtok_r(buf, " \n", &save); tok; tok = strtok_r(NULL, " \n", &save))
		if (!strcmp(tok, word))
			return true;
	return false;
}

int cgroup_layout_probe(struct cgroup_layout **out)
{
	struct cgroup_layout *layout;
	char *memory_mount;
	struct statfs st;

	layout = calloc(1, sizeof(*layout));
	if (!layout)
		return -ENOMEM;
	layout->v2_mount = v2_mount_from_mountinfo();
	memory_mount = memory_mount_from_libcgroup();
	if (memory_mount && statfs(memory_mount, &st) == 0 && st.f_type != CGROUP2_SUPER_MAGIC) {
		layout->v1_memory_mount = memory_mount;
		memory_mount = NULL;
	}
	free(memory_mount);

	if (layout->v2_mount) {
		char path[PATH_MAX];

		snprintf(path, sizeof(path), "%s/cgroup.controllers", layout->v2_mount);
		if (file_has_word(path, "memory"))
			layout->memory_version = CGROUP_V2;
	}
	if (layout->memory_version == CGROUP_NONE && layout->v1_memory_mount)
		layout->memory_version = CGROUP_V1;
	*out = layout;
	return 0;
}

struct cgroup_layout *cgroup_layout_free(struct cgroup_layout *layout)
{
	if (!layout)
		return NULL;
	free(layout->v1_memory_mount);
	free(layout->v2_mount);
	free(layout);
	return NULL;
}

enum cgroup_version cgroup_layout_memory_version(const struct cgroup_layout *layout)
{
	return layout->memory_version;
}

const char *cgroup_layout_v1_memory_mount(const struct cgroup_layout *layout)
{
	return layout->v1_memory_mount;
}

const char *cgroup_layout_v2_mount(const struct cgroup_layout *layout)
{
	return layout->v2_mount;
}

static bool controllers_have_memory(const char *list, size_t len)
{
	const char *p = list, *end = list + len;

	while (p < end) {
		const char *comma = memchr(p, ',', (size_t)(end - p));
		size_t n = comma ? (size_t)(comma - p) : (size_t)(end - p);

		if (n == 6 && !memcmp(p, "memory", 6))
			return true;
		p += n + 1;
	}
	return false;
}

static int copy_path(char *dst, const char *src, size_t len)
{
	static const char deleted[] = " (deleted)";

	if (len >= sizeof(deleted) - 1 &&
	    !memcmp(src + len - (sizeof(deleted) - 1), deleted, sizeof(deleted) - 1))
		len -= sizeof(deleted) - 1;
	if (len == 0 || len >= CGROUP_PATH_MAX || src[0] != '/')
		return -EINVAL;
	memcpy(dst, src, len);
	dst[len] = '\0';
	return 0;
}

int cgroup_parse_proc(const char *text, char *v2_path, char *v1_memory_path)
{
	const char *line = text;
	int r;

	v2_path[0] = '\0';
	v1_memory_path[0] = '\0';
	while (*line) {
		const char *eol = strchrnul(line, '\n');
		const char *colon1 = memchr(line, ':', (size_t)(eol - line));
		const char *colon2 =
		    colon1 ? memchr(colon1 + 1, ':', (size_t)(eol - colon1 - 1)) : NULL;

		if (colon2) {
			const char *path = colon2 + 1;
			size_t path_len = (size_t)(eol - path);

			if (colon1 - line == 1 && line[0] == '0' && colon2 == colon1 + 1) {
				r = copy_path(v2_path, path, path_len);
				if (r < 0)
					return r;
			} else if (controllers_have_memory(colon1 + 1,
							   (size_t)(colon2 - colon1 - 1))) {
				r = copy_path(v1_memory_path, path, path_len);
				if (r < 0)
					return r;
			}
		}
		line = *eol ? eol + 1 : eol;
	}
	return 0;
}

/* Read one number file: "max" (v2) or a v1 near-2^63 value is unlimited. */
static int read_limit(const char *dir, const char *name, uint64_t *out)
{
	char path[PATH_MAX + 64], buf[64], *end;
	unsigned long long value;
	ssize_t n;

	snprintf(path, sizeof(path), "%s/%s", dir, name);
	n = uz_read_text(path, buf, sizeof(buf));
	if (n < 0)
		return (int)n;
	if (!strncmp(buf, "max", 3)) {
		*out = CGROUP_UNLIMITED;
		return 0;
	}
	errno = 0;
	value = strtoull(buf, &end, 10);
	if (errno || end == buf || (*end && *end != '\n'))
		return -EINVAL;
	*out = value >= CGROUP_V1_UNLIMITED_FLOOR ? CGROUP_UNLIMITED : value;
	return 0;
}

int cgroup_read_limits(const struct cgroup_layout *layout, const char *path,
		       struct cgroup_memory_limits *out)
{
	struct cgroup_memory_limits limits = {CGROUP_UNLIMITED, CGROUP_UNLIMITED};
	const char *mount, *high_name, *max_name;
	char dir[PATH_MAX];
	int n;

	switch (layout->memory_version) {
	case CGROUP_V2:
		mount = layout->v2_mount;
		high_name = "memory.high";
		max_name = "memory.max";
		break;
	case CGROUP_V1:
		mount = layout->v1_memory_mount;
		high_name = "memory.soft_limit_in_bytes";
		max_name = "memory.limit_in_bytes";
		break;
	default:
		return -ENOENT;
	}
	if (path[0] != '/' || strstr(path, "/../") || strstr(path, "/.."))
		return -EINVAL;
	n = snprintf(dir, sizeof(dir), "%s%s", mount, strcmp(path, "/") ? path : "");
	if (n < 0 || (size_t)n >= sizeof(dir))
		return -ENAMETOOLONG;
	if (access(dir, F_OK) < 0)
		return -errno;
	/* The root cgroup has no limit files: unlimited. */
	(void)read_limit(dir, high_name, &limits.high);
	(void)read_limit(dir, max_name, &limits.max);
	*out = limits;
	return 0;
}

int cgroup_of_pid(const struct cgroup_layout *layout, pid_t pid, struct cgroup_info *out)
{
	char proc_path[64], text[8192];
	struct cgroup_info *info;
	size_t used = 0;
	ssize_t n;
	int fd, r;

	snprintf(proc_path, sizeof(proc_path), "/proc/%d/cgroup", (int)pid);
	fd = open(proc_path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return errno == ENOENT ? -ESRCH : -errno;
	while ((n = read(fd, text + used, sizeof(text) - 1 - used)) > 0)
		used += (size_t)n;
	r = n < 0 ? -errno : 0;
	close(fd);
	if (r < 0)
		return r == -ENOENT ? -ESRCH : r; /* the process exited while we read */
	text[used] = '\0';

	info = calloc(1, sizeof(*info));
	if (!info)
		return -ENOMEM;
	r = cgroup_parse_proc(text, info->v2_path, info->v1_memory_path);
	if (r < 0)
		goto out_free;
	info->version = layout->memory_version;
	if (info->version == CGROUP_V2 && info->v2_path[0])
		strcpy(info->path, info->v2_path);
	else if (info->version == CGROUP_V1 && info->v1_memory_path[0])
		strcpy(info->path, info->v1_memory_path);
	else {
		r = -ENOENT;
		goto out_free;
	}
	r = cgroup_read_limits(layout, info->path, &info->limits);
	if (r < 0)
		goto out_free;
	*out = *info;
out_free:
	free(info);
	return r;
}
