/* SPDX-License-Identifier: MIT */
/*
 * Unit tests of the config parser: built-in defaults, every key of the
 * main file, sizes and percentages, the error messages (file:line: key:
 * problem), and policy resolution over nested cgroup.d files.  Each test
 * writes its files into a fresh temporary directory.
 */
#include <errno.h>
#include <limits.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <syslog.h>
#include <unistd.h>

#include <cmocka.h>

#include <config.h> /* the build's UZSWAP_RUNDIR, UZSWAP_STATEDIR */

#include "config/config.h"

#define MiB (1ULL << 20)
#define GiB (1ULL << 30)

struct fixture {
	char dir[PATH_MAX];
	char main_path[PATH_MAX];
	char cgroup_dir[PATH_MAX];
	char err[1024];
};

static int setup(void **state)
{
	struct fixture *f = calloc(1, sizeof(*f));

	strcpy(f->dir, "/tmp/uzswap-test-config-XXXXXX");
	assert_non_null(mkdtemp(f->dir));
	snprintf(f->main_path, sizeof(f->main_path), "%s/uzswapd.conf", f->dir);
	snprintf(f->cgroup_dir, sizeof(f->cgroup_dir), "%s/cgroup.d", f->dir);
	assert_int_equal(mkdir(f->cgroup_dir, 0755), 0);
	*state = f;
	return 0;
}

static int teardown(void **state)
{
	struct fixture *f = *state;
	char cmd[PATH_MAX + 16];

	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", f->dir);
	assert_int_equal(system(cmd), 0);
	free(f);
	return 0;
}

static void write_file(const char *path, const char *text)
{
	FILE *file = fopen(path, "w");

	assert_non_null(file);
	fputs(text, file);
	assert_int_equal(fclose(file), 0);
}

static void write_cgroup_file(struct fixture *f, const char *name, const char *text)
{
	char path[PATH_MAX + 64];

	snprintf(path, sizeof(path), "%s/%s", f->cgroup_dir, name);
	write_file(path, text);
}

static struct uz_config *load_ok(struct fixture *f)
{
	struct uz_config *config = NULL;
	int r = config_load(&config, f->main_path, f->cgroup_dir, f->err, sizeof(f->err));

	if (r < 0)
		fail_msg("config_load: %d: %s", r, f->err);
	return config;
}

/* Load must fail with exactly this message (after "DIR/"). */
static void load_fails(struct fixture *f, const char *expected)
{
	struct uz_config *config = (struct uz_config *)0x1;
	char want[3 * PATH_MAX];

	assert_int_equal(config_load(&config, f->main_path, f->cgroup_dir, f->err, sizeof(f->err)),
			 -EINVAL);
	assert_ptr_equal(config, (struct uz_config *)0x1); /* out untouched on failure */
	snprintf(want, sizeof(want), "%s/%s", f->dir, expected);
	assert_string_equal(f->err, want);
}

static void test_defaults_without_files(void **state)
{
	struct fixture *f = *state;
	const struct config_daemon *d;
	struct uz_config *config;
	struct uz_policy policy;

	/* neither file exists: built-in defaults */
	assert_int_equal(config_load(&config, "/nonexistent/uzswapd.conf", "/nonexistent/cgroup.d",
				     f->err, sizeof(f->err)),
			 0);
	d = config_daemon(config);
	assert_string_equal(d->socket_path, UZSWAP_RUNDIR "/uzswapd.sock");
	assert_string_equal(d->control_socket_path, UZSWAP_RUNDIR "/control.sock");
	assert_false(d->control_group_set);
	assert_int_equal(d->fault_threads, 2);
	assert_int_equal(d->log_level, LOG_INFO);
	assert_int_equal(d->max_clients, 1024);
	assert_int_equal(d->max_clients_per_user, 256);
	assert_int_equal(d->max_regions_per_client, 65536);
	assert_int_equal(d->accept_threshold_percent, 90);
	assert_int_equal(d->poor_threshold, 3584);
	assert_int_equal(d->poor_policy, UZ_POOR_KEEP_RAW);
	assert_int_equal(d->swap_size, GiB);
	config_set_memory_total(config, 10 * GiB);
	assert_int_equal(config_daemon(config)->pool_max_size, 2 * GiB); /* 20% */
	assert_int_equal(config_cgroup_file_count(config), 0);

	assert_int_equal(config_policy_for_cgroup(config, "/any/thing", NULL, &policy), 0);
	assert_int_equal(policy.resident_max, 64 * MiB);
	assert_int_equal(policy.resident_low, 64 * MiB / 100 * 90 & ~4095ULL);
	assert_true(policy.pool_max == UZ_UNLIMITED);
	assert_true(policy.swap_max == UZ_UNLIMITED);
	assert_true(policy.writeback);
	assert_int_equal(policy.algo, COMPRESSOR_LZ4);
	assert_int_equal(policy.fault_around_max, UZ_DEFAULT_FAULT_AROUND);
	config_free(config);

	/* NULL paths, and config_new_default, are the same */
	assert_int_equal(config_load(&config, NULL, NULL, f->err, sizeof(f->err)), 0);
	config_free(config);
	assert_int_equal(config_new_default(&config), 0);
	assert_string_equal(config_daemon(config)->swap_file, UZSWAP_STATEDIR "/swapfile");
	config_free(config);
}

static void test_empty_files(void **state)
{
	struct fixture *f = *state;
	struct uz_config *config;

	write_file(f->main_path, "");
	config = load_ok(f);
	assert_int_equal(config_daemon(config)->fault_threads, 2);
	config_free(config);

	write_file(f->main_path, "# only a comment\n\n; another\n");
	config = load_ok(f);
	config_free(config);

	/* an empty cgroup.d file has no Cgroup= */
	write_cgroup_file(f, "empty.conf", "");
	load_fails(
	    f, "cgroup.d/empty.conf: Cgroup: missing (every cgroup.d file needs [Match] Cgroup=)");
}

static void test_main_file_all_keys(void **state)
{
	struct fixture *f = *state;
	const struct config_daemon *d;
	struct uz_config *config;
	struct uz_policy policy;

	write_file(f->main_path, "[Daemon]\n"
				 "Socket=/run/x/client.sock\n"
				 "ControlSocket=/run/x/control.sock\n"
				 "ControlGroup=users\n"
				 "FaultThreads=4\n"
				 "LogLevel=debug\n"
				 "MaxClients=10\n"
				 "MaxClientsPerUser=5\n"
				 "MaxRegionsPerClient=100\n"
				 "\n"
				 "[Pool]\n"
				 "MaxSize=512M\n"
				 "AcceptThreshold=80%\n"
				 "PoorThreshold=3K\n"
				 "PoorPolicy=reject\n"
				 "[Swap]\n"
				 "File=/var/tmp/swap\n"
				 "Size=2G\n"
				 "[Defaults]\n"
				 "ResidentMax=128M ; inline comment\n"
				 "ResidentLow=100M\n"
				 "PoolMax=infinity\n"
				 "SwapMax=1G\n"
				 "Writeback=no\n"
				 "Compressor=zstd:3\n");
	config = load_ok(f);
	d = config_daemon(config);
	assert_string_equal(d->socket_path, "/run/x/client.sock");
	assert_string_equal(d->control_socket_path, "/run/x/control.sock");
	assert_true(d->control_group_set);
	assert_int_equal(d->control_gid, 100);
	assert_int_equal(d->fault_threads, 4);
	assert_int_equal(d->log_level, LOG_DEBUG);
	assert_int_equal(d->max_clients, 10);
	assert_int_equal(d->max_clients_per_user, 5);
	assert_int_equal(d->max_regions_per_client, 100);
	assert_int_equal(d->pool_max_size, 512 * MiB);
	assert_int_equal(d->accept_threshold_percent, 80);
	assert_int_equal(d->poor_threshold, 3072);
	assert_int_equal(d->poor_policy, UZ_POOR_REJECT);
	assert_string_equal(d->swap_file, "/var/tmp/swap");
	assert_int_equal(d->swap_size, 2 * GiB);

	assert_int_equal(config_policy_for_cgroup(config, "/", NULL, &policy), 0);
	assert_int_equal(policy.resident_max, 128 * MiB);
	assert_int_equal(policy.resident_low, 100 * MiB);
	assert_true(policy.pool_max == UZ_UNLIMITED);
	assert_int_equal(policy.swap_max, GiB);
	assert_false(policy.writeback);
	assert_int_equal(policy.algo, COMPRESSOR_ZSTD);
	assert_int_equal(policy.level, 3);
	assert_int_equal(policy.poor_threshold, 3072);
	assert_int_equal(policy.poor_policy, UZ_POOR_REJECT);

	/* the dump reads back as the same configuration */
	{
		char dump_path[PATH_MAX + 16];
		struct uz_config *again;
		FILE *out;

		snprintf(dump_path, sizeof(dump_path), "%s/dump.conf", f->dir);
		out = fopen(dump_path, "w");
		assert_non_null(out);
		assert_int_equal(config_dump(config, out), 0);
		fclose(out);
		assert_int_equal(config_load(&again, dump_path, NULL, f->err, sizeof(f->err)), 0);
		assert_int_equal(config_daemon(again)->pool_max_size, 512 * MiB);
		assert_int_equal(config_daemon(again)->poor_threshold, 3072);
		assert_int_equal(config_policy_for_cgroup(again, "/", NULL, &policy), 0);
		assert_int_equal(policy.level, 3);
		assert_int_equal(policy.swap_max, GiB);
		config_free(again);
	}
	config_free(config);
}

static void test_sizes(void **state)
{
	static const struct {
		const char *text;
		int r;
		uint64_t value;
	} cases[] = {
	    {"0", 0, 0},
	    {"4096", 0, 4096},
	    {"4K", 0, 4096},
	    {"4k", 0, 4096},
	    {"512M", 0, 512 * MiB},
	    {"3G", 0, 3 * GiB},
	    {"2T", 0, 2ULL << 40},
	    {"infinity", 0, UINT64_MAX},
	    {"unlimited", 0, UINT64_MAX},
	    {"Infinity", 0, UINT64_MAX},
	    {"12Q", -EINVAL, 0},
	    {"", -EINVAL, 0},
	    {"-1", -EINVAL, 0},
	    {"+1", -EINVAL, 0},
	    {" 1", -EINVAL, 0},
	    {"1.5G", -EINVAL, 0},
	    {"K", -EINVAL, 0},
	    {"1KB", -EINVAL, 0},
	    {"1 K", -EINVAL, 0},
	    {"16777216T", -ERANGE, 0},
	    {"99999999999999999999999", -ERANGE, 0},
	    {"18446744073709551615", -ERANGE, 0}, /* that is the unlimited marker */
	};

	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		uint64_t value = 12345;
		int r = config_parse_size(cases[i].text, &value);

		if (r != cases[i].r)
			fail_msg("\"%s\": got %d, want %d", cases[i].text, r, cases[i].r);
		if (r == 0 && value != cases[i].value)
			fail_msg("\"%s\": got %llu", cases[i].text, (unsigned long long)value);
		if (r < 0 && value != 12345)
			fail_msg("\"%s\": output written on failure", cases[i].text);
	}
}

/* One bad line in a cgroup file, and the exact message it must give. */
static void test_errors_cgroup_file(void **state)
{
	static const struct {
		const char *text;
		const char *message;
	} cases[] = {
	    {"[Match]\nCgroup=/redis\n[Limits]\n\nResidentMax=12Q\n",
	     "cgroup.d/redis.conf:5: ResidentMax: invalid size \"12Q\""},
	    {"[Match]\nCgroup=/redis\n[Limits]\nFoo=1\n",
	     "cgroup.d/redis.conf:4: Foo: unknown key in [Limits]"},
	    {"[Match]\nCgroup=/redis\n[Limits]\nPoolMax=1G\n[Limits]\nSwapMax=1G\n",
	     "cgroup.d/redis.conf:5: [Limits]: section appears twice (first on line 3)"},
	    {"[Limits]\nPoolMax=1G\n",
	     "cgroup.d/redis.conf: Cgroup: missing (every cgroup.d file needs [Match] Cgroup=)"},
	    {"[Match]\nCgroup=redis\n", "cgroup.d/redis.conf:2: Cgroup: not an absolute cgroup "
					"path \"redis\" (like /system.slice/redis.service)"},
	    {"[Match]\nCgroup=/a/../b\n", "cgroup.d/redis.conf:2: Cgroup: not an absolute cgroup "
					  "path \"/a/../b\" (like /system.slice/redis.service)"},
	    {"Cgroup=/redis\n", "cgroup.d/redis.conf:1: Cgroup: key outside of any [Section]"},
	    {"[Match]\nCgroup=/redis\n[Limits]\nResidentMax=150%\n",
	     "cgroup.d/redis.conf:4: ResidentMax: percentage out of range \"150%\" (above 0%, at "
	     "most 100%)"},
	    {"[Match]\nCgroup=/redis\n[Limits]\nResidentMax=0%\n",
	     "cgroup.d/redis.conf:4: ResidentMax: percentage out of range \"0%\" (above 0%, at "
	     "most 100%)"},
	    {"[Match]\nCgroup=/redis\n[Limits]\nResidentMax=abc%\n",
	     "cgroup.d/redis.conf:4: ResidentMax: invalid percentage \"abc%\""},
	    {"[Match]\nCgroup=/redis\n[Limits]\nResidentMax=100\n",
	     "cgroup.d/redis.conf:4: ResidentMax: must be at least 4K \"100\""},
	    {"[Match]\nCgroup=/redis\n[Limits]\nSwapMax=50%\n",
	     "cgroup.d/redis.conf:4: SwapMax: a size is required, not a percentage \"50%\""},
	    {"[Match]\nCgroup=/redis\n[Limits]\nWriteback=maybe\n",
	     "cgroup.d/redis.conf:4: Writeback: expected yes or no, not \"maybe\""},
	    {"[Match]\nCgroup=/redis\n[Limits]\nCompressor=zstd:99\n",
	     "cgroup.d/redis.conf:4: Compressor: unknown compressor \"zstd:99\" (lz4, zstd, "
	     "zstd:1..19)"},
	    {"[Match]\nCgroup=/redis\n[Limits]\nCompressor=gzip\n",
	     "cgroup.d/redis.conf:4: Compressor: unknown compressor \"gzip\" (lz4, zstd, "
	     "zstd:1..19)"},
	    {"[Match]\nCgroup=/redis\n[Limits]\nFaultAround=257\n",
	     "cgroup.d/redis.conf:4: FaultAround: out of range \"257\" (0..256)"},
	    {"[Match]\nCgroup=/redis\n[Limits]\nFaultAround=-1\n",
	     "cgroup.d/redis.conf:4: FaultAround: invalid number \"-1\" (0..256)"},
	    {"[Match]\nCgroup=/redis\n[Limits]\nCompressionUnit=2\n",
	     "cgroup.d/redis.conf:4: CompressionUnit: 2 pages: 1 (off) or 4"},
	    {"[Match]\nCgroup=/redis\n[Limits]\nCompressionUnit=16\n",
	     "cgroup.d/redis.conf:4: CompressionUnit: out of range \"16\" (1..4)"},
	    {"[Match]\nCgroup=/redis\n[Limits]\nPoolMax=1G\nPoolMax=2G\n",
	     "cgroup.d/redis.conf:5: PoolMax: set twice (first on line 4)"},
	    {"[Match]\nCgroup=/redis\n[Limits]\nPoolMax=\n",
	     "cgroup.d/redis.conf:4: PoolMax: empty value"},
	    {"[Match]\nCgroup=/redis\n[Daemon]\nFaultThreads=2\n",
	     "cgroup.d/redis.conf:3: section [Daemon] belongs in uzswapd.conf, not in a cgroup.d "
	     "file"},
	    {"[Match]\nCgroup=/redis\n[Limitz]\n",
	     "cgroup.d/redis.conf:3: unknown section [Limitz]"},
	    {"[Match]\nCgroup=/redis\nthis is not ini\n",
	     "cgroup.d/redis.conf:3: syntax error (expected [Section], Key=Value or a # comment)"},
	    /* the first error wins: the syntax error on line 2, not the key on 3 */
	    {"[Match\nCgroup=/redis\nFoo=1\n",
	     "cgroup.d/redis.conf:1: syntax error (expected [Section], Key=Value or a # comment)"},
	};
	struct fixture *f = *state;

	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		write_cgroup_file(f, "redis.conf", cases[i].text);
		load_fails(f, cases[i].message);
	}
}

static void test_errors_main_file(void **state)
{
	static const struct {
		const char *text;
		const char *message;
	} cases[] = {
	    {"[Daemon]\nFaultThreads=0\n",
	     "uzswapd.conf:2: FaultThreads: out of range \"0\" (1..32)"},
	    {"[Daemon]\nFaultThreads=two\n",
	     "uzswapd.conf:2: FaultThreads: invalid number \"two\" (1..32)"},
	    {"[Daemon]\nLogLevel=loud\n", "uzswapd.conf:2: LogLevel: unknown level \"loud\" (err, "
					  "warning, notice, info, debug)"},
	    {"[Daemon]\nSocket=relative.sock\n",
	     "uzswapd.conf:2: Socket: not an absolute path \"relative.sock\""},
	    {"[Daemon]\nControlGroup=no-such-group-uzswap\n",
	     "uzswapd.conf:2: ControlGroup: no such group \"no-such-group-uzswap\""},
	    {"[Pool]\nAcceptThreshold=95.5%\n", "uzswapd.conf:2: AcceptThreshold: expected a whole "
						"percentage 1%..100%, not \"95.5%\""},
	    {"[Pool]\nPoorThreshold=8K\n",
	     "uzswapd.conf:2: PoorThreshold: expected bytes 1..4096, not \"8K\""},
	    {"[Pool]\nPoorPolicy=drop\n",
	     "uzswapd.conf:2: PoorPolicy: expected keep or reject, not \"drop\""},
	    {"[Swap]\nSize=infinity\n", "uzswapd.conf:2: Size: must be a finite size \"infinity\""},
	    {"[Swap]\nBackend=nfs\n", "uzswapd.conf:2: Backend: expected file or nbd, not \"nfs\""},
	    {"[Swap]\nBackend=nbd\n", "uzswapd.conf:2: Backend: nbd needs URI= (the export, like "
				      "nbd+unix:///?socket=/run/nbd.sock or nbd://host/export)"},
	    {"[Swap]\nBackend=nbd\nURI=nbd://storage/swap\nSize=1G\n",
	     "uzswapd.conf:4: Size: not used with Backend=nbd (the export's size sets how much can "
	     "be written back); remove it"},
	    {"[Swap]\nURI=nbd://storage/swap\n",
	     "uzswapd.conf:2: URI: only used with Backend=nbd (set Backend=nbd, or remove URI=)"},
	    {"[Swap]\nReadTimeout=5s\n",
	     "uzswapd.conf:2: ReadTimeout: only used with Backend=nbd (the local file has none)"},
	    {"[Swap]\nBackend=nbd\nURI=http://storage/swap\n",
	     "uzswapd.conf:3: URI: not an NBD URI (nbd://, nbds://, nbd+unix://, nbds+unix://, "
	     "nbd+vsock:// or nbds+vsock://): \"http://storage/swap\""},
	    {"[Swap]\nBackend=nbd\nURI=nbd+unix:///swap\n",
	     "uzswapd.conf:3: URI: a +unix URI needs ?socket=/absolute/path: \"nbd+unix:///swap\""},
	    {"[Swap]\nBackend=nbd\nURI=nbd:///swap\n",
	     "uzswapd.conf:3: URI: no host (like nbd://storage.example:10809/export): "
	     "\"nbd:///swap\""},
	    {"[Swap]\nBackend=nbd\nURI=nbd://host/swap?socket=/x\n",
	     "uzswapd.conf:3: URI: socket= is only for the +unix transports: "
	     "\"nbd://host/swap?socket=/x\""},
	    {"[Swap]\nBackend=nbd\nURI=nbd://storage/swap\nReadTimeout=5 s\n",
	     "uzswapd.conf:4: ReadTimeout: expected a time from 10ms to 600s (like 5s or 500ms), "
	     "not \"5 s\""},
	    {"[Swap]\nBackend=nbd\nURI=nbd://storage/swap\nReadTimeout=1ms\n",
	     "uzswapd.conf:4: ReadTimeout: expected a time from 10ms to 600s (like 5s or 500ms), "
	     "not \"1ms\""},
	    {"[Match]\nCgroup=/x\n",
	     "uzswapd.conf:1: section [Match] belongs in a cgroup.d file, not in uzswapd.conf"},
	    {"[Defaults]\nResidentMax=12Q\n", "uzswapd.conf:2: ResidentMax: invalid size \"12Q\""},
	    {"[Defaults]\nCgroup=/x\n", "uzswapd.conf:2: Cgroup: unknown key in [Defaults]"},
	};
	struct fixture *f = *state;

	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		write_file(f->main_path, cases[i].text);
		load_fails(f, cases[i].message);
	}
}

/* [Swap] Backend=nbd: the URI, the timeout, the metadata file's default, the dump. */
static void test_swap_nbd(void **state)
{
	struct fixture *f = *state;
	const struct config_daemon *d;
	struct uz_config *config;
	unsigned int ms = 0;

	write_file(f->main_path,
		   "[Swap]\nBackend=nbd\n"
		   "URI=nbds://uzswap@storage:10809/swap?tls-psk-file=/etc/uzswap/psk\n"
		   "ReadTimeout=750ms\n");
	config = load_ok(f);
	d = config_daemon(config);
	assert_int_equal(d->swap_backend, CONFIG_SWAP_NBD);
	assert_string_equal(d->swap_uri,
			    "nbds://uzswap@storage:10809/swap?tls-psk-file=/etc/uzswap/psk");
	assert_int_equal(d->swap_read_timeout_ms, 750);
	assert_non_null(strstr(d->swap_file, "/farmem.meta")); /* never the file backend's */
	{
		char dump_path[PATH_MAX + 16];
		struct uz_config *again;
		FILE *out;

		snprintf(dump_path, sizeof(dump_path), "%s/dump.conf", f->dir);
		out = fopen(dump_path, "w");
		assert_non_null(out);
		assert_int_equal(config_dump(config, out), 0);
		fclose(out);
		assert_int_equal(config_load(&again, dump_path, NULL, f->err, sizeof(f->err)), 0);
		assert_int_equal(config_daemon(again)->swap_backend, CONFIG_SWAP_NBD);
		assert_string_equal(config_daemon(again)->swap_uri, d->swap_uri);
		assert_int_equal(config_daemon(again)->swap_read_timeout_ms, 750);
		config_free(again);
	}
	config_free(config);

	write_file(f->main_path, "[Swap]\nBackend=nbd\nURI=nbd+unix:///?socket=/run/nbd.sock\n"
				 "File=/var/tmp/meta\n");
	config = load_ok(f);
	d = config_daemon(config);
	assert_string_equal(d->swap_file, "/var/tmp/meta");
	assert_int_equal(d->swap_read_timeout_ms, CONFIG_SWAP_READ_TIMEOUT_DEFAULT_MS);
	config_free(config);

	/* The file backend by default: no URI. */
	write_file(f->main_path, "[Swap]\nBackend=file\nSize=64M\n");
	config = load_ok(f);
	assert_int_equal(config_daemon(config)->swap_backend, CONFIG_SWAP_FILE);
	assert_null(config_daemon(config)->swap_uri);
	config_free(config);

	assert_int_equal(config_parse_duration_ms("2min", &ms), 0);
	assert_int_equal(ms, 120000);
	assert_int_equal(config_parse_duration_ms("3", &ms), 0);
	assert_int_equal(ms, 3000);
	assert_int_equal(config_parse_duration_ms("3h", &ms), -EINVAL);
	assert_null(config_check_nbd_uri("nbd+vsock:///"));
	assert_null(config_check_nbd_uri("nbd://[::1]:10809/"));
}

static void test_line_too_long(void **state)
{
	struct fixture *f = *state;
	char text[1024];

	snprintf(text, sizeof(text), "[Daemon]\nSocket=/%0500d\n", 0);
	write_file(f->main_path, text);
	{
		struct uz_config *config;

		assert_int_equal(config_load(&config, f->main_path, NULL, f->err, sizeof(f->err)),
				 -EINVAL);
		assert_non_null(strstr(f->err, "uzswapd.conf:2: line too long"));
	}
}

static void test_percentages(void **state)
{
	struct fixture *f = *state;
	struct cgroup_memory_limits limits;
	struct uz_config *config;
	struct uz_policy policy;

	write_file(f->main_path, "[Pool]\nMaxSize=25%\n");
	write_cgroup_file(f, "a.conf",
			  "[Match]\nCgroup=/a\n[Limits]\nResidentMax=50%\n"
			  "ResidentLow=50%\nPoolMax=10%\n");
	config = load_ok(f);
	config_set_memory_total(config, 8 * GiB);
	assert_int_equal(config_daemon(config)->pool_max_size, 2 * GiB);

	/* memory.max only */
	limits = (struct cgroup_memory_limits){UZ_UNLIMITED, GiB};
	assert_int_equal(config_policy_for_cgroup(config, "/a", &limits, &policy), 0);
	assert_int_equal(policy.resident_max, 512 * MiB);
	assert_int_equal(policy.resident_low, 256 * MiB);
	assert_int_equal(policy.pool_max, 8 * GiB / 10);

	/* memory.high wins over memory.max */
	limits = (struct cgroup_memory_limits){800 * MiB, GiB};
	assert_int_equal(config_policy_for_cgroup(config, "/a", &limits, &policy), 0);
	assert_int_equal(policy.resident_max, 400 * MiB);

	/* no limit at all: built-in default, and the caller is told */
	assert_int_equal(config_policy_for_cgroup(config, "/a", NULL, &policy),
			 CONFIG_POLICY_UNRESOLVED);
	assert_int_equal(policy.resident_max, 64 * MiB);
	assert_int_equal(policy.resident_low, 32 * MiB);

	/* percentages are rounded down to pages */
	limits = (struct cgroup_memory_limits){UZ_UNLIMITED, 1000001};
	assert_int_equal(config_policy_for_cgroup(config, "/a", &limits, &policy), 0);
	assert_int_equal(policy.resident_max, 500000 & ~4095ULL);
	config_free(config);
}

static void test_nested_inheritance(void **state)
{
	struct fixture *f = *state;
	struct cgroup_memory_limits limits = {UZ_UNLIMITED, 4 * GiB};
	struct uz_config *config;
	struct uz_policy policy;

	write_file(f->main_path,
		   "[Defaults]\nWriteback=no\nSwapMax=3G\nFaultAround=8\nCompressionUnit=1\n");
	write_cgroup_file(f, "10-a.conf",
			  "[Match]\nCgroup=/a\n[Limits]\nResidentMax=100M\n"
			  "Compressor=zstd:3\nFaultAround=0\nCompressionUnit=4\n");
	write_cgroup_file(f, "20-ab.conf",
			  "[Match]\nCgroup=/a/b/\n[Limits]\nPoolMax=10M\n"
			  "ResidentLow=50%\n");
	write_cgroup_file(f, "30-abcd.conf",
			  "[Match]\nCgroup=//a/b/c/d\n[Limits]\nWriteback=yes\n"
			  "ResidentMax=25%\n");
	write_cgroup_file(f, "ignored.txt", "not a .conf file");
	write_cgroup_file(f, ".hidden.conf", "not read either");
	config = load_ok(f);
	assert_int_equal(config_cgroup_file_count(config), 3);

	/* /a/b/c: ResidentMax from /a, PoolMax and ResidentLow from /a/b, rest from [Defaults] */
	assert_int_equal(config_policy_for_cgroup(config, "/a/b/c", &limits, &policy), 0);
	assert_int_equal(policy.resident_max, 100 * MiB);
	assert_int_equal(policy.resident_low, 50 * MiB);
	assert_int_equal(policy.pool_max, 10 * MiB);
	assert_int_equal(policy.swap_max, 3 * GiB);
	assert_false(policy.writeback);
	assert_int_equal(policy.algo, COMPRESSOR_ZSTD);
	assert_int_equal(policy.level, 3);
	assert_int_equal(policy.fault_around_max, 0); /* off for /a and below */
	assert_int_equal(policy.unit_pages, 4);	      /* on for /a and below */
	assert_string_equal(config_match_cgroup(config, "/a/b/c"), "/a/b");
	/* the keys the chain sets, which the daemon's command line leaves alone */
	assert_int_equal(config_cgroup_keys(config, "/a/b/c"),
			 1U << LIMIT_RESIDENT_MAX | 1U << LIMIT_COMPRESSOR |
			     1U << LIMIT_FAULT_AROUND | 1U << LIMIT_COMPRESSION_UNIT |
			     1U << LIMIT_POOL_MAX | 1U << LIMIT_RESIDENT_LOW);

	/* /a/b/c/d/e: its own file overrides ResidentMax (25% of 4G) and Writeback */
	assert_int_equal(config_policy_for_cgroup(config, "/a/b/c/d/e", &limits, &policy), 0);
	assert_int_equal(policy.resident_max, GiB);
	assert_int_equal(policy.resident_low, GiB / 2);
	assert_true(policy.writeback);
	assert_int_equal(policy.pool_max, 10 * MiB);
	assert_string_equal(config_match_cgroup(config, "/a/b/c/d/e"), "/a/b/c/d");

	/* /a itself: no PoolMax yet; the default low watermark is 90% */
	assert_int_equal(config_policy_for_cgroup(config, "/a", &limits, &policy), 0);
	assert_true(policy.pool_max == UZ_UNLIMITED);
	assert_int_equal(policy.resident_low, (100 * MiB * 9 / 10) & ~4095ULL);

	/* /ab is not below /a: [Defaults] and built-ins */
	assert_int_equal(config_policy_for_cgroup(config, "/ab", &limits, &policy), 0);
	assert_int_equal(policy.resident_max, 64 * MiB);
	assert_int_equal(policy.algo, COMPRESSOR_LZ4);
	assert_false(policy.writeback);
	assert_int_equal(policy.fault_around_max, 8); /* [Defaults] */
	assert_int_equal(policy.unit_pages, 1);	      /* [Defaults] */
	assert_null(config_match_cgroup(config, "/ab"));
	assert_int_equal(config_cgroup_keys(config, "/ab"), 0); /* [Defaults] is not a file */

	/* a bad path */
	assert_int_equal(config_policy_for_cgroup(config, "relative", &limits, &policy), -EINVAL);
	config_free(config);
}

static void test_root_cgroup_file_and_duplicates(void **state)
{
	struct fixture *f = *state;
	struct uz_config *config;
	struct uz_policy policy;

	write_cgroup_file(f, "root.conf", "[Match]\nCgroup=/\n[Limits]\nResidentMax=1G\n");
	write_file(f->main_path, "[Defaults]\nResidentMax=2G\n");
	config = load_ok(f);
	/* a file for / is more specific than [Defaults] */
	assert_int_equal(config_policy_for_cgroup(config, "/x/y", NULL, &policy), 0);
	assert_int_equal(policy.resident_max, GiB);
	config_free(config);

	write_cgroup_file(f, "same.conf", "# again\n[Match]\nCgroup=/\n");
	{
		char want[3 * PATH_MAX];

		assert_int_equal(
		    config_load(&config, f->main_path, f->cgroup_dir, f->err, sizeof(f->err)),
		    -EINVAL);
		snprintf(want, sizeof(want),
			 "%s/cgroup.d/same.conf:3: Cgroup: / is already matched by "
			 "%s/cgroup.d/root.conf (line 2)",
			 f->dir, f->dir);
		assert_string_equal(f->err, want);
	}
}

/* Reload contract: a failed load leaves the running config untouched. */
static void test_reload_keeps_old(void **state)
{
	struct fixture *f = *state;
	struct uz_config *running, *next = NULL;
	struct uz_policy policy;

	write_file(f->main_path, "[Defaults]\nResidentMax=10M\n");
	running = load_ok(f);
	write_file(f->main_path, "[Defaults]\nResidentMax=ten megabytes\n");
	assert_int_equal(config_load(&next, f->main_path, f->cgroup_dir, f->err, sizeof(f->err)),
			 -EINVAL);
	assert_null(next);
	assert_int_equal(config_policy_for_cgroup(running, "/", NULL, &policy), 0);
	assert_int_equal(policy.resident_max, 10 * MiB);
	config_free(running);
}

static void test_check_file(void **state)
{
	struct fixture *f = *state;
	char path[PATH_MAX + 32], err[1024];

	snprintf(path, sizeof(path), "%s/redis.conf", f->dir);
	write_file(path, "[Match]\nCgroup=/system.slice/redis.service\n[Limits]\nResidentMax=512M\n"
			 "PoolMax=256M\nSwapMax=4G\nWriteback=yes\nCompressor=zstd:3\n");
	assert_int_equal(config_check_file(path, err, sizeof(err)), 0);

	write_file(path, "[Match]\nCgroup=/x\n[Limits]\nResidentMax=12Q\n");
	assert_int_equal(config_check_file(path, err, sizeof(err)), -EINVAL);
	assert_non_null(strstr(err, "redis.conf:4: ResidentMax: invalid size \"12Q\""));

	write_file(f->main_path, "[Daemon]\nFaultThreads=3\n");
	assert_int_equal(config_check_file(f->main_path, err, sizeof(err)), 0);
	assert_int_equal(config_check_file("/nonexistent.conf", err, sizeof(err)), -ENOENT);
	assert_string_equal(err, "/nonexistent.conf: No such file or directory");
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test_setup_teardown(test_defaults_without_files, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_empty_files, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_main_file_all_keys, setup, teardown),
	    cmocka_unit_test(test_sizes),
	    cmocka_unit_test_setup_teardown(test_errors_cgroup_file, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_errors_main_file, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_line_too_long, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_swap_nbd, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_percentages, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_nested_inheritance, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_root_cgroup_file_and_duplicates, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_reload_keeps_old, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_check_file, setup, teardown),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
