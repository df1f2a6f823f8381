/* model_spec.h - what a model is: its description (the model grammar), the graph of layers it
 * means, the shapes flowing through it, and the table of its parameter tensors (names, shapes,
 * offsets). Nothing here allocates device memory; model.h runs a spec.
 *
 * The grammar (README, "Describing a model"), in short:
 *     model  := input ('-' layer)*
 *     input  := WIDTH | C'x'H'x'W | tokens(CONTEXT,VOCAB)
 *     layer  := WIDTH | relu | gelu | gelu_tanh | tanh | sigmoid | dropout[RATE]
 *             | conv(OUT,kK[,sS][,pP][,nobias]) | maxpool(K[,sS][,pP]) | avgpool(K[,sS][,pP])
 *             | gap | flatten | bn | ln | rms | res(LAYERS[|LAYERS]) | N*(LAYERS)
 *             | embed(D) | attn(HEADS) | lmhead
 *             | gpt(layers=L,heads=H,width=D,context=T,vocab=V[,dropout=P])
 * Whitespace is ignored and '#' starts a comment to the end of the line (for model files
 * given as --model @FILE). Presets (model_spec_preset_text) name whole descriptions.
 *
 * The graph: nodes in forward (topological) order; each reads the output of `input` (-1: the
 * model's input) and, for an addition, also of `second_input`. A residual block becomes a
 * view node (its input, unchanged), the body's nodes, the shortcut's nodes, and an addition.
 *
 * Parameters: one contiguous fp32 buffer, tensors in node order, each named as in the
 * state_dict of the equivalent PyTorch module (nn.Sequential indices for the grammar,
 * nanoGPT's names for gpt(...)), with PyTorch's shapes (nn.Linear [out, in], nn.Conv2d
 * [out, in, k, k]). Non-trainable state (batch normalisation's running statistics) lives in
 * a second buffer, "buffers", with its own offsets.
 *
 * Usage:
 *     model_spec *spec = malloc(sizeof *spec);
 *     DDT_CHECK(model_spec_parse("1x28x28-conv(32,k3,p1)-relu-maxpool(2)-flatten-10", spec));
 *     for (int i = 0; i < spec->tensor_count; i++) puts(spec->tensors[i].name);
 */
#ifndef DDT_ENGINE_MODEL_SPEC_H
#define DDT_ENGINE_MODEL_SPEC_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "engine/device.h"
#include "engine/layers/kinds.h"
#include "util/status.h"

/* The widest layer, the largest input (values per sample) and the largest vocabulary a model
 * takes. Wider layers are surely a typo, and the bound keeps rows * width products far from
 * overflow. The converters refuse data no model could take by these same numbers. */
#define MODEL_MAX_WIDTH (1 << 24)
#define MODEL_MAX_VOCAB (1 << 24)
/* The smallest vocabulary: with one token every prediction is right and the loss is 0. */
#define MODEL_MIN_VOCAB 2

#define MODEL_MAX_NODES 320
#define MODEL_MAX_TENSORS 256
#define MODEL_SPEC_MAX_TEXT 2048
#define MODEL_TENSOR_MAX_NAME 64

/* A per-sample shape: {D}, {C, H, W}, or {T, D} for a sequence of T positions. */
typedef struct tensor_shape {
    int rank;
    int dims[3];
} tensor_shape;

/* One per layer kind: NODE_ and a name of src/engine/layers/kinds.h's table (NODE_DENSE,
 * NODE_CONV, ...), in its order; each kind's file under src/engine/layers/ says what it is. */
typedef enum node_kind {
#define DDT_NODE_KIND(NAME, variable) NODE_##NAME,
    DDT_LAYER_KINDS(DDT_NODE_KIND)
#undef DDT_NODE_KIND
        NODE_KIND_COUNT
} node_kind;

typedef struct model_node {
    node_kind kind;
    int input;        /* node whose output this reads; -1: the model's input */
    int second_input; /* NODE_ADD only */
    tensor_shape in_shape, out_shape;
    activation_kind activation; /* NODE_ACTIVATION */
    float rate;                 /* NODE_DROPOUT, in [0, 1) */
    conv_geometry geometry;     /* NODE_CONV, NODE_POOL, NODE_GLOBAL_POOL */
    pool_kind pool;             /* NODE_POOL, NODE_GLOBAL_POOL */
    bool bias;                  /* NODE_DENSE, NODE_CONV */
    int heads;                  /* NODE_ATTENTION */
    int first_tensor;           /* its tensors: [first_tensor, first_tensor + tensor_count) */
    int tensor_count;
    int tied_tensor;            /* NODE_LM_HEAD: the token table's tensor */
    int parameter_ordinal;      /* init key: nodes with parameters before this one */
    int block;                  /* gpt(...) block it belongs to (recomputed together), or -1 */
} model_node;

typedef enum tensor_init {
    TENSOR_INIT_ZERO,
    TENSOR_INIT_ONE,
    TENSOR_INIT_FAN_IN,  /* He-normal before relu/gelu, Xavier-uniform otherwise (model.h) */
    TENSOR_INIT_NORMAL,  /* normal with std init_std */
} tensor_init;

typedef struct model_tensor {
    char name[MODEL_TENSOR_MAX_NAME]; /* the PyTorch state_dict key */
    int rank;
    int dims[4];
    size_t offset; /* in floats, in the parameter buffer, or in the buffer buffer */
    size_t count;
    bool is_buffer;   /* running statistics: saved, never trained */
    bool is_counter;  /* num_batches_tracked: an int64 in PyTorch's files */
    bool decay;       /* weight decay applies (matrices, not biases, norms or embeddings) */
    tensor_init init;
    float init_std;   /* TENSOR_INIT_NORMAL */
    bool init_rectifier; /* TENSOR_INIT_FAN_IN: He (the layer feeds relu/gelu) */
    int fan_in, fan_out; /* TENSOR_INIT_FAN_IN */
} model_tensor;

typedef enum model_input_kind {
    MODEL_INPUT_FEATURES, /* fp32 features, input_shape per sample */
    MODEL_INPUT_TOKENS,   /* int32 ids, context per sample */
} model_input_kind;

typedef struct model_spec {
    char text[MODEL_SPEC_MAX_TEXT]; /* canonical text: what is stored and printed */
    model_input_kind input_kind;
    tensor_shape input_shape; /* features: {D} or {C,H,W}; tokens: {T} */
    int input_width;          /* floats (or ids) per sample */
    int context, vocab;       /* tokens only */
    int output_width;         /* logits per position: classes, or the vocabulary */
    int positions;            /* positions per sample the loss sees: 1, or the context */
    int node_count;
    model_node nodes[MODEL_MAX_NODES];
    int tensor_count;
    model_tensor tensors[MODEL_MAX_TENSORS];
    size_t parameter_count; /* floats */
    size_t buffer_count;    /* floats */
    int block_count;        /* gpt(...) blocks */
} model_spec;

/* Parses a description, a preset name, or "@PATH" (the description in a file); DDT_ERR_USAGE
 * naming the token and what was expected. */
ddt_status model_spec_parse(const char *text, model_spec *out);
/* As model_spec_parse, for the canonical text stored in a model file or checkpoint: it names
 * no file (@), and it may be what an older ddtrain wrote ("dropout-N" for dropout at the
 * default rate, then a dense layer of N, which a description typed now must write as
 * "dropout0.5-N"). */
ddt_status model_spec_parse_stored(const char *text, model_spec *out);
/* A preset's text, or NULL: "cnn-small", "resnet-small", "gpt-tiny", "gpt-small",
 * "gpt2-124m". */
const char *model_spec_preset_text(const char *name);
/* "name: text" lines of every preset, for --help. */
void model_spec_print_presets(void (*print)(void *context, const char *name, const char *text),
                              void *context);

size_t model_spec_parameter_count(const model_spec *spec);
/* Parameters then buffers: the floats of a model's whole state in host files and buffers. */
size_t model_spec_state_count(const model_spec *spec);
/* Sets every batch-normalisation counter (num_batches_tracked) in a host state buffer. */
void model_spec_set_counters(const model_spec *spec, float *state, int64_t batches);
/* The tensor called `name`, or -1. */
int model_spec_find_tensor(const model_spec *spec, const char *name);
/* Offsets where gradients become final during backward, each a node's first parameter (the
 * gradient buffer from there to the end is final once that node's backward is done), in
 * increasing order, the first 0; returns how many (at most `capacity`). Backward reaches them
 * last first. Buckets are cut at these. */
int model_spec_ready_points(const model_spec *spec, size_t *points, int capacity);
/* The human-readable shape "1x28x28", "784", "64x128". */
void tensor_shape_format(const tensor_shape *shape, char *text, size_t size);
/* The values in a shape: the product of its dims, or INT64_MAX if that overflows (never for a
 * parsed spec's shapes, which hold at most INT_MAX values per sample). */
int64_t tensor_shape_count(const tensor_shape *shape);
/* The geometry of a window over channels x height x width, with out_height and out_width
 * computed; DDT_ERR_USAGE, saying which, when the window does not fit or a size is not
 * positive (what = the layer, for the message). */
ddt_status conv_geometry_make(int channels, int height, int width, int kernel_h, int kernel_w,
                              int stride_h, int stride_w, int pad_h, int pad_w, const char *what,
                              conv_geometry *out);
/* A node's kind as a word for messages ("conv", "dense", ...). */
const char *model_node_word(const model_node *node);
/* The tensor owning gradient offset `offset` (for messages), or -1. */
int model_spec_tensor_at(const model_spec *spec, size_t offset);

#endif
