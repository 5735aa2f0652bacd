/* Compiled convolution loops of infinet (compiled and loaded with native_kernels.c by infinet/engine/native.py):
 * the fused Conv + ReLU-family step in the full and the diagonal layout, and the convolution alone. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "native_math.h"

#define MAX_TAPS 64         /* the largest filter size of the convolution loops */

/* ------------------------------------------------------------------------------------------------------------
 * A convolution (filter size x size, stride 1, zero SAME padding) and the ReLU family phi = a min(x, 0) +
 * b max(x, 0) after it, on the kernels of pairs of examples (infinet/engine/conv_fusion.py; the formulas and
 * the folded constants are those of infinet/engine/conv_blocks.py, whose TorchScript loops these replace):
 *   cov = S(K) + bias / alpha   (S: the sum over the taps, along H first, then along W, in tap order),
 *   r = clamp(cov (1 / n1) (1 / n2'), -1, 1) with norm = n1 n2' = -n1 n2 / (alpha (1 + 4 eps)),   angle = acos(r),
 *   nngp' = [((c sqrt(1 - r^2) - c angle r) norm) slope - ab / (1 + 4 eps) cov] finish,
 *   ntk'  = (S(Theta) + cov) (angle gain + shift)   (S(Theta) = 0 without an input NTK),
 * c = 1 / (2 pi), slope = (b - a)^2, finish = -alpha (1 + 4 eps), gain = slope c alpha, shift = ab alpha, the
 * last three 0 at the spare columns of the flattened (h2, w2) axis (valid = 0), which are written as zeros.
 * ------------------------------------------------------------------------------------------------------------ */
typedef struct {
    double alpha, bias, slope, ab, eps;
} relu_step;

/* One row of n entries from cov and theta (S(K), S(Theta) or NULL); norm and inv hold each entry's norm and its
 * reciprocal (r = cov inv: a product instead of a division; the norm's 4-ulp push covers the reciprocals' 2 ulps,
 * so rho = +-1 stays exact). No two arrays overlap. */
static void activation_row(int64_t n, const double *restrict cov, const double *restrict theta,
                           const double *restrict norm, const double *restrict inv, const double *restrict valid,
                           double *restrict out_k, double *restrict out_t, relu_step st)
{
    const double c = 1.0 / (2.0 * PI);
    const double shift_bias = st.bias / st.alpha, ab_term = -st.ab / (1.0 + 4.0 * st.eps);
    const double finish = -st.alpha * (1.0 + 4.0 * st.eps), gain = st.slope * c * st.alpha, shift = st.ab * st.alpha;
    for (int64_t g = 0; g < n; g++) {
        double cv = cov[g] + shift_bias;  /* + 0 without a bias: exact */
        double r = cv * inv[g];
        r = r < -1.0 ? -1.0 : (r > 1.0 ? 1.0 : r);
        double angle, sine;
        acos_and_sine(r, &angle, &sine);
        double kk = (c * sine - c * angle * r) * norm[g];
        if (st.slope != 1.0) kk *= st.slope;
        if (st.ab != 0.0) kk += ab_term * cv;
        out_k[g] = kk * (finish * valid[g]);
        if (out_t != NULL) {
            double weight = angle * (gain * valid[g]) + shift * valid[g];
            out_t[g] = (theta != NULL ? theta[g] + cv : cv) * weight;
        }
    }
}

/* dst[f] = sum over u of rows[u][f] for f < n, in tap order (the same additions in the same order for every
 * filter size; three taps, the usual filter, in one pass). */
static void tap_sum(const double *const *rows, int64_t size, int64_t n, double *dst)
{
    if (size == 3) {
        const double *a = rows[0], *b = rows[1], *c = rows[2];
        for (int64_t f = 0; f < n; f++) dst[f] = (a[f] + b[f]) + c[f];
        return;
    }
    for (int64_t f = 0; f < n; f++) dst[f] = rows[0][f];
    for (int64_t u = 1; u < size; u++) {
        const double *row = rows[u];
        for (int64_t f = 0; f < n; f++) dst[f] += row[f];
    }
}

/* The taps along H for one output row h1 of a padded pair (hp, wp, hp, wp): buf[w1 * flat + f] = sum over u of
 * slab[u][w1, f + u wp] (h1 and h2 move together), f < flat = h wp, in tap order; slab[u] the padded (wp, hp, wp)
 * slab of row h1 + u. */
static void taps_h(const double *const *slab, int64_t size, int64_t s1, int64_t wp, int64_t flat, double *buf)
{
    for (int64_t w1 = 0; w1 < wp; w1++) {
        const double *rows[MAX_TAPS];
        for (int64_t u = 0; u < size; u++) rows[u] = slab[u] + w1 * s1 + u * wp;
        tap_sum(rows, size, flat, buf + w1 * flat);
    }
}

/* The slabs of rows h1 .. h1 + size - 1 of a padded pair (hp, wp, hp, wp) held whole, read in place (copying
 * them into a ring of cached slabs, as for unpadded pairs, was slower: 10.4 against 9.3 ns per entry). */
static void pair_slabs(const double *pair, int64_t h1, int64_t size, int64_t s0, const double **slab)
{
    for (int64_t u = 0; u < size; u++) slab[u] = pair + (h1 + u) * s0;
}

/* The taps along W for output column w1: dst[g] = sum over t of buf[(w1 + t) flat + g + t], g < inner, in tap
 * order (w1 and w2 move together; g = h2 wp + w2 with the spare columns w2 >= w). */
static void taps_w(const double *buf, int64_t w1, int64_t size, int64_t flat, int64_t inner, double *dst)
{
    const double *rows[MAX_TAPS];
    for (int64_t t = 0; t < size; t++) rows[t] = buf + (w1 + t) * flat + t;
    tap_sum(rows, size, inner, dst);
}

/* 1 / x of n values, in new memory (NULL when it cannot be had). */
static double *reciprocals(int64_t n, const double *x)
{
    double *out = malloc((size_t)(n > 0 ? n : 1) * sizeof(double));
    if (out != NULL)
        for (int64_t i = 0; i < n; i++) out[i] = 1.0 / x[i];
    return out;
}

/* Zero the border of one pair's (hp, wp, hp, wp) output that the loop below does not write: the border rows and
 * columns of (h1, w1), and in each interior (h1, w1) the head and tail of the flattened (h2, w2) plane (the loop
 * writes the border columns between its rows itself). */
static void zero_full_border(double *out, int64_t h, int64_t w, int64_t p, int64_t inner)
{
    const int64_t hp = h + 2 * p, wp = w + 2 * p, s1 = hp * wp, s0 = wp * s1, head = p * wp + p;
    for (int64_t h1 = 0; h1 < hp; h1++) {
        double *row = out + h1 * s0;
        if (h1 < p || h1 >= h + p) {
            memset(row, 0, (size_t)s0 * sizeof(double));
            continue;
        }
        memset(row, 0, (size_t)(p * s1) * sizeof(double));
        memset(row + (w + p) * s1, 0, (size_t)(p * s1) * sizeof(double));
        for (int64_t w1 = p; w1 < w + p; w1++) {
            double *plane = row + w1 * s1;
            memset(plane, 0, (size_t)head * sizeof(double));
            memset(plane + head + inner, 0, (size_t)(s1 - head - inner) * sizeof(double));
        }
    }
}

/* Full layout. kin, tin (NULL: an NTK of zeros), kout, tout (NULL: no NTK): (n_1, n_2, hp, wp, hp, wp) padded,
 * contiguous; n1: (n_1, h, w) = sqrt(var1); norm2: (n_2, inner) = -sqrt(var2) / (alpha (1 + 4 eps)) (1 at spare
 * columns); valid: (inner,). inner = h wp - (size - 1). Returns -1 when its buffers cannot be allocated. */
int conv_relu_full(int64_t n_1, int64_t n_2, int64_t h, int64_t w, int64_t size, const double *kin,
                   const double *tin, double *kout, double *tout, const double *n1, const double *norm2,
                   const double *valid, double alpha, double bias, double a, double b, double eps)
{
    const int64_t p = size / 2, hp = h + 2 * p, wp = w + 2 * p;
    const int64_t s1 = hp * wp, s0 = wp * s1, pair = hp * s0, flat = h * wp, inner = h * wp - (size - 1);
    const int64_t out_offset = p * s0 + p * s1 + p * wp + p;
    relu_step st = {alpha, bias, (b - a) * (b - a), a * b, eps};
    double *buf_k = malloc((size_t)(wp * flat) * sizeof(double));
    double *buf_t = tin != NULL ? malloc((size_t)(wp * flat) * sizeof(double)) : NULL;
    double *rows = malloc((size_t)(4 * inner) * sizeof(double));
    double *inv1 = reciprocals(n_1 * h * w, n1), *inv2 = reciprocals(n_2 * inner, norm2);
    if (size > MAX_TAPS || buf_k == NULL || rows == NULL || (tin != NULL && buf_t == NULL) || inv1 == NULL
        || inv2 == NULL) {
        free(buf_k); free(buf_t); free(rows); free(inv1); free(inv2);
        return -1;
    }
    double *cov = rows, *theta = rows + inner, *norm = rows + 2 * inner, *inv = rows + 3 * inner;
    for (int64_t i = 0; i < n_1; i++)
        for (int64_t j = 0; j < n_2; j++) {
            const int64_t base = (i * n_2 + j) * pair;
            const double *n2j = norm2 + j * inner, *i2j = inv2 + j * inner;
            zero_full_border(kout + base, h, w, p, inner);
            if (tout != NULL) zero_full_border(tout + base, h, w, p, inner);
            for (int64_t h1 = 0; h1 < h; h1++) {
                const double *slab[MAX_TAPS];
                pair_slabs(kin + base, h1, size, s0, slab);
                taps_h(slab, size, s1, wp, flat, buf_k);
                if (tin != NULL) {
                    pair_slabs(tin + base, h1, size, s0, slab);
                    taps_h(slab, size, s1, wp, flat, buf_t);
                }
                for (int64_t w1 = 0; w1 < w; w1++) {
                    taps_w(buf_k, w1, size, flat, inner, cov);
                    if (tin != NULL) taps_w(buf_t, w1, size, flat, inner, theta);
                    const double n1w = n1[(i * h + h1) * w + w1], i1w = inv1[(i * h + h1) * w + w1];
                    for (int64_t g = 0; g < inner; g++) {
                        norm[g] = n1w * n2j[g];
                        inv[g] = i1w * i2j[g];
                    }
                    const int64_t at = base + out_offset + h1 * s0 + w1 * s1;
                    activation_row(inner, cov, tin != NULL ? theta : NULL, norm, inv, valid, kout + at,
                                   tout != NULL ? tout + at : NULL, st);
                }
            }
        }
    free(buf_k); free(buf_t); free(rows); free(inv1); free(inv2);
    return 0;
}

/* Row hs (padded coordinates, p <= hs < h + p) of an unpadded pair (h, w, h, w) copied into the interior of a
 * zero-bordered (wp, hp, wp) slab (whose border stays as it is: zero). */
static void pad_slab(const double *src, int64_t hs, int64_t h, int64_t w, int64_t p, double *dst)
{
    const int64_t hp = h + 2 * p, wp = w + 2 * p, s1 = hp * wp;
    const double *row = src + (hs - p) * w * h * w;
    for (int64_t w1 = 0; w1 < w; w1++)
        for (int64_t h2 = 0; h2 < h; h2++)
            memcpy(dst + (w1 + p) * s1 + (h2 + p) * wp + p, row + (w1 * h + h2) * w, (size_t)w * sizeof(double));
}

/* The slabs of rows h1 .. h1 + size - 1 of an unpadded pair from a ring of size zero-bordered slabs (row hs in
 * ring[hs % size], padded when first needed: each row once per pair, and the ring, not the whole padded pair,
 * stays in cache); rows in the border read the zero slab. */
static void ring_slabs(const double *src, int64_t h1, int64_t h, int64_t w, int64_t size, double *ring,
                       const double *zeros, const double **slab)
{
    const int64_t p = size / 2, hp = h + 2 * p, wp = w + 2 * p, s0 = wp * hp * wp;
    for (int64_t u = 0; u < size; u++) {
        int64_t hs = h1 + u;
        if (hs < p || hs >= h + p) {
            slab[u] = zeros;
            continue;
        }
        double *slot = ring + (hs % size) * s0;
        if (h1 == 0 || u == size - 1) pad_slab(src, hs, h, w, p, slot);  /* first needed now */
        slab[u] = slot;
    }
}

/* The convolution alone in the full layout (any activation after it): kout = alpha S(K) + bias and tout = kout +
 * alpha S(Theta) (tin NULL: tout = kout; tout NULL: no NTK); kout, tout (n_1, n_2, h, w, h, w) contiguous; kin,
 * tin (n_1, n_2, hp, wp, hp, wp) zero-bordered when bordered is 1, else (n_1, n_2, h, w, h, w), each pair then
 * copied into a zero-bordered scratch buffer. Returns -1 when its buffers cannot be allocated. */
int conv_sums_full(int64_t n_1, int64_t n_2, int64_t h, int64_t w, int64_t size, const double *kin,
                   const double *tin, double *kout, double *tout, double alpha, double bias, int64_t bordered)
{
    const int64_t p = size / 2, hp = h + 2 * p, wp = w + 2 * p;
    const int64_t s1 = hp * wp, s0 = wp * s1, pair = hp * s0, flat = h * wp, inner = h * wp - (size - 1);
    const int64_t out_pair = h * w * h * w;
    double *buf_k = malloc((size_t)(wp * flat) * sizeof(double));
    double *buf_t = tin != NULL ? malloc((size_t)(wp * flat) * sizeof(double)) : NULL;
    double *rows = malloc((size_t)(2 * inner) * sizeof(double));
    /* unpadded inputs: a ring of size slabs per kernel, and one zero slab */
    double *scratch = bordered ? NULL : calloc((size_t)((tin != NULL ? 2 : 1) * size + 1) * s0, sizeof(double));
    if (size > MAX_TAPS || buf_k == NULL || rows == NULL || (tin != NULL && buf_t == NULL)
        || (!bordered && scratch == NULL)) {
        free(buf_k); free(buf_t); free(rows); free(scratch);
        return -1;
    }
    double *cov = rows, *theta = rows + inner;
    double *ring_k = scratch, *ring_t = scratch == NULL ? NULL : scratch + size * s0;
    const double *zeros = scratch == NULL ? NULL : scratch + (tin != NULL ? 2 : 1) * size * s0;
    for (int64_t i = 0; i < n_1; i++)
        for (int64_t j = 0; j < n_2; j++) {
            const int64_t out_base = (i * n_2 + j) * out_pair;
            for (int64_t h1 = 0; h1 < h; h1++) {
                const double *slab[MAX_TAPS];
                for (int pass = 0; pass < (tin != NULL ? 2 : 1); pass++) {
                    const double *in = pass ? tin : kin;
                    if (bordered)
                        pair_slabs(in + (i * n_2 + j) * pair, h1, size, s0, slab);
                    else
                        ring_slabs(in + out_base, h1, h, w, size, pass ? ring_t : ring_k, zeros, slab);
                    taps_h(slab, size, s1, wp, flat, pass ? buf_t : buf_k);
                }
                for (int64_t w1 = 0; w1 < w; w1++) {
                    taps_w(buf_k, w1, size, flat, inner, cov);
                    if (tin != NULL) taps_w(buf_t, w1, size, flat, inner, theta);
                    double *dk = kout + out_base + (h1 * w + w1) * h * w;
                    double *dt = tout != NULL ? tout + out_base + (h1 * w + w1) * h * w : NULL;
                    for (int64_t h2 = 0; h2 < h; h2++) {
                        const double *ck = cov + h2 * wp, *ct = theta + h2 * wp;
                        double *ok = dk + h2 * w;
                        for (int64_t w2 = 0; w2 < w; w2++) ok[w2] = ck[w2] * alpha + bias;
                        if (dt != NULL) {
                            double *ot = dt + h2 * w;
                            if (tin != NULL)
                                for (int64_t w2 = 0; w2 < w; w2++) ot[w2] = ok[w2] + alpha * ct[w2];
                            else
                                for (int64_t w2 = 0; w2 < w; w2++) ot[w2] = ok[w2];
                        }
                    }
                }
            }
        }
    free(buf_k); free(buf_t); free(rows); free(scratch);
    return 0;
}

/* Diagonal layout (same-position pairs): kin, tin, kout, tout (n_1, n_2, hp, wp) padded, contiguous; norm1:
 * (n_1, inner) = sqrt(var1) and norm2: (n_2, inner) = -sqrt(var2) / (alpha (1 + 4 eps)), both 1 at spare
 * columns. Returns -1 when its buffers cannot be allocated. */
int conv_relu_diagonal(int64_t n_1, int64_t n_2, int64_t h, int64_t w, int64_t size, const double *kin,
                       const double *tin, double *kout, double *tout, const double *norm1, const double *norm2,
                       const double *valid, double alpha, double bias, double a, double b, double eps)
{
    const int64_t p = size / 2, hp = h + 2 * p, wp = w + 2 * p;
    const int64_t pair = hp * wp, flat = h * wp, inner = h * wp - (size - 1), out_offset = p * wp + p;
    relu_step st = {alpha, bias, (b - a) * (b - a), a * b, eps};
    double *work = malloc((size_t)(2 * flat + 4 * inner) * sizeof(double));
    double *inv1 = reciprocals(n_1 * inner, norm1), *inv2 = reciprocals(n_2 * inner, norm2);
    if (size > MAX_TAPS || work == NULL || inv1 == NULL || inv2 == NULL) {
        free(work); free(inv1); free(inv2);
        return -1;
    }
    double *buf_k = work, *buf_t = work + flat, *cov = work + 2 * flat, *theta = cov + inner, *norm = theta + inner;
    double *inv = norm + inner;
    (void)w;
    for (int64_t i = 0; i < n_1; i++)
        for (int64_t j = 0; j < n_2; j++) {
            const int64_t base = (i * n_2 + j) * pair;
            for (int pass = 0; pass < (tin != NULL ? 2 : 1); pass++) {
                const double *src = (pass ? tin : kin) + base;
                double *buf = pass ? buf_t : buf_k, *dst = pass ? theta : cov;
                const double *rows[MAX_TAPS];
                for (int64_t u = 0; u < size; u++) rows[u] = src + u * wp;
                tap_sum(rows, size, flat, buf);
                for (int64_t t = 0; t < size; t++) rows[t] = buf + t;
                tap_sum(rows, size, inner, dst);
            }
            const double *n1i = norm1 + i * inner, *n2j = norm2 + j * inner;
            const double *i1i = inv1 + i * inner, *i2j = inv2 + j * inner;
            for (int64_t g = 0; g < inner; g++) {
                norm[g] = n1i[g] * n2j[g];
                inv[g] = i1i[g] * i2j[g];
            }
            activation_row(inner, cov, tin != NULL ? theta : NULL, norm, inv, valid, kout + base + out_offset,
                           tout != NULL ? tout + base + out_offset : NULL, st);
            for (int pass = 0; pass < (tout != NULL ? 2 : 1); pass++) {  /* the border before and after */
                double *plane = (pass ? tout : kout) + base;
                memset(plane, 0, (size_t)out_offset * sizeof(double));
                memset(plane + out_offset + inner, 0, (size_t)(pair - out_offset - inner) * sizeof(double));
            }
        }
    free(work); free(inv1); free(inv2);
    return 0;
}
