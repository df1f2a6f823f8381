/* test_io_idx.c - the IDX reader on plain and gzipped files, and its error messages. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zlib.h>

#include "check.h"
#include "io/idx.h"

/* Writes an IDX file of `items` items of rows x cols bytes; gzipped if `gzip`. Writes only
 * `keep_bytes` of the data when >= 0 (to make truncated files). */
static void write_idx(const char *path, int gzip, const unsigned char magic[4], int items, int rows,
                      int cols, long keep_bytes) {
    unsigned char header[16];
    memcpy(header, magic, 4);
    int sizes[3] = {items, rows, cols};
    int dims = magic[3];
    for (int i = 0; i < dims && i < 3; i++) {
        header[4 + 4 * i] = (unsigned char)(sizes[i] >> 24);
        header[5 + 4 * i] = (unsigned char)(sizes[i] >> 16);
        header[6 + 4 * i] = (unsigned char)(sizes[i] >> 8);
        header[7 + 4 * i] = (unsigned char)sizes[i];
    }
    size_t data_bytes =
        (size_t)items * (size_t)(dims > 1 ? rows : 1) * (size_t)(dims > 2 ? cols : 1);
    unsigned char *data = malloc(data_bytes + 1);
    for (size_t i = 0; i < data_bytes; i++)
        data[i] = (unsigned char)(i * 7 + 3);
    size_t write_bytes = keep_bytes >= 0 ? (size_t)keep_bytes : data_bytes;
    size_t header_bytes = 4 + 4 * (size_t)(dims < 3 ? dims : 3);
    if (gzip) {
        gzFile f = gzopen(path, "wb");
        gzwrite(f, header, (unsigned)header_bytes);
        if (write_bytes) gzwrite(f, data, (unsigned)write_bytes);
        gzclose(f);
    } else {
        FILE *f = fopen(path, "wb");
        fwrite(header, 1, header_bytes, f);
        fwrite(data, 1, write_bytes, f);
        fclose(f);
    }
    free(data);
}

static void test_round_trip(int gzip) {
    char path[600];
    snprintf(path, sizeof path, "%s/images%s", check_temp_dir(), gzip ? ".gz" : "");
    const unsigned char magic[4] = {0, 0, 0x08, 3};
    write_idx(path, gzip, magic, 50, 28, 28, -1);

    idx_file *f = NULL;
    CHECK_OK(idx_open(path, &f));
    if (!f) return;
    CHECK(idx_dimension_count(f) == 3);
    CHECK(idx_dimension(f, 0) == 50 && idx_dimension(f, 1) == 28 && idx_dimension(f, 2) == 28);
    CHECK(idx_item_count(f) == 50);
    CHECK(idx_item_size(f) == 784);
    unsigned char *buffer = malloc(50 * 784);
    /* Two reads continue where the first stopped. */
    CHECK_OK(idx_read_items(f, 20, buffer));
    CHECK_OK(idx_read_items(f, 30, buffer + 20 * 784));
    int same = 1;
    for (size_t i = 0; i < 50 * 784; i++)
        same &= buffer[i] == (unsigned char)(i * 7 + 3);
    CHECK(same);
    /* Reading past the end is a caller error, not a crash. */
    CHECK(idx_read_items(f, 1, buffer) != DDT_OK);
    free(buffer);
    idx_close(f);

    snprintf(path, sizeof path, "%s/labels%s", check_temp_dir(), gzip ? ".gz" : "");
    const unsigned char label_magic[4] = {0, 0, 0x08, 1};
    write_idx(path, gzip, label_magic, 10, 0, 0, -1);
    CHECK_OK(idx_open(path, &f));
    if (!f) return;
    CHECK(idx_dimension_count(f) == 1 && idx_item_count(f) == 10 && idx_item_size(f) == 1);
    unsigned char labels[10];
    CHECK_OK(idx_read_items(f, 10, labels));
    CHECK(labels[0] == 3 && labels[9] == (unsigned char)(9 * 7 + 3));
    idx_close(f);
}

static void expect_error(const char *path, ddt_status expected, const char *text) {
    idx_file *f = NULL;
    ddt_status status = idx_open(path, &f);
    CHECK(status == expected);
    CHECK(f == NULL);
    CHECK(strstr(ddt_error_message(), path) != NULL);
    CHECK(strstr(ddt_error_message(), text) != NULL);
    if (!strstr(ddt_error_message(), text))
        fprintf(stderr, "  message was: %s\n", ddt_error_message());
    idx_close(f);
}

static void test_errors(void) {
    char path[600];
    snprintf(path, sizeof path, "%s/missing.idx", check_temp_dir());
    expect_error(path, DDT_ERR_IO, "No such file or directory");

    snprintf(path, sizeof path, "%s/bad-magic.idx", check_temp_dir());
    const unsigned char bad_magic[4] = {0x12, 0x34, 0x08, 1};
    write_idx(path, 0, bad_magic, 4, 0, 0, -1);
    expect_error(path, DDT_ERR_FORMAT, "not an IDX file (magic 0x12340801)");

    snprintf(path, sizeof path, "%s/float.idx", check_temp_dir());
    const unsigned char float_magic[4] = {0, 0, 0x0d, 1};
    write_idx(path, 0, float_magic, 4, 0, 0, -1);
    expect_error(path, DDT_ERR_FORMAT, "type 0x0d is not supported");

    snprintf(path, sizeof path, "%s/empty.idx", check_temp_dir());
    fclose(fopen(path, "wb"));
    expect_error(path, DDT_ERR_FORMAT, "not an IDX file");

    /* Truncated data, plain and gzipped: 5 items of 4x4 declared, 2.5 written. */
    for (int gzip = 0; gzip <= 1; gzip++) {
        snprintf(path, sizeof path, "%s/truncated%s", check_temp_dir(), gzip ? ".gz" : "");
        const unsigned char magic[4] = {0, 0, 0x08, 3};
        write_idx(path, gzip, magic, 5, 4, 4, 40);
        idx_file *f = NULL;
        CHECK_OK(idx_open(path, &f));
        if (!f) continue;
        unsigned char buffer[80];
        CHECK(idx_read_items(f, 5, buffer) == DDT_ERR_FORMAT);
        CHECK(strstr(ddt_error_message(), path) != NULL);
        CHECK(strstr(ddt_error_message(), "ends after 2 of 5 items") != NULL);
        if (!strstr(ddt_error_message(), "ends after 2 of 5 items"))
            fprintf(stderr, "  message was: %s\n", ddt_error_message());
        idx_close(f);
    }
}

int main(void) {
    test_round_trip(0);
    test_round_trip(1);
    test_errors();
    return check_finish();
}
