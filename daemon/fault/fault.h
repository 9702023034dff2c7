/* SPDX-License-Identifier: MIT */
/*
 * Fault threads: each owns a set of clients completely (their uffd, their
 * socket after the handshake, their page index and eviction batch) and
 * serves them from one epoll loop.  See fault.c for the story.
 *
 * The only ways in from another thread are the functions below; they take
 * the thread's inbox lock (never held across a system call other than the
 * eventfd write that wakes the thread).
 */
#pragma once

#include <stdint.h>

struct daemon;
struct client;
struct fault_thread;

/* Start a fault thread. */
int fault_thread_new(struct fault_thread **out, struct daemon *daemon, unsigned index);
/* Stop the thread (no drain), free the clients it still owns, join, free. */
struct fault_thread *fault_thread_free(struct fault_thread *thread);

/* Hand a client over after its handshake (main thread).  Never fails. */
void fault_thread_adopt(struct fault_thread *thread, struct client *client);
/*
 * Tell the thread that some of its clients have a new assignment in
 * client.assign (main thread: cgroup re-check, reload, shrink).
 */
void fault_thread_kick_assign(struct fault_thread *thread);
/*
 * A counter the thread bumps on every loop iteration, and at least every
 * 500 ms when idle: it stops moving only when the thread is stuck.
 */
uint64_t fault_thread_heartbeat(const struct fault_thread *thread);
/*
 * Ask the thread to give every page of every client back (SHUTDOWN) and to
 * exit once all its clients are gone or deadline_usec (CLOCK_MONOTONIC)
 * passes.  fault_thread_join() waits for that.
 */
void fault_thread_drain(struct fault_thread *thread, uint64_t deadline_usec);
void fault_thread_join(struct fault_thread *thread);
/* The daemon a thread belongs to. */
struct daemon *fault_thread_daemon(struct fault_thread *thread);
