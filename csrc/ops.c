/* ops.c: RMSNorm, rotary embedding, softmax and SwiGLU, written as the formulas in
 * transformers' modeling_llama.py (fp32 throughout). */
#include <math.h>

#include "ops.h"

void pl_rmsnorm(float *out, const float *x, const float *w, int n, float eps) {
    double ss = 0.0;
    for (int i = 0; i < n; i++) ss += (double)x[i] * x[i];
    const float scale = 1.0f / sqrtf((float)(ss / n) + eps);
    for (int i = 0; i < n; i++) out[i] = w[i] * (x[i] * scale);
}

void pl_rope(float *v, int n_heads, int head_dim, const float *cos, const float *sin, int interleaved) {
    const int half = head_dim / 2;
    for (int h = 0; h < n_heads; h++) {
        float *x = v + (size_t)h * head_dim;
        if (interleaved) { /* pairs (2i, 2i+1), as GGUF files store Q/K rows */
            for (int i = 0; i < half; i++) {
                const float x0 = x[2 * i], x1 = x[2 * i + 1];
                x[2 * i] = x0 * cos[i] - x1 * sin[i];
                x[2 * i + 1] = x1 * cos[i] + x0 * sin[i];
            }
        } else { /* halves (i, i + head_dim/2): x*cos + rotate_half(x)*sin */
            for (int i = 0; i < half; i++) {
                const float x0 = x[i], x1 = x[i + half];
                x[i] = x0 * cos[i] - x1 * sin[i];
                x[i + half] = x1 * cos[i] + x0 * sin[i];
            }
        }
    }
}

void pl_softmax(float *x, int n) {
    float mx = x[0];
    for (int i = 1; i < n; i++) mx = x[i] > mx ? x[i] : mx;
    float sum = 0.0f;
    for (int i = 0; i < n; i++) {
        x[i] = expf(x[i] - mx);
        sum += x[i];
    }
    const float inv = 1.0f / sum;
    for (int i = 0; i < n; i++) x[i] *= inv;
}

void pl_swiglu(float *gate, const float *up, int n) {
    for (int i = 0; i < n; i++) gate[i] = gate[i] / (1.0f + expf(-gate[i])) * up[i];
}
