/* repack.c: at model load (pl_model_finalize), every matmul weight (the matmul tensors of
 * PL_LAYER_TENSORS and output; not tok_embd, which is read a row at a time) whose type's table row has
 * a packed layout (repack / gemm_packed / packed_group_bytes set: Q4_0, Q8_0, Q4_1, Q5_0, Q5_1, IQ4_NL,
 * Q2_K..Q6_K, IQ4_XS) is copied
 * once into it (tensor_types.h), which the kernels of every ISA read with aligned loads and without
 * transposes (stacked MoE experts too, when each expert's rows start a 16-row group). PYLLM_REPACK=0
 * turns it off (the unpacked kernels then run, e.g. to compare).
 *
 * Memory: all packed tensors live in one anonymous mapping (2 MB pages where the kernel gives them),
 * about the size of the weights it replaces (16 x row bytes per 16-row group; the last group of a
 * tensor is padded). Tensors are repacked one after the other (on one thread) and each source is
 * released as soon as it is copied, so the weights are never resident twice:
 *  - a PL_TENSOR_MMAPPED source (a read-only file mapping) has the whole pages of its byte range
 *    dropped with madvise(MADV_DONTNEED) every ~2 MB copied: they are clean and would be re-read from
 *    the file if anything touched them again (a tied token embedding still reads its rows there).
 *    1.1B Q4_0 GGUF (622 MiB): peak RSS 660 MiB, 3 MiB of the file left resident;
 *  - for any source, m->release (if set) is called once the tensor is done, so the owner of a heap
 *    buffer (quantize-on-load) can free it; glibc keeps freed blocks of this size, so malloc_trim
 *    hands them back right away (peak then one tensor above the model).
 * The C side never frees or madvises memory it was not told it may. */
#define _GNU_SOURCE
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#if defined(__unix__) || defined(__APPLE__)
#include <sys/mman.h>
#include <unistd.h>
#define PL_HAVE_MMAP 1
#endif

#ifdef __GLIBC__
#include <malloc.h>
#endif

#include "pyllm.h"

#define HUGE_PAGE ((size_t)2 << 20)

static size_t round_up(size_t x, size_t a) { return (x + a - 1) / a * a; }
#ifdef PL_HAVE_MMAP
static size_t page_size(void) { return (size_t)sysconf(_SC_PAGESIZE); }
#else
static size_t page_size(void) { return 4096; }
#endif

static void *arena_alloc(size_t bytes) {
#ifdef PL_HAVE_MMAP
    const size_t len = round_up(bytes, HUGE_PAGE) + HUGE_PAGE;
    char *p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) return NULL;
    char *a = (char *)round_up((uintptr_t)p, HUGE_PAGE), *end = a + round_up(bytes, HUGE_PAGE);
    if (a > p) munmap(p, (size_t)(a - p));
    if (p + len > end) munmap(end, (size_t)(p + len - end));
#ifdef MADV_HUGEPAGE
    /* decode streams every weight once per token: 2 MB pages take the TLB misses out of that
     * stream (about 10% more tokens/s here) */
    madvise(a, round_up(bytes, HUGE_PAGE), MADV_HUGEPAGE);
#endif
    return a;
#else
    return aligned_alloc(64, round_up(bytes, 64));
#endif
}

void pl_packed_arena_free(void *arena, size_t bytes) {
    if (!arena) return;
#ifdef PL_HAVE_MMAP
    munmap(arena, round_up(bytes, HUGE_PAGE));
#else
    free(arena);
#endif
}

/* drops the whole pages of a read-only file mapping between *done (page aligned, initially the first
 * whole page of the source) and end; advances *done */
static void drop_pages(uintptr_t *done, uintptr_t end) {
#ifdef PL_HAVE_MMAP
    const size_t pg = page_size();
    const uintptr_t e = end / pg * pg;
    if (e > *done) {
        madvise((void *)*done, e - *done, MADV_DONTNEED);
        *done = e;
    }
#else
    (void)done;
    (void)end;
#endif
}

typedef struct {
    pl_tensor *t;
    const char *name;
    int layer;
    int64_t unit_rows; /* rows of one expert of a stacked tensor (else all rows) */
} entry;

int pl_model_repack(pl_model *m) {
    const char *env = getenv("PYLLM_REPACK");
    if ((env && !strcmp(env, "0")) || m->repack_off) return 0;
    const pl_kernels *K = pl_kernels_active();
#define COUNT(f, mm, e0, e1, need, stk) +(mm)
    const int per_layer = 0 PL_LAYER_TENSORS(COUNT);
#undef COUNT
    const int nl = m->cfg.n_layers, ne = per_layer * nl + 1;
    entry *es = malloc((size_t)ne * sizeof(entry));
    if (!es) return 0;
    int n = 0;
    for (int l = 0; l < nl; l++) {
        pl_layer *L = &m->layers[l];
#define ADD(f, mm, e0, e1, need, stk) \
        if ((mm) && L->f.data) es[n++] = (entry){&L->f, #f, l, (stk) ? L->f.ne1 / m->cfg.n_expert : L->f.ne1};
        PL_LAYER_TENSORS(ADD)
#undef ADD
    }
    es[n++] = (entry){&m->output, "output", -1, m->output.ne1};
    /* what can be packed, and where it goes in the arena */
    size_t total = 0;
    int np = 0;
    for (int i = 0; i < n; i++) {
        pl_tensor *t = es[i].t;
        const pl_type_traits *tt = &K->types[t->type];
        const size_t gb = pl_packed_group_bytes((pl_type)t->type, t->ne0);
        if (t->packed || !tt->repack || !tt->gemm_packed || gb == 0) continue; /* no packed layout */
        /* an expert of a stacked tensor is used on its own (a view of its rows): its packed rows must
         * start a group */
        if (es[i].unit_rows != t->ne1 && es[i].unit_rows % PL_PACK_ROWS) continue;
        es[np++] = es[i];
        total += round_up((size_t)((t->ne1 + PL_PACK_ROWS - 1) / PL_PACK_ROWS) * gb, 64);
    }
    char *arena = np ? arena_alloc(total) : NULL;
    if (!arena) {
        free(es);
        return 0;
    }
    size_t off = 0;
    for (int i = 0; i < np; i++) {
        pl_tensor *t = es[i].t;
        const pl_repack_fn repack = K->types[t->type].repack;
        const size_t gb = pl_packed_group_bytes((pl_type)t->type, t->ne0);
        const int64_t ng = (t->ne1 + PL_PACK_ROWS - 1) / PL_PACK_ROWS;
        char *dst = arena + off;
        const uintptr_t src = (uintptr_t)t->data;
        uintptr_t done = round_up(src, page_size());
        /* one thread: the copy runs at memory speed (~0.4 s for 1.1 GB here), and a parallel loop per
         * tensor only adds a barrier that stalls whenever the other thread is descheduled. A file
         * source is dropped every 64 groups (~2 MB), so even the LM head is not held twice. */
        for (int64_t g = 0; g < ng; g++) {
            const int64_t r0 = g * PL_PACK_ROWS;
            const int rows = (int)(t->ne1 - r0 < PL_PACK_ROWS ? t->ne1 - r0 : PL_PACK_ROWS);
            repack((const char *)t->data + (size_t)r0 * t->row_bytes, t->row_bytes, rows, t->ne0, dst + (size_t)g * gb);
            if ((t->flags & PL_TENSOR_MMAPPED) && ((g + 1) % 64 == 0 || g + 1 == ng))
                drop_pages(&done, src + (size_t)(r0 + rows) * t->row_bytes);
        }
        t->packed = dst;
        t->packed_group_bytes = gb;
        off += round_up((size_t)ng * gb, 64);
        if (m->release) {
            m->release(m->release_ctx, es[i].name, es[i].layer);
#ifdef __GLIBC__
            /* a freed heap source of a few MB sits below glibc's (adaptive) mmap threshold, so free()
             * keeps its pages: hand them back now, or the model would be held twice at the peak */
            if (!(t->flags & PL_TENSOR_MMAPPED)) malloc_trim(0);
#endif
        }
    }
    m->packed_arena = arena;
    m->packed_arena_bytes = total;
    free(es);
    return np;
}
