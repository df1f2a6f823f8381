/* kinds.h - the table of layer kinds: one line per kind, X(NAME, variable), in the order the
 * grammar lists their words in messages. NAME gives node_kind's NODE_NAME (model_spec.h);
 * variable is the kind's layer_kind (layers/layer_kind.h), defined in its own file.
 *
 * Adding a layer: a new file here defining its layer_kind, and its line below. */
#ifndef DDT_ENGINE_LAYERS_KINDS_H
#define DDT_ENGINE_LAYERS_KINDS_H

#define DDT_LAYER_KINDS(X)                                                                         \
    X(DENSE, layer_dense)             /* dense.c: nn.Linear on the last axis */                    \
    X(ACTIVATION, layer_activation)   /* activation.c: relu, gelu, ... */                          \
    X(DROPOUT, layer_dropout)         /* dropout.c */                                              \
    X(CONV, layer_conv)               /* conv.c: nn.Conv2d */                                      \
    X(POOL, layer_pool)               /* pool.c: nn.MaxPool2d / nn.AvgPool2d */                    \
    X(GLOBAL_POOL, layer_global_pool) /* gap.c: average over H x W: C x H x W -> C */              \
    X(FLATTEN, layer_flatten)         /* flatten.c: a view, C x H x W -> C*H*W */                  \
    X(BATCHNORM, layer_batchnorm)     /* batchnorm.c: BatchNorm2d / BatchNorm1d */                 \
    X(LAYERNORM, layer_layernorm)     /* layernorm.c: over the last axis */                        \
    X(RMSNORM, layer_rmsnorm)         /* rmsnorm.c: RMS normalisation over the last axis */        \
    X(VIEW, layer_view)               /* residual.c: a block's start, its input unchanged */       \
    X(ADD, layer_add)                 /* residual.c: a block's end, input + second_input */        \
    X(EMBED, layer_embed)             /* embedding.c: token table + learned positions */           \
    X(ATTENTION, layer_attention)     /* attention.c: causal multi-head self-attention */          \
    X(LM_HEAD, layer_lm_head)         /* lmhead.c: T x D -> T x VOCAB, the tied token table */

#endif
