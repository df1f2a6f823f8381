/* idx.c - streaming IDX reader (MNIST's format) over zlib, which also reads uncompressed files. */
#include "io/idx.h"

#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <zlib.h>

#include "util/files.h"

#define IDX_TYPE_UNSIGNED_BYTE 0x08

struct idx_file {
    char *path;
    gzFile stream;
    int dimension_count;
    int64_t dimensions[255];
    int64_t item_count;
    size_t item_size;
    int64_t items_read;
};

/* Reads exactly `size` bytes; returns how many were read before the end or an error. */
static size_t read_fully(gzFile stream, void *out, size_t size, int *error) {
    size_t done = 0;
    *error = 0;
    while (done < size) {
        size_t want = size - done;
        if (want > (size_t)INT_MAX / 2) want = (size_t)INT_MAX / 2;
        int got = gzread(stream, (unsigned char *)out + done, (unsigned)want);
        if (got < 0) {
            *error = 1;
            break;
        }
        if (got == 0) break;
        done += (size_t)got;
    }
    return done;
}

static uint32_t big_endian_u32(const unsigned char *bytes) {
    return (uint32_t)bytes[0] << 24 | (uint32_t)bytes[1] << 16 | (uint32_t)bytes[2] << 8 |
           (uint32_t)bytes[3];
}

ddt_status idx_open(const char *path, idx_file **out) {
    *out = NULL;
    /* A regular file only, opened without blocking: gzopen() would wait on a FIFO. */
    int fd;
    DDT_CHECK(file_open_regular_input(path, NULL, &fd));
    idx_file *f = calloc(1, sizeof *f);
    if (!f || !(f->path = strdup(path))) {
        free(f);
        close(fd);
        return ddt_error(DDT_ERR_MEMORY, "%s: out of memory", path);
    }
    ddt_status status = DDT_OK;
    errno = 0;
    f->stream = gzdopen(fd, "rb"); /* owns fd from here */
    if (!f->stream) {
        status = ddt_error(DDT_ERR_IO, "%s: cannot open: %s", path,
                           errno ? strerror(errno) : "out of memory");
        close(fd);
        goto fail;
    }
    gzbuffer(f->stream, 1 << 17);

    unsigned char header[4];
    int error;
    size_t got = read_fully(f->stream, header, 4, &error);
    if (got < 4) {
        status = ddt_error(DDT_ERR_FORMAT, "%s: not an IDX file (only %zu bytes)", path, got);
        goto fail;
    }
    uint32_t magic = big_endian_u32(header);
    if (header[0] != 0 || header[1] != 0 || header[3] == 0) {
        status = ddt_error(DDT_ERR_FORMAT, "%s: not an IDX file (magic 0x%08x)", path, magic);
        goto fail;
    }
    if (header[2] != IDX_TYPE_UNSIGNED_BYTE) {
        status = ddt_error(DDT_ERR_FORMAT,
                           "%s: IDX element type 0x%02x is not supported (only unsigned bytes, "
                           "0x08)",
                           path, header[2]);
        goto fail;
    }
    f->dimension_count = header[3];
    unsigned char sizes[255 * 4];
    size_t size_bytes = (size_t)f->dimension_count * 4;
    if (read_fully(f->stream, sizes, size_bytes, &error) < size_bytes) {
        status = ddt_error(DDT_ERR_FORMAT, "%s: truncated IDX header (%d dimensions declared)",
                           path, f->dimension_count);
        goto fail;
    }
    f->item_size = 1;
    for (int i = 0; i < f->dimension_count; i++) {
        f->dimensions[i] = big_endian_u32(sizes + 4 * i);
        if (i == 0) continue;
        /* Every dimension is < 2^32; stop before the product can overflow. */
        if (f->dimensions[i] != 0 && f->item_size > ((size_t)1 << 40) / (size_t)f->dimensions[i]) {
            status = ddt_error(DDT_ERR_FORMAT, "%s: IDX items are too large", path);
            goto fail;
        }
        f->item_size *= (size_t)f->dimensions[i];
    }
    f->item_count = f->dimensions[0];
    *out = f;
    return DDT_OK;

fail:
    idx_close(f);
    return status;
}

void idx_close(idx_file *f) {
    if (!f) return;
    if (f->stream) gzclose(f->stream);
    free(f->path);
    free(f);
}

int idx_dimension_count(const idx_file *f) {
    return f->dimension_count;
}

int64_t idx_dimension(const idx_file *f, int i) {
    if (i < 0 || i >= f->dimension_count) return 0;
    return f->dimensions[i];
}

int64_t idx_item_count(const idx_file *f) {
    return f->item_count;
}

size_t idx_item_size(const idx_file *f) {
    return f->item_size;
}

ddt_status idx_read_items(idx_file *f, int64_t count, uint8_t *out) {
    if (count < 0 || count > f->item_count - f->items_read)
        return ddt_error(DDT_ERR_INTERNAL, "%s: asked for %lld items after %lld, but it has %lld",
                         f->path, (long long)count, (long long)f->items_read,
                         (long long)f->item_count);
    size_t bytes = (size_t)count * f->item_size;
    int error;
    size_t got = read_fully(f->stream, out, bytes, &error);
    int64_t complete = f->item_size ? (int64_t)(got / f->item_size) : count;
    f->items_read += complete;
    if (got == bytes) return DDT_OK;
    int zlib_error = Z_OK;
    const char *message = gzerror(f->stream, &zlib_error);
    /* A cut-off gzip stream is truncation too; only real corruption gets zlib's words. */
    if (error && zlib_error != Z_BUF_ERROR)
        return ddt_error(DDT_ERR_FORMAT, "%s: cannot read after %lld of %lld items: %s", f->path,
                         (long long)f->items_read, (long long)f->item_count, message);
    return ddt_error(DDT_ERR_FORMAT, "%s: ends after %lld of %lld items", f->path,
                     (long long)f->items_read, (long long)f->item_count);
}
