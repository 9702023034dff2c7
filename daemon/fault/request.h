/* SPDX-License-Identifier: MIT */
/*
 * A client's socket messages and the requests they queue (request.c), on
 * its fault thread.
 */
#pragma once

#include <stdbool.h>
#include <stdint.h>

struct client;
struct fault_thread;

/* Read and handle the client's socket messages (a bounded number), then run its requests. */
void fault_client_handle_socket(struct fault_thread *t, struct client *c);
/*
 * Is a FORK_DONE waiting in the client's socket?  Reads messages ahead
 * into the client's backlog without handling any (at most
 * CLIENT_BACKLOG_MAX): vmevent.c asks while it applies the journal, when
 * nothing may act on the client's pages.  fault_client_handle_socket()
 * handles the backlog first.
 */
bool fault_client_fork_done_queued(struct client *c);
/* Messages read ahead wait in the backlog (the socket may have nothing left to wake us). */
bool fault_client_backlog_pending(const struct client *c);
/* Queue a request (CLIENT_REQ_*).  -EBADMSG: the queue is full. */
int fault_request_push(struct client *c, uint32_t type, uint32_t seq, uint64_t start, uint64_t end,
		       uint32_t arg);
/* Run the client's queued requests as far as they go. */
void fault_client_run_requests(struct fault_thread *t, struct client *c);
