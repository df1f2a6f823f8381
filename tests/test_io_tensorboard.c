/* test_io_tensorboard.c - the TensorBoard event writer: CRC-32C, TFRecord framing, and each
 * kind of event byte for byte against the protobuf library's own serialization; new files
 * per writer (never an existing one), directories created, errors.
 *
 * The expected bytes were produced with TensorBoard 2.21's protobuf classes (the venv the
 * tests install, see launch/install-deps.sh):
 *     from tensorboard.compat.proto import summary_pb2 as S, event_pb2, tensor_pb2
 *     from tensorboard.plugins.text import metadata as tm
 *     from tensorboard.plugins.custom_scalar import layout_pb2 as L, metadata as cm
 *     def strtensor(b):
 *         t = tensor_pb2.TensorProto(dtype=7); t.tensor_shape.SetInParent()
 *         t.string_val.append(b); return t
 *     event_pb2.Event(wall_time=1700000000.25, step=300, summary=S.Summary(value=[
 *         S.Summary.Value(tag="train/loss", simple_value=0.5), ...])).SerializeToString()
 *     ... Summary.Value(tag="config", metadata=tm.create_summary_metadata(None, None),
 *                       tensor=strtensor(b"    --lr 0.05\n"))
 *     ... Summary.Value(tag=cm.CONFIG_SUMMARY_TAG, metadata=cm.create_summary_metadata(),
 *                       tensor=strtensor(layout.SerializeToString()))
 * (the inputs are the ones the test writes below). tests/e2e/tensorboard.sh reads a whole
 * training run's files with TensorBoard's reader. */
#include <dirent.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "check.h"
#include "io/tensorboard.h"

static const char scalars_event[] =
    "\x09\x00\x00\x10\x40\xfc\x54\xd9\x41\x10\xac\x02\x2a\x4e\x0a\x11\x0a\x0a\x74\x72\x61\x69"
    "\x6e\x2f\x6c\x6f\x73\x73\x15\x00\x00\x00\x3f\x0a\x1a\x0a\x13\x74\x72\x61\x69\x6e\x2f\x6c"
    "\x65\x61\x72\x6e\x69\x6e\x67\x5f\x72\x61\x74\x65\x15\xcd\xcc\x4c\x3d\x0a\x1d\x0a\x16\x6d"
    "\x65\x6d\x6f\x72\x79\x2f\x72\x61\x6e\x6b\x31\x2f\x72\x73\x73\x5f\x62\x79\x74\x65\x73\x15"
    "\xa3\x79\xeb\x4c";
static const char text_event[] =
    "\x09\x00\x00\x60\x40\xfc\x54\xd9\x41\x2a\x2a\x0a\x28\x0a\x06\x63\x6f\x6e\x66\x69\x67\x42"
    "\x14\x08\x07\x12\x00\x42\x0e\x20\x20\x20\x20\x2d\x2d\x6c\x72\x20\x30\x2e\x30\x35\x0a\x4a"
    "\x08\x0a\x06\x0a\x04\x74\x65\x78\x74";
static const char layout_event[] =
    "\x09\x00\x00\x80\x40\xfc\x54\xd9\x41\x2a\xdf\x01\x0a\xdc\x01\x0a\x18\x63\x75\x73\x74\x6f"
    "\x6d\x5f\x73\x63\x61\x6c\x61\x72\x73\x5f\x5f\x63\x6f\x6e\x66\x69\x67\x5f\x5f\x42\xab\x01"
    "\x08\x07\x12\x00\x42\xa4\x01\x12\x82\x01\x0a\x06\x6d\x65\x6d\x6f\x72\x79\x12\x4f\x0a\x0d"
    "\x72\x61\x6e\x6b\x20\x30\x20\x64\x65\x76\x69\x63\x65\x12\x3e\x0a\x1a\x6d\x65\x6d\x6f\x72"
    "\x79\x2f\x72\x61\x6e\x6b\x30\x2f\x64\x65\x76\x69\x63\x65\x5f\x62\x79\x74\x65\x73\x24\x0a"
    "\x20\x6d\x65\x6d\x6f\x72\x79\x2f\x72\x61\x6e\x6b\x30\x2f\x64\x65\x76\x69\x63\x65\x5f\x6c"
    "\x69\x6d\x69\x74\x5f\x62\x79\x74\x65\x73\x24\x12\x27\x0a\x0a\x72\x61\x6e\x6b\x20\x30\x20"
    "\x72\x73\x73\x12\x19\x0a\x17\x6d\x65\x6d\x6f\x72\x79\x2f\x72\x61\x6e\x6b\x30\x2f\x72\x73"
    "\x73\x5f\x62\x79\x74\x65\x73\x24\x12\x1d\x0a\x05\x6f\x74\x68\x65\x72\x12\x14\x0a\x04\x6c"
    "\x6f\x73\x73\x12\x0c\x0a\x0a\x74\x72\x61\x69\x6e\x2f\x6c\x6f\x73\x73\x4a\x12\x0a\x10\x0a"
    "\x0e\x63\x75\x73\x74\x6f\x6d\x5f\x73\x63\x61\x6c\x61\x72\x73";
/* A zero and a negative zero are still written (simple_value is in a oneof). */
static const char zeros_event[] =
    "\x09\x00\x00\xc0\x40\xfc\x54\xd9\x41\x10\x07\x2a\x17\x0a\x08\x0a\x01\x78\x15\x00\x00\x00"
    "\x80\x0a\x0b\x0a\x04\x7a\x65\x72\x6f\x15\x00\x00\x00\x00";

static unsigned char *read_whole(const char *path, size_t *size) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long length = ftell(f);
    fseek(f, 0, SEEK_SET);
    unsigned char *data = malloc((size_t)length + 1);
    *size = fread(data, 1, (size_t)length, f);
    fclose(f);
    return data;
}

static uint64_t little_endian(const unsigned char *p, int bytes) {
    uint64_t value = 0;
    for (int i = bytes - 1; i >= 0; i--)
        value = value << 8 | p[i];
    return value;
}

/* Splits a file into its records, checking both CRCs of each; returns the count. */
static int split_records(const unsigned char *data, size_t size, const unsigned char **records,
                         size_t *sizes, int max) {
    int count = 0;
    size_t at = 0;
    while (at < size && count < max) {
        CHECK(at + 12 <= size);
        if (at + 12 > size) return count;
        uint64_t length = little_endian(data + at, 8);
        CHECK(little_endian(data + at + 8, 4) == tensorboard_masked_crc32c(data + at, 8));
        CHECK(at + 16 + length <= size);
        if (at + 16 + length > size) return count;
        records[count] = data + at + 12;
        sizes[count] = (size_t)length;
        CHECK(little_endian(data + at + 12 + length, 4) ==
              tensorboard_masked_crc32c(data + at + 12, (size_t)length));
        count++;
        at += 16 + length;
    }
    CHECK(at == size);
    return count;
}

static void check_crc(void) {
    /* The standard check value of CRC-32C, and RFC 3720's 32 zero bytes. */
    CHECK(tensorboard_crc32c("123456789", 9) == 0xe3069283u);
    unsigned char zeros[32] = {0};
    CHECK(tensorboard_crc32c(zeros, 32) == 0x8a9136aau);
    CHECK(tensorboard_crc32c("", 0) == 0);
    uint32_t crc = 0xe3069283u;
    CHECK(tensorboard_masked_crc32c("123456789", 9) == ((crc >> 15 | crc << 17) + 0xa282ead8u));
}

static int count_event_files(const char *directory) {
    DIR *d = opendir(directory);
    if (!d) return -1;
    int count = 0;
    struct dirent *entry;
    while ((entry = readdir(d)))
        if (strncmp(entry->d_name, "events.out.tfevents.", 20) == 0) count++;
    closedir(d);
    return count;
}

static void check_events(void) {
    char directory[600];
    snprintf(directory, sizeof directory, "%s/runs/a/b", check_temp_dir());
    tensorboard_writer *w = NULL;
    CHECK_OK(tensorboard_open(directory, "node/01", &w));
    if (!w) return;
    const char *path = tensorboard_path(w);
    CHECK(strstr(path, "/runs/a/b/events.out.tfevents.") != NULL);
    CHECK(strstr(path, ".node_01.") != NULL);
    tensorboard_scalar scalars[] = {
        {"train/loss", 0.5}, {"train/learning_rate", 0.05}, {"memory/rank1/rss_bytes", 123456789}};
    CHECK_OK(tensorboard_write_scalars(w, 1700000000.25, 300, scalars, 3));
    CHECK_OK(tensorboard_write_text(w, 1700000001.5, 0, "config", "    --lr 0.05\n"));
    const char *const device_tags[] = {"memory/rank0/device_bytes$",
                                       "memory/rank0/device_limit_bytes$", NULL};
    const char *const rss_tags[] = {"memory/rank0/rss_bytes$", NULL};
    const char *const loss_tags[] = {"train/loss", NULL};
    tensorboard_chart charts[] = {{"memory", "rank 0 device", device_tags},
                                  {"memory", "rank 0 rss", rss_tags},
                                  {"other", "loss", loss_tags}};
    CHECK_OK(tensorboard_write_layout(w, 1700000002.0, charts, 3));
    tensorboard_scalar zeros[] = {{"x", -0.0}, {"zero", 0.0}};
    CHECK_OK(tensorboard_write_scalars(w, 1700000003.0, 7, zeros, 2));

    /* Readable while the writer is open: every record is already in the file. */
    size_t size = 0;
    unsigned char *data = read_whole(path, &size);
    CHECK(data != NULL);
    if (!data) return;
    const unsigned char *records[8];
    size_t sizes[8];
    int count = split_records(data, size, records, sizes, 8);
    CHECK(count == 5);
    if (count == 5) {
        /* The first: wall_time (now), file_version "brain.Event:2". */
        static const char version[] = "\x1a\015brain.Event:2"; /* \015: 13 bytes */
        CHECK(sizes[0] == 9 + sizeof version - 1);
        CHECK(records[0][0] == 0x09 && memcmp(records[0] + 9, version, sizeof version - 1) == 0);
        double wall_time;
        memcpy(&wall_time, records[0] + 1, sizeof wall_time); /* little-endian hosts */
        CHECK(wall_time > 1.6e9 && wall_time < 4e9);
        const char *expected[] = {scalars_event, text_event, layout_event, zeros_event};
        size_t expected_sizes[] = {sizeof scalars_event - 1, sizeof text_event - 1,
                                   sizeof layout_event - 1, sizeof zeros_event - 1};
        for (int i = 0; i < 4; i++) {
            CHECK(sizes[i + 1] == expected_sizes[i]);
            CHECK(sizes[i + 1] == expected_sizes[i] &&
                  memcmp(records[i + 1], expected[i], expected_sizes[i]) == 0);
        }
    }
    free(data);
    tensorboard_close(w);

    /* A second writer in the same directory (same second, same process) gets a new file. */
    tensorboard_writer *second = NULL;
    CHECK_OK(tensorboard_open(directory, "node/01", &second));
    CHECK(second && strcmp(tensorboard_path(second), path) != 0);
    tensorboard_close(second);
    CHECK(count_event_files(directory) == 2);
}

static void check_errors(void) {
    char file[600];
    snprintf(file, sizeof file, "%s/plain-file", check_temp_dir());
    FILE *f = fopen(file, "w");
    fclose(f);
    tensorboard_writer *w = NULL;
    CHECK(tensorboard_open(file, "h", &w) == DDT_ERR_IO);
    CHECK(strstr(ddt_error_message(), "not a directory") != NULL);
    CHECK(w == NULL);
    char below[700];
    snprintf(below, sizeof below, "%s/sub", file);
    CHECK(tensorboard_open(below, "h", &w) == DDT_ERR_IO);
    CHECK(strstr(ddt_error_message(), "cannot create the directory") != NULL);
    CHECK(tensorboard_open("", "h", &w) == DDT_ERR_USAGE);
    if (geteuid() != 0) { /* root writes anywhere */
        char locked[600];
        snprintf(locked, sizeof locked, "%s/locked", check_temp_dir());
        mkdir(locked, 0500);
        CHECK(tensorboard_open(locked, "h", &w) == DDT_ERR_IO);
        CHECK(strstr(ddt_error_message(), "cannot create") != NULL);
    }
    tensorboard_close(NULL);
}

int main(void) {
    check_crc();
    check_events();
    check_errors();
    return check_finish();
}
