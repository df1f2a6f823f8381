/* convert.h - private to src/driver: the forms of `ddtrain convert` and what they share.
 *
 *   idx     convert.c          IDX (MNIST, Fashion-MNIST) to feature datasets
 *   images  convert_images.c   an ImageFolder-style directory of PNG/JPEG files to images
 *   text    convert_tokens.c   bytes of text files to a token dataset (vocab 256)
 *   tokens  convert_tokens.c   nanoGPT / llm.c token files to a token dataset
 *
 * Every form writes all its outputs under temporary names (dataset_writer_close_unpublished)
 * and publishes them together at the end (convert_outputs_publish), so a failure anywhere
 * leaves no output file behind, new or half-written. With --val-fraction the training part
 * goes to OUT-train.h5 (or its shards OUT-train-0000k-of-0000K.h5) and the validation part
 * to OUT-val.h5, so a glob over the training shards never matches the validation file.
 *
 * Each form runs on rank 0 only (convert_command in convert.c agrees the result).
 *
 * Memory: every form (and synth) holds a bounded set of buffers whatever the data's size --
 * a block of rows (dataset_writer_block_rows), the writer's chunks (dataset_writer_memory_
 * bytes), for images one decoded image -- and plans them against --host-staging-limit
 * before it reads anything (convert_memory_check), refusing with the numbers what does not
 * fit. Inputs are regular files only (util/files.h), and an output is never one of them.
 */
#ifndef DDT_DRIVER_CONVERT_H
#define DDT_DRIVER_CONVERT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "driver/options.h"
#include "util/files.h"
#include "util/status.h"

/* Finished outputs waiting to be published. */
typedef struct convert_outputs {
    int count, capacity;
    char **paths; /* where each goes */
    char **temps; /* where it is, complete, now */
} convert_outputs;

/* Records a finished output (its temporary file and its final path). */
ddt_status convert_outputs_add(convert_outputs *outputs, const char *path, const char *temp);
/* Publishes every recorded output in order (fsync, rename, fsync the directory); on a
 * failure removes the ones not yet published. Frees the list either way. */
ddt_status convert_outputs_publish(convert_outputs *outputs);
/* A failed command: removes every recorded temporary file and frees the list. */
void convert_outputs_discard(convert_outputs *outputs);

/* The path of part `suffix` ("-train", "-val") of `output`: the suffix goes before the
 * extension ("d/x.h5" -> "d/x-val.h5"). */
void convert_part_path(const char *output, const char *suffix, char *out, size_t size);

/* Where shard k of K of the training part goes: OUT's shards, or OUT-train's when there is
 * a validation part. */
void convert_train_shard_path(const char *output, bool validation, int shard, int shards, char *out,
                              size_t size);

/* Refuses (DDT_ERR_USAGE) any output -- the training shards and, with `validation`, the
 * validation file -- that is one of the inputs. */
ddt_status convert_check_outputs(const options *opts, bool validation, const file_role *inputs,
                                 int input_count);

/* The set-up check of -o (util/files.h file_output_prepare), before any input is read. A
 * character device (/dev/null) or a FIFO takes one file, written through in place; with
 * --shards K > 1 or --val-fraction it would name several files beside it (in /dev), which is
 * refused (DDT_ERR_USAGE). `writes_here`: this rank writes -o (a FIFO is opened and held, a
 * device tried). Also used by `ddtrain synth`. */
ddt_status convert_prepare_output(const options *opts, bool writes_here);

/* Rows held out for validation out of `rows` for --val-fraction F: round(F * rows), at least
 * 1 when F > 0; DDT_ERR_USAGE if that leaves fewer than `shards` training rows. */
ddt_status convert_validation_rows(const options *opts, int64_t rows, const char *unit,
                                   int64_t *out);

/* What a converter holds in host memory at once, part by part (for the message). */
typedef struct convert_memory {
    uint64_t bytes;
    char parts[768]; /* "a block of 2 rows 8.0 MiB, the writer's chunks 5.0 MiB" */
} convert_memory;

/* Adds a part: `what` and its bytes (saturating). */
void convert_memory_add(convert_memory *memory, const char *what, uint64_t bytes);
/* DDT_ERR_USAGE when the plan needs more than --host-staging-limit (0: no limit), naming
 * the parts and the limit, and `advice` (what else to change; may be NULL). `command` starts
 * the message ("convert images"). */
ddt_status convert_memory_check(const options *opts, const char *command,
                                const convert_memory *memory, const char *advice);

ddt_status convert_images(const options *opts);
ddt_status convert_text(const options *opts);
ddt_status convert_tokens(const options *opts);

#endif
