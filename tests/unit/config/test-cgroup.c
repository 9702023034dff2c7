/* SPDX-License-Identifier: MIT */
/*
 * cgroup lookup on the host's real hierarchies.  For each hierarchy that
 * exists (v1 memory controller, v2 unified) the test creates a cgroup (and
 * a nested one on v1), sets memory limits, moves a forked child into it,
 * checks what cgroup_of_pid() reports, resolves a percentage policy
 * against the real limits, moves the child back and removes the cgroups.
 * The teardown kills the child and removes whatever is left, so a failed
 * assertion leaves nothing behind.
 *
 * Exit 77 only when the host has no cgroup hierarchy at all; a test for
 * one missing hierarchy is skipped and says which.  Needs root.
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "cgroup/cgroup.h"
#include "config/config.h"

#define MiB (1ULL << 20)

struct fixture {
	struct cgroup_layout *layout;
	pid_t child;
	char dirs[4][PATH_MAX + 16]; /* created cgroups, removed in reverse order */
	int n_dirs;
	char tmp[PATH_MAX];
};

static int setup(void **state)
{
	struct fixture *f = calloc(1, sizeof(*f));

	assert_int_equal(cgroup_layout_probe(&f->layout), 0);
	f->child = -1;
	*state = f;
	return 0;
}

static void rmdir_retry(const char *dir)
{
	struct timespec ts = {0, 10 * 1000 * 1000};

	/* A reaped task can take a moment to leave its cgroup. */
	for (int i = 0; i < 200; i++) {
		if (rmdir(dir) == 0 || errno == ENOENT)
			return;
		nanosleep(&ts, NULL);
	}
	fprintf(stderr, "test-cgroup: could not remove %s: %m\n", dir);
}

static int teardown(void **state)
{
	struct fixture *f = *state;

	if (f->child > 0) {
		kill(f->child, SIGKILL);
		waitpid(f->child, NULL, 0);
	}
	for (int i = f->n_dirs - 1; i >= 0; i--)
		rmdir_retry(f->dirs[i]);
	if (f->tmp[0]) {
		char cmd[PATH_MAX + 16];

		snprintf(cmd, sizeof(cmd), "rm -rf '%s'", f->tmp);
		if (system(cmd) != 0)
			fprintf(stderr, "test-cgroup: could not remove %s\n", f->tmp);
	}
	cgroup_layout_free(f->layout);
	free(f);
	return 0;
}

static void write_text(const char *dir, const char *file, const char *text)
{
	char path[PATH_MAX + 64];
	int fd;

	snprintf(path, sizeof(path), "%s/%s", dir, file);
	fd = open(path, O_WRONLY | O_CLOEXEC);
	if (fd < 0)
		fail_msg("open %s: %s", path, strerror(errno));
	if (write(fd, text, strlen(text)) != (ssize_t)strlen(text))
		fail_msg("write \"%s\" to %s: %s", text, path, strerror(errno));
	close(fd);
}

static void make_cgroup(struct fixture *f, const char *dir)
{
	if (mkdir(dir, 0755) < 0)
		fail_msg("mkdir %s: %s", dir, strerror(errno));
	snprintf(f->dirs[f->n_dirs++], sizeof(f->dirs[0]), "%s", dir);
}

static void start_child(struct fixture *f)
{
	f->child = fork();
	assert_true(f->child >= 0);
	if (f->child == 0) {
		for (;;)
			pause();
	}
}

static void move_child(struct fixture *f, const char *dir)
{
	char pid[32];

	snprintf(pid, sizeof(pid), "%d", (int)f->child);
	write_text(dir, "cgroup.procs", pid);
}

static void test_parse_proc(void **state)
{
	char v2[CGROUP_PATH_MAX], v1[CGROUP_PATH_MAX];

	/* hybrid: memory on v1, an empty-controller v2 line */
	assert_int_equal(cgroup_parse_proc("9:name=systemd:/\n"
					   "4:memory:/system.slice/redis.service\n"
					   "2:cpu,cpuacct:/x\n"
					   "0::/system.slice/redis.service\n",
					   v2, v1),
			 0);
	assert_string_equal(v2, "/system.slice/redis.service");
	assert_string_equal(v1, "/system.slice/redis.service");

	/* pure v2 */
	assert_int_equal(
	    cgroup_parse_proc("0::/user.slice/user-1000.slice/session-2.scope\n", v2, v1), 0);
	assert_string_equal(v2, "/user.slice/user-1000.slice/session-2.scope");
	assert_string_equal(v1, "");

	/* v1 only, memory combined with another controller, a removed cgroup */
	assert_int_equal(cgroup_parse_proc("5:blkio,memory:/gone (deleted)\n", v2, v1), 0);
	assert_string_equal(v2, "");
	assert_string_equal(v1, "/gone");

	/* "memoryx" is not memory */
	assert_int_equal(cgroup_parse_proc("3:memoryx:/a\n", v2, v1), 0);
	assert_string_equal(v1, "");

	assert_int_equal(cgroup_parse_proc("0::relative\n", v2, v1), -EINVAL);
}

static void test_self_and_gone(void **state)
{
	struct fixture *f = *state;
	struct cgroup_info info;
	pid_t pid;

	if (cgroup_layout_memory_version(f->layout) == CGROUP_NONE)
		skip();
	assert_int_equal(cgroup_of_pid(f->layout, getpid(), &info), 0);
	assert_int_equal(info.path[0], '/');
	assert_int_equal(info.version, cgroup_layout_memory_version(f->layout));

	pid = fork();
	assert_true(pid >= 0);
	if (pid == 0)
		_exit(0);
	assert_int_equal(waitpid(pid, NULL, 0), pid);
	assert_int_equal(cgroup_of_pid(f->layout, pid, &info), -ESRCH);
}

/* Our own path in a hierarchy, from /proc/self/cgroup. */
static void own_paths(char *v2, char *v1)
{
	char text[8192];
	ssize_t n;
	int fd = open("/proc/self/cgroup", O_RDONLY | O_CLOEXEC);

	assert_true(fd >= 0);
	n = read(fd, text, sizeof(text) - 1);
	close(fd);
	assert_true(n > 0);
	text[n] = '\0';
	assert_int_equal(cgroup_parse_proc(text, v2, v1), 0);
}

static void test_v1_memory(void **state)
{
	struct fixture *f = *state;
	const char *mount = cgroup_layout_v1_memory_mount(f->layout);
	char outer[PATH_MAX], inner[PATH_MAX + 16], name[64], want[128],
	    home[PATH_MAX + CGROUP_PATH_MAX];
	char v2_self[CGROUP_PATH_MAX], v1_self[CGROUP_PATH_MAX], err[1024], conf[PATH_MAX + 64];
	struct cgroup_memory_limits limits;
	struct uz_config *config;
	struct cgroup_info info;
	struct uz_policy policy;
	FILE *file;

	if (!mount) {
		printf(
		    "test-cgroup: no cgroup v1 memory hierarchy on this host: v1 test skipped\n");
		skip();
	}
	snprintf(name, sizeof(name), "uzswap-test-%d", (int)getpid());
	snprintf(outer, sizeof(outer), "%s/%s", mount, name);
	snprintf(inner, sizeof(inner), "%s/inner", outer);
	make_cgroup(f, outer);
	make_cgroup(f, inner);
	write_text(outer, "memory.limit_in_bytes", "536870912");
	write_text(outer, "memory.soft_limit_in_bytes", "268435456");
	write_text(inner, "memory.limit_in_bytes", "134217728");

	assert_int_equal(cgroup_read_limits(f->layout, "/uzswap-test-no-such", &limits), -ENOENT);

	start_child(f);
	move_child(f, inner);
	assert_int_equal(cgroup_of_pid(f->layout, f->child, &info), 0);
	snprintf(want, sizeof(want), "/%s/inner", name);
	assert_string_equal(info.v1_memory_path, want);
	if (cgroup_layout_memory_version(f->layout) == CGROUP_V1) {
		assert_int_equal(info.version, CGROUP_V1);
		assert_string_equal(info.path, want);
		assert_int_equal(info.limits.max, 128 * MiB);
		assert_true(info.limits.high == UINT64_MAX); /* inner sets no soft limit */
	}

	/* the outer cgroup's own limits */
	snprintf(want, sizeof(want), "/%s", name);
	assert_int_equal(cgroup_read_limits(f->layout, want, &limits), 0);
	if (cgroup_layout_memory_version(f->layout) == CGROUP_V1) {
		assert_int_equal(limits.max, 512 * MiB);
		assert_int_equal(limits.high, 256 * MiB);

		/* a file for the outer cgroup, a percentage resolved on the inner's limit */
		strcpy(f->tmp, "/tmp/uzswap-test-cgroup-XXXXXX");
		assert_non_null(mkdtemp(f->tmp));
		snprintf(conf, sizeof(conf), "%s/outer.conf", f->tmp);
		file = fopen(conf, "w");
		assert_non_null(file);
		fprintf(file, "[Match]\nCgroup=/%s\n[Limits]\nResidentMax=50%%\n", name);
		fclose(file);
		assert_int_equal(config_load(&config, NULL, f->tmp, err, sizeof(err)), 0);
		assert_int_equal(config_policy_for_cgroup(config, info.path, &info.limits, &policy),
				 0);
		assert_int_equal(policy.resident_max, 64 * MiB);
		config_free(config);
	}

	/* move it back home: it is matched again, to its old cgroup */
	own_paths(v2_self, v1_self);
	snprintf(home, sizeof(home), "%s%s", mount, strcmp(v1_self, "/") ? v1_self : "");
	move_child(f, home);
	assert_int_equal(cgroup_of_pid(f->layout, f->child, &info), 0);
	assert_string_equal(info.v1_memory_path, v1_self);
}

static void test_v2_unified(void **state)
{
	struct fixture *f = *state;
	const char *mount = cgroup_layout_v2_mount(f->layout);
	char dir[PATH_MAX], name[64], want[128], home[PATH_MAX + CGROUP_PATH_MAX];
	char v2_self[CGROUP_PATH_MAX], v1_self[CGROUP_PATH_MAX];
	struct cgroup_info info;

	if (!mount) {
		printf("test-cgroup: no cgroup v2 hierarchy on this host: v2 test skipped\n");
		skip();
	}
	own_paths(v2_self, v1_self);
	snprintf(name, sizeof(name), "uzswap-test-%d", (int)getpid());
	snprintf(dir, sizeof(dir), "%s/%s", mount, name);
	make_cgroup(f, dir);
	if (cgroup_layout_memory_version(f->layout) == CGROUP_V2) {
		write_text(dir, "memory.max", "268435456");
		write_text(dir, "memory.high", "201326592");
	}
	start_child(f);
	move_child(f, dir);
	assert_int_equal(cgroup_of_pid(f->layout, f->child, &info), 0);
	snprintf(want, sizeof(want), "/%s", name);
	assert_string_equal(info.v2_path, want);
	if (cgroup_layout_memory_version(f->layout) == CGROUP_V2) {
		assert_int_equal(info.version, CGROUP_V2);
		assert_string_equal(info.path, want);
		assert_int_equal(info.limits.max, 256 * MiB);
		assert_int_equal(info.limits.high, 192 * MiB);
	} else {
		/* hybrid host: the budget follows the v1 memory cgroup, unchanged */
		assert_int_equal(info.version, CGROUP_V1);
		assert_string_equal(info.path, v1_self);
	}
	snprintf(home, sizeof(home), "%s%s", mount, strcmp(v2_self, "/") ? v2_self : "");
	move_child(f, home);
	assert_int_equal(cgroup_of_pid(f->layout, f->child, &info), 0);
	assert_string_equal(info.v2_path, v2_self);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_parse_proc),
	    cmocka_unit_test_setup_teardown(test_self_and_gone, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_v1_memory, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_v2_unified, setup, teardown),
	};
	struct cgroup_layout *layout;

	if (geteuid() != 0) {
		printf("test-cgroup: needs root to create cgroups\n");
		return 77;
	}
	if (cgroup_layout_probe(&layout) < 0)
		return 1;
	if (!cgroup_layout_v1_memory_mount(layout) && !cgroup_layout_v2_mount(layout)) {
		printf(
		    "test-cgroup: neither a cgroup v1 memory hierarchy nor cgroup v2 is mounted\n");
		cgroup_layout_free(layout);
		return 77;
	}
	printf("test-cgroup: v1 memory at %s, v2 at %s, memory controller on %s\n",
	       cgroup_layout_v1_memory_mount(layout) ?: "(none)",
	       cgroup_layout_v2_mount(layout) ?: "(none)",
	       cgroup_layout_memory_version(layout) == CGROUP_V2   ? "v2"
	       : cgroup_layout_memory_version(layout) == CGROUP_V1 ? "v1"
								   : "none");
	cgroup_layout_free(layout);
	return cmocka_run_group_tests(tests, NULL, NULL);
}
