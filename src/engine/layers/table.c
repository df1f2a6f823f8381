/* table.c - the table of layer kinds (kinds.h), indexed by node_kind. */
#include "engine/layers/layer_kind.h"

static const layer_kind *const kinds[NODE_KIND_COUNT] = {
#define DDT_TABLE_ENTRY(NAME, variable) [NODE_##NAME] = &variable,
    DDT_LAYER_KINDS(DDT_TABLE_ENTRY)
#undef DDT_TABLE_ENTRY
};

const layer_kind *layer_kind_of(node_kind kind) {
    return (unsigned)kind < NODE_KIND_COUNT ? kinds[kind] : NULL;
}
