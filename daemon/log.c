// SPDX-License-Identifier: MIT
/*
 * The daemon's logging (log.h): one message is formatted once, then sent
 * to the journal with sd_journal_sendv() — MESSAGE=, PRIORITY=,
 * SYSLOG_IDENTIFIER=uzswapd, and for events MESSAGE_ID= and the UZSWAP_*
 * fields — or written to stderr as "uzswapd: message".  A journal that
 * refuses the message (gone, full) gets it on stderr instead, which under
 * systemd is the journal's stream: nothing is lost silently.
 *
 * Called from the main thread only (see log.h); errno is preserved so
 * callers can log with %m and still return -errno.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <sys/uio.h>

#include <systemd/sd-journal.h>

#include "log.h"
#include "util.h"

#define LOG_LINE_MAX   1024
#define LOG_FIELDS_MAX 8 /* extra NAME=value fields of one event */

int uz_log_max_level = LOG_INFO;
bool uz_log_to_journal;

static void log_send(int level, const char *message_id, const struct uz_log_client *client,
		     const char *const *fields, const char *line)
{
	char message[LOG_LINE_MAX + 16], priority[16], id[48], pid[32], client_id[48], uid[32];
	char comm[48], cgroup[4096 + 16];
	struct iovec iov[8 + LOG_FIELDS_MAX];
	unsigned n = 0;

#define LOG_IOV(buf, ...)                                                                          \
	do {                                                                                       \
		snprintf(buf, sizeof(buf), __VA_ARGS__);                                           \
		iov[n++] = (struct iovec){.iov_base = buf, .iov_len = strlen(buf)};                \
	} while (0)

	if (!uz_log_to_journal)
		goto to_stderr;
	LOG_IOV(message, "MESSAGE=%s", line);
	LOG_IOV(priority, "PRIORITY=%d", level);
	iov[n++] = (struct iovec){.iov_base = "SYSLOG_IDENTIFIER=uzswapd", .iov_len = 25};
	if (message_id)
		LOG_IOV(id, "MESSAGE_ID=%s", message_id);
	if (client) {
		if (client->pid > 0)
			LOG_IOV(pid, "UZSWAP_CLIENT_PID=%d", (int)client->pid);
		if (client->id)
			LOG_IOV(client_id, "UZSWAP_CLIENT_ID=%" PRIu64, client->id);
		if (client->uid_set)
			LOG_IOV(uid, "UZSWAP_CLIENT_UID=%u", (unsigned)client->uid);
		if (client->comm)
			LOG_IOV(comm, "UZSWAP_COMM=%s", client->comm);
		if (client->cgroup)
			LOG_IOV(cgroup, "UZSWAP_CGROUP=%s", client->cgroup);
	}
	for (unsigned i = 0; fields && fields[i] && i < LOG_FIELDS_MAX; i++)
		iov[n++] =
		    (struct iovec){.iov_base = (void *)fields[i], .iov_len = strlen(fields[i])};
#undef LOG_IOV
	if (sd_journal_sendv(iov, (int)n) >= 0)
		return;
to_stderr:
	fprintf(stderr, "uzswapd: %s\n", line);
}

__attribute__((format(printf, 5, 0))) static void log_vevent(int level, const char *message_id,
							     const struct uz_log_client *client,
							     const char *const *fields,
							     const char *fmt, va_list ap)
{
	char line[LOG_LINE_MAX];
	int saved_errno = errno;

	if (level > uz_log_max_level)
		return;
	vsnprintf(line, sizeof(line), fmt, ap); /* errno intact for %m */
	log_send(level, message_id, client, fields, line);
	errno = saved_errno;
}

void uz_log_event(int level, const char *message_id, const struct uz_log_client *client,
		  const char *const *fields, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	log_vevent(level, message_id, client, fields, fmt, ap);
	va_end(ap);
}

void uz_log(int level, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	log_vevent(level, NULL, NULL, NULL, fmt, ap);
	va_end(ap);
}

int uz_log_parse_level(const char *name)
{
	static const char *const names[] = {
	    [LOG_EMERG] = "emerg", [LOG_ALERT] = "alert",     [LOG_CRIT] = "crit",
	    [LOG_ERR] = "err",	   [LOG_WARNING] = "warning", [LOG_NOTICE] = "notice",
	    [LOG_INFO] = "info",   [LOG_DEBUG] = "debug",
	};

	for (int i = 0; i < (int)UZ_ARRAY_SIZE(names); i++)
		if (strcasecmp(name, names[i]) == 0)
			return i;
	if (strcasecmp(name, "error") == 0)
		return LOG_ERR;
	if (strcasecmp(name, "warn") == 0)
		return LOG_WARNING;
	if (name[0] >= '0' && name[0] <= '7' && name[1] == 0)
		return name[0] - '0';
	return -EINVAL;
}
