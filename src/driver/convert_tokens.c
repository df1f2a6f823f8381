/* convert_tokens.c - `ddtrain convert text` and `ddtrain convert tokens`: a stream of token
 * ids, from the bytes of text files or from nanoGPT's and llm.c's token files, written as
 * token datasets (/tokens with vocab_size; dataset.h).
 *
 * The stream is the inputs' ids concatenated in the order given. With --val-fraction F its
 * last round(F * n) ids are held out in OUT-val.h5 (the tail, as nanoGPT's prepare.py splits
 * its text: the validation text is text the model never saw, not windows interleaved with
 * the training ones); the rest is cut into --shards K contiguous pieces. A window never
 * crosses a file, so each cut loses at most one window's worth of ids to training.
 *
 * Token files:
 *   nanoGPT (data/<name>/prepare.py): raw little-endian uint16 ids, no header.
 *   llm.c (dev/data/data_common.py write_datafile): a header of 256 little-endian int32 --
 *     magic 20240520, version (1: uint16 ids, GPT-2; 2: uint32 ids, LLaMA 3), the number of
 *     ids -- then the ids. The count is checked against the file's size.
 * The files are read as a stream, a block at a time.
 */
#include "driver/convert.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "engine/model_spec.h"
#include "io/dataset_writer.h"

#define TOKEN_BLOCK (1 << 20) /* ids per read */
#define LLMC_MAGIC 20240520
#define LLMC_HEADER_BYTES 1024
#define GPT2_VOCAB 50257
#define LLAMA3_VOCAB 128256

/* ---- the sink: ids in stream order to the training shards, then the validation file ---- */

typedef struct token_sink {
    const options *opts;
    bool validation;
    int64_t total, held; /* ids in the stream; the last `held` go to validation */
    int64_t routed;      /* ids taken so far */
    int part;            /* 0 .. K-1: training shards; K: validation */
    int64_t part_end;    /* stream position where the current part ends */
    int vocab;
    const char *source;
    dataset_writer *writer;
    convert_outputs outputs;
} token_sink;

static void part_range(const token_sink *s, int part, int64_t *first, int64_t *end) {
    int64_t train = s->total - s->held, shards = s->opts->shards;
    if (part < shards) {
        *first = train * part / shards;
        *end = train * (part + 1) / shards;
    } else {
        *first = train;
        *end = s->total;
    }
}

static void part_path(const token_sink *s, int part, char *out, size_t size) {
    if (part < s->opts->shards)
        convert_train_shard_path(s->opts->output, s->validation, part, (int)s->opts->shards, out,
                                 size);
    else
        convert_part_path(s->opts->output, "-val", out, size);
}

static ddt_status sink_append(token_sink *s, const int32_t *ids, int64_t count) {
    while (count > 0) {
        if (!s->writer) {
            int64_t first, end;
            part_range(s, s->part, &first, &end);
            char path[4096];
            part_path(s, s->part, path, sizeof path);
            dataset_writer_params params = {.kind = DATASET_KIND_TOKENS,
                                            .rows = end - first,
                                            .vocab_size = s->vocab,
                                            .compression = (int)s->opts->compression,
                                            .source = s->source};
            DDT_CHECK(dataset_writer_open(path, &params, &s->writer));
            s->part_end = end;
        }
        int64_t n = s->part_end - s->routed < count ? s->part_end - s->routed : count;
        DDT_CHECK(dataset_writer_append_tokens(s->writer, n, ids));
        s->routed += n;
        ids += n;
        count -= n;
        if (s->routed == s->part_end) {
            char path[4096], temp[4200];
            part_path(s, s->part, path, sizeof path);
            dataset_writer *w = s->writer;
            s->writer = NULL;
            DDT_CHECK(dataset_writer_close_unpublished(w, temp, sizeof temp));
            DDT_CHECK(convert_outputs_add(&s->outputs, path, temp));
            s->part++;
        }
    }
    return DDT_OK;
}

/* Publishes everything (all ids routed), or removes it. */
static ddt_status sink_finish(token_sink *s, ddt_status status) {
    if (status == DDT_OK && s->routed != s->total)
        status = ddt_error(DDT_ERR_IO,
                           "the inputs held %" PRId64 " ids, not the %" PRId64
                           " they had when the conversion began (changed while read?)",
                           s->routed, s->total);
    dataset_writer_abort(s->writer);
    s->writer = NULL;
    if (status != DDT_OK) {
        convert_outputs_discard(&s->outputs);
        return status;
    }
    DDT_CHECK(convert_outputs_publish(&s->outputs));
    int parts = (int)s->opts->shards + (s->held ? 1 : 0);
    for (int part = 0; part < parts; part++) {
        int64_t first, end;
        part_range(s, part, &first, &end);
        char path[4096];
        part_path(s, part, path, sizeof path);
        printf("wrote %s: %" PRId64 " tokens, vocab_size %d%s\n", path, end - first, s->vocab,
               part == (int)s->opts->shards ? " (validation: the last ids)" : "");
    }
    return DDT_OK;
}

/* Sets up the sink for `total` ids (after the inputs were checked). */
static ddt_status sink_init(token_sink *s, const options *opts, int64_t total, int vocab,
                            const char *source) {
    *s = (token_sink){.opts = opts,
                      .total = total,
                      .vocab = vocab,
                      .source = source,
                      .validation = opts->val_fraction > 0};
    if (total < 1) {
        int count = opts->positional_count - 1;
        if (count == 1) return ddt_error(DDT_ERR_DATA, "%s: holds no tokens", opts->positional[1]);
        return ddt_error(DDT_ERR_DATA, "the %d inputs, %s to %s, hold no tokens", count,
                         opts->positional[1], opts->positional[count]);
    }
    return convert_validation_rows(opts, total, "tokens", &s->held);
}

/* The buffers of a token conversion: a block of `id_bytes`-byte ids read and the same block
 * as int32, and the writer's chunks; refused up front when over --host-staging-limit. */
static ddt_status check_memory(const options *opts, const char *command, int id_bytes) {
    dataset_writer_params params = {.kind = DATASET_KIND_TOKENS,
                                    .rows = TOKEN_BLOCK,
                                    .vocab_size = 1,
                                    .compression = (int)opts->compression};
    convert_memory memory = {0};
    char what[64];
    snprintf(what, sizeof what, "a block of %d ids", TOKEN_BLOCK);
    convert_memory_add(&memory, what, (uint64_t)TOKEN_BLOCK * (uint64_t)(id_bytes + 4));
    convert_memory_add(&memory, "the writer's chunks", dataset_writer_memory_bytes(&params));
    return convert_memory_check(opts, command, &memory, NULL);
}

/* The inputs as file roles, for convert_check_outputs. */
static ddt_status check_outputs(const options *opts, const char *role) {
    file_role inputs[OPTIONS_MAX_POSITIONAL];
    int count = 0;
    for (int i = 1; i < opts->positional_count; i++)
        inputs[count++] = (file_role){role, opts->positional[i], false};
    return convert_check_outputs(opts, opts->val_fraction > 0, inputs, count);
}

/* "ddtrain convert FORM FILE..." for the source attribute (shortened if long). */
static void describe_source(const options *opts, char *out, size_t size) {
    size_t used = (size_t)snprintf(out, size, "ddtrain convert %s", opts->positional[0]);
    for (int i = 1; i < opts->positional_count && used < size; i++)
        used += (size_t)snprintf(out + used, size - used, " %s", opts->positional[i]);
}

/* ---- text -------------------------------------------------------------------------------- */

ddt_status convert_text(const options *opts) {
    if (opts->positional_count < 2)
        return ddt_error(DDT_ERR_USAGE, "usage: ddtrain convert text FILE... -o OUT.h5 "
                                        "[--val-fraction F] [--shards K]");
    if (opts->vocab_size && opts->vocab_size != 256)
        return ddt_error(DDT_ERR_USAGE, "convert text: the tokens are bytes, vocab 256 "
                                        "(--vocab-size is for convert tokens)");
    DDT_CHECK(check_memory(opts, "convert text", 1));
    int64_t total = 0;
    for (int i = 1; i < opts->positional_count; i++) {
        struct stat info;
        const char *path = opts->positional[i];
        DDT_CHECK(file_check_regular_input(path, NULL));
        if (stat(path, &info) != 0)
            return ddt_error(DDT_ERR_IO, "%s: cannot open: %s", path, strerror(errno));
        total += (int64_t)info.st_size;
    }
    DDT_CHECK(check_outputs(opts, "FILE"));
    char source[4096];
    describe_source(opts, source, sizeof source);
    token_sink s;
    DDT_CHECK(sink_init(&s, opts, total, 256, source));
    unsigned char *bytes = malloc(TOKEN_BLOCK);
    int32_t *ids = malloc(TOKEN_BLOCK * sizeof *ids);
    ddt_status status = DDT_OK;
    if (!bytes || !ids) status = ddt_error(DDT_ERR_MEMORY, "out of host memory");
    for (int i = 1; status == DDT_OK && i < opts->positional_count; i++) {
        const char *path = opts->positional[i];
        FILE *file;
        status = file_fopen_regular_input(path, NULL, &file);
        if (status != DDT_OK) break;
        size_t got;
        while (status == DDT_OK && (got = fread(bytes, 1, TOKEN_BLOCK, file)) > 0) {
            if (s.routed + (int64_t)got > s.total) {
                status = ddt_error(DDT_ERR_IO, "%s: grew while it was read", path);
                break;
            }
            for (size_t k = 0; k < got; k++)
                ids[k] = bytes[k];
            status = sink_append(&s, ids, (int64_t)got);
        }
        if (status == DDT_OK && ferror(file))
            status = ddt_error(DDT_ERR_IO, "%s: cannot read: %s", path, strerror(errno));
        fclose(file);
    }
    free(ids);
    free(bytes);
    return sink_finish(&s, status);
}

/* ---- tokens ------------------------------------------------------------------------------ */

typedef struct token_file {
    const char *path;
    bool llmc;      /* an llm.c file (with its header) */
    int id_bytes;   /* 2 or 4 */
    int64_t count;  /* ids */
    int64_t offset; /* of the first id */
} token_file;

static uint32_t little_endian_32(const unsigned char *p) {
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

/* Tells the format by the header and checks the declared count against the file's size. */
static ddt_status inspect_token_file(const char *path, token_file *out) {
    *out = (token_file){.path = path, .id_bytes = 2};
    FILE *file; /* a regular file only: fopen() would wait on a FIFO */
    DDT_CHECK(file_fopen_regular_input(path, NULL, &file));
    struct stat info;
    if (fstat(fileno(file), &info) != 0) {
        int saved = errno;
        fclose(file);
        return ddt_error(DDT_ERR_IO, "%s: cannot read: %s", path, strerror(saved));
    }
    unsigned char header[LLMC_HEADER_BYTES];
    size_t got = fread(header, 1, sizeof header, file);
    fclose(file);
    int64_t size = (int64_t)info.st_size;
    if (got >= 12 && little_endian_32(header) == LLMC_MAGIC) {
        uint32_t version = little_endian_32(header + 4);
        int64_t count = (int64_t)little_endian_32(header + 8);
        if (version != 1 && version != 2)
            return ddt_error(DDT_ERR_FORMAT,
                             "%s: llm.c header (magic %d) with version %u; ddtrain reads version "
                             "1 (uint16 ids) and 2 (uint32 ids)",
                             path, LLMC_MAGIC, version);
        out->llmc = true;
        out->id_bytes = version == 1 ? 2 : 4;
        out->count = count;
        out->offset = LLMC_HEADER_BYTES;
        int64_t expected = LLMC_HEADER_BYTES + count * out->id_bytes;
        if (size != expected)
            return ddt_error(DDT_ERR_FORMAT,
                             "%s: the llm.c header declares %" PRId64 " tokens (%" PRId64
                             " bytes with the %d-byte header), but the file has %" PRId64
                             " bytes%s",
                             path, count, expected, LLMC_HEADER_BYTES, size,
                             size < expected ? " (truncated?)" : "");
        if (count == 0)
            return ddt_error(DDT_ERR_FORMAT, "%s: the llm.c header declares 0 tokens", path);
        return DDT_OK;
    }
    if (size == 0) return ddt_error(DDT_ERR_FORMAT, "%s: empty (no tokens)", path);
    if (size % 2)
        return ddt_error(DDT_ERR_FORMAT,
                         "%s: %" PRId64 " bytes is not a whole number of uint16 tokens (nanoGPT's "
                         "format), and there is no llm.c header (magic %d)",
                         path, size, LLMC_MAGIC);
    out->count = size / 2;
    return DDT_OK;
}

ddt_status convert_tokens(const options *opts) {
    if (opts->positional_count < 2)
        return ddt_error(DDT_ERR_USAGE, "usage: ddtrain convert tokens FILE.bin... -o OUT.h5 "
                                        "[--vocab-size V] [--val-fraction F] [--shards K]");
    DDT_CHECK(check_memory(opts, "convert tokens", 4));
    int files = opts->positional_count - 1;
    token_file inputs[OPTIONS_MAX_POSITIONAL];
    int64_t total = 0;
    int default_vocab = GPT2_VOCAB;
    for (int i = 0; i < files; i++) {
        DDT_CHECK(inspect_token_file(opts->positional[i + 1], &inputs[i]));
        total += inputs[i].count;
        if (inputs[i].id_bytes == 4) default_vocab = LLAMA3_VOCAB;
    }
    int vocab = opts->vocab_size ? (int)opts->vocab_size : default_vocab;
    if (vocab < MODEL_MIN_VOCAB)
        return ddt_error(DDT_ERR_USAGE, "--vocab-size %d: no model takes fewer than %d tokens",
                         vocab, MODEL_MIN_VOCAB);
    DDT_CHECK(check_outputs(opts, "FILE.bin"));
    for (int i = 0; i < files; i++)
        printf("%s: %s, %" PRId64 " tokens\n", inputs[i].path,
               inputs[i].llmc ? (inputs[i].id_bytes == 2 ? "llm.c format (version 1, uint16)"
                                                         : "llm.c format (version 2, uint32)")
                              : "raw uint16 (nanoGPT's format)",
               inputs[i].count);
    char source[4096];
    describe_source(opts, source, sizeof source);
    token_sink s;
    DDT_CHECK(sink_init(&s, opts, total, vocab, source));
    unsigned char *raw = malloc((size_t)TOKEN_BLOCK * 4);
    int32_t *ids = malloc((size_t)TOKEN_BLOCK * sizeof *ids);
    ddt_status status = DDT_OK;
    if (!raw || !ids) status = ddt_error(DDT_ERR_MEMORY, "out of host memory");
    for (int i = 0; status == DDT_OK && i < files; i++) {
        const token_file *t = &inputs[i];
        FILE *file = NULL;
        status = file_fopen_regular_input(t->path, NULL, &file);
        if (status != DDT_OK) break;
        if (fseeko(file, t->offset, SEEK_SET) != 0) {
            status = ddt_error(DDT_ERR_IO, "%s: cannot read: %s", t->path, strerror(errno));
            fclose(file);
            break;
        }
        for (int64_t done = 0; status == DDT_OK && done < t->count;) {
            int64_t n = t->count - done < TOKEN_BLOCK ? t->count - done : TOKEN_BLOCK;
            if (fread(raw, (size_t)t->id_bytes, (size_t)n, file) != (size_t)n) {
                status = ddt_error(DDT_ERR_IO, "%s: ended after %" PRId64 " of %" PRId64 " tokens",
                                   t->path, done, t->count);
                break;
            }
            for (int64_t k = 0; k < n; k++) {
                const unsigned char *p = raw + k * t->id_bytes;
                uint32_t id =
                    t->id_bytes == 2 ? (uint32_t)p[0] | (uint32_t)p[1] << 8 : little_endian_32(p);
                if (id >= (uint32_t)vocab) {
                    status = ddt_error(DDT_ERR_DATA,
                                       "%s: token %" PRId64 " is %u, not below the vocabulary "
                                       "size %d (%s)",
                                       t->path, done + k, id, vocab,
                                       opts->vocab_size ? "--vocab-size"
                                                        : "the format's default; give the "
                                                          "tokenizer's with --vocab-size");
                    break;
                }
                ids[k] = (int32_t)id;
            }
            if (status == DDT_OK) status = sink_append(&s, ids, n);
            done += n;
        }
        fclose(file);
    }
    free(ids);
    free(raw);
    return sink_finish(&s, status);
}
