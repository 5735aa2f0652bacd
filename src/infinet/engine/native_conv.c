/* Compiled convolution loops of infinet (compiled and loaded with native_kernels.c by infinet/engine/native.py):
 * the fused Conv + ReLU-family step in the full and the diagonal layout, and the convolution alone. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "native_math.h"

#define MAX_TAPS 64         /* the largest filter size of the convolution loops */
#define SLAB_BUDGET (1 << 17) /* doubles (1 MiB) of input slabs that the full layout keeps in L2 per row */
#define PAIR_BLOCK 4        /* pairs of the diagonal layout go through their steps in blocks of 4 x 4 */

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

/* One row of n entries from cov and theta (S(K), S(Theta) or NULL); each entry's norm is n1 n2 and its
 * reciprocal i1 i2 (r = cov inv: a product instead of a division; the norm's 4-ulp push covers the reciprocals'
 * 2 ulps, so rho = +-1 stays exact), with n1[0] and i1[0] for every entry where one_first (a row of the full
 * layout: one first-member position), else n1[g] and i1[g]. No two arrays overlap. Inlined into each caller, so
 * that one_first is a constant there. */
static inline __attribute__((always_inline)) void
activation_row(int64_t n, const double *restrict cov, const double *restrict theta, const double *restrict n1,
               const double *restrict n2, const double *restrict i1, const double *restrict i2, int one_first,
               const double *restrict valid, double *restrict out_k, double *restrict out_t, relu_step st)
{
    const double c = 1.0 / (2.0 * PI);
    const double shift_bias = st.bias / st.alpha, ab_term = -st.ab / (1.0 + 4.0 * st.eps);
    const double finish = -st.alpha * (1.0 + 4.0 * st.eps), gain = st.slope * c * st.alpha, shift = st.ab * st.alpha;
    for (int64_t g = 0; g < n; g++) {
        const double norm = (one_first ? n1[0] : n1[g]) * n2[g], inv = (one_first ? i1[0] : i1[g]) * i2[g];
        double cv = cov[g] + shift_bias;  /* + 0 without a bias: exact */
        double r = cv * inv;
        r = r < -1.0 ? -1.0 : (r > 1.0 ? 1.0 : r);
        double angle, sine;
        acos_and_sine(r, &angle, &sine);
        double kk = (c * sine - c * angle * r) * norm;
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
 * slab[u][w1, f + u wp] (h1 and h2 move together), f < flat = h wp, in tap order, for w1 in [first, end); slab[u]
 * the padded (wp, hp, wp) slab of row h1 + u. */
static void taps_h(const double *const *slab, int64_t size, int64_t s1, int64_t wp, int64_t flat, int64_t first,
                   int64_t end, double *buf)
{
    for (int64_t w1 = first; w1 < end; w1++) {
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

/* In place (the output written over its own input, which then needs no border zeroed: the step writes only the
 * interior and zeros at the border's spare columns): the slabs of rows h1 .. h1 + size - 1 of a padded pair, the
 * rows already overwritten (p .. h1 + p - 1) read from the ring of their saved inputs (row r in slot r % p). */
static void inplace_slabs(const double *pair, int64_t h1, int64_t size, int64_t s0, const double *ring,
                          const double **slab)
{
    const int64_t p = size / 2;
    for (int64_t u = 0; u < size; u++) {
        const int64_t r = h1 + u;
        slab[u] = r >= p && r < h1 + p ? ring + (r % p) * s0 : pair + r * s0;
    }
}

/* The first layer's input kernel, never written: K[(p1), (p2)] = sum over c of x1[c, p1] x2[c, p2] / channels (the
 * channel mean of the products of two zero-padded images (channels, hp, wp), p1, p2 padded positions; no division
 * for one channel), read by conv_relu_full in place of a bordered pair. pins (n_1, h, w) or NULL: the tap sums S(K)
 * at the positions (p, p) of the pairs (i, i) of a symmetric tile, which the step takes as they are (the sums of the
 * self-covariances that the position variances were computed from, so that rho = 1 there to the last bit). */
typedef struct {
    const double *x1, *x2, *pins;
    int64_t channels;
} image_pairs;

/* taps_h for the pair of images x1 (first member), x2 (second member) of `img` (each (channels, hp, wp)): buf[w1
 * flat + f] = sum over u of K[(h1 + u, w1), f + u wp], the products summed over the channels first, then over the
 * taps in tap order; scratch: flat doubles. */
static void taps_h_images(const double *x1, const double *x2, int64_t channels, int64_t plane, int64_t size,
                          int64_t wp, int64_t h1, int64_t flat, int64_t first, int64_t end, double *scratch,
                          double *buf)
{
    const double c = (double)channels;
    for (int64_t w1 = first; w1 < end; w1++) {
        double *dst = buf + w1 * flat;
        for (int64_t u = 0; u < size; u++) {
            double *row = u == 0 ? dst : scratch;
            const double *col = x2 + u * wp;
            const double a0 = x1[(h1 + u) * wp + w1];
            for (int64_t f = 0; f < flat; f++) row[f] = a0 * col[f];
            for (int64_t ch = 1; ch < channels; ch++) {
                const double ac = x1[ch * plane + (h1 + u) * wp + w1], *cc = col + ch * plane;
                for (int64_t f = 0; f < flat; f++) row[f] += ac * cc[f];
            }
            if (channels > 1)
                for (int64_t f = 0; f < flat; f++) row[f] /= c;
            if (u > 0)
                for (int64_t f = 0; f < flat; f++) dst[f] += row[f];
        }
    }
}

/* Full layout. kin, tin (NULL: an NTK of zeros), kout, tout (NULL: no NTK): (n_1, n_2, hp, wp, hp, wp) padded,
 * contiguous; n1: (n_1, h, w) = sqrt(var1); norm2: (n_2, inner) = -sqrt(var2) / (alpha (1 + 4 eps)) (1 at spare
 * columns); valid: (inner,). inner = h wp - (size - 1). img not NULL: kin is the product of its images (tin NULL),
 * never read. kout == kin (and then tout == tin): in place (inplace_slabs). Returns -1 when its buffers cannot be
 * allocated. */
static int conv_relu_pairs(int64_t n_1, int64_t n_2, int64_t h, int64_t w, int64_t size, const double *kin,
                           const double *tin, double *kout, double *tout, const double *n1, const double *norm2,
                           const double *valid, double alpha, double bias, double a, double b, double eps,
                           const image_pairs *img)
{
    const int64_t p = size / 2, hp = h + 2 * p, wp = w + 2 * p;
    const int64_t s1 = hp * wp, s0 = wp * s1, pair = hp * s0, flat = h * wp, inner = h * wp - (size - 1);
    const int64_t out_offset = p * s0 + p * s1 + p * wp + p;
    relu_step st = {alpha, bias, (b - a) * (b - a), a * b, eps};
    double *buf_k = malloc((size_t)(wp * flat) * sizeof(double));
    double *buf_t = tin != NULL ? malloc((size_t)(wp * flat) * sizeof(double)) : NULL;
    double *rows = malloc((size_t)(2 * inner + flat) * sizeof(double));
    double *inv1 = reciprocals(n_1 * h * w, n1), *inv2 = reciprocals(n_2 * inner, norm2);
    const int inplace = img == NULL && kout == kin, kernels = tin != NULL ? 2 : 1;
    double *ring = inplace && p > 0 ? malloc((size_t)(kernels * p * s0) * sizeof(double)) : NULL;
    if (size > MAX_TAPS || buf_k == NULL || rows == NULL || (tin != NULL && buf_t == NULL) || inv1 == NULL
        || inv2 == NULL || (img != NULL && tin != NULL) || (inplace && tout != tin) || (inplace && p > 0 && !ring)) {
        free(buf_k); free(buf_t); free(rows); free(inv1); free(inv2); free(ring);
        return -1;
    }
    double *cov = rows, *theta = rows + inner;
    const int64_t per_column = size * s1 * (tin != NULL ? 2 : 1);  /* doubles of the slabs' parts per column */
    int64_t columns = SLAB_BUDGET / per_column - (size - 1);
    /* images: nothing read from memory to keep; in place: whole rows (the ring holds rows, not blocks) */
    columns = img != NULL || inplace ? w : (columns < 4 ? 4 : columns);
    for (int64_t i = 0; i < n_1; i++)
        for (int64_t j = 0; j < n_2; j++) {
            const int64_t base = (i * n_2 + j) * pair;
            const double *n2j = norm2 + j * inner, *i2j = inv2 + j * inner;
            if (!inplace) {
                zero_full_border(kout + base, h, w, p, inner);
                if (tout != NULL) zero_full_border(tout + base, h, w, p, inner);
            }
            /* blocks of columns w1 (the slabs' parts that rows h1 .. h1 + size - 1 of a block read stay in L2
             * from one row h1 to the next, instead of each slab read whole from L3 size times) */
            for (int64_t w0 = 0; w0 < w; w0 += columns)
            for (int64_t h1 = 0; h1 < h; h1++) {
                const double *slab[MAX_TAPS];
                const int64_t w_end = w0 + columns < w ? w0 + columns : w;
                if (img != NULL) {
                    taps_h_images(img->x1 + i * img->channels * s1, img->x2 + j * img->channels * s1, img->channels,
                                  s1, size, wp, h1, flat, w0, w_end + size - 1, rows + 2 * inner, buf_k);
                } else {
                    if (inplace) inplace_slabs(kin + base, h1, size, s0, ring, slab);
                    else pair_slabs(kin + base, h1, size, s0, slab);
                    taps_h(slab, size, s1, wp, flat, w0, w_end + size - 1, buf_k);
                }
                if (tin != NULL) {
                    if (inplace) inplace_slabs(tin + base, h1, size, s0, ring + p * s0, slab);
                    else pair_slabs(tin + base, h1, size, s0, slab);
                    taps_h(slab, size, s1, wp, flat, w0, w_end + size - 1, buf_t);
                }
                if (inplace && p > 0) {  /* row h1 + p is written next: its input kept for rows h1 + 1 .. h1 + p */
                    const int64_t slot = ((h1 + p) % p) * s0, row = base + (h1 + p) * s0;
                    memcpy(ring + slot, kin + row, (size_t)s0 * sizeof(double));
                    if (tin != NULL) memcpy(ring + p * s0 + slot, tin + row, (size_t)s0 * sizeof(double));
                }
                for (int64_t w1 = w0; w1 < w_end; w1++) {
                    taps_w(buf_k, w1, size, flat, inner, cov);
                    if (tin != NULL) taps_w(buf_t, w1, size, flat, inner, theta);
                    const int64_t first = (i * h + h1) * w + w1, at = base + out_offset + h1 * s0 + w1 * s1;
                    if (img != NULL && img->pins != NULL && i == j) cov[h1 * wp + w1] = img->pins[first];
                    activation_row(inner, cov, tin != NULL ? theta : NULL, n1 + first, n2j, inv1 + first, i2j, 1,
                                   valid, kout + at, tout != NULL ? tout + at : NULL, st);
                }
            }
        }
    free(buf_k); free(buf_t); free(rows); free(inv1); free(inv2); free(ring);
    return 0;
}

int conv_relu_full(int64_t n_1, int64_t n_2, int64_t h, int64_t w, int64_t size, const double *kin,
                   const double *tin, double *kout, double *tout, const double *n1, const double *norm2,
                   const double *valid, double alpha, double bias, double a, double b, double eps)
{
    return conv_relu_pairs(n_1, n_2, h, w, size, kin, tin, kout, tout, n1, norm2, valid, alpha, bias, a, b, eps,
                           NULL);
}

/* conv_relu_full on the input kernel of images x1 (n_1, channels, hp, wp) and x2 (n_2, channels, hp, wp),
 * zero-padded and contiguous, without an input NTK: see image_pairs (pins NULL unless the tile is symmetric). */
int conv_relu_images(int64_t n_1, int64_t n_2, int64_t h, int64_t w, int64_t size, const double *x1,
                     const double *x2, int64_t channels, const double *pins, double *kout, double *tout,
                     const double *n1, const double *norm2, const double *valid, double alpha, double bias, double a,
                     double b, double eps)
{
    const image_pairs img = {x1, x2, pins, channels};
    return conv_relu_pairs(n_1, n_2, h, w, size, NULL, NULL, kout, tout, n1, norm2, valid, alpha, bias, a, b, eps,
                           &img);
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
                    taps_h(slab, size, s1, wp, flat, 0, wp, pass ? buf_t : buf_k);
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

/* The tap sums of one padded (hp, wp) plane in the diagonal layout: along H into buf (flat = h wp entries), then
 * along W into dst (inner entries), in tap order. */
static void diagonal_taps(const double *src, int64_t size, int64_t wp, int64_t flat, int64_t inner, double *buf,
                          double *dst)
{
    const double *rows[MAX_TAPS];
    for (int64_t u = 0; u < size; u++) rows[u] = src + u * wp;
    tap_sum(rows, size, flat, buf);
    for (int64_t t = 0; t < size; t++) rows[t] = buf + t;
    tap_sum(rows, size, inner, dst);
}

/* Per-position tables (stages, n, h, w) in the inner layout (stages, n, inner) of padded rows (g = r wp + c, the
 * spare columns c >= w holding `spare`), each entry times scale[s] when scales is not NULL, or its reciprocal when
 * reciprocal is 1; in new memory (NULL when it cannot be had). */
static double *inner_table(int64_t stages, int64_t n, int64_t h, int64_t w, int64_t wp, int64_t inner,
                           const double *src, const double *scales, double spare, int reciprocal)
{
    double *out = malloc((size_t)(stages * n * inner > 0 ? stages * n * inner : 1) * sizeof(double));
    if (out == NULL) return NULL;
    for (int64_t s = 0; s < stages; s++)
        for (int64_t i = 0; i < n; i++) {
            const double scale = scales != NULL ? scales[s] : 1.0, *row = src + (s * n + i) * h * w;
            double *dst = out + (s * n + i) * inner;
            const double pad = reciprocal ? 1.0 / (spare * scale) : spare * scale;
            for (int64_t r = 0; r < h; r++) {
                double *line = dst + r * wp;
                const double *from = row + r * w;
                if (reciprocal)
                    for (int64_t c = 0; c < w; c++) line[c] = 1.0 / (from[c] * scale);
                else
                    for (int64_t c = 0; c < w; c++) line[c] = from[c] * scale;
                for (int64_t c = w; c < wp && r * wp + c < inner; c++) line[c] = pad;
            }
        }
    return out;
}

/* Diagonal layout (same-position pairs), a run of `stages` Conv + ReLU-family steps of one filter size, each pair
 * of examples through every step while its plane stays in L1 (a pair's positions after a step depend only on its
 * own positions before it and on the examples' variances). kout, tout (n_1, n_2, hp, wp) padded, contiguous; kin,
 * tin the same when bordered is 1, else (n_1, n_2, h, w) (each pair then bordered in a scratch plane); tin NULL: an
 * NTK of zeros; tout NULL: no NTK. Per step s: sd1 (stages, n_1, h, w) = sqrt(var1) and sd2
 * (stages, n_2, h, w) = sqrt(var2) of the convolution's output; params (stages, 5) = (alpha, bias, a, b, scale =
 * -1 / (alpha (1 + 4 eps))), norm2 = sd2 scale (the spare columns: 1, and scale); pins (stages, n_1, h, w), the
 * self-covariances after step s that pair (i, i) of a symmetric tile takes, or NULL; given, the tile is symmetric
 * (n_1 = n_2, the same examples), and pair (j, i), j > i, is a copy of pair (i, j) (the same value: same-position
 * pairs). The steps in between are what the one-step calls would give, to the last bit. With mean = 1 (a
 * Flatten next), kout and tout are (n_1, n_2) instead: each pair's last step is written into a scratch plane and
 * only the mean over its h x w positions (their sum in row-major order, / (h w)) is stored. Returns -1 when its
 * buffers cannot be allocated. */
static int diagonal_run(int64_t stages, int64_t n_1, int64_t n_2, int64_t h, int64_t w, int64_t size,
                        const double *kin, const double *tin, int64_t bordered, double *kout, double *tout,
                        const double *sd1, const double *sd2, const double *pins, const double *valid,
                        const double *params, double eps, int64_t mean, const image_pairs *img)
{
    const int64_t p = size / 2, hp = h + 2 * p, wp = w + 2 * p;
    const int64_t pair = hp * wp, flat = h * wp, inner = h * wp - (size - 1), out_offset = p * wp + p;
    double scales[stages > 0 ? stages : 1];
    for (int64_t s = 0; s < stages; s++) scales[s] = params[5 * s + 4];
    double *work = malloc((size_t)(flat + 2 * inner) * sizeof(double));
    double *planes = calloc((size_t)(6 * pair), sizeof(double));  /* three (k, t) planes, zero-bordered */
    double *norm1 = inner_table(stages, n_1, h, w, wp, inner, sd1, NULL, 1.0, 0);
    double *inv1 = inner_table(stages, n_1, h, w, wp, inner, sd1, NULL, 1.0, 1);
    double *norm2 = inner_table(stages, n_2, h, w, wp, inner, sd2, scales, 1.0, 0);
    double *inv2 = inner_table(stages, n_2, h, w, wp, inner, sd2, scales, 1.0, 1);
    double *pin = pins != NULL ? inner_table(stages, n_1, h, w, wp, inner, pins, NULL, 0.0, 0) : NULL;
    if (size > MAX_TAPS || work == NULL || planes == NULL || norm1 == NULL || inv1 == NULL || norm2 == NULL
        || inv2 == NULL || (pins != NULL && pin == NULL)) {
        free(work); free(planes); free(norm1); free(inv1); free(norm2); free(inv2); free(pin);
        return -1;
    }
    double *buf = work, *cov = work + flat, *theta = cov + inner;
    double *plane_k[3] = {planes, planes + 2 * pair, planes + 4 * pair};
    double *plane_t[3] = {planes + pair, planes + 3 * pair, planes + 5 * pair};
    /* blocks of PAIR_BLOCK x PAIR_BLOCK pairs, so that their examples' tables of every step stay in L2 */
    for (int64_t ij = 0; ij < n_1 * n_2; ij++) {
        const int64_t i0 = ij / n_2 / PAIR_BLOCK * PAIR_BLOCK;  /* the block of rows, then within it */
        const int64_t rows = n_1 - i0 < PAIR_BLOCK ? n_1 - i0 : PAIR_BLOCK, within = ij - i0 * n_2;
        const int64_t j0 = within / (rows * PAIR_BLOCK) * PAIR_BLOCK;
        const int64_t cols = n_2 - j0 < PAIR_BLOCK ? n_2 - j0 : PAIR_BLOCK, at_block = within - j0 * rows;
        const int64_t i = i0 + at_block / cols, j = j0 + at_block % cols;
        if (pin != NULL && j < i) continue;  /* copied from pair (j, i) below */
        const int64_t base = (i * n_2 + j) * pair;
        const double *src_k = kin + base, *src_t = tin != NULL ? tin + base : NULL;
        if (img != NULL) {  /* the input plane from the two zero-padded images (its border comes out zero) */
            const double *a = img->x1 + i * img->channels * pair, *b = img->x2 + j * img->channels * pair;
            double *plane = plane_k[2];
            for (int64_t q = 0; q < pair; q++) plane[q] = a[q] * b[q];
            for (int64_t ch = 1; ch < img->channels; ch++)
                for (int64_t q = 0; q < pair; q++) plane[q] += a[ch * pair + q] * b[ch * pair + q];
            if (img->channels > 1)
                for (int64_t q = 0; q < pair; q++) plane[q] /= (double)img->channels;
            if (img->pins != NULL && i == j)  /* pair (i, i) of a symmetric tile: its self-covariances */
                for (int64_t r = 0; r < h; r++)
                    memcpy(plane + (r + p) * wp + p, img->pins + (i * h + r) * w, (size_t)w * sizeof(double));
            src_k = plane;
        } else if (!bordered) {  /* the pair's positions into the interior of the scratch planes 2 (border: zero) */
            const int64_t at = (i * n_2 + j) * h * w;
            for (int64_t r = 0; r < h; r++) {
                memcpy(plane_k[2] + (r + p) * wp + p, kin + at + r * w, (size_t)w * sizeof(double));
                if (tin != NULL)
                    memcpy(plane_t[2] + (r + p) * wp + p, tin + at + r * w, (size_t)w * sizeof(double));
            }
            src_k = plane_k[2];
            src_t = tin != NULL ? plane_t[2] : NULL;
        }
        for (int64_t s = 0; s < stages; s++) {
            const double *par = params + 5 * s;
            relu_step st = {par[0], par[1], (par[3] - par[2]) * (par[3] - par[2]), par[2] * par[3], eps};
            diagonal_taps(src_k, size, wp, flat, inner, buf, cov);
            if (src_t != NULL) diagonal_taps(src_t, size, wp, flat, inner, buf, theta);
            const int64_t at1 = (s * n_1 + i) * inner, at2 = (s * n_2 + j) * inner;
            /* the last step writes the output (unless only its mean is kept), the others a plane not read now */
            const int last = s == stages - 1 && !mean;
            double *dst_k = last ? kout + base : plane_k[s % 2];
            double *dst_t = tout == NULL ? NULL : (last ? tout + base : plane_t[s % 2]);
            activation_row(inner, cov, src_t != NULL ? theta : NULL, norm1 + at1, norm2 + at2, inv1 + at1,
                           inv2 + at2, 0, valid, dst_k + out_offset, dst_t != NULL ? dst_t + out_offset : NULL, st);
            if (pin != NULL && i == j) memcpy(dst_k + out_offset, pin + at1, (size_t)inner * sizeof(double));
            src_k = dst_k;
            src_t = dst_t;
        }
        for (int pass = 0; pass < (tout != NULL ? 2 : 1); pass++) {
            const double *plane = pass ? src_t : src_k;  /* the last step's output */
            double *out = pass ? tout : kout;
            if (mean) {
                double total = 0.0;
                for (int64_t r = 0; r < h; r++)
                    for (int64_t c = 0; c < w; c++) total += plane[out_offset + r * wp + c];
                out[i * n_2 + j] = total / (double)(h * w);
            } else {  /* the border before and after */
                memset(out + base, 0, (size_t)out_offset * sizeof(double));
                memset(out + base + out_offset + inner, 0, (size_t)(pair - out_offset - inner) * sizeof(double));
            }
        }
    }
    const int64_t copied = mean ? 1 : pair;  /* doubles per pair of the output */
    if (pin != NULL)
        for (int64_t i = 1; i < n_1; i++)
            for (int64_t j = 0; j < i; j++)
                for (int pass = 0; pass < (tout != NULL ? 2 : 1); pass++) {
                    double *out = pass ? tout : kout;
                    memcpy(out + (i * n_2 + j) * copied, out + (j * n_2 + i) * copied, (size_t)copied * sizeof(double));
                }
    free(work); free(planes); free(norm1); free(inv1); free(norm2); free(inv2); free(pin);
    return 0;
}

int conv_relu_diagonal(int64_t stages, int64_t n_1, int64_t n_2, int64_t h, int64_t w, int64_t size,
                       const double *kin, const double *tin, int64_t bordered, double *kout, double *tout,
                       const double *sd1, const double *sd2, const double *pins, const double *valid,
                       const double *params, double eps, int64_t mean)
{
    return diagonal_run(stages, n_1, n_2, h, w, size, kin, tin, bordered, kout, tout, sd1, sd2, pins, valid, params,
                        eps, mean, NULL);
}

/* conv_relu_diagonal on the same-position input kernel of images x1 (n_1, channels, hp, wp) and x2 (n_2,
 * channels, hp, wp), zero-padded and contiguous, without an input NTK: each pair's input plane is the channel mean
 * of the products of its two images (one channel: the products), made in L1 and never stored; input (n_1, h, w)
 * or NULL: the self-covariances that pair (i, i) of a symmetric tile takes instead (as the input kernel pins). */
int conv_relu_diagonal_images(int64_t stages, int64_t n_1, int64_t n_2, int64_t h, int64_t w, int64_t size,
                              const double *x1, const double *x2, int64_t channels, const double *input,
                              double *kout, double *tout, const double *sd1, const double *sd2, const double *pins,
                              const double *valid, const double *params, double eps, int64_t mean)
{
    const image_pairs img = {x1, x2, input, channels};
    return diagonal_run(stages, n_1, n_2, h, w, size, NULL, NULL, 1, kout, tout, sd1, sd2, pins, valid, params, eps,
                        mean, &img);
}

/* Non-overlapping pooling in the full layout (window kh x kw = stride, no padding; AvgPool and SumPool of
 * infinet/engine/layers/pooling.py): out[a, b, o1, q1, o2, q2] = (sum over the window taps of both members) /
 * divisor, out (na, nb, oh, ow, oh, ow) contiguous; in read through element strides (sa, sb, s_h1, s_w1, s_h2, 1)
 * (an interior view of a bordered buffer, say). The sums are the layers' own, in their order: over the taps of h1
 * first (left to right), then of h2, then of w1, then of w2, each adding whole partial sums (the torch loop sums
 * one axis of the whole tensor at a time). Returns -1 when its row buffers cannot be allocated. */
int pool_full(int64_t na, int64_t nb, int64_t sa, int64_t sb, int64_t s_h1, int64_t s_w1, int64_t s_h2, int64_t kh,
              int64_t kw, int64_t oh, int64_t ow, const double *in, double *out, double divisor)
{
    const int64_t n = kw * ow;  /* the w2 positions a row of outputs reads */
    double *rows = malloc((size_t)(3 * (n > 0 ? n : 1)) * sizeof(double));
    if (rows == NULL) return -1;
    double *sum_h1 = rows, *sum_h2 = rows + n, *sum_w1 = rows + 2 * n;
    for (int64_t a = 0; a < na; a++)
        for (int64_t b = 0; b < nb; b++)
            for (int64_t o1 = 0; o1 < oh; o1++)
                for (int64_t q1 = 0; q1 < ow; q1++)
                    for (int64_t o2 = 0; o2 < oh; o2++) {
                        for (int64_t t3 = 0; t3 < kw; t3++) {      /* w1 taps */
                            for (int64_t t2 = 0; t2 < kh; t2++) {  /* h2 taps */
                                const double *x = in + a * sa + b * sb + (kh * o1) * s_h1 + (kw * q1 + t3) * s_w1
                                                  + (kh * o2 + t2) * s_h2;
                                for (int64_t f = 0; f < n; f++) sum_h1[f] = x[f];
                                for (int64_t t1 = 1; t1 < kh; t1++) {  /* h1 taps */
                                    const double *y = x + t1 * s_h1;
                                    for (int64_t f = 0; f < n; f++) sum_h1[f] += y[f];
                                }
                                if (t2 == 0)
                                    for (int64_t f = 0; f < n; f++) sum_h2[f] = sum_h1[f];
                                else
                                    for (int64_t f = 0; f < n; f++) sum_h2[f] += sum_h1[f];
                            }
                            if (t3 == 0)
                                for (int64_t f = 0; f < n; f++) sum_w1[f] = sum_h2[f];
                            else
                                for (int64_t f = 0; f < n; f++) sum_w1[f] += sum_h2[f];
                        }
                        double *dst = out + ((((a * nb + b) * oh + o1) * ow + q1) * oh + o2) * ow;
                        for (int64_t q2 = 0; q2 < ow; q2++) {  /* w2 taps */
                            double total = sum_w1[kw * q2];
                            for (int64_t t4 = 1; t4 < kw; t4++) total += sum_w1[kw * q2 + t4];
                            dst[q2] = total / divisor;
                        }
                    }
    free(rows);
    return 0;
}
