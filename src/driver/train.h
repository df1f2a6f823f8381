/* train.h - the `ddtrain train` and `ddtrain eval` subcommands. */
#ifndef DDT_DRIVER_TRAIN_H
#define DDT_DRIVER_TRAIN_H

#include "driver/job.h"
#include "driver/options.h"

/* Run on every rank; return the agreed status (already printed if not OK). */
ddt_status train_run(job *j, const options *opts);
ddt_status eval_run(job *j, const options *opts);

#endif
