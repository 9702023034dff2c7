/* SPDX-License-Identifier: MIT */
/*
 * The spin gate: whether this host has a core to spare for a fault thread
 * that spins before it sleeps (fault_thread_wait in fault.c).
 *
 * Spinning pays only where a core would otherwise idle: there it saves the
 * wake-up of a sleeping fault thread (on the 2-vCPU VMs measured, the
 * program-seen fault fell from ~120 to ~55 µs), and where every core is
 * busy it takes CPU from the programs we serve or their neighbours.  The
 * gate samples /proc/stat and /proc/pressure/cpu every SPIN_GATE_PERIOD_MS:
 *
 *  - a closed gate opens when at least one whole core was idle over the
 *    period and tasks waited for a CPU at most SPIN_GATE_PRESSURE_MAX of
 *    it;
 *  - an open gate closes when the idle cores plus the time our threads
 *    spun (which gives way, and would be idle without us) come to less
 *    than three quarters of a core, or when tasks waited for a CPU more
 *    than SPIN_GATE_PRESSURE_MAX of the period (our spinning is then in
 *    someone's way).
 *
 * Without /proc/stat the gate stays shut; without PSI only idle time
 * counts.
 *
 * Thread-safe and cheap to ask: one atomic load, and at most one caller a
 * period samples (a trylock; a sample is a pread of one line and a
 * clock read, never on the fault path: it happens when a thread is about
 * to wait).
 */
#pragma once

#include <stdbool.h>
#include <stdint.h>

/* Whether a fault thread may spin now (now: uz_now_usec()). */
bool spin_gate_open(uint64_t now);
/* A fault thread spun this long (found work or not). */
void spin_gate_note_spin(uint64_t usec);
