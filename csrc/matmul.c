/* matmul.c: the one matmul driver for every weight type. It converts activations to the
 * weight type's act_type once, then splits output rows over threads in tiles and hands each
 * (row tile x token tile) to the type's gemm kernel (or a vec_dot loop when a type has none).
 * A weight repacked at load (w->packed, see repack.c) goes to the type's gemm_packed instead; its
 * activations are then built once per matmul by the type's pack_act when the row has one (Q4_0 /
 * Q8_0: q8x rows, Q8_0 plus fp32 scales and corrections, tensor_types.h), which the unpacked gemm of
 * another weight in the same call reads as plain act_type rows. Which form a call builds is what
 * the table rows say; no type is named here. */
#include "pyllm.h"

/* 64 x 64 tiles: a tile of Q4_0 weights (~74 KB for 2048 columns) and its activations stay in L2
 * while the gemm kernel walks them, and the kernel's per-call activation repacking is amortized
 * over 64 rows. */
#define ROW_TILE 64 /* a multiple of PL_PACK_ROWS */
#define TOK_TILE 64

/* the pack_act of a weight that is packed and wants its own activation form, else NULL */
static pl_pack_act_fn act_form(const pl_kernels *K, const pl_tensor *w) {
    return w->packed ? K->types[w->type].pack_act : NULL;
}

/* row stride of activations converted for weight type wtype: with_form set, in its pack_act form */
static size_t act_stride(const pl_kernels *K, int wtype, int64_t n, int with_form) {
    const pl_type_traits *tt = &K->types[wtype];
    return with_form && tt->pack_act ? tt->packed_act_bytes(n) : pl_type_row_bytes(tt->act_type, n);
}

/* enough for any form of w's act_type (a weight may be repacked after the scratch was sized, and a
 * call may build the form of another weight with the same input), and for the LoRA pass's a x rows,
 * which reuse the buffer once the weights' tiles are done */
size_t pl_matmul_act_bytes(const pl_kernels *K, const pl_tensor *w, int nt) {
    const pl_type act = K->types[w->type].act_type;
    const size_t lora = (size_t)nt * w->lora_rank * sizeof(float);
    size_t row = act == PL_TYPE_F32 ? 0 : pl_type_row_bytes(act, w->ne0);
    for (int t = 0; t < PL_TYPE_COUNT && act != PL_TYPE_F32; t++)
        if (K->types[t].act_type == act && K->types[t].pack_act && K->types[t].packed_act_bytes(w->ne0) > row)
            row = K->types[t].packed_act_bytes(w->ne0);
    const size_t conv = (size_t)nt * row;
    return conv > lora ? conv : lora;
}

/* y += b (a x) for a weight's LoRA side product: first the rank-wide a x of every row into tmp, then
 * each output row's dot with it (both split over threads; each output value is one fixed sum, so the
 * result does not depend on the other rows of the batch) */
static void lora_pass(pl_par *P, const pl_kernels *K, const pl_tensor *w, const float *x, int nt, int ldx, float *y, int ldy,
                      float *tmp) {
    const int r = w->lora_rank, n = (int)w->ne0;
    const pl_vec_dot_fn dot = K->types[PL_TYPE_F32].vec_dot;
    PL_PAR_FOR(P, i, (int64_t)nt * r)
        dot(n, tmp + i, w->lora_a + (size_t)(i % r) * n, x + (size_t)(i / r) * ldx);
    pl_par_barrier(P);
    PL_PAR_FOR(P, o, w->ne1)
        for (int t = 0; t < nt; t++) {
            float s;
            dot(r, &s, w->lora_b + (size_t)o * r, tmp + (size_t)t * r);
            y[(size_t)t * ldy + o] += s;
        }
    pl_par_barrier(P);
}

/* Converts nt rows of x to the act_type of weight type wtype, in its pack_act form if with_form
 * (split over the run's threads, ends with a barrier). Returns the row stride. */
static size_t convert_acts(pl_par *P, const pl_kernels *K, int wtype, int64_t n, const float *x, int nt, int ldx,
                           void *act_buf, int with_form) {
    const pl_type_traits *tt = &K->types[wtype];
    const size_t stride = act_stride(K, wtype, n, with_form);
    const pl_from_float_fn conv = K->types[tt->act_type].from_float;
    const pl_pack_act_fn form = with_form ? tt->pack_act : NULL;
    PL_PAR_FOR(P, t, nt) {
        if (form) form(conv, x + (size_t)t * ldx, (char *)act_buf + (size_t)t * stride, n);
        else conv(x + (size_t)t * ldx, (char *)act_buf + (size_t)t * stride, n);
    }
    pl_par_barrier(P);
    return stride;
}

static void gemm_tile(const pl_type_traits *tt, int n, int nr, int nc, const void *w, size_t ws, const void *a,
                      size_t as, float *out, size_t os) {
    if (tt->gemm) {
        tt->gemm(n, nr, nc, w, ws, a, as, out, os);
        return;
    }
    for (int j = 0; j < nc; j++)
        for (int i = 0; i < nr; i++)
            tt->vec_dot(n, out + (size_t)j * os + i, (const char *)w + (size_t)i * ws, (const char *)a + (size_t)j * as);
}

static int row_tiles(const pl_tensor *w) { return (int)((w->ne1 + ROW_TILE - 1) / ROW_TILE); }

/* Several weights with the same input (q/k/v, gate/up) in one pass over their combined rows,
 * so the threads meet at one barrier instead of one per weight. All must share ne0; weights whose
 * act_type differs are run one after the other. Any number of weights: nw <= 0 does nothing
 * (every thread of the region returns alike, so no barrier is left waiting). */
void pl_matmul_multi(pl_par *P, const pl_kernels *K, const pl_tensor *const *ws, float *const *ys, const int *ldys, int nw,
                     const float *x, int nt, int ldx, void *act_buf, int act_ready) {
    if (nw <= 0 || nt <= 0) return;
    const int64_t n = ws[0]->ne0;
    const pl_type act = K->types[ws[0]->type].act_type;
    /* the activation form of the call: that of the first packed weight which has one (its rows start
     * with the plain act_type row, which every other weight of the act_type reads) */
    int form_type = -1;
    for (int k = 0; k < nw && form_type < 0; k++)
        if (act_form(K, ws[k])) form_type = ws[k]->type;
    for (int k = 1; k < nw; k++)
        if (K->types[ws[k]->type].act_type != act ||
            (act_form(K, ws[k]) && act_form(K, ws[k]) != K->types[form_type].pack_act)) {
            /* weights of different types (llama.cpp's mixes: attn_v in Q8_0 beside a Q4_K attn_q, or a
             * K-quant next to a Q4_0): one pass per weight, each converting the input its own way */
            for (int j = 0; j < nw; j++) pl_matmul_multi(P, K, &ws[j], &ys[j], &ldys[j], 1, x, nt, ldx, act_buf, 0);
            return;
        }
    const void *a = x;
    size_t as = (size_t)ldx * sizeof(float);
    if (act != PL_TYPE_F32) {
        const int wt = form_type >= 0 ? form_type : ws[0]->type;
        as = act_ready ? act_stride(K, wt, n, form_type >= 0) : convert_acts(P, K, wt, n, x, nt, ldx, act_buf, form_type >= 0);
        a = act_buf;
    }
    int total = 0;
    for (int k = 0; k < nw; k++) total += row_tiles(ws[k]);
    /* guided: each thread first takes a long run of consecutive tiles (one sequential stream of
     * weights, which is what decode's memory bandwidth depends on), then ever smaller ones, so a
     * thread slowed by the machine (another process, an interrupt) takes fewer instead of holding
     * the others at the barrier. Measured A/B in one process on this shared 2-core box, decode
     * matmuls (under OpenMP, whose schedules pl_par_guided / pl_par_dynamic reproduce): static (one
     * half each) < dynamic,1 (+10-15%) < guided (+2-17% over dynamic); dynamic with 16-row tiles
     * interleaves the threads' streams and loses 25%. */
    int64_t lo, hi;
    while (pl_par_guided(P, total, &lo, &hi))
    for (int tile = (int)lo; tile < hi; tile++) {
        int k = 0, rt = tile;
        while (rt >= row_tiles(ws[k])) rt -= row_tiles(ws[k++]);
        const pl_tensor *w = ws[k];
        const pl_type_traits *tt = &K->types[w->type];
        const int r0 = rt * ROW_TILE;
        const int nr = (int)(w->ne1 - r0 < ROW_TILE ? w->ne1 - r0 : ROW_TILE);
        if (w->packed) {
            const char *wp = (const char *)w->packed + (size_t)(r0 / PL_PACK_ROWS) * w->packed_group_bytes;
            for (int t0 = 0; t0 < nt; t0 += TOK_TILE) {
                const int nc = nt - t0 < TOK_TILE ? nt - t0 : TOK_TILE;
                tt->gemm_packed((int)n, nr, nc, wp, (const char *)a + (size_t)t0 * as, as,
                                ys[k] + (size_t)t0 * ldys[k] + r0, (size_t)ldys[k]);
            }
            continue;
        }
        const char *wp = (const char *)w->data + (size_t)r0 * w->row_bytes;
        for (int t0 = 0; t0 < nt; t0 += TOK_TILE) {
            const int nc = nt - t0 < TOK_TILE ? nt - t0 : TOK_TILE;
            gemm_tile(tt, (int)n, nr, nc, wp, w->row_bytes, (const char *)a + (size_t)t0 * as, as,
                      ys[k] + (size_t)t0 * ldys[k] + r0, (size_t)ldys[k]);
        }
    }
    pl_par_barrier(P);
    /* LoRA side products (after the tiles' barrier: act_buf is free again) */
    for (int k = 0; k < nw; k++)
        if (ws[k]->lora_rank) lora_pass(P, K, ws[k], x, nt, ldx, ys[k], ldys[k], (float *)act_buf);
}

void pl_matmul(pl_par *P, const pl_kernels *K, const pl_tensor *w, const float *x, int nt, int ldx, float *y, int ldy,
               void *act_buf) {
    pl_matmul_multi(P, K, &w, &y, &ldy, 1, x, nt, ldx, act_buf, 0);
}
