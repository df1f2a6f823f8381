/* hdf5_storage.h - private to src/io: does an HDF5 dataset hold the values its shape declares?
 *
 * HDF5 answers a read of values that were never stored with the dataset's fill value, and
 * follows external storage and links to other files, all without complaint. A file of a few
 * KB can so declare 2^40 rows, or take its "features" from /etc/passwd. This check, run on
 * every dataset ddtrain reads (datasets, model files, checkpoints) before anything is read or
 * allocated for it, refuses:
 *   - a chunked dataset with chunks never written (HDF5 counts the stored ones);
 *   - a contiguous dataset never written, or whose values would lie past the end of the file;
 *   - a virtual dataset whose source file or dataset is missing, a source too small for what
 *     is mapped from it, values mapped from no source, pattern (printf-style) or unlimited
 *     mappings, and sources that are virtual themselves; each source is checked in turn;
 *   - HDF5 external storage (raw values in files outside the HDF5 file), unless allowed; when
 *     allowed, each external file must exist and hold the bytes taken from it.
 * Sources and external files are looked for where HDF5 1.10 looks (the HDF5_VDS_PREFIX and
 * HDF5_EXTFILE_PREFIX variables, the access lists' prefixes, the file's directory, the
 * working directory). The cost is one pass over the chunks the file really stores; nothing
 * is allocated per chunk or per row. Call with the HDF5 lock held (hdf5_lock.h).
 *
 * Usage:
 *     storage_rules rules = {.allow_external = false, .external_hint = NULL};
 *     DDT_CHECK(hdf5_check_storage(dataset, "model.h5: dense_0/weight", &rules));
 */
#ifndef DDT_IO_HDF5_STORAGE_H
#define DDT_IO_HDF5_STORAGE_H

#include <stdbool.h>
#include <stdint.h>

#include "util/status.h"

/* The reason given for refusing external data, shared with the callers' own link checks. */
#define HDF5_EXTERNAL_REFUSED                                                                      \
    "ddtrain refuses external data by default, since it can point at any file"

typedef struct storage_rules {
    bool allow_external;       /* read HDF5 external storage (checked) instead of refusing it */
    const char *external_hint; /* appended to a refusal of external storage; may be NULL */
} storage_rules;

/* DDT_OK if the open dataset `dataset` (an hid_t) holds every value its shape declares;
 * otherwise DDT_ERR_FORMAT (DDT_ERR_IO for a missing source or external file) with a message
 * that starts with `where` (e.g. "data.h5: /features") and says what is missing. */
ddt_status hdf5_check_storage(int64_t dataset, const char *where, const storage_rules *rules);

#endif
