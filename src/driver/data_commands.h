/* data_commands.h - the dataset subcommands: convert (IDX to HDF5), synth (a synthetic
 * learnable set of any size) and info (geometry and a full check). */
#ifndef DDT_DRIVER_DATA_COMMANDS_H
#define DDT_DRIVER_DATA_COMMANDS_H

#include "driver/job.h"
#include "driver/options.h"

/* Each runs on every rank and returns the agreed status (already printed if not OK). */
ddt_status convert_run(job *j, const options *opts);
ddt_status synth_run(job *j, const options *opts);
ddt_status info_run(job *j, const options *opts);

#endif
