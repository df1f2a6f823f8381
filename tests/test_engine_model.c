/* test_engine_model.c - model specs (parsing, canonical text, every error message), parameter
 * layout, initialisation, the allocator's bookkeeping, and properties of the forward pass that
 * data parallelism relies on: a row's output does not depend on the rest of its batch, and
 * dropout masks depend on the global row id, not the row's position.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "check.h"
#include "engine/alloc.h"
#include "engine/device.h"
#include "engine/device_backend.h" /* a fake backend wrapping the CPU one */
#include "engine/loss.h"
#include "engine/model.h"
#include "util/rng.h"

static device *dev;

static model_spec spec_buffer, again_buffer; /* specs are large: not on the stack */

static void check_good_spec(const char *text, const char *canonical, int nodes, int tensors,
                            int input_width, int output_width) {
    model_spec *spec = &spec_buffer;
    ddt_status status = model_spec_parse(text, spec);
    CHECK_OK(status);
    if (status != DDT_OK) return;
    if (strcmp(spec->text, canonical) != 0)
        fprintf(stderr, "  '%s' -> '%s', expected '%s'\n", text, spec->text, canonical);
    CHECK(strcmp(spec->text, canonical) == 0);
    if (spec->node_count != nodes || spec->tensor_count != tensors)
        fprintf(stderr, "  '%s': %d nodes, %d tensors\n", text, spec->node_count,
                spec->tensor_count);
    CHECK(spec->node_count == nodes);
    CHECK(spec->tensor_count == tensors);
    CHECK(spec->input_width == input_width);
    CHECK(spec->output_width == output_width);
    /* The canonical text parses to the same spec. */
    model_spec *again = &again_buffer;
    CHECK_OK(model_spec_parse(spec->text, again));
    CHECK(strcmp(again->text, spec->text) == 0 && again->node_count == spec->node_count &&
          again->parameter_count == spec->parameter_count);
}

static void check_bad_spec(const char *text, const char *message_part) {
    model_spec *spec = &spec_buffer;
    ddt_status status = model_spec_parse(text, spec);
    if (status != DDT_ERR_USAGE) fprintf(stderr, "  '%s': status %d\n", text, (int)status);
    CHECK(status == DDT_ERR_USAGE);
    bool mentions = strstr(ddt_error_message(), message_part) != NULL;
    if (!mentions)
        fprintf(stderr, "  '%s': message '%s' lacks '%s'\n", text, ddt_error_message(),
                message_part);
    CHECK(mentions);
}

/* The tensor `name` has shape dims (rank entries) and sits at `offset`. */
static void check_tensor(const model_spec *spec, const char *name, int rank, const int *dims) {
    int t = model_spec_find_tensor(spec, name);
    if (t < 0) fprintf(stderr, "  no tensor %s in %s\n", name, spec->text);
    CHECK(t >= 0);
    if (t < 0) return;
    CHECK(spec->tensors[t].rank == rank);
    for (int d = 0; d < rank; d++)
        CHECK(spec->tensors[t].dims[d] == dims[d]);
}

static void check_specs(void) {
    /* MLP texts as ever */
    check_good_spec("784-256-relu-128-relu-10", "784-256-relu-128-relu-10", 5, 6, 784, 10);
    check_good_spec("4-3", "4-3", 1, 2, 4, 3);
    check_good_spec("10-20-gelu-dropout0.5-5-tanh-1-sigmoid",
                    "10-20-gelu-dropout0.5-5-tanh-1-sigmoid", 7, 6, 10, 1);
    check_good_spec("8-dropout0.20-16-relu-dropout0.5-2", "8-dropout0.2-16-relu-dropout0.5-2", 5, 4,
                    8, 2);
    /* a bare dropout is nn.Dropout()'s 0.5, written out in the canonical text */
    check_good_spec("8-16-dropout-relu-4", "8-16-dropout0.5-relu-4", 4, 4, 8, 4);
    check_good_spec("8-16-dropout0-4", "8-16-dropout0-4", 3, 4, 8, 4);
    check_good_spec("8-16-dropout.25-04", "8-16-dropout0.25-4", 3, 4, 8, 4);
    /* images, written loosely, in a canonical form */
    check_good_spec(" 1x28x28 - conv(32, k3, p1) - relu - maxpool(2) # a comment\n - flatten - 10",
                    "1x28x28-conv(32,k3,p1)-relu-maxpool(2)-flatten-10", 5, 4, 784, 10);
    check_good_spec("3x8x8-conv(4,k3,s2,p1,nobias)-bn-relu-avgpool(2,s1)-gap-5",
                    "3x8x8-conv(4,k3,s2,p1,nobias)-bn-relu-avgpool(2,s1)-gap-5", 6, 8, 192, 5);
    check_good_spec("3x8x8-conv(4,k3,p1)-2*(res(conv(4,k3,p1)-relu|conv(4,k1)))-gap-2",
                    "3x8x8-conv(4,k3,p1)-2*(res(conv(4,k3,p1)-relu|conv(4,k1)))-gap-2", 1 + 2 * 5 + 2,
                    2 + 2 * 4 + 2, 192, 2);
    check_good_spec("tokens(16,50)-embed(8)-res(ln-attn(2))-ln-lmhead",
                    "tokens(16,50)-embed(8)-res(ln-attn(2))-ln-lmhead", 7, 2 + 2 + 4 + 2, 16, 50);
    check_good_spec("cnn-small", model_spec_preset_text("cnn-small"), 13, 18, 784, 10);
    check_good_spec("gpt(vocab=256,context=64,width=128,heads=4,layers=4)",
                    "gpt(layers=4,heads=4,width=128,context=64,vocab=256)", 1 + 4 * 10 + 2,
                    2 + 4 * 12 + 2, 64, 256);
    check_good_spec("gpt-tiny", "gpt(layers=4,heads=4,width=128,context=64,vocab=256)", 43, 52, 64,
                    256);

    model_spec *spec = &spec_buffer;
    CHECK_OK(model_spec_parse("6-dropout0.3-5-relu-2", spec));
    CHECK(spec->nodes[0].kind == NODE_DROPOUT && spec->nodes[0].in_shape.dims[0] == 6);
    CHECK_NEAR(spec->nodes[0].rate, 0.3, 1e-7);
    CHECK(spec->nodes[1].kind == NODE_DENSE && spec->nodes[1].in_shape.dims[0] == 6 &&
          spec->nodes[1].out_shape.dims[0] == 5 && spec->nodes[1].input == 0);
    CHECK(spec->nodes[2].kind == NODE_ACTIVATION && spec->nodes[2].activation == ACTIVATION_RELU);
    CHECK(spec->positions == 1 && spec->input_kind == MODEL_INPUT_FEATURES);

    /* PyTorch's state_dict names and shapes */
    CHECK_OK(model_spec_parse("3x8x8-conv(4,k3,p1)-bn-relu-res(conv(4,k3,p1)-bn|conv(4,k1))-gap-5",
                              spec));
    check_tensor(spec, "0.weight", 4, (int[]){4, 3, 3, 3});
    check_tensor(spec, "0.bias", 1, (int[]){4});
    check_tensor(spec, "1.running_var", 1, (int[]){4});
    check_tensor(spec, "1.num_batches_tracked", 0, NULL);
    check_tensor(spec, "3.body.0.weight", 4, (int[]){4, 4, 3, 3});
    check_tensor(spec, "3.body.1.weight", 1, (int[]){4});
    check_tensor(spec, "3.shortcut.0.weight", 4, (int[]){4, 4, 1, 1});
    check_tensor(spec, "5.weight", 2, (int[]){5, 4});
    CHECK(spec->buffer_count == 2 * (4 + 4 + 1)); /* two bn: mean, var, counter */
    CHECK(spec->nodes[spec->node_count - 1].kind == NODE_DENSE);
    CHECK_OK(model_spec_parse("gpt(layers=2,heads=2,width=8,context=4,vocab=6)", spec));
    check_tensor(spec, "transformer.wte.weight", 2, (int[]){6, 8});
    check_tensor(spec, "transformer.wpe.weight", 2, (int[]){4, 8});
    check_tensor(spec, "transformer.h.1.attn.c_attn.weight", 2, (int[]){24, 8});
    check_tensor(spec, "transformer.h.1.attn.c_proj.bias", 1, (int[]){8});
    check_tensor(spec, "transformer.h.0.mlp.c_fc.weight", 2, (int[]){32, 8});
    check_tensor(spec, "transformer.h.0.mlp.c_proj.weight", 2, (int[]){8, 32});
    check_tensor(spec, "transformer.ln_f.bias", 1, (int[]){8});
    CHECK(model_spec_find_tensor(spec, "lm_head.weight") < 0); /* tied to wte */
    CHECK(spec->positions == 4 && spec->output_width == 6 && spec->block_count == 2);
    /* decay: matrices yes; biases, norms, embeddings no */
    CHECK(spec->tensors[model_spec_find_tensor(spec, "transformer.h.0.attn.c_attn.weight")].decay);
    CHECK(!spec->tensors[model_spec_find_tensor(spec, "transformer.h.0.attn.c_attn.bias")].decay);
    CHECK(!spec->tensors[model_spec_find_tensor(spec, "transformer.wte.weight")].decay);
    CHECK(!spec->tensors[model_spec_find_tensor(spec, "transformer.h.0.ln_1.weight")].decay);

    check_bad_spec("784-256-relux-10", "--model: at 'relux': not a layer (expected a width or one "
                                       "of relu, gelu, gelu_tanh, tanh, sigmoid");
    check_bad_spec("", "empty");
    check_bad_spec("784--10", "a '-' at an end, or two in a row");
    check_bad_spec("784-10-", "a '-' at an end, or two in a row");
    check_bad_spec("relu-10", "the model must start with its input");
    check_bad_spec("0-10", "the input width must be at least 1");
    check_bad_spec("784-0", "a dense layer's width must be at least 1");
    check_bad_spec("784-99999999999999999999", "too large");
    check_bad_spec("784", "has no layer");
    check_bad_spec("784-relu", "no layer with parameters");
    check_bad_spec("784-10-dropout", "ends with dropout");
    check_bad_spec("784-100-dropout1-10", "at 'dropout1': the dropout rate must be in [0, 1)");
    check_bad_spec("784-100-dropout1.5-10", "must be in [0, 1)");
    check_bad_spec("784-100-dropoutx-10", "at 'dropoutx': not a layer");
    check_bad_spec("784-10.5", "expected '-' between layers");
    check_bad_spec("1x28x28-10", "at '10': a dense layer needs flat features or a sequence, not "
                                 "1x28x28 images: put flatten or gap before it");
    check_bad_spec("1x28x28-conv(8,k3)", "ends with 8x26x26 images");
    check_bad_spec("1x28x28-conv(8)-flatten-10", "conv needs its kernel size");
    check_bad_spec("1x28x28-conv(8,k3,q2)-flatten-10",
                   "conv(...) has no argument 'q2' (it takes OUT,kK[,sS][,pP][,nobias])");
    check_bad_spec("1x4x4-conv(8,k5)-flatten-10", "window does not fit");
    check_bad_spec("1x28x28-conv(8,k3-flatten-10", "expected ')' to close conv(");
    check_bad_spec("784-conv(8,k3)-10", "conv needs images (C x H x W), but its input is 784");
    check_bad_spec("1x8x8-res(conv(4,k3,p1))-flatten-2", "the block's body ends with 4x8x8 but its "
                                                          "shortcut gives 1x8x8");
    check_bad_spec("1x8x8-maxpool(2,p2)-flatten-2", "the padding 2 is more than half the window 2");
    check_bad_spec("10-ln-4)", "an unmatched ')'");
    check_bad_spec("16x16-4", "an input shape is a width (784) or C x H x W");
    check_bad_spec("tokens(8,10)-4", "token ids need embed(D) before any other layer");
    check_bad_spec("tokens(8,10)-embed(6)-attn(4)-lmhead", "the width 6 does not split into 4 heads");
    check_bad_spec("tokens(8,10)-embed(6)-6", "a token model must end with lmhead");
    check_bad_spec("10-lmhead", "lmhead reuses embed's token table");
    check_bad_spec("gpt(layers=2,heads=2,width=8,context=4)", "gpt(...) needs vocab=N");
    check_bad_spec("gpt(layers=2,depth=2)", "gpt(...) has no setting 'depth'");
    check_bad_spec("10-gpt(layers=1)", "gpt(...) is a whole model: write it alone");
    /* what an older ddtrain stored for the default rate still reads from a file, as that */
    CHECK_OK(model_spec_parse_stored("10-20-gelu-dropout-5-tanh-1-sigmoid", spec));
    CHECK(strcmp(spec->text, "10-20-gelu-dropout0.5-5-tanh-1-sigmoid") == 0);
    CHECK(spec->node_count == 7 && spec->nodes[2].kind == NODE_DROPOUT &&
          spec->nodes[2].rate == 0.5f && spec->nodes[3].out_shape.dims[0] == 5);
    /* a stored description is canonical text: it names no other file */
    CHECK(model_spec_parse_stored("@/dev/zero", spec) == DDT_ERR_USAGE);
    CHECK(strstr(ddt_error_message(), "a stored description cannot name a file") != NULL);
    CHECK(model_spec_parse_stored("2097152x2097152x2097152-flatten-10", spec) == DDT_ERR_USAGE);
    /* a setting twice, an unknown or empty one: errors naming it, never a silent choice */
    check_bad_spec("1x8x8-conv(8,k3,s1,s2)-flatten-4",
                   "conv(...) gives the stride twice (s1, then s2)");
    check_bad_spec("1x8x8-conv(8,k3,p1,p0)-flatten-4", "gives the padding twice (p1, then p0)");
    check_bad_spec("1x8x8-conv(8,k3,k3,k3,k3,k3,k3,k3,k3,k3,k3,k3,k3,k3,k3,k3,k3,k3,k3,k3,k3,k3,"
                   "k3,k3,k3,k3,k3,k3,k3,k3,k3,k3,k3,k3,k3,k3,k3,k3,k3,k3,k3)-flatten-4",
                   "conv(...) gives the kernel twice (k3, then k3)");
    check_bad_spec("1x8x8-conv(8,k3,nobias,nobias)-flatten-4", "conv(...) says nobias twice");
    check_bad_spec("1x8x8-conv(8,k3,)-flatten-4", "conv(...) has an empty argument");
    check_bad_spec("1x8x8-conv(8,3)-flatten-4", "conv(...) has no argument '3'");
    check_bad_spec("1x8x8-conv(8,k3x)-flatten-4", "'k3x' is not a number after 'k'");
    check_bad_spec("1x8x8-conv(8,k3,nobiasx)-flatten-4", "has no argument 'nobiasx'");
    check_bad_spec("1x8x8-maxpool(2,s2,s1)-flatten-4", "maxpool(...) gives the stride twice");
    check_bad_spec("1x8x8-avgpool(2,k2)-flatten-4", "avgpool(...) has no argument 'k2'");
    check_bad_spec("gpt(layers=1,layers=2,heads=1,width=8,context=4,vocab=4)",
                   "gpt(...) gives layers twice");
    check_bad_spec("gpt(layers=1,heads=1,width=8,context=4,vocab=4,dropout=0.1,dropout=0.2)",
                   "gpt(...) gives dropout twice");
    check_bad_spec("gpt(depth)", "gpt(...) has no setting 'depth'");
    check_bad_spec("tokens(8,10,3)-embed(8)-lmhead",
                   "tokens(...) takes two arguments, CONTEXT and VOCAB");
    check_bad_spec("tokens(8,10)-embed(8,2)-lmhead", "embed(...) takes one argument, its width D");
    check_bad_spec("tokens(8,10)-embed(8)-attn(2,2)-lmhead",
                   "attn(...) takes one argument, its number of heads");
    check_bad_spec("gpt(layers=1,heads=1,width=8,context=4,vocab=4,dropout=-0.1)",
                   "expected a dropout rate in [0, 1) (e.g. 0.1), found '-'");
    /* degenerate sizes: attention over one position, a vocabulary of one token */
    check_bad_spec("gpt(layers=1,heads=1,width=8,context=1,vocab=4)",
                   "context=1 is too short: attention needs at least 2 positions");
    check_bad_spec("gpt(layers=1,heads=1,width=8,context=4,vocab=1)",
                   "vocab=1 is too small: a token model needs at least 2 tokens");
    check_bad_spec("tokens(1,4)-embed(8)-attn(1)-lmhead",
                   "at 'attn(1)': a sequence of 1 position is too short");
    check_bad_spec("tokens(4,1)-embed(8)-lmhead", "a vocabulary of 1 is too small");
    /* dropout's rate: in [0, 1), a plain decimal right after the word; "dropout-N" is either
     * a rate of -N or dropout then a dense layer, so it is refused, naming both */
    check_bad_spec("16-dropout-1-4", "'dropout-1' could be a rate of -1 or dropout then a dense "
                                     "layer of 1: write the rate, e.g. dropout0.5-1");
    check_bad_spec("16-dropout-0.3-4", "write dropout0.3, not dropout-0.3");
    check_bad_spec("16-dropout-.3-4", "write dropout.3, not dropout-.3");
    check_bad_spec("16-dropout0.5.5-4", "the dropout rate '0.5.5' is not a plain decimal");
    check_bad_spec("16-dropout1e-3-4", "the dropout rate '1e' is not a plain decimal");
    check_bad_spec("16-dropout+0.5-4", "the dropout rate '+0.5' is not a plain decimal");
    /* sizes that overflow: refused naming the shape, never wrapped (UBSan: signed overflow) */
    check_bad_spec("2097152x2097152x2097152-flatten-10",
                   "the input 2097152x2097152x2097152 holds more than 2^63 values per sample; at "
                   "most 16777216");
    check_bad_spec("1x1x1-conv(16777216,k1,p1000)-flatten-4",
                   "the conv layer's output 16777216x2001x2001 holds 67175989641216 values per "
                   "sample; at most 2147483647");
    check_bad_spec("16777216x1x1-conv(1,k1024,p512)-flatten-4",
                   "each window holds 16777216 channels x 1024x1024 = 17592186044416 values");
    check_bad_spec("1x1x1-conv(16777216,k1024,p512)-flatten-4",
                   "16777216 outputs x a 1024x1024 kernel = 17592186044416 values");
    check_bad_spec("tokens(65536,16777216)-embed(8)-lmhead",
                   "the lmhead layer's output 65536x16777216 holds 1099511627776 values");
    check_bad_spec("tokens(65536,4)-embed(65536)-lmhead",
                   "the embed layer's output 65536x65536 holds 4294967296 values");
    CHECK(model_spec_parse("@/nonexistent/model.txt", &spec_buffer) == DDT_ERR_IO);
    CHECK(strstr(ddt_error_message(), "--model @/nonexistent/model.txt: cannot open") != NULL);
    /* a description read from a file: every error names the file (the grammar's too) */
    const struct {
        const char *text, *expected;
    } from_file[] = {
        {"", ": the description is empty"},
        {"# only a comment\n", ": the description is empty"},
        {"4-conv(8,k3)-10\n", ": at 'conv"},
    };
    for (size_t i = 0; i < sizeof from_file / sizeof from_file[0]; i++) {
        char path[] = "/tmp/ddtrain-test-model-XXXXXX", option[64], expected[128];
        int fd = mkstemp(path);
        CHECK(fd >= 0);
        FILE *file = fdopen(fd, "w");
        fputs(from_file[i].text, file);
        fclose(file);
        snprintf(option, sizeof option, "@%s", path);
        snprintf(expected, sizeof expected, "--model %s%s", option, from_file[i].expected);
        CHECK(model_spec_parse(option, &spec_buffer) == DDT_ERR_USAGE);
        if (!strstr(ddt_error_message(), expected))
            fprintf(stderr, "expected '%s' in: %s\n", expected, ddt_error_message());
        CHECK(strstr(ddt_error_message(), expected) == ddt_error_message());
        unlink(path);
    }
    char many[MODEL_SPEC_MAX_TEXT] = "4-4";
    for (int i = 0; i < MODEL_MAX_NODES && strlen(many) < sizeof many - 6; i++)
        strcat(many, "-relu");
    check_bad_spec(many, "too many layers (at most 320 after expansion)");
    check_bad_spec("4-4-400*(relu)", "too many layers");
    check_bad_spec("4-400*(4-relu)-4", "too many parameter tensors (at most 256)");
    char long_text[MODEL_SPEC_MAX_TEXT + 10];
    memset(long_text, '1', sizeof long_text - 1);
    long_text[sizeof long_text - 1] = '\0';
    check_bad_spec(long_text, "too long");
}

/* The MLP's layout is PyTorch nn.Linear's, layer by layer: weight then bias. */
static void check_layout(void) {
    model_spec *spec = &spec_buffer;
    CHECK_OK(model_spec_parse("784-256-relu-128-relu-10", spec));
    CHECK(model_spec_parameter_count(spec) == 235146);
    CHECK(spec->buffer_count == 0);
    const char *names[6] = {"0.weight", "0.bias", "2.weight", "2.bias", "4.weight", "4.bias"};
    size_t offsets[6] = {0, 784 * 256, 784 * 256 + 256, 784 * 256 + 256 + 256 * 128,
                         784 * 256 + 256 + 256 * 128 + 128, 235146 - 10};
    for (int t = 0; t < 6; t++) {
        CHECK(strcmp(spec->tensors[t].name, names[t]) == 0);
        CHECK(spec->tensors[t].offset == offsets[t]);
    }
    size_t points[8];
    CHECK(model_spec_ready_points(spec, points, 8) == 3);
    CHECK(points[0] == 0 && points[1] == offsets[2] && points[2] == offsets[4]);
    CHECK(model_spec_tensor_at(spec, offsets[3] + 5) == 3);
}

static ddt_status failing_memory_alloc(device *failing, size_t bytes, void **out) {
    (void)failing;
    *out = NULL;
    return ddt_error(DDT_ERR_MEMORY, "out of device memory: cannot allocate %zu bytes", bytes);
}

/* A backend whose allocations fail: the allocator reports what and how much, tracks nothing. */
static void check_allocation_failure(void) {
    device_ops ops = *dev->ops;
    ops.memory_alloc = failing_memory_alloc;
    device failing = *dev;
    failing.ops = &ops;
    allocator *alloc;
    CHECK_OK(allocator_open(&failing, &alloc));
    void *block = &failing;
    CHECK(allocator_alloc(alloc, MEMORY_COMPONENT_STAGING, 3 << 20, &block) == DDT_ERR_MEMORY);
    CHECK(block == NULL);
    CHECK(strstr(ddt_error_message(), "3.0 MiB of input staging") != NULL);
    CHECK(strstr(ddt_error_message(), "out of device memory") != NULL);
    CHECK(allocator_get_stats(alloc).bytes_in_use == 0);
    CHECK(allocator_get_stats(alloc).allocation_count == 0);
    static model_spec spec;
    CHECK_OK(model_spec_parse("4-3", &spec));
    model *m = (model *)&failing;
    CHECK(model_init(&spec, alloc, 2, (model_options){0}, &m) == DDT_ERR_MEMORY);
    CHECK(m == NULL);
    allocator_close(alloc);
}

static void check_init_and_allocator(void) {
    allocator *alloc;
    CHECK_OK(allocator_open(dev, &alloc));
    CHECK(allocator_device(alloc) == dev);
    static model_spec spec;
    CHECK_OK(model_spec_parse("784-256-relu-128-relu-10", &spec));
    const int rows = 128;
    model *a = NULL, *b = NULL;
    CHECK_OK(model_init(&spec, alloc, rows, (model_options){0}, &a));
    CHECK_OK(model_init(&spec, alloc, rows, (model_options){0}, &b));
    if (!a || !b) return;
    CHECK(model_parameter_count(a) == 235146);
    CHECK(model_max_rows(a) == rows);
    CHECK(strcmp(model_get_spec(a)->text, spec.text) == 0);

    /* Allocator: per component, rounded to 256 bytes, the activation plan is exact. */
    size_t parameter_bytes = (235146 * 4 + 255) / 256 * 256;
    size_t activation_bytes = (model_spec_activation_floats(&spec, rows, (model_options){0}) * 4 + 255) / 256 * 256;
    allocator_stats stats = allocator_get_stats(alloc);
    CHECK(stats.component_bytes[MEMORY_COMPONENT_PARAMETERS] == 2 * parameter_bytes);
    CHECK(stats.component_bytes[MEMORY_COMPONENT_GRADIENTS] == 2 * parameter_bytes);
    CHECK(stats.component_bytes[MEMORY_COMPONENT_ACTIVATIONS] == 2 * activation_bytes);
    CHECK(stats.component_bytes[MEMORY_COMPONENT_OPTIMIZER] == 0);
    CHECK(stats.bytes_in_use == 4 * parameter_bytes + 2 * activation_bytes);
    CHECK(stats.peak_bytes == stats.bytes_in_use);
    CHECK(stats.allocation_count == 6);
    /* Activations hold at least every layer's output plus the output gradient. */
    CHECK(model_spec_activation_floats(&spec, rows, (model_options){0}) >=
          (size_t)rows * (256 + 256 + 128 + 128 + 10 + 10));

    /* Same seed, same parameters; different seed, different parameters; biases zero. */
    size_t count = model_parameter_count(a);
    CHECK_OK(model_init_parameters(a, 1234));
    CHECK_OK(model_init_parameters(b, 1234));
    CHECK(memcmp(model_parameters(a), model_parameters(b), count * sizeof(float)) == 0);
    CHECK_OK(model_init_parameters(b, 1235));
    CHECK(memcmp(model_parameters(a), model_parameters(b), count * sizeof(float)) != 0);
    const float *p = model_parameters(a);
    size_t l0_bias = spec.tensors[1].offset, l2_weight = spec.tensors[4].offset;
    bool biases_zero = true;
    for (int i = 0; i < 256; i++)
        biases_zero &= p[l0_bias + i] == 0.0f;
    CHECK(biases_zero);

    /* He-normal on layer 0 (followed by relu): std sqrt(2/784), mean 0. */
    double sum = 0.0, squares = 0.0;
    size_t n = (size_t)784 * 256;
    for (size_t i = 0; i < n; i++) {
        sum += p[i];
        squares += (double)p[i] * p[i];
    }
    double mean = sum / n, std = sqrt(squares / n - mean * mean);
    CHECK(fabs(mean) < 0.002);
    CHECK(fabs(std / sqrt(2.0 / 784) - 1.0) < 0.01);
    /* Xavier-uniform on the last layer: values within sqrt(6/(128+10)), std limit/sqrt(3). */
    double limit = sqrt(6.0 / (128 + 10));
    double max_abs = 0.0;
    squares = 0.0;
    n = (size_t)128 * 10;
    for (size_t i = 0; i < n; i++) {
        double v = p[l2_weight + i];
        max_abs = fmax(max_abs, fabs(v));
        squares += v * v;
    }
    CHECK(max_abs <= limit);
    CHECK(max_abs > 0.9 * limit);
    CHECK(fabs(sqrt(squares / n) / (limit / sqrt(3.0)) - 1.0) < 0.1);

    /* Init of the same layer does not depend on the rest of the model. */
    static model_spec other;
    CHECK_OK(model_spec_parse("784-256-relu-64", &other));
    model *c = NULL;
    CHECK_OK(model_init(&other, alloc, 4, (model_options){0}, &c));
    if (c) {
        CHECK_OK(model_init_parameters(c, 1234));
        CHECK(memcmp(model_parameters(c), p, 784 * 256 * sizeof(float)) == 0);
        model_free(c);
    }

    /* Freeing returns everything; the peak stays. */
    size_t peak = allocator_get_stats(alloc).peak_bytes;
    model_free(b);
    stats = allocator_get_stats(alloc);
    CHECK(stats.bytes_in_use == 2 * parameter_bytes + activation_bytes);
    CHECK(stats.peak_bytes == peak);
    CHECK(stats.allocation_count == 3);

    /* Zero-filled, rounded, NULL-tolerant; destroy frees what is left (ASan would tell). */
    void *block = NULL;
    CHECK_OK(allocator_alloc(alloc, MEMORY_COMPONENT_WORKSPACE, 1000, &block));
    CHECK(allocator_get_stats(alloc).component_bytes[MEMORY_COMPONENT_WORKSPACE] == 1024);
    bool zero = true;
    for (int i = 0; i < 1000; i++)
        zero &= ((unsigned char *)block)[i] == 0;
    CHECK(zero);
    allocator_free(alloc, block);
    allocator_free(alloc, NULL);
    CHECK(allocator_get_stats(alloc).component_bytes[MEMORY_COMPONENT_WORKSPACE] == 0);
    CHECK(strcmp(memory_component_name(MEMORY_COMPONENT_ACTIVATIONS), "activations") == 0);
    check_allocation_failure();
    allocator_close(alloc);   /* still holds model a's buffers */
    free(a);                  /* model_free would hand them back to a dead allocator */
    allocator_close(NULL);
}

static void fill_inputs(float *x, int rows, int width, uint64_t seed) {
    for (int i = 0; i < rows * width; i++)
        x[i] = 2.0f * rng_uniform(rng_hash4(seed, 300, 0, i)) - 1.0f;
}

/* The MLP of check_batch_independence in double precision, with a bound on how far a float32
 * forward pass may land from it: for each dense layer z = W x + b of n inputs, the float32
 * error is at most sum_j |W_ij| e_j (the error carried in) plus gamma(n + 1) (sum_j |W_ij x_j| +
 * |b_i|) (the layer's own sums, in whatever order the BLAS kernel adds: Higham, Accuracy and
 * Stability of Numerical Algorithms, ch. 3); an activation multiplies the error carried by its
 * largest slope (relu and tanh 1, gelu 1.13, sigmoid 1/4, dropout its scale) and adds a few
 * ulps of its result for its own float32 evaluation (libm's erff, tanhf and expf are within
 * 2 ulps). A batch of rows and each row alone are two float32 passes, so they are within twice
 * the bound of each other whatever kernel runs them. */
#define MLP_LAYERS 5
static const int mlp_widths[MLP_LAYERS + 1] = {20, 64, 32, 16, 8, 5};
static const int mlp_activations[MLP_LAYERS] = {ACTIVATION_RELU, ACTIVATION_GELU, ACTIVATION_TANH,
                                                ACTIVATION_SIGMOID, -1 /* none: the logits */};
static void mlp_reference(const float *parameters, const float *input, const float *dropout_scale,
                          double *output, double *bound) {
    const double u = 0x1p-24;
    double value[64], error[64], next_value[64], next_error[64];
    for (int j = 0; j < mlp_widths[0]; j++) {
        value[j] = input[j];
        error[j] = 0.0;
    }
    const float *p = parameters;
    for (int layer = 0; layer < MLP_LAYERS; layer++) {
        int in = mlp_widths[layer], out = mlp_widths[layer + 1];
        const float *w = p, *b = p + (size_t)out * in;
        double gamma = (in + 1) * u / (1.0 - (in + 1) * u);
        for (int i = 0; i < out; i++) {
            double sum = b[i], magnitude = fabs(b[i]), carried = 0.0;
            for (int j = 0; j < in; j++) {
                sum += (double)w[(size_t)i * in + j] * value[j];
                magnitude += fabs((double)w[(size_t)i * in + j] * value[j]);
                carried += fabs((double)w[(size_t)i * in + j]) * error[j];
            }
            double y = sum, e = carried + gamma * magnitude;
            switch (mlp_activations[layer]) {
            case ACTIVATION_RELU:
                y = sum > 0 ? sum : 0.0;
                if (layer == 0) { /* relu then dropout (rate 0.3): y * keep / 0.7, in float32 */
                    y *= dropout_scale[i];
                    e = e * dropout_scale[i] + u * fabs(y);
                }
                break;
            case ACTIVATION_GELU:
                y = 0.5 * sum * (1.0 + erf(sum / sqrt(2.0)));
                e = 1.13 * e + 8 * u * (fabs(y) + fabs(sum));
                break;
            case ACTIVATION_TANH:
                y = tanh(sum);
                e = e + 4 * u;
                break;
            case ACTIVATION_SIGMOID:
                y = 1.0 / (1.0 + exp(-sum));
                e = 0.25 * e + 4 * u;
                break;
            default:
                break;
            }
            next_value[i] = y;
            next_error[i] = e;
        }
        memcpy(value, next_value, sizeof value);
        memcpy(error, next_error, sizeof error);
        p += (size_t)out * in + out;
    }
    for (int i = 0; i < mlp_widths[MLP_LAYERS]; i++) {
        output[i] = value[i];
        bound[i] = error[i];
    }
}

/* Forward of a batch equals forward of each row alone, evaluation and training, within twice
 * the float32 forward's error bound (mlp_reference), and each is within that bound of the
 * forward in double. */
static void check_batch_independence(void) {
    allocator *alloc;
    CHECK_OK(allocator_open(dev, &alloc));
    static model_spec spec;
    CHECK_OK(model_spec_parse("20-64-relu-dropout0.3-32-gelu-16-tanh-8-sigmoid-5", &spec));
    const int rows = 9;
    model *m = NULL;
    CHECK_OK(model_init(&spec, alloc, rows, (model_options){0}, &m));
    if (!m) return;
    CHECK_OK(model_init_parameters(m, 99));
    float inputs[9 * 20];
    fill_inputs(inputs, rows, 20, 5);
    int64_t row_ids[9] = {5, 900, 13, 77, 1, 0, 123456789, 42, 8};
    CHECK(model_parameter_count(m) ==
          20 * 64 + 64 + 64 * 32 + 32 + 32 * 16 + 16 + 16 * 8 + 8 + 8 * 5 + 5);
    for (int training = 0; training <= 1; training++) {
        model_pass pass = {.training = training, .step = 3, .seed = 8, .row_ids = row_ids};
        /* Dropout's scale per unit (0 or 1 / 0.7): the mask of node 2 applied to ones. */
        float ones[9 * 64], scales[9 * 64];
        for (int i = 0; i < 9 * 64; i++)
            ones[i] = scales[i] = 1.0f;
        if (training)
            device_dropout_forward(dev, rows, 64, 0.3f,
                                   (dropout_key){.seed = 8, .step = 3, .layer = 2}, row_ids, ones,
                                   scales);
        const float *outputs;
        CHECK_OK(model_forward(m, (model_input){.features = inputs}, rows, &pass, &outputs));
        float batch[9 * 5];
        memcpy(batch, outputs, sizeof batch);
        double worst = 0.0, worst_bound = 0.0, worst_reference = 0.0;
        for (int r = 0; r < rows; r++) {
            double exact[5], bound[5];
            mlp_reference(model_parameters(m), inputs + r * 20, scales + r * 64, exact, bound);
            model_pass single = pass;
            single.row_ids = &row_ids[r];
            CHECK_OK(model_forward(m, (model_input){.features = inputs + r * 20}, 1, &single, &outputs));
            for (int c = 0; c < 5; c++) {
                worst = fmax(worst, fabs(outputs[c] - batch[r * 5 + c]) / (2 * bound[c]));
                double off = fmax(fabs(outputs[c] - exact[c]), fabs(batch[r * 5 + c] - exact[c]));
                worst_reference = fmax(worst_reference, off / bound[c]);
                worst_bound = fmax(worst_bound, bound[c]);
            }
        }
        printf("batch independence (%s): |batch - row| up to %.2f of twice the float32 bound, "
               "|float32 - double| up to %.2f of it (bound up to %.2e)\n",
               training ? "training" : "evaluation", worst, worst_reference, worst_bound);
        CHECK(worst <= 1.0);
        CHECK(worst_reference <= 1.0);
    }
    /* Rows beyond the capacity are refused; backward must follow a forward of the same rows. */
    const float *outputs;
    model_pass eval = {0};
    model_input in = {.features = inputs};
    CHECK(model_forward(m, in, rows + 1, &eval, &outputs) == DDT_ERR_INTERNAL);
    CHECK_OK(model_forward(m, in, 2, &eval, &outputs));
    CHECK(model_backward(m, 2, &eval, NULL, NULL) == DDT_ERR_INTERNAL); /* not training */
    model_pass train = {.training = true, .row_ids = row_ids};
    CHECK_OK(model_forward(m, in, 2, &train, &outputs));
    CHECK(model_backward(m, 3, &train, NULL, NULL) == DDT_ERR_INTERNAL);
    CHECK_OK(model_backward(m, 2, &train, NULL, NULL));
    CHECK(model_forward(m, (model_input){0}, 2, &eval, &outputs) == DDT_ERR_INTERNAL);
    /* An empty micro-batch is a no-op. */
    model_zero_gradients(m);
    CHECK_OK(model_forward(m, in, 0, &train, &outputs));
    CHECK_OK(model_backward(m, 0, &train, NULL, NULL));
    bool zero = true;
    for (size_t i = 0; i < model_parameter_count(m); i++)
        zero &= model_gradients(m)[i] == 0.0f;
    CHECK(zero);
    model_free(m);
    CHECK(allocator_get_stats(alloc).bytes_in_use == 0);
    allocator_close(alloc);
}

/* Dropout: the mask of a row follows its global id wherever it sits in the batch. */
static void check_dropout(void) {
    allocator *alloc;
    CHECK_OK(allocator_open(dev, &alloc));
    static model_spec spec;
    CHECK_OK(model_spec_parse("6-dropout0.5-6", &spec));
    model *m = NULL;
    CHECK_OK(model_init(&spec, alloc, 4, (model_options){0}, &m));
    if (!m) return;
    /* Identity weights so the output shows the mask directly. */
    float *w = model_parameters(m);
    for (int i = 0; i < 6; i++)
        w[i * 6 + i] = 1.0f;
    float inputs[4 * 6];
    for (int i = 0; i < 4 * 6; i++)
        inputs[i] = 1.0f;
    int64_t ids_a[4] = {10, 20, 30, 40};
    int64_t ids_b[4] = {30, 99, 10, 20};
    model_pass pass = {.training = true, .step = 5, .seed = 77, .row_ids = ids_a};
    const float *outputs;
    float first[4 * 6], second[4 * 6];
    CHECK_OK(model_forward(m, (model_input){.features = inputs}, 4, &pass, &outputs));
    memcpy(first, outputs, sizeof first);
    pass.row_ids = ids_b;
    CHECK_OK(model_forward(m, (model_input){.features = inputs}, 4, &pass, &outputs));
    memcpy(second, outputs, sizeof second);
    CHECK(memcmp(first + 2 * 6, second + 0 * 6, 6 * sizeof(float)) == 0); /* row 30 */
    CHECK(memcmp(first + 0 * 6, second + 2 * 6, 6 * sizeof(float)) == 0); /* row 10 */
    CHECK(memcmp(first + 1 * 6, second + 3 * 6, 6 * sizeof(float)) == 0); /* row 20 */
    /* Values are 0 or 1/(1-rate); the masks of different rows differ. */
    bool values_ok = true;
    for (int i = 0; i < 4 * 6; i++)
        values_ok &= first[i] == 0.0f || first[i] == 2.0f;
    CHECK(values_ok);
    CHECK(memcmp(first, first + 6, 6 * sizeof(float)) != 0 ||
          memcmp(first + 6, first + 12, 6 * sizeof(float)) != 0);
    /* A different step gives a different mask; evaluation is the identity. */
    pass.row_ids = ids_a;
    pass.step = 6;
    CHECK_OK(model_forward(m, (model_input){.features = inputs}, 4, &pass, &outputs));
    CHECK(memcmp(first, outputs, sizeof first) != 0);
    pass.training = false;
    CHECK_OK(model_forward(m, (model_input){.features = inputs}, 4, &pass, &outputs));
    bool identity = true;
    for (int i = 0; i < 4 * 6; i++)
        identity &= outputs[i] == 1.0f;
    CHECK(identity);

    /* Over many units, the dropped fraction is close to the rate (device op directly). */
    enum { ROWS = 64, COLS = 256 };
    static float x[ROWS * COLS], y[ROWS * COLS];
    int64_t ids[ROWS];
    for (int r = 0; r < ROWS; r++)
        ids[r] = 1000 + r;
    for (int i = 0; i < ROWS * COLS; i++)
        x[i] = 1.0f;
    dropout_key key = {.seed = 1, .step = 2, .layer = 3};
    device_dropout_forward(dev, ROWS, COLS, 0.2f, key, ids, x, y);
    int dropped = 0;
    for (int i = 0; i < ROWS * COLS; i++)
        dropped += y[i] == 0.0f;
    CHECK(fabs((double)dropped / (ROWS * COLS) - 0.2) < 0.01);
    device_dropout_forward(dev, ROWS, COLS, 0.0f, key, ids, x, y);
    CHECK(memcmp(x, y, sizeof x) == 0);
    model_free(m);
    allocator_close(alloc);
}

static void check_device_and_losses(void) {
    CHECK(device_kind_available(DEVICE_KIND_CPU));
    CHECK(strcmp(device_kind_name(DEVICE_KIND_CPU), "cpu") == 0);
    CHECK(strcmp(device_kind_name(DEVICE_KIND_CUDA), "cuda") == 0);
    CHECK(strncmp(dev->description, "cpu (OpenBLAS ", 14) == 0);
    printf("device: %s\n", dev->description);
    /* Asking for a GPU that this build or machine lacks is a clear error, never a crash. */
    device *cuda = (device *)dev;
    if (!device_kind_available(DEVICE_KIND_CUDA)) {
        CHECK(device_open(DEVICE_KIND_CUDA, 0, &cuda) == DDT_ERR_USAGE);
        CHECK(cuda == NULL);
        CHECK(strstr(ddt_error_message(), "without CUDA support") != NULL);
    } else if (device_count(DEVICE_KIND_CUDA) == 0) {
        CHECK(device_open(DEVICE_KIND_CUDA, 0, &cuda) != DDT_OK);
        CHECK(cuda == NULL);
        CHECK(*ddt_error_message() != '\0');
        printf("cuda: %s\n", ddt_error_message());
    }

    loss_kind kind;
    CHECK_OK(loss_kind_parse("softmax-ce", &kind));
    CHECK(kind == LOSS_SOFTMAX_CROSS_ENTROPY);
    CHECK_OK(loss_kind_parse("bce", &kind));
    CHECK(kind == LOSS_BINARY_CROSS_ENTROPY);
    CHECK_OK(loss_kind_parse("mse", &kind));
    CHECK(kind == LOSS_MEAN_SQUARED_ERROR);
    CHECK(loss_kind_parse("ce", &kind) == DDT_ERR_USAGE);
    CHECK(strstr(ddt_error_message(), "'ce'") != NULL);
    CHECK(strcmp(loss_kind_name(LOSS_MEAN_SQUARED_ERROR), "mse") == 0);

    CHECK_OK(loss_check_compatible(LOSS_SOFTMAX_CROSS_ENTROPY, 10, true, 10, 0));
    CHECK_OK(loss_check_compatible(LOSS_SOFTMAX_CROSS_ENTROPY, 10, false, 0, 10));
    CHECK(loss_check_compatible(LOSS_SOFTMAX_CROSS_ENTROPY, 1, true, 2, 0) == DDT_ERR_USAGE);
    CHECK(strstr(ddt_error_message(), "at least 2 outputs") != NULL);
    CHECK(loss_check_compatible(LOSS_SOFTMAX_CROSS_ENTROPY, 10, true, 7, 0) == DDT_ERR_USAGE);
    CHECK(strstr(ddt_error_message(), "7 classes but the model has 10 outputs") != NULL);
    CHECK(loss_check_compatible(LOSS_SOFTMAX_CROSS_ENTROPY, 10, false, 0, 3) == DDT_ERR_USAGE);
    CHECK(strstr(ddt_error_message(), "3 wide but the model has 10 outputs") != NULL);
    CHECK_OK(loss_check_compatible(LOSS_BINARY_CROSS_ENTROPY, 1, true, 2, 0));
    CHECK_OK(loss_check_compatible(LOSS_BINARY_CROSS_ENTROPY, 4, false, 0, 4));
    CHECK(loss_check_compatible(LOSS_BINARY_CROSS_ENTROPY, 2, true, 2, 0) == DDT_ERR_USAGE);
    CHECK(loss_check_compatible(LOSS_BINARY_CROSS_ENTROPY, 1, true, 3, 0) == DDT_ERR_USAGE);
    CHECK(strstr(ddt_error_message(), "3") != NULL);
    CHECK(loss_check_compatible(LOSS_BINARY_CROSS_ENTROPY, 4, false, 0, 5) == DDT_ERR_USAGE);
    CHECK_OK(loss_check_compatible(LOSS_MEAN_SQUARED_ERROR, 3, false, 0, 3));
    CHECK_OK(loss_check_compatible(LOSS_MEAN_SQUARED_ERROR, 10, true, 10, 0));
    CHECK(loss_check_compatible(LOSS_MEAN_SQUARED_ERROR, 3, false, 0, 2) == DDT_ERR_USAGE);
    CHECK(loss_check_compatible(LOSS_MEAN_SQUARED_ERROR, 3, true, 10, 0) == DDT_ERR_USAGE);
}

int main(void) {
    CHECK_OK(device_open(DEVICE_KIND_CPU, 0, &dev));
    if (!dev) return check_finish();
    check_specs();
    check_layout();
    check_init_and_allocator();
    check_batch_independence();
    check_dropout();
    check_device_and_losses();
    device_close(dev);
    return check_finish();
}
