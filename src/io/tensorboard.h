/* tensorboard.h - TensorBoard event files: scalars, text and a custom-scalars layout, written
 * so that `tensorboard --logdir DIR` shows a run while it is still going.
 *
 * An event file is a sequence of TFRecords, each holding one serialized tensorflow.Event
 * protobuf. This writer encodes the few messages it needs by hand (Event, Summary,
 * Summary.Value, SummaryMetadata, TensorProto and the custom-scalars Layout: about 150 lines
 * with the framing), instead of linking protobuf-c: the field numbers are frozen by
 * TensorFlow's compatibility promise, protobuf-c would add a code generator at build time and
 * a run-time library to every cluster install, and the framing (length, masked CRC32C) is
 * outside protobuf anyway. tests/test_io_tensorboard.c checks the bytes against messages
 * serialized by the protobuf library and tests/e2e/tensorboard.sh reads a training run's files
 * with TensorBoard's own reader.
 *
 * Every record goes to the file with one write() as soon as it is encoded (no user-space
 * buffering), so a reader sees whole records while training runs. A writer never opens an
 * existing file: each run gets a new file, named as TensorFlow's writers name theirs,
 * DIR/events.out.tfevents.<seconds>.<host>.<pid>.<n>, with n the first number not taken.
 *
 * Wall times are seconds since the Unix epoch; 0 means "now". Scalars are stored as float32
 * (TensorBoard's simple_value).
 *
 * Ownership: tensorboard_open() returns a writer that tensorboard_close() frees.
 *
 * Usage:
 *     tensorboard_writer *w;
 *     DDT_CHECK(tensorboard_open("runs/a", "node01", &w));
 *     tensorboard_scalar values[] = {{"train/loss", 0.42}, {"train/learning_rate", 0.05}};
 *     DDT_CHECK(tensorboard_write_scalars(w, 0, 100, values, 2));
 *     DDT_CHECK(tensorboard_write_text(w, 0, 0, "config", "    --lr 0.05"));
 *     tensorboard_close(w);
 */
#ifndef DDT_IO_TENSORBOARD_H
#define DDT_IO_TENSORBOARD_H

#include <stddef.h>
#include <stdint.h>

#include "util/status.h"

typedef struct tensorboard_writer tensorboard_writer;

typedef struct tensorboard_scalar {
    const char *tag; /* e.g. "train/loss"; TensorBoard groups charts by the part before '/' */
    double value;
} tensorboard_scalar;

/* A chart of the custom-scalars dashboard: several tags (regular expressions) on one plot. */
typedef struct tensorboard_chart {
    const char *category; /* consecutive charts with the same category form one section */
    const char *title;
    const char *const *tags; /* NULL-terminated regular expressions */
} tensorboard_chart;

/* Creates `directory` (and its parents) if needed and a new event file in it, and writes the
 * file-version record. `host` goes into the file name ('/' replaced). DDT_ERR_IO if the
 * directory or the file cannot be created. */
ddt_status tensorboard_open(const char *directory, const char *host, tensorboard_writer **out);

/* The event file's path. */
const char *tensorboard_path(const tensorboard_writer *writer);

/* One event at `step` holding `count` scalars. */
ddt_status tensorboard_write_scalars(tensorboard_writer *writer, double wall_time, int64_t step,
                                     const tensorboard_scalar *scalars, int count);

/* Text for TensorBoard's text dashboard, rendered as Markdown (indent lines by four spaces
 * for a preformatted block). */
ddt_status tensorboard_write_text(tensorboard_writer *writer, double wall_time, int64_t step,
                                  const char *tag, const char *markdown);

/* The custom-scalars dashboard's layout (written once, at any step). */
ddt_status tensorboard_write_layout(tensorboard_writer *writer, double wall_time,
                                    const tensorboard_chart *charts, int count);

/* Closes the file and frees the writer; NULL is ignored. */
void tensorboard_close(tensorboard_writer *writer);

/* CRC-32C (Castagnoli) of data, and the masked form TFRecords store: ((c >> 15) | (c << 17))
 * + 0xa282ead8. Exposed for tests. */
uint32_t tensorboard_crc32c(const void *data, size_t size);
uint32_t tensorboard_masked_crc32c(const void *data, size_t size);

#endif
