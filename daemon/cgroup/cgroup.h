/* SPDX-License-Identifier: MIT */
/*
 * Which cgroup a process belongs to, and what memory limits that cgroup
 * has.  uzswap budgets follow the cgroup that carries the memory
 * controller, which is the v2 (unified) hierarchy on a pure v2 host and the
 * v1 "memory" hierarchy on a legacy or hybrid host (the latter is this
 * project's test machine: v1 memory at /sys/fs/cgroup/memory, v2 without
 * the memory controller at /sys/fs/cgroup/unified).
 *
 * Use: probe the layout once at start (cgroup_layout_probe), then ask for
 * each client (cgroup_of_pid).  Paths are the ones /proc/PID/cgroup shows,
 * relative to the hierarchy root ("/system.slice/redis.service"); the
 * config matches on them.  Nothing here logs; errors are -errno.
 */
#pragma once

#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

enum cgroup_version {
	CGROUP_NONE = 0, /* no hierarchy carries the memory controller */
	CGROUP_V1 = 1,
	CGROUP_V2 = 2,
};

/* A limit the cgroup does not set is UINT64_MAX (UZ_UNLIMITED). */
struct cgroup_memory_limits {
	uint64_t high; /* v2 memory.high; v1 memory.soft_limit_in_bytes */
	uint64_t max;  /* v2 memory.max; v1 memory.limit_in_bytes */
};

struct cgroup_layout;

/*
 * Find the mount points (v1 memory controller, v2 unified hierarchy) and
 * decide which one carries the memory controller.  Returns 0 (also when
 * neither is mounted: cgroup_layout_memory_version() is then CGROUP_NONE)
 * or -ENOMEM.
 */
int cgroup_layout_probe(struct cgroup_layout **out);
struct cgroup_layout *cgroup_layout_free(struct cgroup_layout *layout);
enum cgroup_version cgroup_layout_memory_version(const struct cgroup_layout *layout);
/* The mount point of the v1 memory hierarchy / the v2 hierarchy, or NULL. */
const char *cgroup_layout_v1_memory_mount(const struct cgroup_layout *layout);
const char *cgroup_layout_v2_mount(const struct cgroup_layout *layout);

#define CGROUP_PATH_MAX 4096

struct cgroup_info {
	enum cgroup_version version;	      /* the hierarchy `path` is in */
	char path[CGROUP_PATH_MAX];	      /* the path the config matches on, e.g. "/a/b" */
	char v2_path[CGROUP_PATH_MAX];	      /* the "0::" line, "" if absent */
	char v1_memory_path[CGROUP_PATH_MAX]; /* the "memory" line, "" if absent */
	struct cgroup_memory_limits limits;   /* of `path`, from sysfs */
};

/*
 * Read /proc/PID/cgroup and the limits of the memory cgroup.  Returns 0,
 * -ESRCH when the process is gone, -ENOENT when the layout has no memory
 * hierarchy or the process is in none, or another -errno.  A limit file
 * that cannot be read (the root cgroup has none) reads as unlimited.
 */
int cgroup_of_pid(const struct cgroup_layout *layout, pid_t pid, struct cgroup_info *out);

/* The limits of one cgroup of the memory hierarchy, by path. */
int cgroup_read_limits(const struct cgroup_layout *layout, const char *path,
		       struct cgroup_memory_limits *out);

/*
 * Parse the text of /proc/PID/cgroup: copy the v2 path and the v1 memory
 * path into the buffers (each CGROUP_PATH_MAX bytes; "" when absent).
 * Exposed for tests.
 */
int cgroup_parse_proc(const char *text, char *v2_path, char *v1_memory_path);
