/* checkpointing.h - when a run writes checkpoints, writing them, and resuming from them.
 *
 * Policy: a checkpoint after every `every_steps` steps, after `every_seconds` of training (rank
 * 0's clock, agreed in the step's control values), when the run stops early (a signal or
 * --stop-after) and at the end. Rank 0 writes (the weights and optimizer state are the same
 * on every rank); the caller agrees on the outcome.
 *
 * Safety: the directory is locked for the run (one job per directory); a fresh run into a
 * directory holding another run's checkpoints is refused; a resume is checked against the run
 * before anything of it is used: the model, the seed, the optimizer, the global batch and the
 * data (dataset_identity) must match, unless resume_new_batch / resume_new_data say the
 * change is intended (a different number of ranks is always fine: the position is counted in
 * samples). The newest complete checkpoint is used; newer files that are not complete are
 * named in a warning; with none complete --resume says so loudly and starts fresh.
 *
 * Ownership: the checkpointing state lives in the trainer; checkpointing_free() drops the
 * lock.
 */
#ifndef DDT_TRAIN_CHECKPOINTING_H
#define DDT_TRAIN_CHECKPOINTING_H

#include <stdbool.h>
#include <stdint.h>

#include "io/checkpoint.h"
#include "util/status.h"

typedef struct checkpointing {
    const char *directory; /* NULL: no checkpoints */
    int64_t every_steps;   /* 0: not by steps */
    double every_seconds;  /* 0: not by time */
    int keep;
    double last_time;      /* when the last one was written (or the loop began) */
    checkpoint_lock *lock; /* rank 0 */
    char resumed_from[4096];
} checkpointing;

struct trainer;

/* Rank 0, before training (others return DDT_OK): the directory is usable, locked for this
 * job, and holds no other run's checkpoints unless resuming. */
ddt_status checkpointing_init(struct trainer *t);
/* Rank 0's contribution to the step's control values: has every_seconds passed? */
bool checkpointing_due_by_time(const checkpointing *c, double now);
/* Whether step `done` (counted from 1) ends with a checkpoint; the same on every rank. */
bool checkpointing_due(const checkpointing *c, int64_t done, bool agreed_by_time, bool stopping,
                       bool last_step);
/* Rank 0 writes a checkpoint of the state after `done` steps (others return DDT_OK). */
ddt_status checkpointing_write(struct trainer *t, int64_t done);
/* Collective: with --resume, rank 0 loads the newest complete checkpoint (checked against
 * the run) and every rank takes its weights, optimizer state and position; *resumed says
 * whether there was one. Without --resume, *resumed is false. Weights otherwise come from
 * the caller. */
ddt_status checkpointing_resume(struct trainer *t, bool *resumed);
void checkpointing_free(checkpointing *c);

#endif
