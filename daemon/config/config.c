/* SPDX-License-Identifier: MIT */
/*
 * Config parsing.  inih splits the files into sections and Key=Value
 * pairs; everything that gives them meaning is here: a table of the keys
 * of each section, one value parser per kind (size, percentage, count,
 * path, enum), and the resolution of a client's policy.
 *
 * inih reads through our own line reader (ini_parse_stream) for three
 * reasons: we count lines, so a handler error names its line; we see the
 * section headers, so an unknown or repeated section is an error even when
 * it holds no key; and we notice a line longer than inih's buffer, which
 * inih would otherwise silently split in two.
 *
 * Values that depend on the host (percent of RAM) or on the client's
 * cgroup (percent of memory.high) are kept as "amounts" (bytes or a
 * percentage) and resolved when asked, never at parse time, so one loaded
 * config serves every cgroup.
 *
 * Only the first error of a load is reported: the operator fixes it and
 * runs config-check again.
 */
#include <dirent.h>
#include <errno.h>
#include <grp.h>
#include <inttypes.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <syslog.h>
#include <unistd.h>

#include <ini.h>

/*
 * The build's generated config.h (UZSWAP_RUNDIR, ...): angle brackets,
 * because "config.h" would find this module's own header next to us.
 */
#include <config.h>

#include "config/config.h"
#include "page-entry.h"
#include "util.h"

#define CONFIG_MAX_CGROUP_FILES	 4096
#define CONFIG_MAX_SECTIONS	 16
#define CONFIG_SOCKET_PATH_MAX	 107 /* sizeof(sun_path) - 1 */
#define CONFIG_FAULT_THREADS_MAX 32

/* A size that may also be a percentage of something resolved later. */
enum amount_kind {
	AMOUNT_BYTES = 0, /* bytes; UZ_UNLIMITED for infinity */
	AMOUNT_PERCENT = 1,
};

struct amount {
	enum amount_kind kind;
	uint64_t bytes;
	double percent; /* 0 < percent <= 100 */
};

/* The [Limits] (or [Defaults]) keys one file sets: bit N of `set` per limit_key. */
struct limits {
	unsigned int set;
	struct amount resident_max;
	struct amount resident_low;
	struct amount pool_max;
	struct amount swap_max;
	bool writeback;
	enum compressor_algo algo;
	int level;
	unsigned int fault_around; /* pages, 0..UZ_FAULT_AROUND_MAX */
	unsigned int unit_pages;   /* 1 or PE_UNIT_PAGES */
};

struct cgroup_file {
	char *path;   /* the file */
	char *cgroup; /* normalized Cgroup= */
	size_t cgroup_len;
	int cgroup_line;
	struct limits limits;
};

struct uz_config {
	char *main_path;
	char *cgroup_dir;
	struct config_daemon daemon;
	/* owned copies of the strings daemon points to */
	char *socket_path;
	char *control_socket_path;
	char *swap_file;
	char *swap_uri;
	int swap_file_line; /* lines of [Swap] keys in the main file (0: not given) */
	int swap_size_line;
	int swap_backend_line;
	int swap_uri_line;
	int swap_timeout_line;
	char *control_group;
	struct amount pool_max_size;
	uint64_t memory_total;
	struct limits defaults;
	struct cgroup_file *files;
	size_t n_files;
};

/* --- keys --------------------------------------------------------------- */

enum key_id {
	KEY_SOCKET,
	KEY_CONTROL_SOCKET,
	KEY_CONTROL_GROUP,
	KEY_FAULT_THREADS,
	KEY_LOG_LEVEL,
	KEY_MAX_CLIENTS,
	KEY_MAX_CLIENTS_PER_USER,
	KEY_MAX_REGIONS_PER_CLIENT,
	KEY_POOL_MAX_SIZE,
	KEY_POOL_ACCEPT_THRESHOLD,
	KEY_POOL_POOR_THRESHOLD,
	KEY_POOL_POOR_POLICY,
	KEY_SWAP_FILE,
	KEY_SWAP_SIZE,
	KEY_SWAP_BACKEND,
	KEY_SWAP_URI,
	KEY_SWAP_READ_TIMEOUT,
	KEY_MATCH_CGROUP,
	KEY_LIMIT, /* one of enum limit_key, in [Defaults] or [Limits] */
};

enum file_kind { FILE_MAIN, FILE_CGROUP };

struct key_def {
	enum file_kind file;
	const char *section;
	const char *name;
	enum key_id id;
	enum limit_key limit;
};

static const struct key_def key_table[] = {
    {FILE_MAIN, "Daemon", "Socket", KEY_SOCKET},
    {FILE_MAIN, "Daemon", "ControlSocket", KEY_CONTROL_SOCKET},
    {FILE_MAIN, "Daemon", "ControlGroup", KEY_CONTROL_GROUP},
    {FILE_MAIN, "Daemon", "FaultThreads", KEY_FAULT_THREADS},
    {FILE_MAIN, "Daemon", "LogLevel", KEY_LOG_LEVEL},
    {FILE_MAIN, "Daemon", "MaxClients", KEY_MAX_CLIENTS},
    {FILE_MAIN, "Daemon", "MaxClientsPerUser", KEY_MAX_CLIENTS_PER_USER},
    {FILE_MAIN, "Daemon", "MaxRegionsPerClient", KEY_MAX_REGIONS_PER_CLIENT},
    {FILE_MAIN, "Pool", "MaxSize", KEY_POOL_MAX_SIZE},
    {FILE_MAIN, "Pool", "AcceptThreshold", KEY_POOL_ACCEPT_THRESHOLD},
    {FILE_MAIN, "Pool", "PoorThreshold", KEY_POOL_POOR_THRESHOLD},
    {FILE_MAIN, "Pool", "PoorPolicy", KEY_POOL_POOR_POLICY},
    {FILE_MAIN, "Swap", "File", KEY_SWAP_FILE},
    {FILE_MAIN, "Swap", "Size", KEY_SWAP_SIZE},
    {FILE_MAIN, "Swap", "Backend", KEY_SWAP_BACKEND},
    {FILE_MAIN, "Swap", "URI", KEY_SWAP_URI},
    {FILE_MAIN, "Swap", "ReadTimeout", KEY_SWAP_READ_TIMEOUT},
    {FILE_MAIN, "Defaults", "ResidentMax", KEY_LIMIT, LIMIT_RESIDENT_MAX},
    {FILE_MAIN, "Defaults", "ResidentLow", KEY_LIMIT, LIMIT_RESIDENT_LOW},
    {FILE_MAIN, "Defaults", "PoolMax", KEY_LIMIT, LIMIT_POOL_MAX},
    {FILE_MAIN, "Defaults", "SwapMax", KEY_LIMIT, LIMIT_SWAP_MAX},
    {FILE_MAIN, "Defaults", "Writeback", KEY_LIMIT, LIMIT_WRITEBACK},
    {FILE_MAIN, "Defaults", "Compressor", KEY_LIMIT, LIMIT_COMPRESSOR},
    {FILE_MAIN, "Defaults", "FaultAround", KEY_LIMIT, LIMIT_FAULT_AROUND},
    {FILE_MAIN, "Defaults", "CompressionUnit", KEY_LIMIT, LIMIT_COMPRESSION_UNIT},
    {FILE_CGROUP, "Match", "Cgroup", KEY_MATCH_CGROUP},
    {FILE_CGROUP, "Limits", "ResidentMax", KEY_LIMIT, LIMIT_RESIDENT_MAX},
    {FILE_CGROUP, "Limits", "ResidentLow", KEY_LIMIT, LIMIT_RESIDENT_LOW},
    {FILE_CGROUP, "Limits", "PoolMax", KEY_LIMIT, LIMIT_POOL_MAX},
    {FILE_CGROUP, "Limits", "SwapMax", KEY_LIMIT, LIMIT_SWAP_MAX},
    {FILE_CGROUP, "Limits", "Writeback", KEY_LIMIT, LIMIT_WRITEBACK},
    {FILE_CGROUP, "Limits", "Compressor", KEY_LIMIT, LIMIT_COMPRESSOR},
    {FILE_CGROUP, "Limits", "FaultAround", KEY_LIMIT, LIMIT_FAULT_AROUND},
    {FILE_CGROUP, "Limits", "CompressionUnit", KEY_LIMIT, LIMIT_COMPRESSION_UNIT},
};

static const char *const main_sections[] = {"Daemon", "Pool", "Swap", "Defaults", NULL};
static const char *const cgroup_sections[] = {"Match", "Limits", NULL};

/* --- value parsers (no context: reused by the CLI and tests) ------------ */

int config_parse_duration_ms(const char *text, unsigned int *out)
{
	unsigned long long value;
	char *end;

	if (!text[0] || text[0] < '0' || text[0] > '9')
		return -EINVAL;
	errno = 0;
	value = strtoull(text, &end, 10);
	if (errno || value > 1000000000ULL)
		return -ERANGE;
	if (!strcmp(end, "ms"))
		;
	else if (!strcmp(end, "s") || !end[0])
		value *= 1000;
	else if (!strcmp(end, "min"))
		value *= 60000;
	else
		return -EINVAL;
	if (value > UINT32_MAX)
		return -ERANGE;
	*out = (unsigned int)value;
	return 0;
}

const char *config_check_nbd_uri(const char *uri)
{
	static const char *const schemes[] = {"nbd://",	      "nbds://",      "nbd+unix://",
					      "nbds+unix://", "nbd+vsock://", "nbds+vsock://"};
	const char *rest = NULL;

	if (strlen(uri) > CONFIG_SWAP_URI_MAX)
		return "too long (at most 4095 characters)";
	for (size_t i = 0; i < UZ_ARRAY_SIZE(schemes); i++)
		if (!strncmp(uri, schemes[i], strlen(schemes[i])))
			rest = uri + strlen(schemes[i]);
	if (!rest)
		return "not an NBD URI (nbd://, nbds://, nbd+unix://, nbds+unix://, "
		       "nbd+vsock:// or nbds+vsock://)";
	for (const char *p = uri; *p; p++)
		if ((unsigned char)*p <= ' ' || *p == 0x7f)
			return "spaces or control characters (percent-encode them)";
	if (strstr(uri, "+unix://")) {
		if (!strstr(rest, "socket=/"))
			return "a +unix URI needs ?socket=/absolute/path";
	} else if (strstr(rest, "socket=")) {
		return "socket= is only for the +unix transports";
	} else if (!strstr(uri, "+vsock://") && (rest[0] == '/' || rest[0] == '?' || !rest[0])) {
		return "no host (like nbd://storage.example:10809/export)";
	}
	return NULL;
}

int config_parse_size(const char *text, uint64_t *out)
{
	unsigned int shift = 0;
	unsigned long long value;
	char *end;

	if (!strcasecmp(text, "infinity") || !strcasecmp(text, "unlimited")) {
		*out = UZ_UNLIMITED;
		return 0;
	}
	if (*text < '0' || *text > '9')
		return -EINVAL;
	errno = 0;
	value = strtoull(text, &end, 10);
	if (errno == ERANGE)
		return -ERANGE;
	switch (*end) {
	case '\0':
		break;
	case 'K':
	case 'k':
		shift = 10;
		break;
	case 'M':
	case 'm':
		shift = 20;
		break;
	case 'G':
	case 'g':
		shift = 30;
		break;
	case 'T':
	case 't':
		shift = 40;
		break;
	default:
		return -EINVAL;
	}
	if (shift && end[1] != '\0')
		return -EINVAL;
	if (shift && value > (UINT64_MAX >> shift))
		return -ERANGE;
	value <<= shift;
	if (value == UZ_UNLIMITED)
		return -ERANGE;
	*out = value;
	return 0;
}

/* "80%" or "12.5%": a percentage above 0 and at most 100. */
static int parse_percent(const char *text, double *out)
{
	size_t len = strlen(text);
	char *end;
	double value;

	if (len < 2 || text[len - 1] != '%' || (*text < '0' || *text > '9'))
		return -EINVAL;
	errno = 0;
	value = strtod(text, &end);
	if (errno || end != text + len - 1 || !isfinite(value))
		return -EINVAL;
	if (value <= 0 || value > 100)
		return -ERANGE;
	*out = value;
	return 0;
}

static int parse_unsigned(const char *text, unsigned long min, unsigned long max,
			  unsigned long *out)
{
	unsigned long value;
	char *end;

	if (*text < '0' || *text > '9')
		return -EINVAL;
	errno = 0;
	value = strtoul(text, &end, 10);
	if (*end != '\0')
		return -EINVAL;
	if (errno == ERANGE || value < min || value > max)
		return -ERANGE;
	*out = value;
	return 0;
}

static int parse_bool(const char *text, bool *out)
{
	static const char *const yes[] = {"yes", "true", "on", "1"};
	static const char *const no[] = {"no", "false", "off", "0"};

	for (size_t i = 0; i < UZ_ARRAY_SIZE(yes); i++) {
		if (!strcasecmp(text, yes[i])) {
			*out = true;
			return 0;
		}
		if (!strcasecmp(text, no[i])) {
			*out = false;
			return 0;
		}
	}
	return -EINVAL;
}

/* "lz4", "zstd", "zstd:LEVEL" with LEVEL 1..19. */
static int parse_compressor(const char *text, enum compressor_algo *algo, int *level)
{
	unsigned long value;

	if (!strcmp(text, "lz4")) {
		*algo = COMPRESSOR_LZ4;
		*level = 0;
		return 0;
	}
	if (!strcmp(text, "zstd")) {
		*algo = COMPRESSOR_ZSTD;
		*level = 0;
		return 0;
	}
	if (!strncmp(text, "zstd:", 5) && !parse_unsigned(text + 5, 1, 19, &value)) {
		*algo = COMPRESSOR_ZSTD;
		*level = (int)value;
		return 0;
	}
	return -EINVAL;
}

static const char *compressor_name(enum compressor_algo algo)
{
	switch (algo) {
	case COMPRESSOR_LZ4:
		return "lz4";
	case COMPRESSOR_ZSTD:
		return "zstd";
	default:
		return "raw";
	}
}

/*
 * A cgroup path as the config compares it: absolute, no empty, "." or
 * ".." components, no trailing slash except for the root "/".
 */
static int normalize_cgroup_path(const char *text, char *buf, size_t buflen)
{
	size_t n = 0;
	const char *p = text;

	if (*p != '/')
		return -EINVAL;
	while (*p) {
		const char *start, *end;
		size_t len;

		while (*p == '/')
			p++;
		if (!*p)
			break;
		start = p;
		end = strchrnul(p, '/');
		len = (size_t)(end - start);
		if ((len == 1 && start[0] == '.') ||
		    (len == 2 && start[0] == '.' && start[1] == '.'))
			return -EINVAL;
		if (n + 1 + len + 1 > buflen)
			return -ENAMETOOLONG;
		buf[n++] = '/';
		memcpy(buf + n, start, len);
		n += len;
		p = end;
	}
	if (n == 0) {
		if (buflen < 2)
			return -ENAMETOOLONG;
		buf[n++] = '/';
	}
	buf[n] = '\0';
	return 0;
}

static const struct {
	const char *name;
	int level;
} log_levels[] = {
    {"err", LOG_ERR},	    {"error", LOG_ERR}, {"warning", LOG_WARNING},
    {"notice", LOG_NOTICE}, {"info", LOG_INFO}, {"debug", LOG_DEBUG},
};

static const char *log_level_name(int level)
{
	for (size_t i = 0; i < UZ_ARRAY_SIZE(log_levels); i++)
		if (log_levels[i].level == level)
			return log_levels[i].name;
	return "info";
}

/* --- defaults ------------------------------------------------------------ */

static void limits_builtin(struct limits *limits)
{
	*limits = (struct limits){
	    .set = 0,
	    .resident_max = {AMOUNT_BYTES, UZ_DEFAULT_RESIDENT_MAX, 0},
	    .resident_low = {AMOUNT_PERCENT, 0, UZ_DEFAULT_RESIDENT_LOW_PERCENT},
	    .pool_max = {AMOUNT_BYTES, UZ_UNLIMITED, 0},
	    .swap_max = {AMOUNT_BYTES, UZ_UNLIMITED, 0},
	    .writeback = true,
	    .algo = COMPRESSOR_LZ4,
	    .level = 0,
	    .fault_around = UZ_DEFAULT_FAULT_AROUND,
	    .unit_pages = UZ_DEFAULT_UNIT_PAGES,
	};
}

static uint64_t host_memory_total(void)
{
	long pages = sysconf(_SC_PHYS_PAGES);
	long page_size = sysconf(_SC_PAGESIZE);

	if (pages <= 0 || page_size <= 0)
		return 0;
	return (uint64_t)pages * (uint64_t)page_size;
}

static uint64_t percent_of(uint64_t base, double percent)
{
	long double v;

	if (base == UZ_UNLIMITED)
		return UZ_UNLIMITED;
	v = (long double)base * percent / 100.0L;
	if (v >= (long double)UZ_UNLIMITED)
		return UZ_UNLIMITED - 1;
	return (uint64_t)v;
}

static void config_resolve_daemon(struct uz_config *config)
{
	if (config->pool_max_size.kind == AMOUNT_PERCENT)
		config->daemon.pool_max_size =
		    percent_of(config->memory_total, config->pool_max_size.percent);
	else
		config->daemon.pool_max_size = config->pool_max_size.bytes;
}

static int config_alloc(struct uz_config **out)
{
	struct uz_config *config;

	config = calloc(1, sizeof(*config));
	if (!config)
		return -ENOMEM;
	config->socket_path = strdup(UZSWAP_RUNDIR "/uzswapd.sock");
	config->control_socket_path = strdup(UZSWAP_RUNDIR "/control.sock");
	config->swap_file = strdup(UZSWAP_STATEDIR "/swapfile");
	config->main_path = strdup("");
	config->cgroup_dir = strdup("");
	if (!config->socket_path || !config->control_socket_path || !config->swap_file ||
	    !config->main_path || !config->cgroup_dir) {
		config_free(config);
		return -ENOMEM;
	}
	config->daemon = (struct config_daemon){
	    .fault_threads = 2,
	    .log_level = LOG_INFO,
	    .max_clients = 1024,
	    .max_clients_per_user = 256,
	    .max_regions_per_client = 65536,
	    .accept_threshold_percent = 90,
	    .poor_threshold = UZ_DEFAULT_POOR_THRESHOLD,
	    .poor_policy = UZ_POOR_KEEP_RAW,
	    .swap_size = 1ULL << 30,
	    .swap_read_timeout_ms = CONFIG_SWAP_READ_TIMEOUT_DEFAULT_MS,
	};
	config->pool_max_size = (struct amount){AMOUNT_PERCENT, 0, 20};
	config->memory_total = host_memory_total();
	limits_builtin(&config->defaults);
	*out = config;
	return 0;
}

/* Point the public struct at the owned strings (after any of them changed). */
static void config_publish(struct uz_config *config)
{
	config->daemon.socket_path = config->socket_path;
	config->daemon.control_socket_path = config->control_socket_path;
	if (config->daemon.swap_backend == CONFIG_SWAP_NBD && !config->swap_file_line) {
		/* The NBD backend's metadata: never the swap file of the file backend. */
		char *meta = strdup(UZSWAP_STATEDIR "/farmem.meta");

		if (meta) {
			free(config->swap_file);
			config->swap_file = meta;
			config->swap_file_line = -1; /* resolved: publish may run again */
		}
	}
	config->daemon.swap_file = config->swap_file;
	config->daemon.swap_uri =
	    config->daemon.swap_backend == CONFIG_SWAP_NBD ? config->swap_uri : NULL;
	config_resolve_daemon(config);
}

int config_new_default(struct uz_config **out)
{
	struct uz_config *config;
	int r;

	r = config_alloc(&config);
	if (r < 0)
		return r;
	config_publish(config);
	*out = config;
	return 0;
}

struct uz_config *config_free(struct uz_config *config)
{
	if (!config)
		return NULL;
	for (size_t i = 0; i < config->n_files; i++) {
		free(config->files[i].path);
		free(config->files[i].cgroup);
	}
	free(config->files);
	free(config->socket_path);
	free(config->control_socket_path);
	free(config->swap_file);
	free(config->swap_uri);
	free(config->control_group);
	free(config->main_path);
	free(config->cgroup_dir);
	free(config);
	return NULL;
}

/* --- parsing one file ---------------------------------------------------- */

struct parse_ctx {
	struct uz_config *config;
	const char *path;
	FILE *file;
	enum file_kind kind;
	struct cgroup_file *cgroup_file; /* FILE_CGROUP: where keys go */
	int line;			 /* lines read so far */
	int key_line[UZ_ARRAY_SIZE(key_table)];
	char sections[CONFIG_MAX_SECTIONS][32];
	int section_line[CONFIG_MAX_SECTIONS];
	unsigned int n_sections;
	char *err;
	size_t errlen;
	int err_line; /* 0: no error yet; -1: an error without a line */
};

__attribute__((format(printf, 3, 4))) static void parse_error(struct parse_ctx *ctx, int line,
							      const char *fmt, ...)
{
	va_list ap;
	int n;

	if (ctx->err_line)
		return;
	ctx->err_line = line > 0 ? line : -1;
	if (!ctx->err || !ctx->errlen)
		return;
	if (line > 0)
		n = snprintf(ctx->err, ctx->errlen, "%s:%d: ", ctx->path, line);
	else
		n = snprintf(ctx->err, ctx->errlen, "%s: ", ctx->path);
	if (n < 0 || (size_t)n >= ctx->errlen)
		return;
	va_start(ap, fmt);
	vsnprintf(ctx->err + n, ctx->errlen - (size_t)n, fmt, ap);
	va_end(ap);
}

static bool section_known(const struct parse_ctx *ctx, const char *name)
{
	const char *const *list = ctx->kind == FILE_MAIN ? main_sections : cgroup_sections;

	for (; *list; list++)
		if (!strcmp(*list, name))
			return true;
	return false;
}

/* Look at a section header line: unknown and repeated sections are errors. */
static void reader_section(struct parse_ctx *ctx, const char *line)
{
	const char *start = line + 1, *end = strchr(start, ']');
	char name[32];
	size_t len;

	if (!end)
		return; /* inih reports the syntax error */
	len = (size_t)(end - start);
	if (len >= sizeof(name)) {
		parse_error(ctx, ctx->line, "unknown section [%.*s]", (int)len, start);
		return;
	}
	memcpy(name, start, len);
	name[len] = '\0';
	if (!section_known(ctx, name)) {
		if (ctx->kind == FILE_CGROUP &&
		    section_known(&(struct parse_ctx){.kind = FILE_MAIN}, name))
			parse_error(ctx, ctx->line,
				    "section [%s] belongs in uzswapd.conf, not in a cgroup.d file",
				    name);
		else if (ctx->kind == FILE_MAIN && !strcmp(name, "Match"))
			parse_error(
			    ctx, ctx->line,
			    "section [Match] belongs in a cgroup.d file, not in uzswapd.conf");
		else
			parse_error(ctx, ctx->line, "unknown section [%s]", name);
		return;
	}
	for (unsigned int i = 0; i < ctx->n_sections; i++) {
		if (!strcmp(ctx->sections[i], name)) {
			parse_error(ctx, ctx->line,
				    "[%s]: section appears twice (first on line %d)", name,
				    ctx->section_line[i]);
			return;
		}
	}
	if (ctx->n_sections < CONFIG_MAX_SECTIONS) {
		memcpy(ctx->sections[ctx->n_sections], name, len + 1);
		ctx->section_line[ctx->n_sections++] = ctx->line;
	}
}

/* fgets for inih: counts lines, watches section headers, refuses long lines. */
static char *parse_reader(char *str, int num, void *stream)
{
	struct parse_ctx *ctx = stream;
	size_t len;
	char *p;

	if (!fgets(str, num, ctx->file))
		return NULL;
	ctx->line++;
	len = strlen(str);
	if (len > 0 && str[len - 1] != '\n' && !feof(ctx->file)) {
		int c;

		parse_error(ctx, ctx->line, "line too long (at most %d characters)", num - 3);
		while ((c = fgetc(ctx->file)) != EOF && c != '\n')
			;
		str[0] = '\0'; /* an empty line to inih */
		return str;
	}
	for (p = str; *p == ' ' || *p == '\t'; p++)
		;
	if (*p == '[')
		reader_section(ctx, p);
	return str;
}

static int set_string(struct parse_ctx *ctx, char **field, const char *value)
{
	char *copy = strdup(value);

	if (!copy)
		return -ENOMEM;
	free(*field);
	*field = copy;
	return 0;
}

static int parse_path_value(struct parse_ctx *ctx, const char *name, const char *value, size_t max,
			    char **field)
{
	if (value[0] != '/') {
		parse_error(ctx, ctx->line, "%s: not an absolute path \"%s\"", name, value);
		return -EINVAL;
	}
	if (strlen(value) > max) {
		parse_error(ctx, ctx->line, "%s: path too long (at most %zu characters) \"%s\"",
			    name, max, value);
		return -EINVAL;
	}
	return set_string(ctx, field, value);
}

static int parse_amount(struct parse_ctx *ctx, const char *name, const char *value, bool percent_ok,
			bool unlimited_ok, struct amount *out)
{
	int r;

	if (value[0] && value[strlen(value) - 1] == '%') {
		double percent;

		if (!percent_ok) {
			parse_error(ctx, ctx->line,
				    "%s: a size is required, not a percentage \"%s\"", name, value);
			return -EINVAL;
		}
		r = parse_percent(value, &percent);
		if (r < 0) {
			parse_error(
			    ctx, ctx->line,
			    r == -ERANGE
				? "%s: percentage out of range \"%s\" (above 0%%, at most 100%%)"
				: "%s: invalid percentage \"%s\"",
			    name, value);
			return -EINVAL;
		}
		*out = (struct amount){AMOUNT_PERCENT, 0, percent};
		return 0;
	}
	uint64_t bytes;

	r = config_parse_size(value, &bytes);
	if (r < 0) {
		parse_error(ctx, ctx->line,
			    r == -ERANGE ? "%s: size too large \"%s\"" : "%s: invalid size \"%s\"",
			    name, value);
		return -EINVAL;
	}
	if (bytes == UZ_UNLIMITED && !unlimited_ok) {
		parse_error(ctx, ctx->line, "%s: must be a finite size \"%s\"", name, value);
		return -EINVAL;
	}
	*out = (struct amount){AMOUNT_BYTES, bytes, 0};
	return 0;
}

static int parse_count(struct parse_ctx *ctx, const char *name, const char *value,
		       unsigned long min, unsigned long max, unsigned int *out)
{
	unsigned long v;
	int r;

	r = parse_unsigned(value, min, max, &v);
	if (r < 0) {
		parse_error(ctx, ctx->line,
			    r == -ERANGE ? "%s: out of range \"%s\" (%lu..%lu)"
					 : "%s: invalid number \"%s\" (%lu..%lu)",
			    name, value, min, max);
		return -EINVAL;
	}
	*out = (unsigned int)v;
	return 0;
}

static int parse_group(struct parse_ctx *ctx, const char *name, const char *value)
{
	struct group grp, *result = NULL;
	unsigned long gid;
	char buf[4096];
	int r;

	if (!parse_unsigned(value, 0, UINT32_MAX - 1, &gid)) {
		ctx->config->daemon.control_gid = (gid_t)gid;
	} else {
		r = getgrnam_r(value, &grp, buf, sizeof(buf), &result);
		if (r || !result) {
			parse_error(ctx, ctx->line, "%s: no such group \"%s\"", name, value);
			return -EINVAL;
		}
		ctx->config->daemon.control_gid = result->gr_gid;
	}
	ctx->config->daemon.control_group_set = true;
	return set_string(ctx, &ctx->config->control_group, value);
}

static int parse_limit(struct parse_ctx *ctx, const struct key_def *key, const char *value,
		       struct limits *limits)
{
	int r = 0;

	switch (key->limit) {
	case LIMIT_RESIDENT_MAX:
		r = parse_amount(ctx, key->name, value, true, true, &limits->resident_max);
		if (!r && limits->resident_max.kind == AMOUNT_BYTES &&
		    limits->resident_max.bytes < UZ_PAGE_SIZE) {
			parse_error(ctx, ctx->line, "%s: must be at least 4K \"%s\"", key->name,
				    value);
			r = -EINVAL;
		}
		break;
	case LIMIT_RESIDENT_LOW:
		r = parse_amount(ctx, key->name, value, true, true, &limits->resident_low);
		break;
	case LIMIT_POOL_MAX:
		r = parse_amount(ctx, key->name, value, true, true, &limits->pool_max);
		break;
	case LIMIT_SWAP_MAX:
		r = parse_amount(ctx, key->name, value, false, true, &limits->swap_max);
		break;
	case LIMIT_WRITEBACK:
		if (parse_bool(value, &limits->writeback) < 0) {
			parse_error(ctx, ctx->line, "%s: expected yes or no, not \"%s\"", key->name,
				    value);
			r = -EINVAL;
		}
		break;
	case LIMIT_COMPRESSOR:
		if (parse_compressor(value, &limits->algo, &limits->level) < 0) {
			parse_error(ctx, ctx->line,
				    "%s: unknown compressor \"%s\" (lz4, zstd, zstd:1..19)",
				    key->name, value);
			r = -EINVAL;
		}
		break;
	case LIMIT_FAULT_AROUND:
		r = parse_count(ctx, key->name, value, 0, UZ_FAULT_AROUND_MAX,
				&limits->fault_around);
		break;
	case LIMIT_COMPRESSION_UNIT:
		r = parse_count(ctx, key->name, value, 1, PE_UNIT_PAGES, &limits->unit_pages);
		if (!r && limits->unit_pages != 1 && limits->unit_pages != PE_UNIT_PAGES) {
			parse_error(ctx, ctx->line, "%s: %u pages: 1 (off) or %u", key->name,
				    limits->unit_pages, PE_UNIT_PAGES);
			r = -EINVAL;
		}
		break;
	default:
		r = -EINVAL;
	}
	if (!r)
		limits->set |= 1U << key->limit;
	return r;
}

static int parse_key(struct parse_ctx *ctx, const struct key_def *key, const char *value)
{
	struct uz_config *config = ctx->config;
	struct config_daemon *d = &config->daemon;
	char buf[CGROUP_PATH_MAX];
	int r;

	switch (key->id) {
	case KEY_SOCKET:
		return parse_path_value(ctx, key->name, value, CONFIG_SOCKET_PATH_MAX,
					&config->socket_path);
	case KEY_CONTROL_SOCKET:
		return parse_path_value(ctx, key->name, value, CONFIG_SOCKET_PATH_MAX,
					&config->control_socket_path);
	case KEY_CONTROL_GROUP:
		return parse_group(ctx, key->name, value);
	case KEY_FAULT_THREADS:
		return parse_count(ctx, key->name, value, 1, CONFIG_FAULT_THREADS_MAX,
				   &d->fault_threads);
	case KEY_LOG_LEVEL:
		for (size_t i = 0; i < UZ_ARRAY_SIZE(log_levels); i++) {
			if (!strcmp(value, log_levels[i].name)) {
				d->log_level = log_levels[i].level;
				return 0;
			}
		}
		parse_error(ctx, ctx->line,
			    "%s: unknown level \"%s\" (err, warning, notice, info, debug)",
			    key->name, value);
		return -EINVAL;
	case KEY_MAX_CLIENTS:
		return parse_count(ctx, key->name, value, 1, 1000000, &d->max_clients);
	case KEY_MAX_CLIENTS_PER_USER:
		return parse_count(ctx, key->name, value, 1, 1000000, &d->max_clients_per_user);
	case KEY_MAX_REGIONS_PER_CLIENT:
		return parse_count(ctx, key->name, value, 1, 1U << 24, &d->max_regions_per_client);
	case KEY_POOL_MAX_SIZE:
		return parse_amount(ctx, key->name, value, true, true, &config->pool_max_size);
	case KEY_POOL_ACCEPT_THRESHOLD: {
		double percent;
		unsigned long whole;

		if (!parse_unsigned(value, 1, 100, &whole)) {
			d->accept_threshold_percent = (unsigned int)whole;
			return 0;
		}
		if (!parse_percent(value, &percent) && percent == floor(percent)) {
			d->accept_threshold_percent = (unsigned int)percent;
			return 0;
		}
		parse_error(ctx, ctx->line,
			    "%s: expected a whole percentage 1%%..100%%, not \"%s\"", key->name,
			    value);
		return -EINVAL;
	}
	case KEY_POOL_POOR_THRESHOLD: {
		uint64_t bytes;

		if (config_parse_size(value, &bytes) < 0 || bytes == 0 || bytes > UZ_PAGE_SIZE) {
			parse_error(ctx, ctx->line, "%s: expected bytes 1..4096, not \"%s\"",
				    key->name, value);
			return -EINVAL;
		}
		d->poor_threshold = (uint32_t)bytes;
		return 0;
	}
	case KEY_POOL_POOR_POLICY:
		if (!strcmp(value, "keep")) {
			d->poor_policy = UZ_POOR_KEEP_RAW;
			return 0;
		}
		if (!strcmp(value, "reject")) {
			d->poor_policy = UZ_POOR_REJECT;
			return 0;
		}
		parse_error(ctx, ctx->line, "%s: expected keep or reject, not \"%s\"", key->name,
			    value);
		return -EINVAL;
	case KEY_SWAP_FILE:
		config->swap_file_line = ctx->line;
		return parse_path_value(ctx, key->name, value, PATH_MAX - 1, &config->swap_file);
	case KEY_SWAP_SIZE: {
		struct amount amount;

		config->swap_size_line = ctx->line;
		r = parse_amount(ctx, key->name, value, false, false, &amount);
		if (r < 0)
			return r;
		d->swap_size = amount.bytes & UZ_PAGE_MASK;
		return 0;
	}
	case KEY_SWAP_BACKEND:
		config->swap_backend_line = ctx->line;
		if (!strcmp(value, "file")) {
			d->swap_backend = CONFIG_SWAP_FILE;
			return 0;
		}
		if (!strcmp(value, "nbd")) {
			d->swap_backend = CONFIG_SWAP_NBD;
			return 0;
		}
		parse_error(ctx, ctx->line, "%s: expected file or nbd, not \"%s\"", key->name,
			    value);
		return -EINVAL;
	case KEY_SWAP_URI: {
		const char *why = config_check_nbd_uri(value);

		config->swap_uri_line = ctx->line;
		if (why) {
			parse_error(ctx, ctx->line, "%s: %s: \"%s\"", key->name, why, value);
			return -EINVAL;
		}
		return set_string(ctx, &config->swap_uri, value);
	}
	case KEY_SWAP_READ_TIMEOUT: {
		unsigned int ms;

		config->swap_timeout_line = ctx->line;
		if (config_parse_duration_ms(value, &ms) < 0 || ms < 10 || ms > 600000) {
			parse_error(ctx, ctx->line,
				    "%s: expected a time from 10ms to 600s (like 5s or 500ms), not "
				    "\"%s\"",
				    key->name, value);
			return -EINVAL;
		}
		d->swap_read_timeout_ms = ms;
		return 0;
	}
	case KEY_MATCH_CGROUP:
		r = normalize_cgroup_path(value, buf, sizeof(buf));
		if (r < 0) {
			parse_error(ctx, ctx->line,
				    "%s: not an absolute cgroup path \"%s\" (like "
				    "/system.slice/redis.service)",
				    key->name, value);
			return -EINVAL;
		}
		r = set_string(ctx, &ctx->cgroup_file->cgroup, buf);
		if (r < 0)
			return r;
		ctx->cgroup_file->cgroup_len = strlen(buf);
		ctx->cgroup_file->cgroup_line = ctx->line;
		return 0;
	case KEY_LIMIT:
		return parse_limit(ctx, key, value,
				   ctx->kind == FILE_MAIN ? &config->defaults
							  : &ctx->cgroup_file->limits);
	}
	return -EINVAL;
}

static int parse_handler(void *user, const char *section, const char *name, const char *value)
{
	struct parse_ctx *ctx = user;
	const struct key_def *key = NULL;
	size_t i;
	int r;

	if (ctx->err_line)
		return 1; /* already failed: only the first error is reported */
	if (!section[0]) {
		parse_error(ctx, ctx->line, "%s: key outside of any [Section]", name);
		return 0;
	}
	if (!section_known(ctx, section))
		return 1; /* reported at the header */
	for (i = 0; i < UZ_ARRAY_SIZE(key_table); i++) {
		if (key_table[i].file == ctx->kind && !strcmp(key_table[i].section, section) &&
		    !strcmp(key_table[i].name, name)) {
			key = &key_table[i];
			break;
		}
	}
	if (!key) {
		parse_error(ctx, ctx->line, "%s: unknown key in [%s]", name, section);
		return 0;
	}
	if (ctx->key_line[i]) {
		parse_error(ctx, ctx->line, "%s: set twice (first on line %d)", name,
			    ctx->key_line[i]);
		return 0;
	}
	ctx->key_line[i] = ctx->line;
	if (!value[0]) {
		parse_error(ctx, ctx->line, "%s: empty value", name);
		return 0;
	}
	r = parse_key(ctx, key, value);
	if (r == -ENOMEM) {
		parse_error(ctx, ctx->line, "%s: out of memory", name);
		return 0;
	}
	return r < 0 ? 0 : 1;
}

/* [Swap]: the keys of one backend only, and what that backend needs. */
static int check_swap_keys(struct parse_ctx *ctx)
{
	struct uz_config *config = ctx->config;

	if (config->daemon.swap_backend == CONFIG_SWAP_NBD) {
		if (!config->swap_uri) {
			parse_error(ctx, config->swap_backend_line,
				    "Backend: nbd needs URI= (the export, like "
				    "nbd+unix:///?socket=/run/nbd.sock or nbd://host/export)");
			return -EINVAL;
		}
		if (config->swap_size_line) {
			parse_error(ctx, config->swap_size_line,
				    "Size: not used with Backend=nbd (the export's size sets how "
				    "much can be written back); remove it");
			return -EINVAL;
		}
		return 0;
	}
	if (config->swap_uri_line) {
		parse_error(ctx, config->swap_uri_line,
			    "URI: only used with Backend=nbd (set Backend=nbd, or remove URI=)");
		return -EINVAL;
	}
	if (config->swap_timeout_line) {
		parse_error(ctx, config->swap_timeout_line,
			    "ReadTimeout: only used with Backend=nbd (the local file has none)");
		return -EINVAL;
	}
	return 0;
}

/*
 * Parse one file into config (main) or cgroup_file (cgroup.d).  A missing
 * file is -ENOENT with no message; the caller decides whether that is fine.
 */
static int parse_file(struct uz_config *config, const char *path, enum file_kind kind,
		      struct cgroup_file *cgroup_file, char *err, size_t errlen)
{
	struct parse_ctx ctx = {
	    .config = config,
	    .path = path,
	    .kind = kind,
	    .cgroup_file = cgroup_file,
	    .err = err,
	    .errlen = errlen,
	};
	int r;

	ctx.file = fopen(path, "re");
	if (!ctx.file)
		return -errno;
	r = ini_parse_stream(parse_reader, &ctx, parse_handler, &ctx);
	if (r == 0 && ferror(ctx.file)) {
		r = -EIO;
		parse_error(&ctx, 0, "read error");
	}
	fclose(ctx.file);
	if (r == -2) {
		parse_error(&ctx, 0, "out of memory");
		return -ENOMEM;
	}
	if (r > 0 && (ctx.err_line == 0 || (ctx.err_line > 0 && r < ctx.err_line))) {
		ctx.err_line = 0; /* the syntax error came first: report it instead */
		parse_error(&ctx, r, "syntax error (expected [Section], Key=Value or a # comment)");
	}
	if (ctx.err_line)
		return r < 0 ? r : -EINVAL;
	if (kind == FILE_CGROUP && !cgroup_file->cgroup) {
		parse_error(&ctx, 0, "Cgroup: missing (every cgroup.d file needs [Match] Cgroup=)");
		return -EINVAL;
	}
	if (kind == FILE_MAIN)
		return check_swap_keys(&ctx);
	return 0;
}

/* --- loading ------------------------------------------------------------- */

__attribute__((format(printf, 3, 4))) static void load_error(char *err, size_t errlen,
							     const char *fmt, ...)
{
	va_list ap;

	if (!err || !errlen)
		return;
	va_start(ap, fmt);
	vsnprintf(err, errlen, fmt, ap);
	va_end(ap);
}

static int conf_name_filter(const struct dirent *entry)
{
	size_t len = strlen(entry->d_name);

	return entry->d_name[0] != '.' && len > 5 && !strcmp(entry->d_name + len - 5, ".conf");
}

static int load_cgroup_dir(struct uz_config *config, const char *dir, char *err, size_t errlen)
{
	struct dirent **names = NULL;
	int n, r = 0;

	n = scandir(dir, &names, conf_name_filter, alphasort);
	if (n < 0) {
		if (errno == ENOENT)
			return 0;
		r = -errno;
		load_error(err, errlen, "%s: cannot read directory: %s", dir, strerror(-r));
		return r;
	}
	if (n > CONFIG_MAX_CGROUP_FILES) {
		load_error(err, errlen, "%s: too many files (at most %d)", dir,
			   CONFIG_MAX_CGROUP_FILES);
		r = -E2BIG;
		goto out_free_names;
	}
	config->files = calloc((size_t)n + 1, sizeof(*config->files));
	if (!config->files) {
		r = -ENOMEM;
		load_error(err, errlen, "out of memory");
		goto out_free_names;
	}
	for (int i = 0; i < n; i++) {
		struct cgroup_file *file = &config->files[config->n_files];
		struct stat st;
		char *path;

		if (asprintf(&path, "%s/%s", dir, names[i]->d_name) < 0) {
			r = -ENOMEM;
			load_error(err, errlen, "out of memory");
			goto out_free_names;
		}
		if (stat(path, &st) < 0 || !S_ISREG(st.st_mode)) {
			free(path); /* a dangling link or a directory named *.conf */
			continue;
		}
		file->path = path;
		config->n_files++;
		r = parse_file(config, path, FILE_CGROUP, file, err, errlen);
		if (r < 0) {
			if (r != -EINVAL && r != -ENOMEM)
				load_error(err, errlen, "%s: %s", path, strerror(-r));
			goto out_free_names;
		}
		for (size_t j = 0; j + 1 < config->n_files; j++) {
			if (!strcmp(config->files[j].cgroup, file->cgroup)) {
				load_error(err, errlen,
					   "%s:%d: Cgroup: %s is already matched by %s (line %d)",
					   path, file->cgroup_line, file->cgroup,
					   config->files[j].path, config->files[j].cgroup_line);
				r = -EINVAL;
				goto out_free_names;
			}
		}
	}
out_free_names:
	for (int i = 0; i < n; i++)
		free(names[i]);
	free(names);
	return r;
}

int config_load(struct uz_config **out, const char *main_path, const char *cgroup_dir, char *err,
		size_t errlen)
{
	struct uz_config *config;
	int r;

	if (err && errlen)
		err[0] = '\0';
	r = config_alloc(&config);
	if (r < 0) {
		load_error(err, errlen, "out of memory");
		return r;
	}
	if ((main_path && set_string(NULL, &config->main_path, main_path) < 0) ||
	    (cgroup_dir && set_string(NULL, &config->cgroup_dir, cgroup_dir) < 0)) {
		r = -ENOMEM;
		load_error(err, errlen, "out of memory");
		goto out_free;
	}
	if (main_path) {
		r = parse_file(config, main_path, FILE_MAIN, NULL, err, errlen);
		if (r == -ENOENT) {
			r = 0;
		} else if (r < 0) {
			if (r != -EINVAL && r != -ENOMEM)
				load_error(err, errlen, "%s: %s", main_path, strerror(-r));
			goto out_free;
		}
	}
	if (cgroup_dir) {
		r = load_cgroup_dir(config, cgroup_dir, err, errlen);
		if (r < 0)
			goto out_free;
	}
	config_publish(config);
	*out = config;
	return 0;

out_free:
	config_free(config);
	return r;
}

static bool file_has_match_section(FILE *file)
{
	char line[512];
	bool found = false;

	while (fgets(line, sizeof(line), file)) {
		const char *p = line;

		while (*p == ' ' || *p == '\t')
			p++;
		if (!strncmp(p, "[Match]", 7)) {
			found = true;
			break;
		}
	}
	rewind(file);
	return found;
}

int config_check_file(const char *path, char *err, size_t errlen)
{
	struct cgroup_file cgroup_file = {0};
	struct uz_config *config;
	enum file_kind kind;
	FILE *file;
	int r;

	if (err && errlen)
		err[0] = '\0';
	file = fopen(path, "re");
	if (!file) {
		r = -errno;
		load_error(err, errlen, "%s: %s", path, strerror(-r));
		return r;
	}
	kind = file_has_match_section(file) ? FILE_CGROUP : FILE_MAIN;
	fclose(file);
	r = config_alloc(&config);
	if (r < 0) {
		load_error(err, errlen, "out of memory");
		return r;
	}
	r = parse_file(config, path, kind, &cgroup_file, err, errlen);
	if (r < 0 && r != -EINVAL && r != -ENOMEM)
		load_error(err, errlen, "%s: %s", path, strerror(-r));
	free(cgroup_file.cgroup);
	config_free(config);
	return r;
}

/* --- accessors and policy ------------------------------------------------ */

const struct config_daemon *config_daemon(const struct uz_config *config)
{
	return &config->daemon;
}

size_t config_cgroup_file_count(const struct uz_config *config)
{
	return config->n_files;
}

const char *config_main_path(const struct uz_config *config)
{
	return config->main_path;
}

const char *config_cgroup_dir(const struct uz_config *config)
{
	return config->cgroup_dir;
}

void config_set_memory_total(struct uz_config *config, uint64_t bytes)
{
	config->memory_total = bytes;
	config_resolve_daemon(config);
}

/* Does the file's Cgroup= equal path or an ancestor of it? */
static bool cgroup_file_matches(const struct cgroup_file *file, const char *path, size_t len)
{
	if (file->cgroup_len == 1)
		return true; /* Cgroup=/ matches everything */
	if (file->cgroup_len > len || memcmp(file->cgroup, path, file->cgroup_len))
		return false;
	return path[file->cgroup_len] == '\0' || path[file->cgroup_len] == '/';
}

/* The most specific file that matches path and sets `key` (any key if key < 0). */
static const struct cgroup_file *config_find(const struct uz_config *config, const char *path,
					     int key)
{
	const struct cgroup_file *best = NULL;
	size_t len = strlen(path);

	for (size_t i = 0; i < config->n_files; i++) {
		const struct cgroup_file *file = &config->files[i];

		if (key >= 0 && !(file->limits.set & (1U << key)))
			continue;
		if (!cgroup_file_matches(file, path, len))
			continue;
		if (!best || file->cgroup_len > best->cgroup_len)
			best = file;
	}
	return best;
}

const char *config_match_cgroup(const struct uz_config *config, const char *cgroup_path)
{
	const struct cgroup_file *file;
	char path[CGROUP_PATH_MAX];

	if (normalize_cgroup_path(cgroup_path, path, sizeof(path)) < 0)
		return NULL;
	file = config_find(config, path, -1);
	return file ? file->cgroup : NULL;
}

unsigned int config_cgroup_keys(const struct uz_config *config, const char *cgroup_path)
{
	char path[CGROUP_PATH_MAX];
	unsigned int keys = 0;
	size_t len;

	if (normalize_cgroup_path(cgroup_path, path, sizeof(path)) < 0)
		return 0;
	len = strlen(path);
	for (size_t i = 0; i < config->n_files; i++)
		if (cgroup_file_matches(&config->files[i], path, len))
			keys |= config->files[i].limits.set;
	return keys;
}

/* Where key comes from: the chain, then [Defaults], then built-in. */
static const struct limits *config_source(const struct uz_config *config, const char *path,
					  enum limit_key key, const struct limits *builtin)
{
	const struct cgroup_file *file = config_find(config, path, (int)key);

	if (file)
		return &file->limits;
	if (config->defaults.set & (1U << key))
		return &config->defaults;
	return builtin;
}

int config_policy_for_cgroup(const struct uz_config *config, const char *cgroup_path,
			     const struct cgroup_memory_limits *limits, struct uz_policy *out)
{
	const struct cgroup_memory_limits unlimited = {UZ_UNLIMITED, UZ_UNLIMITED};
	char path[CGROUP_PATH_MAX];
	struct limits builtin;
	struct uz_policy policy;
	struct amount amount;
	uint64_t base;
	int result = 0, r;

	r = normalize_cgroup_path(cgroup_path, path, sizeof(path));
	if (r < 0)
		return r;
	if (!limits)
		limits = &unlimited;
	limits_builtin(&builtin);
	uz_policy_default(&policy);

	amount = config_source(config, path, LIMIT_RESIDENT_MAX, &builtin)->resident_max;
	if (amount.kind == AMOUNT_PERCENT) {
		base = limits->high != UZ_UNLIMITED ? limits->high : limits->max;
		if (base == UZ_UNLIMITED) {
			policy.resident_max = UZ_DEFAULT_RESIDENT_MAX;
			result = CONFIG_POLICY_UNRESOLVED;
		} else {
			policy.resident_max = percent_of(base, amount.percent);
		}
	} else {
		policy.resident_max = amount.bytes;
	}
	if (policy.resident_max != UZ_UNLIMITED)
		policy.resident_max = uz_max(policy.resident_max & UZ_PAGE_MASK, UZ_PAGE_SIZE);

	amount = config_source(config, path, LIMIT_RESIDENT_LOW, &builtin)->resident_low;
	if (amount.kind == AMOUNT_PERCENT)
		policy.resident_low = percent_of(policy.resident_max, amount.percent);
	else
		policy.resident_low = uz_min(amount.bytes, policy.resident_max);
	if (policy.resident_low != UZ_UNLIMITED)
		policy.resident_low &= UZ_PAGE_MASK;

	amount = config_source(config, path, LIMIT_POOL_MAX, &builtin)->pool_max;
	policy.pool_max = amount.kind == AMOUNT_PERCENT
			      ? percent_of(config->memory_total, amount.percent)
			      : amount.bytes;
	policy.swap_max = config_source(config, path, LIMIT_SWAP_MAX, &builtin)->swap_max.bytes;
	policy.writeback = config_source(config, path, LIMIT_WRITEBACK, &builtin)->writeback;
	{
		const struct limits *src = config_source(config, path, LIMIT_COMPRESSOR, &builtin);

		policy.algo = src->algo;
		policy.level = src->level;
	}
	policy.fault_around_max =
	    config_source(config, path, LIMIT_FAULT_AROUND, &builtin)->fault_around;
	policy.unit_pages =
	    config_source(config, path, LIMIT_COMPRESSION_UNIT, &builtin)->unit_pages;
	policy.poor_threshold = config->daemon.poor_threshold;
	policy.poor_policy = config->daemon.poor_policy;
	*out = policy;
	return result;
}

/* --- dump ---------------------------------------------------------------- */

static void dump_size(FILE *out, const char *name, uint64_t bytes)
{
	static const char suffixes[] = "KMGT";
	int shift = 0;

	if (bytes == UZ_UNLIMITED) {
		fprintf(out, "%s=infinity\n", name);
		return;
	}
	while (shift < 4 && bytes && !(bytes & ((1ULL << 10) - 1))) {
		bytes >>= 10;
		shift++;
	}
	if (shift)
		fprintf(out, "%s=%" PRIu64 "%c\n", name, bytes, suffixes[shift - 1]);
	else
		fprintf(out, "%s=%" PRIu64 "\n", name, bytes);
}

static void dump_amount(FILE *out, const char *name, const struct amount *amount)
{
	if (amount->kind == AMOUNT_PERCENT)
		fprintf(out, "%s=%g%%\n", name, amount->percent);
	else
		dump_size(out, name, amount->bytes);
}

static void dump_limits(FILE *out, const struct limits *limits, bool all)
{
	if (all || limits->set & (1U << LIMIT_RESIDENT_MAX))
		dump_amount(out, "ResidentMax", &limits->resident_max);
	if (all || limits->set & (1U << LIMIT_RESIDENT_LOW))
		dump_amount(out, "ResidentLow", &limits->resident_low);
	if (all || limits->set & (1U << LIMIT_POOL_MAX))
		dump_amount(out, "PoolMax", &limits->pool_max);
	if (all || limits->set & (1U << LIMIT_SWAP_MAX))
		dump_amount(out, "SwapMax", &limits->swap_max);
	if (all || limits->set & (1U << LIMIT_WRITEBACK))
		fprintf(out, "Writeback=%s\n", limits->writeback ? "yes" : "no");
	if (all || limits->set & (1U << LIMIT_COMPRESSOR)) {
		if (limits->level)
			fprintf(out, "Compressor=%s:%d\n", compressor_name(limits->algo),
				limits->level);
		else
			fprintf(out, "Compressor=%s\n", compressor_name(limits->algo));
	}
	if (all || limits->set & (1U << LIMIT_FAULT_AROUND))
		fprintf(out, "FaultAround=%u\n", limits->fault_around);
	if (all || limits->set & (1U << LIMIT_COMPRESSION_UNIT))
		fprintf(out, "CompressionUnit=%u\n", limits->unit_pages);
}

int config_dump(const struct uz_config *config, FILE *out)
{
	const struct config_daemon *d = &config->daemon;
	struct limits defaults;

	fprintf(out, "# effective configuration (main file \"%s\", cgroup.d \"%s\")\n",
		config->main_path, config->cgroup_dir);
	fprintf(out, "[Daemon]\nSocket=%s\nControlSocket=%s\n", d->socket_path,
		d->control_socket_path);
	if (d->control_group_set)
		fprintf(out, "ControlGroup=%s\n", config->control_group);
	fprintf(out,
		"FaultThreads=%u\nLogLevel=%s\nMaxClients=%u\nMaxClientsPerUser=%u\n"
		"MaxRegionsPerClient=%u\n\n[Pool]\n",
		d->fault_threads, log_level_name(d->log_level), d->max_clients,
		d->max_clients_per_user, d->max_regions_per_client);
	dump_amount(out, "MaxSize", &config->pool_max_size);
	fprintf(out, "AcceptThreshold=%u%%\nPoorThreshold=%u\nPoorPolicy=%s\n\n[Swap]\nFile=%s\n",
		d->accept_threshold_percent, d->poor_threshold,
		d->poor_policy == UZ_POOR_REJECT ? "reject" : "keep", d->swap_file);
	if (d->swap_backend == CONFIG_SWAP_NBD)
		fprintf(out, "Backend=nbd\nURI=%s\nReadTimeout=%ums\n",
			d->swap_uri ? d->swap_uri : "", d->swap_read_timeout_ms);
	else
		dump_size(out, "Size", d->swap_size);

	/* [Defaults]: what is set, over the built-in values */
	limits_builtin(&defaults);
	for (int key = 0; key < LIMIT__COUNT; key++) {
		if (!(config->defaults.set & (1U << key)))
			continue;
		switch (key) {
		case LIMIT_RESIDENT_MAX:
			defaults.resident_max = config->defaults.resident_max;
			break;
		case LIMIT_RESIDENT_LOW:
			defaults.resident_low = config->defaults.resident_low;
			break;
		case LIMIT_POOL_MAX:
			defaults.pool_max = config->defaults.pool_max;
			break;
		case LIMIT_SWAP_MAX:
			defaults.swap_max = config->defaults.swap_max;
			break;
		case LIMIT_WRITEBACK:
			defaults.writeback = config->defaults.writeback;
			break;
		case LIMIT_COMPRESSOR:
			defaults.algo = config->defaults.algo;
			defaults.level = config->defaults.level;
			break;
		case LIMIT_FAULT_AROUND:
			defaults.fault_around = config->defaults.fault_around;
			break;
		case LIMIT_COMPRESSION_UNIT:
			defaults.unit_pages = config->defaults.unit_pages;
			break;
		}
	}
	fprintf(out, "\n[Defaults]\n");
	dump_limits(out, &defaults, true);

	for (size_t i = 0; i < config->n_files; i++) {
		fprintf(out, "\n# %s\n[Match]\nCgroup=%s\n[Limits]\n", config->files[i].path,
			config->files[i].cgroup);
		dump_limits(out, &config->files[i].limits, false);
	}
	return ferror(out) ? -EIO : 0;
}
