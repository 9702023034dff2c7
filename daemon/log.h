/* SPDX-License-Identifier: MIT */
/*
 * Logging of the daemon: syslog levels (LOG_ERR .. LOG_DEBUG), to the
 * journal (native protocol) when uz_log_to_journal is set — main.c sets it
 * when JOURNAL_STREAM says stderr is the journal — else to stderr as
 * "uzswapd: message" lines.
 *
 * Only the daemon's top levels log (main.c, the handshake on the main
 * thread, the main thread's handling of departed clients).  The fault
 * threads never log: a client that leaves is queued for the main thread
 * (daemon_client_left(), daemon.h), which logs it.
 *
 * Events an operator filters on carry a MESSAGE_ID= (one fixed 128-bit id
 * per kind of event, like systemd's catalog ids; systemd/uzswap.catalog
 * explains each) and fields of their own:
 *
 *   UZSWAP_CLIENT_PID=   the client's pid (in the daemon's pid namespace)
 *   UZSWAP_CLIENT_ID=    the daemon's number for the client (uzswapctl clients)
 *   UZSWAP_CLIENT_UID=   its uid
 *   UZSWAP_COMM=         its command name (from its HELLO, sanitized)
 *   UZSWAP_CGROUP=       the cgroup it was matched to (uzswapctl clients)
 *
 * and per kind, e.g. UZSWAP_CONFIG= (reload), UZSWAP_BYTES= (shrink).
 * Filter with `journalctl -u uzswapd MESSAGE_ID=...` or
 * `journalctl UZSWAP_CGROUP=/system.slice/redis-server.service`.
 */
#pragma once

#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>
#include <syslog.h>

/* A client joined (the handshake succeeded). */
#define UZ_MESSAGE_CLIENT_JOINED "73c4143e1fd641eb9c8ac1c7f4069985"
/* A client left: it exited or disconnected, was dropped, or got its pages back at a stop. */
#define UZ_MESSAGE_CLIENT_LEFT "42d182265467436b8293d46bc43b0b75"
/* A connection was refused at the handshake (UZSWAP_REASON= says why). */
#define UZ_MESSAGE_CLIENT_REFUSED "0c5a1f9455d541eea9ce28091c186ba0"
/* The configuration was reloaded (SIGHUP, uzswapctl reload, systemctl reload). */
#define UZ_MESSAGE_RELOADED "ff29da53abce4b8a9779d815f5e7cb14"
/* A reload was refused; the running configuration is kept (UZSWAP_REASON=: FILE:LINE: KEY). */
#define UZ_MESSAGE_RELOAD_REFUSED "f2b834e1bbae4bb19fa618a455d4a19c"
/* uzswapctl shrink was asked of a cgroup. */
#define UZ_MESSAGE_SHRINK "046afe7bae3b4268b78e59ac633dd8f4"
/*
 * A restarted daemon took a client back over with the pages it held
 * (restart without loss).  Defined for the restart code to emit, with the
 * client's fields (uz_log_event with a struct uz_log_client) and UZSWAP_PAGES= recovered.
 */
#define UZ_MESSAGE_CLIENT_RECOVERED "90e73ab6823b44f183361da728dfef26"
/* A fault thread is stuck: the watchdog pings stop and systemd will restart the daemon. */
#define UZ_MESSAGE_WATCHDOG_STUCK "b54ce8bd2f514d0b9d7b0ac175f962e8"

/* Who a message is about; any field may be left 0 / NULL and is then not sent. */
struct uz_log_client {
	uint64_t id;
	pid_t pid;
	uid_t uid;
	bool uid_set;
	const char *comm;
	const char *cgroup;
};

extern int uz_log_max_level;
extern bool uz_log_to_journal;

void uz_log(int level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/*
 * A message with a MESSAGE_ID= (message_id may be NULL), the client's
 * fields (client may be NULL) and extra journal fields: a NULL-terminated
 * array of "NAME=value" strings (may be NULL).  On stderr only the text.
 */
void uz_log_event(int level, const char *message_id, const struct uz_log_client *client,
		  const char *const *fields, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));
/* "err", "warning", ... or "0".."7" -> LOG_*; -EINVAL otherwise. */
int uz_log_parse_level(const char *name);
