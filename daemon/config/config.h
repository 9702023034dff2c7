/* SPDX-License-Identifier: MIT */
/*
 * The daemon's configuration: /etc/uzswap/uzswapd.conf (daemon settings,
 * pool, swap file, [Defaults] limits) and /etc/uzswap/cgroup.d/NAME.conf (one
 * budget per cgroup).  docs/CONFIG-KEYS.md is the key contract.
 *
 * Every key has a built-in default, so a missing main file or cgroup.d
 * directory is not an error.  A bad file is: config_load() fails with a
 * message naming the file, the line and the key, for example
 *
 *	/etc/uzswap/cgroup.d/redis.conf:5: ResidentMax: invalid size "12Q"
 *
 * written into the caller's buffer (nothing here prints or logs).
 *
 * Reload contract: a config is immutable once loaded.  To reload, call
 * config_load() into a new pointer; if it fails, keep running with the old
 * one (and report the message); if it succeeds, re-resolve every client's
 * policy with config_policy_for_cgroup() against the new config, then free
 * the old one.  Nothing in a struct uz_config points into another one.
 *
 * Per-cgroup policy: the cgroup.d files whose Cgroup= is the client's
 * cgroup or an ancestor of it form a chain, most specific first.  Each
 * [Limits] key is taken from the first file in the chain that sets it,
 * then from [Defaults] of the main file, then from the built-in default.
 * Percentages are resolved last, against the client's cgroup limits (the
 * nested cgroup's own memory.high/memory.max, not the ancestor's).
 */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <sys/types.h>

#include "cgroup/cgroup.h"
#include "config/policy.h"

#define CONFIG_DEFAULT_MAIN_PATH  "/etc/uzswap/uzswapd.conf"
#define CONFIG_DEFAULT_CGROUP_DIR "/etc/uzswap/cgroup.d"

struct uz_config;

/* [Swap] Backend: where written-back records go. */
enum config_swap_backend {
	CONFIG_SWAP_FILE = 0, /* the local swap file (File=, Size=), io_uring */
	CONFIG_SWAP_NBD,      /* an NBD export (URI=), libnbd: the far-memory tier */
};
#define CONFIG_SWAP_READ_TIMEOUT_DEFAULT_MS 5000
#define CONFIG_SWAP_URI_MAX		    4095

/* Daemon-wide settings, all resolved to plain values. */
struct config_daemon {
	const char *socket_path;	     /* [Daemon] Socket */
	const char *control_socket_path;     /* [Daemon] ControlSocket */
	bool control_group_set;		     /* [Daemon] ControlGroup given */
	gid_t control_gid;		     /*   ... resolved to a gid at load time */
	unsigned int fault_threads;	     /* [Daemon] FaultThreads */
	int log_level;			     /* [Daemon] LogLevel as a syslog LOG_* priority */
	unsigned int max_clients;	     /* [Daemon] MaxClients */
	unsigned int max_clients_per_user;   /* [Daemon] MaxClientsPerUser */
	unsigned int max_regions_per_client; /* [Daemon] MaxRegionsPerClient */
	uint64_t pool_max_size;		     /* [Pool] MaxSize in bytes (percent of RAM resolved) */
	unsigned int accept_threshold_percent; /* [Pool] AcceptThreshold */
	uint32_t poor_threshold;	       /* [Pool] PoorThreshold */
	enum uz_poor_policy poor_policy;       /* [Pool] PoorPolicy */
	const char *swap_file; /* [Swap] File (Backend=nbd: the local metadata file) */
	uint64_t swap_size;    /* [Swap] Size; 0 = no swap file (Backend=file only) */
	enum config_swap_backend swap_backend; /* [Swap] Backend */
	const char *swap_uri;		       /* [Swap] URI (Backend=nbd), NULL otherwise */
	unsigned int swap_read_timeout_ms;     /* [Swap] ReadTimeout (Backend=nbd) */
};

/*
 * Load the main file and every NAME.conf of cgroup_dir (in name order).
 * Either path may be NULL (skip it); a path that does not exist counts as
 * an empty file / empty directory.  Returns 0, -EINVAL with a message in
 * err on a bad config, or another -errno (message in err too).
 */
int config_load(struct uz_config **out, const char *main_path, const char *cgroup_dir, char *err,
		size_t errlen);
struct uz_config *config_free(struct uz_config *config);

/* The built-in defaults alone (no files). */
int config_new_default(struct uz_config **out);

const struct config_daemon *config_daemon(const struct uz_config *config);
/* Number of cgroup.d files loaded. */
size_t config_cgroup_file_count(const struct uz_config *config);
/* The paths config_load() was given ("" for NULL). */
const char *config_main_path(const struct uz_config *config);
const char *config_cgroup_dir(const struct uz_config *config);

/*
 * Resolve the policy of a client in cgroup_path (as in struct
 * cgroup_info.path).  limits may be NULL (treated as unlimited).
 * Returns 0, or CONFIG_POLICY_UNRESOLVED (a positive, non-error outcome)
 * when a percentage of the cgroup's memory limit was asked for but the
 * cgroup has no limit: that key then takes its built-in default, and the
 * caller may want to log a notice once.  -EINVAL for a malformed path.
 * out is written on success only.
 */
#define CONFIG_POLICY_UNRESOLVED 1
int config_policy_for_cgroup(const struct uz_config *config, const char *cgroup_path,
			     const struct cgroup_memory_limits *limits, struct uz_policy *out);
/* The Cgroup= of the most specific file matching cgroup_path, or NULL. */
const char *config_match_cgroup(const struct uz_config *config, const char *cgroup_path);

/* The [Limits] keys, bit 1 << LIMIT_..., of the policy. */
enum limit_key {
	LIMIT_RESIDENT_MAX,
	LIMIT_RESIDENT_LOW,
	LIMIT_POOL_MAX,
	LIMIT_SWAP_MAX,
	LIMIT_WRITEBACK,
	LIMIT_COMPRESSOR,
	LIMIT_FAULT_AROUND,
	LIMIT_COMPRESSION_UNIT,
	LIMIT__COUNT
};
/*
 * The keys some cgroup.d file of cgroup_path's chain sets (bit 1 << key):
 * the ones a command-line override of [Defaults] leaves alone.
 */
unsigned int config_cgroup_keys(const struct uz_config *config, const char *cgroup_path);

/*
 * Check one file without the daemon: a file with a [Match] section is
 * checked as a cgroup.d file, any other as the main file.  Returns 0 or
 * -EINVAL/-errno with the message in err.
 */
int config_check_file(const char *path, char *err, size_t errlen);

/* Parse a time: "500ms", "5s", "5" (seconds), "2min".  -EINVAL/-ERANGE. */
int config_parse_duration_ms(const char *text, unsigned int *out);
/*
 * Why uri is not an NBD URI uzswapd can use (libnbd's syntax: scheme
 * nbd, nbds, nbd+unix, nbds+unix, nbd+vsock or nbds+vsock; a host, or
 * ?socket=/PATH for +unix), or NULL when it looks right.  Whether the
 * server answers is checked when uzswapd opens it.
 */
const char *config_check_nbd_uri(const char *uri);

/* Parse "512M", "1G", "4096", "infinity"/"unlimited" (UINT64_MAX). -EINVAL/-ERANGE. */
int config_parse_size(const char *text, uint64_t *out);

/* For tests: pretend the host has this much RAM (percentages of RAM). */
void config_set_memory_total(struct uz_config *config, uint64_t bytes);

/* Write the effective configuration (every key, defaults included) in INI form. */
int config_dump(const struct uz_config *config, FILE *out);
