/* test_kernels_neon.c: checks every NEON kernel table against the scalar reference, without Python.
 * Cross-compiled for aarch64 with the C core by tools/test_arm.sh and run under qemu-user on CPUs with
 * and without dot products / i8mm. Usage: test_kernels_neon EXPECTED_ISA (the table the dispatcher
 * must pick on this CPU: neon, neon-dotprod or neon-i8mm). Checks, on odd shapes:
 *  - dispatch: the automatic pick, which tables are supported, PYLLM_ISA-style forcing;
 *  - bit for bit: from_float / to_float of every writable type (ties, zero, tiny, huge, inf, NaN
 *    blocks), vec_dot of every type (unaligned rows), the packed gemm of every packed type against
 *    both the scalar packed gemm and the scalar unpacked vec_dot, for 1..40 rows and 1..7 tokens;
 *  - within stated bounds: float gemm / vec_dot, dot_f32, gemm_nn (fp32 summation order), softmax and
 *    SwiGLU (against double precision).
 * Prints one line per failure and exits 1 if any. */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ops.h"
#include "tensor_types.h"

static int g_fail = 0, g_checks = 0;
#define CHECK(cond, ...)                                                   \
    do {                                                                   \
        g_checks++;                                                        \
        if (!(cond)) {                                                     \
            g_fail++;                                                      \
            if (g_fail < 40) {                                             \
                printf("FAIL %s:%d: ", __FILE__, __LINE__);                \
                printf(__VA_ARGS__);                                       \
                printf("\n");                                              \
            }                                                              \
        }                                                                  \
    } while (0)

static uint64_t g_rng = 0x9E3779B97F4A7C15ull;
static uint32_t rnd_u32(void) {
    g_rng ^= g_rng << 13;
    g_rng ^= g_rng >> 7;
    g_rng ^= g_rng << 17;
    return (uint32_t)(g_rng >> 16);
}
static float rnd_unit(void) { return (rnd_u32() & 0xFFFFFF) / 16777216.0f; }
static float rnd_normal(void) { /* sum of 4 uniforms, centred: close enough to normal for test data */
    return (rnd_unit() + rnd_unit() + rnd_unit() + rnd_unit() - 2.0f) * 1.7f;
}
static void *xalloc(size_t n) {
    void *p = aligned_alloc(64, (n + 63) / 64 * 64 + 64);
    if (!p) {
        printf("out of memory\n");
        exit(2);
    }
    memset(p, 0, (n + 63) / 64 * 64 + 64);
    return p;
}

static const int TYPES[] = {PL_TYPE_F32,  PL_TYPE_F16,  PL_TYPE_BF16, PL_TYPE_Q8_0, PL_TYPE_Q4_0,   PL_TYPE_Q4_1,
                            PL_TYPE_Q5_0, PL_TYPE_Q5_1, PL_TYPE_IQ4_NL, PL_TYPE_Q2_K, PL_TYPE_Q3_K, PL_TYPE_Q4_K,
                            PL_TYPE_Q5_K, PL_TYPE_Q6_K, PL_TYPE_IQ4_XS};
#define NTYPES (int)(sizeof(TYPES) / sizeof(TYPES[0]))

/* fp16 fields (scales) of one block of type t: offsets, and how many */
static int fp16_fields(int t, int *off) {
    switch (t) {
    case PL_TYPE_Q8_0: case PL_TYPE_Q4_0: case PL_TYPE_Q5_0: case PL_TYPE_IQ4_NL: case PL_TYPE_IQ4_XS:
        off[0] = 0;
        return 1;
    case PL_TYPE_Q4_1: case PL_TYPE_Q5_1: case PL_TYPE_Q4_K: case PL_TYPE_Q5_K:
        off[0] = 0, off[1] = 2;
        return 2;
    case PL_TYPE_Q2_K:
        off[0] = 80, off[1] = 82;
        return 2;
    case PL_TYPE_Q3_K:
        off[0] = 108;
        return 1;
    case PL_TYPE_Q6_K:
        off[0] = 208;
        return 1;
    default:
        return 0;
    }
}

/* nr rows of n weights of type t: written by the scalar from_float where the type has one, else
 * random bytes with finite random scales */
static void make_rows(const pl_kernels *S, int t, int nr, int64_t n, uint8_t *dst, size_t rb) {
    const pl_type_traits *tt = &S->types[t];
    float *x = malloc(sizeof(float) * (size_t)n);
    for (int r = 0; r < nr; r++) {
        if (tt->from_float) {
            const float sc = 0.05f + 3.0f * rnd_unit();
            for (int64_t i = 0; i < n; i++) x[i] = rnd_normal() * sc;
            tt->from_float(x, dst + (size_t)r * rb, n);
        } else {
            for (size_t i = 0; i < rb; i++) dst[(size_t)r * rb + i] = (uint8_t)rnd_u32();
            int off[2];
            const int nf = fp16_fields(t, off);
            for (int64_t b = 0; b < n / tt->blck; b++)
                for (int f = 0; f < nf; f++)
                    pl_st_u16(dst + (size_t)r * rb + (size_t)b * tt->blck_bytes + off[f],
                              pl_fp32_to_fp16((rnd_unit() + 0.01f) * 0.02f * (f ? -1.0f : 1.0f)));
        }
    }
    free(x);
}

static int same_bits(const float *a, const float *b, size_t n) { return memcmp(a, b, n * sizeof(float)) == 0; }

/* ---- conversions ---- */
static void check_conversions(const pl_kernels *S, const pl_kernels *K) {
    static const int64_t NS[] = {256, 512, 768};
    for (int ti = 0; ti < NTYPES + 1; ti++) {
        const int t = ti < NTYPES ? TYPES[ti] : PL_TYPE_Q8_K;
        const pl_type_traits *st = &S->types[t], *kt = &K->types[t];
        for (int ni = 0; ni < 3; ni++) {
            const int64_t n = NS[ni];
            const size_t rb = pl_type_row_bytes(t, n);
            float *x = xalloc(sizeof(float) * n), *y0 = xalloc(sizeof(float) * n), *y1 = xalloc(sizeof(float) * n);
            uint8_t *b0 = xalloc(rb), *b1 = xalloc(rb);
            for (int kind = 0; kind < 6; kind++) {
                const float sc = kind == 2 ? 1e-41f : kind == 3 ? 3e37f : 0.01f + 10.0f * rnd_unit();
                for (int64_t i = 0; i < n; i++) x[i] = rnd_normal() * sc;
                if (kind == 0) {
                    const float ties[8] = {0.5f, -0.5f, 2.5f, -1.5f, 127.0f, -127.0f, 63.5f, -0.0f};
                    memcpy(x, ties, sizeof(ties));
                    for (int i = 32; i < 64; i++) x[i] = 0.0f; /* an all-zero block */
                }
                if (kind == 4) x[37] = INFINITY, x[101] = -INFINITY;
                if (kind == 5) x[5] = NAN, x[200] = -NAN;
                if (st->from_float) {
                    memset(b0, 0, rb);
                    memset(b1, 0xAB, rb);
                    st->from_float(x, b0, n);
                    kt->from_float(x, b1, n);
                    CHECK(memcmp(b0, b1, rb) == 0, "%s from_float n=%lld kind %d differs", st->name, (long long)n, kind);
                } else {
                    make_rows(S, t, 1, n, b0, rb);
                }
                if (kind >= 4) continue; /* inf / NaN rows: to_float of NaN payloads is not specified */
                st->to_float(b0, y0, n);
                kt->to_float(b0, y1, n);
                CHECK(same_bits(y0, y1, (size_t)n), "%s to_float n=%lld kind %d differs", st->name, (long long)n, kind);
            }
            free(x), free(y0), free(y1), free(b0), free(b1);
        }
    }
}

/* ---- vec_dot, float gemm, packed gemm ---- */
static void check_dots(const pl_kernels *S, const pl_kernels *K) {
    for (int ti = 0; ti < NTYPES; ti++) {
        const int t = TYPES[ti];
        const pl_type_traits *st = &S->types[t], *kt = &K->types[t];
        const int act = st->act_type, quant = st->blck > 1, kq = st->blck == PL_QK_K;
        const int64_t ns_q[] = {32, 96, 160}, ns_k[] = {256, 512, 768}, ns_f[] = {1, 7, 33, 100, 259};
        const int64_t *ns = kq ? ns_k : quant ? ns_q : ns_f;
        const int nn = quant ? 3 : 5;
        for (int ni = 0; ni < nn; ni++) {
            const int64_t n = ns[ni];
            const int NR = 40, NC = 7;
            const size_t rb = pl_type_row_bytes(t, n), ab = pl_type_row_bytes(act, n);
            /* rows at an odd byte offset (any alignment is allowed for vec_dot / gemm) */
            uint8_t *wbuf = xalloc(rb * NR + 3), *abuf = xalloc(ab * NC + 3);
            uint8_t *w = wbuf + 3, *a = abuf + 3;
            make_rows(S, t, NR, n, w, rb);
            float *x = xalloc(sizeof(float) * n * NC);
            for (int64_t i = 0; i < n * NC; i++) x[i] = rnd_normal();
            for (int c = 0; c < NC; c++) S->types[act].from_float(x + (size_t)c * n, a + (size_t)c * ab, n);
            float ref[40 * 7], got[40 * 7], mag[40 * 7];
            for (int c = 0; c < NC; c++)
                for (int r = 0; r < NR; r++) {
                    st->vec_dot((int)n, &ref[c * NR + r], w + (size_t)r * rb, a + (size_t)c * ab);
                    kt->vec_dot((int)n, &got[c * NR + r], w + (size_t)r * rb, a + (size_t)c * ab);
                }
            if (quant) {
                CHECK(same_bits(ref, got, NR * NC), "%s vec_dot n=%lld differs from scalar", st->name, (long long)n);
            } else {
                /* fp32 sums in a different order (4-lane FMAs): |err| <= 1e-5 x sum |w a| + 1e-6 */
                float *wd = xalloc(sizeof(float) * n * NR);
                for (int r = 0; r < NR; r++) S->types[t].to_float(w + (size_t)r * rb, wd + (size_t)r * n, n);
                for (int c = 0; c < NC; c++)
                    for (int r = 0; r < NR; r++) {
                        double m = 0;
                        for (int64_t i = 0; i < n; i++) m += fabs((double)wd[(size_t)r * n + i] * x[(size_t)c * n + i]);
                        mag[c * NR + r] = (float)m;
                    }
                free(wd);
                for (int i = 0; i < NR * NC; i++)
                    CHECK(fabsf(got[i] - ref[i]) <= 1e-5f * mag[i] + 1e-6f, "%s vec_dot n=%lld: %g vs %g", st->name,
                          (long long)n, got[i], ref[i]);
                if (kt->gemm) {
                    static const int shapes[][2] = {{1, 1}, {5, 3}, {40, 7}, {3, 2}, {17, 1}};
                    for (int si = 0; si < 5; si++) {
                        const int nr = shapes[si][0], nc = shapes[si][1];
                        float out[40 * 7];
                        kt->gemm((int)n, nr, nc, w, rb, a, ab, out, NR);
                        for (int c = 0; c < nc; c++)
                            for (int r = 0; r < nr; r++)
                                CHECK(fabsf(out[c * NR + r] - ref[c * NR + r]) <= 1e-5f * mag[c * NR + r] + 1e-6f,
                                      "%s gemm n=%lld %dx%d", st->name, (long long)n, nr, nc);
                    }
                }
            }
            if (st->repack && st->gemm_packed) {
                static const int nrs[] = {1, 5, 16, 17, 33, 40};
                const size_t gb = st->packed_group_bytes(n), pab = pl_packed_act_bytes(t, n);
                uint8_t *pw = xalloc(gb * 3), *pa = xalloc(pab * NC);
                for (int c = 0; c < NC; c++) pl_pack_acts_row(S, t, x + (size_t)c * n, pa + (size_t)c * pab, n);
                /* the table's own activation packing is the same bytes */
                uint8_t *pa2 = xalloc(pab);
                pl_pack_acts_row(K, t, x, pa2, n);
                CHECK(memcmp(pa, pa2, pab) == 0, "%s packed activations differ", st->name);
                free(pa2);
                for (int g = 0; g < 3; g++)
                    st->repack(w + (size_t)g * 16 * rb, rb, NR - 16 * g < 16 ? NR - 16 * g : 16, n, pw + (size_t)g * gb);
                /* the unpacked reference on the packed activation rows (they start with act_type rows) */
                for (int c = 0; c < NC; c++)
                    for (int r = 0; r < NR; r++) st->vec_dot((int)n, &ref[c * NR + r], w + (size_t)r * rb, pa + (size_t)c * pab);
                for (int ri = 0; ri < 6; ri++)
                    for (int nc = 1; nc <= NC; nc += (nc < 5 ? 1 : 2)) {
                        const int nr = nrs[ri];
                        float o0[40 * 7], o1[40 * 7];
                        memset(o0, 0, sizeof(o0));
                        memset(o1, 0, sizeof(o1));
                        st->gemm_packed((int)n, nr, nc, pw, pa, pab, o0, NR);
                        kt->gemm_packed((int)n, nr, nc, pw, pa, pab, o1, NR);
                        int eq = 1, eq_ref = 1;
                        for (int c = 0; c < nc; c++) {
                            eq &= same_bits(o0 + c * NR, o1 + c * NR, nr);
                            eq_ref &= same_bits(ref + c * NR, o1 + c * NR, nr);
                        }
                        CHECK(eq, "%s gemm_packed n=%lld nr=%d nc=%d differs from the scalar packed gemm", st->name,
                              (long long)n, nr, nc);
                        CHECK(eq_ref, "%s gemm_packed n=%lld nr=%d nc=%d differs from the scalar vec_dot", st->name,
                              (long long)n, nr, nc);
                        /* rows past nr are not written */
                        int untouched = 1;
                        for (int c = 0; c < nc; c++)
                            for (int r = nr; r < NR; r++) untouched &= o1[c * NR + r] == 0.0f;
                        CHECK(untouched, "%s gemm_packed wrote past row %d", st->name, nr);
                    }
                free(pw), free(pa);
            }
            free(wbuf), free(abuf), free(x);
        }
    }
}

/* ---- fp32 helpers ---- */
static void check_helpers(const pl_kernels *S, const pl_kernels *K) {
    static const int NS[] = {1, 3, 4, 7, 16, 33, 100, 1024, 4099};
    for (int ni = 0; ni < 9; ni++) {
        const int n = NS[ni];
        float *a = xalloc(4 * n), *b = xalloc(4 * n), *y0 = xalloc(4 * n), *y1 = xalloc(4 * n);
        for (int i = 0; i < n; i++) a[i] = rnd_normal(), b[i] = rnd_normal();
        double mag = 0;
        for (int i = 0; i < n; i++) mag += fabs((double)a[i] * b[i]);
        /* summation order only: 1e-5 of sum |a b| */
        CHECK(fabsf(K->dot_f32(n, a, b) - S->dot_f32(n, a, b)) <= 1e-5 * mag + 1e-6, "dot_f32 n=%d", n);
        memcpy(y0, b, 4 * n);
        memcpy(y1, b, 4 * n);
        S->axpy_f32(n, 0.37f, a, y0);
        K->axpy_f32(n, 0.37f, a, y1);
        CHECK(same_bits(y0, y1, n), "axpy_f32 n=%d differs", n);
        /* softmax against double: 1e-5 relative (the normalizing sum of up to 4099 fp32 terms, and a
         * polynomial exp within a few ulp); SwiGLU 5e-7 (exp, add, divide, multiply, ~1 ulp each) */
        for (int si = 0; si < 2; si++) {
            const float scale = si ? 0.125f : 1.0f;
            for (int i = 0; i < n; i++) y1[i] = a[i] * 6.0f;
            double mx = -INFINITY, sum = 0;
            for (int i = 0; i < n; i++) mx = fmax(mx, (double)y1[i] * scale);
            for (int i = 0; i < n; i++) sum += exp((double)y1[i] * scale - mx);
            float *x = xalloc(4 * n);
            memcpy(x, y1, 4 * n);
            K->softmax_f32(x, n, scale);
            for (int i = 0; i < n; i++) {
                const double e = exp((double)y1[i] * scale - mx) / sum;
                CHECK(fabs(x[i] - e) <= 1e-5 * e, "softmax n=%d i=%d: %g vs %g", n, i, x[i], e);
            }
            free(x);
        }
        for (int i = 0; i < n; i++) y1[i] = a[i] * 4.0f;
        K->swiglu_f32(y1, b, n);
        for (int i = 0; i < n; i++) {
            const double g = a[i] * 4.0f, e = g / (1.0 + exp(-g)) * b[i];
            CHECK(fabs(y1[i] - e) <= 5e-7 * fabs(e), "swiglu n=%d i=%d: %g vs %g", n, i, y1[i], e);
        }
        free(a), free(b), free(y0), free(y1);
    }
    /* extremes: far-below entries vanish, a huge logit takes all; silu saturates without NaN */
    float x[6] = {0.0f, -200.0f, -1e30f, 50.0f, -INFINITY, 3.0f};
    K->softmax_f32(x, 6, 1.0f);
    CHECK(x[1] == 0 && x[2] == 0 && x[4] == 0 && fabsf(x[3] - 1.0f) < 1e-6f && fabs(x[0] - exp(-50.0)) < 1e-6 * exp(-50.0),
          "softmax extremes");
    float g[8] = {-1e4f, -100.0f, -88.5f, -20.0f, 0.0f, 88.5f, 1e4f, 1e30f}, one[8] = {1, 1, 1, 1, 1, 1, 1, 1};
    K->swiglu_f32(g, one, 8);
    for (int i = 0; i < 8; i++) CHECK(isfinite(g[i]), "swiglu extreme %d not finite", i);
    CHECK(fabsf(g[0]) < 1e-30f && fabsf(g[1]) < 1e-30f && fabsf(g[2]) < 1e-30f, "swiglu of very negative gates");
    /* gemm_nn: attention's P x V, b read with a row stride */
    static const int mnk[][3] = {{1, 1, 1}, {8, 64, 1}, {8, 64, 37}, {3, 17, 5}, {5, 100, 9}, {7, 33, 64}};
    for (int si = 0; si < 6; si++) {
        const int m = mnk[si][0], n = mnk[si][1], k = mnk[si][2], ldb = n + 40;
        float *a = xalloc(4 * m * k), *b = xalloc(4 * k * ldb), *c0 = xalloc(4 * m * n), *c1 = xalloc(4 * m * n);
        for (int i = 0; i < m * k; i++) a[i] = rnd_unit();
        for (int i = 0; i < k * ldb; i++) b[i] = rnd_normal();
        S->gemm_nn_f32(m, n, k, a, k, b + 7, ldb, c0, n);
        K->gemm_nn_f32(m, n, k, a, k, b + 7, ldb, c1, n);
        for (int i = 0; i < m; i++)
            for (int j = 0; j < n; j++) {
                double mag = 0;
                for (int p = 0; p < k; p++) mag += fabs((double)a[i * k + p] * b[p * ldb + 7 + j]);
                CHECK(fabsf(c1[i * n + j] - c0[i * n + j]) <= 1e-5 * mag + 1e-7, "gemm_nn %dx%dx%d", m, n, k);
            }
        free(a), free(b), free(c0), free(c1);
    }
}

int main(int argc, char **argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: %s EXPECTED_ISA\n", argv[0]);
        return 2;
    }
    const char *expected = argv[1];
    static const char *const names[] = {"neon", "neon-dotprod", "neon-i8mm"};
    const int rank = strcmp(expected, "neon") == 0 ? 0 : strcmp(expected, "neon-dotprod") == 0 ? 1 : strcmp(expected, "neon-i8mm") == 0 ? 2 : -1;
    if (rank < 0) {
        fprintf(stderr, "unknown expected ISA %s\n", expected);
        return 2;
    }
    /* dispatch: this CPU's best table is picked, the ones it lacks are refused, x86's are unknown here */
    const pl_kernels *picked = pl_kernels_active();
    CHECK(strcmp(picked->isa, expected) == 0, "dispatch picked %s, expected %s", picked->isa, expected);
    for (int i = 0; i < 3; i++) {
        CHECK(pl_isa_supported(names[i]) == (i <= rank), "%s supported: %d", names[i], pl_isa_supported(names[i]));
        CHECK(pl_set_isa(names[i]) == (i <= rank ? 0 : -2), "pl_set_isa(%s)", names[i]);
    }
    CHECK(pl_isa_supported("avx2") == 0 && pl_set_isa("avx512") == -2, "an x86 table on ARM");
    CHECK(pl_set_isa("neon9") == -1, "unknown name accepted");
    CHECK(pl_set_isa("scalar") == 0, "scalar");
    const pl_kernels *S = pl_kernels_active();
    for (int i = 0; i <= rank; i++) {
        pl_set_isa(names[i]);
        const pl_kernels *K = pl_kernels_active();
        const int before = g_fail;
        check_conversions(S, K);
        check_dots(S, K);
        check_helpers(S, K);
        printf("%s: %s\n", K->isa, g_fail == before ? "all kernels match the scalar reference" : "FAILED");
    }
    printf("%d checks, %d failed\n", g_checks, g_fail);
    return g_fail ? 1 : 0;
}
