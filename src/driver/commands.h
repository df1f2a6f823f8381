/* commands.h - the subcommands: each turns its options into a library call, runs on every
 * rank, and returns a status that is the same on every rank (agreed on the job's control
 * communicator) or a communication failure the job must end with (job_end() sorts out which).
 *
 *   train    train_command.c: options -> train_config, then train_run() (src/train)
 *   eval     train_command.c: options -> eval_config, then eval_run() (src/train/evaluate.h)
 *   convert  convert.c (and convert_images.c, convert_tokens.c): IDX, image folders, text and
 *            token files to HDF5 datasets
 *   synth    data_commands.c: a synthetic learnable dataset of any size
 *   info     data_commands.c: a dataset's geometry and a full check
 *   generate train_command.c: options -> generate_config, then generate_run() (src/train)
 */
#ifndef DDT_DRIVER_COMMANDS_H
#define DDT_DRIVER_COMMANDS_H

#include "driver/job.h"
#include "driver/options.h"

ddt_status train_command(job *j, const options *opts);
ddt_status eval_command(job *j, const options *opts);
ddt_status convert_command(job *j, const options *opts);
ddt_status synth_command(job *j, const options *opts);
ddt_status info_command(job *j, const options *opts);
ddt_status generate_command(job *j, const options *opts);

#endif
