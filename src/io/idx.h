/* idx.h - streaming reader for IDX files (the MNIST / Fashion-MNIST format), gzipped or not.
 *
 * IDX: big-endian magic 0x0000TTNN (TT = element type, 0x08 = unsigned byte; NN = number of
 * dimensions), then NN big-endian uint32 sizes, then the data. Only unsigned-byte files are
 * supported (all of MNIST). Gzip is detected by zlib, so .gz and plain files both work.
 *
 * Usage:
 *     idx_file *f;
 *     DDT_CHECK(idx_open("train-images-idx3-ubyte.gz", &f));
 *     int64_t items = idx_item_count(f); size_t per = idx_item_size(f);
 *     DDT_CHECK(idx_read_items(f, 100, buffer));   // next 100 items
 *     idx_close(f);
 */
#ifndef DDT_IO_IDX_H
#define DDT_IO_IDX_H

#include <stddef.h>
#include <stdint.h>

#include "util/status.h"

typedef struct idx_file idx_file;

/* Errors name the file: missing, not IDX (bad magic), unsupported type, truncated header. */
ddt_status idx_open(const char *path, idx_file **out);
void idx_close(idx_file *f);

int idx_dimension_count(const idx_file *f);
int64_t idx_dimension(const idx_file *f, int i);
int64_t idx_item_count(const idx_file *f);  /* first dimension */
size_t idx_item_size(const idx_file *f);    /* product of the other dimensions (bytes) */

/* Reads the next `count` items; DDT_ERR_FORMAT naming the file if it ends early. */
ddt_status idx_read_items(idx_file *f, int64_t count, uint8_t *out);

#endif
