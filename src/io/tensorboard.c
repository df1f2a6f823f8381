/* tensorboard.c - TensorBoard event files, hand-encoded (see tensorboard.h for why).
 *
 * The messages, from tensorflow/core/util/event.proto, tensorflow/core/framework/summary.proto,
 * tensor.proto and tensorboard/plugins/custom_scalar/layout.proto (field number, type):
 *   Event          wall_time 1 double, step 2 int64, file_version 3 string, summary 5 Summary
 *   Summary        value 1 repeated Value
 *   Summary.Value  tag 1 string, simple_value 2 float, tensor 8 TensorProto,
 *                  metadata 9 SummaryMetadata
 *   SummaryMetadata  plugin_data 1 PluginData (plugin_name 1 string)
 *   TensorProto    dtype 1 enum (DT_STRING = 7), tensor_shape 2 (empty: a scalar),
 *                  string_val 8 repeated bytes
 *   Layout         category 2 repeated Category (title 1, chart 2 repeated Chart)
 *   Chart          title 1, multiline 2 MultilineChartContent (tag 1 repeated string)
 * Fields at their default value (0, empty) are left out, as protobuf's own serializers do,
 * except members of a oneof (simple_value, tensor), which are always written.
 *
 * A TFRecord: uint64 length, uint32 masked CRC-32C of those 8 bytes, the data, uint32 masked
 * CRC-32C of the data; all little-endian. */
#include "io/tensorboard.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

enum {
    WIRE_VARINT = 0,
    WIRE_FIXED64 = 1,
    WIRE_LENGTH = 2,
    WIRE_FIXED32 = 5,
};

enum {
    DT_STRING = 7,
};

struct tensorboard_writer {
    int fd;
    char path[PATH_MAX];
};

/* --- CRC-32C ----------------------------------------------------------------------------- */

uint32_t tensorboard_crc32c(const void *data, size_t size) {
    /* Bitwise, reflected polynomial 0x82f63b78: records are small and written every
     * --metrics-every steps, so a table would buy nothing measurable. */
    const unsigned char *p = data;
    uint32_t crc = 0xffffffffu;
    for (size_t i = 0; i < size; i++) {
        crc ^= p[i];
        for (int bit = 0; bit < 8; bit++)
            crc = (crc >> 1) ^ (0x82f63b78u & (0u - (crc & 1u)));
    }
    return ~crc;
}

uint32_t tensorboard_masked_crc32c(const void *data, size_t size) {
    uint32_t crc = tensorboard_crc32c(data, size);
    return ((crc >> 15) | (crc << 17)) + 0xa282ead8u;
}

/* --- protobuf encoding ------------------------------------------------------------------- */

/* A growing byte buffer; `failed` records an allocation failure, checked once at the end. */
typedef struct buffer {
    unsigned char *data;
    size_t size, capacity;
    bool failed;
} buffer;

static void put_bytes(buffer *b, const void *bytes, size_t size) {
    if (b->failed) return;
    if (b->size + size > b->capacity) {
        size_t capacity = b->capacity ? b->capacity : 256;
        while (capacity < b->size + size)
            capacity *= 2;
        unsigned char *grown = realloc(b->data, capacity);
        if (!grown) {
            b->failed = true;
            return;
        }
        b->data = grown;
        b->capacity = capacity;
    }
    if (size) memcpy(b->data + b->size, bytes, size);
    b->size += size;
}

static void put_varint(buffer *b, uint64_t value) {
    unsigned char bytes[10];
    size_t n = 0;
    do {
        bytes[n] = (unsigned char)(value & 0x7f);
        value >>= 7;
        if (value) bytes[n] |= 0x80;
        n++;
    } while (value);
    put_bytes(b, bytes, n);
}

static void put_little_endian(buffer *b, uint64_t value, int bytes) {
    unsigned char out[8];
    for (int i = 0; i < bytes; i++)
        out[i] = (unsigned char)(value >> (8 * i));
    put_bytes(b, out, (size_t)bytes);
}

static void put_key(buffer *b, int field, int wire) {
    put_varint(b, (uint64_t)field << 3 | (uint64_t)wire);
}

static void put_length_delimited(buffer *b, int field, const void *bytes, size_t size) {
    put_key(b, field, WIRE_LENGTH);
    put_varint(b, size);
    put_bytes(b, bytes, size);
}

static void put_string(buffer *b, int field, const char *text) {
    if (text && *text) put_length_delimited(b, field, text, strlen(text));
}

/* A sub-message: `inner`'s bytes as field `field` of b (inner's failure carries over). */
static void put_message(buffer *b, int field, const buffer *inner) {
    if (inner->failed) b->failed = true;
    put_length_delimited(b, field, inner->data, inner->size);
}

static void put_enum(buffer *b, int field, uint64_t value) {
    if (!value) return;
    put_key(b, field, WIRE_VARINT);
    put_varint(b, value);
}

static void put_double(buffer *b, int field, double value) {
    if (value == 0) return;
    uint64_t bits;
    memcpy(&bits, &value, sizeof bits);
    put_key(b, field, WIRE_FIXED64);
    put_little_endian(b, bits, 8);
}

/* Always written: simple_value is a member of a oneof, which has presence, so a loss of
 * exactly 0 must still be there to be read. */
static void put_float(buffer *b, int field, float value) {
    uint32_t bits;
    memcpy(&bits, &value, sizeof bits);
    put_key(b, field, WIRE_FIXED32);
    put_little_endian(b, bits, 4);
}

static void buffer_free(buffer *b) {
    free(b->data);
    *b = (buffer){0};
}

/* --- records ----------------------------------------------------------------------------- */

static double now_seconds(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* Frames `event` as a TFRecord and writes it with one write() (looping on short writes). */
static ddt_status write_record(tensorboard_writer *w, const buffer *event) {
    if (event->failed)
        return ddt_error(DDT_ERR_MEMORY, "out of host memory encoding a TensorBoard event");
    buffer record = {0};
    buffer length = {0};
    put_little_endian(&length, event->size, 8);
    put_bytes(&record, length.data, length.size);
    put_little_endian(&record, tensorboard_masked_crc32c(length.data, length.size), 4);
    put_bytes(&record, event->data, event->size);
    put_little_endian(&record, tensorboard_masked_crc32c(event->data, event->size), 4);
    buffer_free(&length);
    ddt_status status = DDT_OK;
    if (record.failed)
        status = ddt_error(DDT_ERR_MEMORY, "out of host memory framing a TensorBoard event");
    for (size_t done = 0; status == DDT_OK && done < record.size;) {
        ssize_t n = write(w->fd, record.data + done, record.size - done);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0)
            status = ddt_error(DDT_ERR_IO, "--tensorboard: cannot write %s: %s", w->path,
                               n < 0 ? strerror(errno) : "no progress");
        else
            done += (size_t)n;
    }
    buffer_free(&record);
    return status;
}

/* An Event holding `summary` (a serialized Summary) at `step`. */
static ddt_status write_summary_event(tensorboard_writer *w, double wall_time, int64_t step,
                                      const buffer *summary) {
    buffer event = {0};
    put_double(&event, 1, wall_time > 0 ? wall_time : now_seconds());
    if (step) {
        put_key(&event, 2, WIRE_VARINT);
        put_varint(&event, (uint64_t)step);
    }
    put_message(&event, 5, summary);
    ddt_status status = write_record(w, &event);
    buffer_free(&event);
    return status;
}

/* A Summary.Value holding a scalar string tensor, with the plugin named in its metadata: the
 * form of TensorBoard's own text and custom-scalars summaries (which leave data_class unset;
 * TensorBoard's reader fills it in from the plugin name). */
static void put_string_tensor_value(buffer *summary, const char *tag, const char *plugin,
                                    const void *bytes, size_t size) {
    buffer plugin_data = {0}, metadata = {0}, shape = {0}, tensor = {0}, value = {0};
    put_string(&plugin_data, 1, plugin);
    put_message(&metadata, 1, &plugin_data);
    put_enum(&tensor, 1, DT_STRING);
    put_message(&tensor, 2, &shape);
    put_length_delimited(&tensor, 8, bytes, size);
    put_string(&value, 1, tag);
    put_message(&value, 8, &tensor);
    put_message(&value, 9, &metadata);
    put_message(summary, 1, &value);
    buffer_free(&value);
    buffer_free(&tensor);
    buffer_free(&shape);
    buffer_free(&metadata);
    buffer_free(&plugin_data);
}

/* --- the writer -------------------------------------------------------------------------- */

/* mkdir -p: every missing component of `directory`. */
static ddt_status make_directories(const char *directory) {
    char path[PATH_MAX];
    if (snprintf(path, sizeof path, "%s", directory) >= (int)sizeof path)
        return ddt_error(DDT_ERR_USAGE, "--tensorboard: the path '%s' is too long", directory);
    for (char *p = path + 1;; p++) {
        if (*p != '/' && *p != '\0') continue;
        char saved = *p;
        *p = '\0';
        if (mkdir(path, 0777) != 0 && errno != EEXIST)
            return ddt_error(DDT_ERR_IO, "--tensorboard: cannot create the directory %s: %s", path,
                             strerror(errno));
        *p = saved;
        if (saved == '\0') break;
    }
    struct stat st;
    if (stat(directory, &st) != 0 || !S_ISDIR(st.st_mode))
        return ddt_error(DDT_ERR_IO, "--tensorboard: %s exists and is not a directory", directory);
    return DDT_OK;
}

ddt_status tensorboard_open(const char *directory, const char *host, tensorboard_writer **out) {
    *out = NULL;
    if (!directory || !*directory)
        return ddt_error(DDT_ERR_USAGE, "--tensorboard: the directory is empty");
    DDT_CHECK(make_directories(directory));
    tensorboard_writer *w = calloc(1, sizeof *w);
    if (!w) return ddt_error(DDT_ERR_MEMORY, "out of host memory opening a TensorBoard file");
    w->fd = -1;
    char name[256];
    snprintf(name, sizeof name, "%s", host && *host ? host : "localhost");
    for (char *c = name; *c; c++)
        if (*c == '/') *c = '_';
    long seconds = (long)time(NULL);
    for (int n = 0; w->fd < 0 && n < 1000; n++) {
        if (snprintf(w->path, sizeof w->path, "%s/events.out.tfevents.%010ld.%s.%ld.%d", directory,
                     seconds, name, (long)getpid(), n) >= (int)sizeof w->path) {
            free(w);
            return ddt_error(DDT_ERR_USAGE, "--tensorboard: the path '%s' is too long", directory);
        }
        w->fd = open(w->path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0666);
        if (w->fd < 0 && errno != EEXIST) {
            ddt_status status = ddt_error(DDT_ERR_IO, "--tensorboard: cannot create %s: %s",
                                          w->path, strerror(errno));
            free(w);
            return status;
        }
    }
    if (w->fd < 0) {
        free(w);
        return ddt_error(DDT_ERR_IO, "--tensorboard: no free event-file name in %s", directory);
    }
    buffer event = {0};
    put_double(&event, 1, now_seconds());
    put_string(&event, 3, "brain.Event:2");
    ddt_status status = write_record(w, &event);
    buffer_free(&event);
    if (status != DDT_OK) {
        tensorboard_close(w);
        return status;
    }
    *out = w;
    return DDT_OK;
}

const char *tensorboard_path(const tensorboard_writer *writer) {
    return writer->path;
}

ddt_status tensorboard_write_scalars(tensorboard_writer *writer, double wall_time, int64_t step,
                                     const tensorboard_scalar *scalars, int count) {
    buffer summary = {0}, value = {0};
    for (int i = 0; i < count; i++) {
        value.size = 0;
        put_string(&value, 1, scalars[i].tag);
        put_float(&value, 2, (float)scalars[i].value);
        put_message(&summary, 1, &value);
    }
    buffer_free(&value);
    ddt_status status = write_summary_event(writer, wall_time, step, &summary);
    buffer_free(&summary);
    return status;
}

ddt_status tensorboard_write_text(tensorboard_writer *writer, double wall_time, int64_t step,
                                  const char *tag, const char *markdown) {
    buffer summary = {0};
    put_string_tensor_value(&summary, tag, "text", markdown, strlen(markdown));
    ddt_status status = write_summary_event(writer, wall_time, step, &summary);
    buffer_free(&summary);
    return status;
}

ddt_status tensorboard_write_layout(tensorboard_writer *writer, double wall_time,
                                    const tensorboard_chart *charts, int count) {
    buffer layout = {0}, category = {0}, chart = {0}, multiline = {0};
    for (int i = 0; i < count; i++) {
        if (i == 0 || strcmp(charts[i].category, charts[i - 1].category) != 0) {
            category.size = 0;
            put_string(&category, 1, charts[i].category);
        }
        multiline.size = 0;
        for (const char *const *tag = charts[i].tags; *tag; tag++)
            put_string(&multiline, 1, *tag);
        chart.size = 0;
        put_string(&chart, 1, charts[i].title);
        put_message(&chart, 2, &multiline);
        put_message(&category, 2, &chart);
        if (i == count - 1 || strcmp(charts[i].category, charts[i + 1].category) != 0)
            put_message(&layout, 2, &category);
    }
    buffer summary = {0};
    put_string_tensor_value(&summary, "custom_scalars__config__", "custom_scalars", layout.data,
                            layout.size);
    if (layout.failed) summary.failed = true;
    ddt_status status = write_summary_event(writer, wall_time, 0, &summary);
    buffer_free(&summary);
    buffer_free(&multiline);
    buffer_free(&chart);
    buffer_free(&category);
    buffer_free(&layout);
    return status;
}

void tensorboard_close(tensorboard_writer *writer) {
    if (!writer) return;
    if (writer->fd >= 0) close(writer->fd);
    free(writer);
}
