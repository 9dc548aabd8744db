/* generate_gguf.c: greedy generation from a llama-architecture GGUF file with the C engine alone (no
 * Python), for the end-to-end check under qemu (tools/test_arm.sh): a minimal GGUF reader that checks
 * every count, size and offset it reads against the file, the engine model built from it, the prompt
 * prefilled in one batch, then N greedy tokens one at a time. The ids are compared with the ones pyllm
 * generated on x86 for the same file and prompt.
 * Usage: generate_gguf MODEL.gguf PROMPT_IDS EXPECTED_IDS EXPECTED_LOGITS (whitespace-separated token ids;
 * as many tokens are generated as EXPECTED_IDS holds; EXPECTED_LOGITS: pyllm's logits at the prompt's
 * last position). The logits must agree within 1e-4 of their largest magnitude (the bound
 * tests/test_kernels.py sets between kernel tables: the quantized dots are bit-identical, the fp32
 * attention and float gemms only close) and the ids exactly. Prints the kernel table and the ids;
 * exit 0 when both match, 1 when not, 2 on bad input (with a message naming the problem). */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "pyllm.h"

#define MAX_IDS 4096

static void die(const char *what, const char *detail) {
    fprintf(stderr, "generate_gguf: %s%s%s\n", what, detail ? ": " : "", detail ? detail : "");
    exit(2);
}

/* ---- a bounds-checked cursor over the file ---- */
typedef struct {
    const uint8_t *p;
    size_t size, pos;
} cursor;

static const uint8_t *take(cursor *c, size_t n, const char *what) {
    if (n > c->size - c->pos) die("truncated GGUF file reading", what);
    const uint8_t *r = c->p + c->pos;
    c->pos += n;
    return r;
}
static uint32_t rd_u32(cursor *c, const char *what) {
    uint32_t v;
    memcpy(&v, take(c, 4, what), 4);
    return v;
}
static uint64_t rd_u64(cursor *c, const char *what) {
    uint64_t v;
    memcpy(&v, take(c, 8, what), 8);
    return v;
}
typedef struct {
    const char *s;
    size_t n;
} str;
static str rd_str(cursor *c, const char *what) {
    const uint64_t n = rd_u64(c, what);
    if (n > c->size) die("string length past the end of the file in", what);
    str r = {(const char *)take(c, (size_t)n, what), (size_t)n};
    return r;
}
static int str_is(str a, const char *b) { return a.n == strlen(b) && memcmp(a.s, b, a.n) == 0; }

enum { GT_U8, GT_I8, GT_U16, GT_I16, GT_U32, GT_I32, GT_F32, GT_BOOL, GT_STRING, GT_ARRAY, GT_U64, GT_I64, GT_F64 };
static size_t scalar_size(uint32_t t) {
    static const size_t sz[] = {1, 1, 2, 2, 4, 4, 4, 1, 0, 0, 8, 8, 8};
    return t < 13 ? sz[t] : 0;
}

/* the metadata values the model needs */
typedef struct {
    str arch;
    int64_t dim, layers, heads, kv_heads, ff, key_len, alignment;
    double eps, rope_base;
} meta;

/* reads one value of type t; numbers go to *num (when num is not NULL), strings to *s */
static void rd_value(cursor *c, uint32_t t, double *num, str *s, int depth) {
    if (t == GT_STRING) {
        str v = rd_str(c, "a string value");
        if (s) *s = v;
        return;
    }
    if (t == GT_ARRAY) {
        if (depth > 2) die("nested arrays deeper than 2", NULL);
        const uint32_t et = rd_u32(c, "an array type");
        const uint64_t n = rd_u64(c, "an array length");
        if (et != GT_STRING && et != GT_ARRAY) {
            const size_t es = scalar_size(et);
            if (!es) die("unknown array element type", NULL);
            if (n > (c->size - c->pos) / es) die("array past the end of the file", NULL);
            take(c, (size_t)n * es, "an array");
            return;
        }
        if (n > c->size) die("array count larger than the file", NULL);
        for (uint64_t i = 0; i < n; i++) rd_value(c, et, NULL, NULL, depth + 1);
        return;
    }
    const size_t es = scalar_size(t);
    if (!es) die("unknown metadata value type", NULL);
    const uint8_t *p = take(c, es, "a metadata value");
    double v = 0;
    switch (t) {
    case GT_U8: v = *p; break;
    case GT_I8: v = (int8_t)*p; break;
    case GT_BOOL: v = *p != 0; break;
    case GT_U16: { uint16_t x; memcpy(&x, p, 2); v = x; break; }
    case GT_I16: { int16_t x; memcpy(&x, p, 2); v = x; break; }
    case GT_U32: { uint32_t x; memcpy(&x, p, 4); v = x; break; }
    case GT_I32: { int32_t x; memcpy(&x, p, 4); v = x; break; }
    case GT_F32: { float x; memcpy(&x, p, 4); v = x; break; }
    case GT_U64: { uint64_t x; memcpy(&x, p, 8); v = (double)x; break; }
    case GT_I64: { int64_t x; memcpy(&x, p, 8); v = (double)x; break; }
    case GT_F64: memcpy(&v, p, 8); break;
    }
    if (num) *num = v;
}

typedef struct {
    str name;
    uint32_t n_dims, type;
    uint64_t ne[4], offset;
} tinfo;

static int64_t need_int(double v, const char *key, int64_t lo, int64_t hi) {
    if (!(v >= (double)lo && v <= (double)hi) || v != floor(v)) die("missing or out-of-range metadata value", key);
    return (int64_t)v;
}

static int read_ids(const char *path, int32_t *ids) {
    FILE *f = fopen(path, "r");
    if (!f) die("cannot open", path);
    int n = 0;
    long v;
    while (fscanf(f, "%ld", &v) == 1) {
        if (n == MAX_IDS) die("too many ids in", path);
        if (v < 0 || v > INT32_MAX) die("a token id out of range in", path);
        ids[n++] = (int32_t)v;
    }
    if (!feof(f)) die("not a list of integers", path);
    fclose(f);
    if (n == 0) die("no ids in", path);
    return n;
}

int main(int argc, char **argv) {
    if (argc != 5) {
        fprintf(stderr, "usage: %s MODEL.gguf PROMPT_IDS EXPECTED_IDS EXPECTED_LOGITS\n", argv[0]);
        return 2;
    }
    static int32_t prompt[MAX_IDS], expected[MAX_IDS], got[MAX_IDS];
    const int n_prompt = read_ids(argv[2], prompt), n_gen = read_ids(argv[3], expected);

    FILE *f = fopen(argv[1], "rb");
    if (!f) die("cannot open", argv[1]);
    if (fseek(f, 0, SEEK_END) != 0) die("cannot seek", argv[1]);
    const long fsize = ftell(f);
    if (fsize < 24) die("file too small to be GGUF", argv[1]);
    uint8_t *file = malloc((size_t)fsize + 64);
    if (!file) die("out of memory", NULL);
    /* tensor data at its alignment (within the file) stays aligned in memory: start on 64 bytes */
    uint8_t *base = file + (64 - (uintptr_t)file % 64) % 64;
    rewind(f);
    if (fread(base, 1, (size_t)fsize, f) != (size_t)fsize) die("cannot read", argv[1]);
    fclose(f);
    cursor c = {base, (size_t)fsize, 0};

    if (memcmp(take(&c, 4, "the magic"), "GGUF", 4) != 0) die("not a GGUF file (bad magic)", argv[1]);
    const uint32_t version = rd_u32(&c, "the version");
    if (version < 2 || version > 3) die("unsupported GGUF version", NULL);
    const uint64_t n_tensors = rd_u64(&c, "the tensor count"), n_kv = rd_u64(&c, "the metadata count");
    if (n_tensors > (uint64_t)fsize / 24 || n_kv > (uint64_t)fsize / 12) die("counts larger than the file can hold", NULL);

    meta m = {{NULL, 0}, -1, -1, -1, -1, -1, -1, 32, -1, 10000.0};
    double v;
    for (uint64_t i = 0; i < n_kv; i++) {
        const str key = rd_str(&c, "a metadata key");
        const uint32_t t = rd_u32(&c, "a metadata type");
        str s = {NULL, 0};
        v = NAN;
        rd_value(&c, t, &v, &s, 0);
        const char *k = key.s;
        const size_t kn = key.n;
        if (str_is(key, "general.architecture")) {
            if (!s.s) die("general.architecture is not a string", NULL);
            m.arch = s;
            continue;
        }
        if (str_is(key, "general.alignment")) m.alignment = need_int(v, "general.alignment", 1, 1 << 16);
        /* "<arch>." keys: the architecture key comes first in files written by gguf-py and llama.cpp */
        if (!m.arch.s || kn <= m.arch.n + 1 || memcmp(k, m.arch.s, m.arch.n) != 0 || k[m.arch.n] != '.') continue;
        str sub = {k + m.arch.n + 1, kn - m.arch.n - 1};
        if (str_is(sub, "embedding_length")) m.dim = need_int(v, "embedding_length", 1, 1 << 20);
        else if (str_is(sub, "block_count")) m.layers = need_int(v, "block_count", 1, 4096);
        else if (str_is(sub, "attention.head_count")) m.heads = need_int(v, "attention.head_count", 1, 4096);
        else if (str_is(sub, "attention.head_count_kv")) m.kv_heads = need_int(v, "attention.head_count_kv", 1, 4096);
        else if (str_is(sub, "feed_forward_length")) m.ff = need_int(v, "feed_forward_length", 1, 1 << 24);
        else if (str_is(sub, "attention.key_length")) m.key_len = need_int(v, "attention.key_length", 1, 1 << 16);
        else if (str_is(sub, "attention.layer_norm_rms_epsilon")) m.eps = v;
        else if (str_is(sub, "rope.freq_base")) m.rope_base = v;
    }
    if (!m.arch.s || !str_is(m.arch, "llama")) die("only llama-architecture files are run by this driver", NULL);
    if (m.dim < 0 || m.layers < 0 || m.heads < 0 || m.ff < 0) die("missing llama.* dimensions in the metadata", NULL);
    if (m.kv_heads < 0) m.kv_heads = m.heads;
    if (m.key_len < 0) {
        if (m.dim % m.heads) die("embedding_length is not a multiple of head_count", NULL);
        m.key_len = m.dim / m.heads;
    }
    if (m.heads % m.kv_heads) die("head_count is not a multiple of head_count_kv", NULL);
    if (!(m.eps > 0 && m.eps < 1)) die("missing or bad attention.layer_norm_rms_epsilon", NULL);
    if (!(m.rope_base > 1)) die("bad rope.freq_base", NULL);
    if (m.alignment % 8) die("general.alignment is not a multiple of 8", NULL);

    tinfo *ti = calloc(n_tensors ? n_tensors : 1, sizeof(tinfo));
    if (!ti) die("out of memory", NULL);
    for (uint64_t i = 0; i < n_tensors; i++) {
        ti[i].name = rd_str(&c, "a tensor name");
        ti[i].n_dims = rd_u32(&c, "a tensor's dimension count");
        if (ti[i].n_dims < 1 || ti[i].n_dims > 4) die("a tensor with an unsupported dimension count", NULL);
        for (uint32_t d = 0; d < 4; d++) ti[i].ne[d] = d < ti[i].n_dims ? rd_u64(&c, "a tensor dimension") : 1;
        ti[i].type = rd_u32(&c, "a tensor type");
        ti[i].offset = rd_u64(&c, "a tensor offset");
    }
    const size_t data_start = (c.pos + (size_t)m.alignment - 1) / (size_t)m.alignment * (size_t)m.alignment;
    if (data_start > (size_t)fsize) die("no tensor data after the header", NULL);

    pl_config cfg;
    memset(&cfg, 0, sizeof(cfg));
    cfg.dim = (int)m.dim, cfg.n_layers = (int)m.layers, cfg.n_heads = (int)m.heads, cfg.n_kv_heads = (int)m.kv_heads;
    cfg.head_dim = (int)m.key_len, cfg.hidden_dim = (int)m.ff, cfg.norm_eps = (float)m.eps;
    cfg.rope_interleaved = 1; /* GGUF stores Q/K rows permuted for the pairwise rotation */
    cfg.max_ctx = n_prompt + n_gen;
    cfg.n_vocab = -1;
    for (uint64_t i = 0; i < n_tensors; i++)
        if (str_is(ti[i].name, "token_embd.weight")) {
            if (ti[i].n_dims != 2 || ti[i].ne[1] > (1 << 24)) die("token_embd.weight is not [dim, vocab]", NULL);
            cfg.n_vocab = (int)ti[i].ne[1];
        }
    if (cfg.n_vocab <= 0) die("no token_embd.weight", NULL);
    for (int i = 0; i < n_prompt; i++)
        if (prompt[i] >= cfg.n_vocab) die("a prompt id past the vocabulary", NULL);

    char err[PL_ERRMSG_LEN];
    pl_model *model = pl_model_new(&cfg, err);
    if (!model) die("pl_model_new", err);
    int has_output = 0;
    const tinfo *embd = NULL;
    for (uint64_t i = 0; i < n_tensors; i++) {
        const tinfo *t = &ti[i];
        if (!pl_type_valid((int)t->type)) die("a tensor of a type pyllm does not run", NULL);
        if (t->ne[2] != 1 || t->ne[3] != 1 || t->ne[0] > INT32_MAX || t->ne[1] > INT32_MAX) die("a tensor of more than 2 dimensions", NULL);
        const size_t rb = pl_type_row_bytes((pl_type)t->type, (int64_t)t->ne[0]);
        if (rb == 0 || t->ne[1] > SIZE_MAX / rb) die("a tensor row that is not whole blocks", NULL);
        const size_t nbytes = rb * (size_t)t->ne[1];
        if (t->offset > (size_t)fsize - data_start || nbytes > (size_t)fsize - data_start - t->offset)
            die("tensor data past the end of the file", NULL);
        const void *data = base + data_start + t->offset;
        char name[96];
        int layer = -1;
        if (t->name.n >= sizeof(name)) die("a tensor name too long", NULL);
        memcpy(name, t->name.s, t->name.n);
        name[t->name.n] = 0;
        char field[64];
        const char *eng = NULL;
        if (sscanf(name, "blk.%d.%63[a-z_].weight", &layer, field) == 2) {
            static const char *const map[][2] = {{"attn_norm", "attn_norm"}, {"attn_q", "wq"}, {"attn_k", "wk"},
                                                 {"attn_v", "wv"}, {"attn_output", "wo"}, {"ffn_norm", "ffn_norm"},
                                                 {"ffn_gate", "ffn_gate"}, {"ffn_up", "ffn_up"}, {"ffn_down", "ffn_down"}};
            for (size_t j = 0; j < sizeof(map) / sizeof(map[0]); j++)
                if (strcmp(field, map[j][0]) == 0) eng = map[j][1];
            if (layer < 0 || layer >= cfg.n_layers) die("a tensor of a layer past block_count", name);
        } else if (strcmp(name, "token_embd.weight") == 0) {
            eng = "tok_embd", embd = t;
        } else if (strcmp(name, "output_norm.weight") == 0) {
            eng = "output_norm";
        } else if (strcmp(name, "output.weight") == 0) {
            eng = "output", has_output = 1;
        }
        if (!eng) die("a tensor this driver does not know", name);
        if (pl_model_set_tensor(model, eng, layer, (int)t->type, (int64_t)t->ne[0], (int64_t)t->ne[1],
                                data, nbytes, err))
            die(name, err);
    }
    if (!has_output && embd && /* tied embeddings */
        pl_model_set_tensor(model, "output", -1, (int)embd->type, (int64_t)embd->ne[0], (int64_t)embd->ne[1],
                            base + data_start + embd->offset, pl_type_row_bytes((pl_type)embd->type, (int64_t)embd->ne[0]) * embd->ne[1], err))
        die("output (tied)", err);

    /* rope inverse frequencies with transformers' float32 operations (pyllm/config.py) */
    const int half = cfg.head_dim / 2;
    float *inv = malloc(sizeof(float) * (size_t)half);
    for (int i = 0; i < half; i++) inv[i] = 1.0f / powf((float)m.rope_base, (float)(2 * i) / (float)cfg.head_dim);
    if (pl_model_finalize(model, inv, NULL, 1.0f, err)) die("finalize", err);

    pl_kv *kv = pl_kv_new(model, cfg.max_ctx, PL_TYPE_F32, err);
    if (!kv) die("pl_kv_new", err);
    pl_scratch *s = pl_scratch_new();
    float *logits = malloc(sizeof(float) * (size_t)cfg.n_vocab);
    int32_t *pos = malloc(sizeof(int32_t) * (size_t)n_prompt), *seq = calloc((size_t)n_prompt, sizeof(int32_t));
    for (int i = 0; i < n_prompt; i++) pos[i] = i;
    int32_t last = n_prompt - 1;
    pl_batch b = {n_prompt, prompt, pos, seq, 1, &last};
    double max_diff = 0, max_ref = 1;
    for (int step = 0; step < n_gen; step++) {
        if (pl_forward(model, s, &kv, 1, &b, logits, 2, err)) die("pl_forward", err);
        if (step == 0) {
            FILE *lf = fopen(argv[4], "r");
            if (!lf) die("cannot open", argv[4]);
            for (int j = 0; j < cfg.n_vocab; j++) {
                float r;
                if (fscanf(lf, "%f", &r) != 1) die("fewer logits than the vocabulary in", argv[4]);
                max_diff = fmax(max_diff, fabs((double)logits[j] - r));
                max_ref = fmax(max_ref, fabs((double)r));
            }
            fclose(lf);
        }
        int best = 0;
        for (int j = 1; j < cfg.n_vocab; j++)
            if (logits[j] > logits[best]) best = j;
        got[step] = best;
        pos[0] = n_prompt + step;
        last = 0;
        b = (pl_batch){1, &got[step], pos, seq, 1, &last};
    }
    printf("%s (%s): logits max |diff| %.3g (bound %.3g); ids", argv[1], pl_kernels_active()->isa, max_diff, 1e-4 * max_ref);
    for (int i = 0; i < n_gen; i++) printf(" %d", got[i]);
    printf("\n");
    const int same = memcmp(got, expected, sizeof(int32_t) * (size_t)n_gen) == 0 && max_diff <= 1e-4 * max_ref;
    if (!same) {
        printf("expected:");
        for (int i = 0; i < n_gen; i++) printf(" %d", expected[i]);
        printf("\n");
    }
    pl_scratch_free(s);
    pl_kv_free(kv);
    pl_model_free(model);
    free(inv), free(logits), free(pos), free(seq), free(ti), free(file);
    return same ? 0 : 1;
}
