/* Compiled CPU loops of infinet (see infinet/engine/native.py, which compiles this file on first use with the
 * machine's C compiler and loads it with ctypes; without a compiler the same steps run in TorchScript).
 *
 * clenshaw_eval: the interpolant of infinet/engine/variance_interpolation.py at every entry of a batch of
 * (rows, cols) matrices. Each function f is f = E(y) + x O(y) with y = 2 x^2 - 1, and each part (E or O) a
 * Chebyshev series sum_k A_k T_k(y) whose coefficient A_k at entry (i, j) is the rank-R_k product
 * sum_r L[i, s_k + r] C[s_k + r, j] (L: the row factors, C: the column factors, transposed). Clenshaw's
 * recurrence (Clenshaw 1955; Mason and Handscomb 2003, sec. 2.4.1):
 *     b_k = A_k + 2 y b_{k+1} - b_{k+2},   sum = A_0 + y b_1 - b_2.
 * The loop runs over tiles of RB rows x CW columns held in vector registers. Both factors are laid out once
 * per matrix: the column factors of each strip of CW columns contiguous and zero-padded, the row factors of
 * each row tile interleaved so that each rank term is one broadcast per row. Row tiles go in groups of
 * TILE_GROUP, whose factors stay in L2 while every column strip passes over them (one pass over all rows per
 * strip read them from L3: 1.7x slower on 1024 x 1024 matrices), and the 2 y factor is formed once per
 * tile. Partial tiles are
 * padded with zeros and go through the same code, so every entry's value is the same sequence of operations
 * wherever it sits (identical inputs give identical bits in any tile).
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define RB 4                /* rows per tile */
#define NV 2                /* vectors per row of a tile */
#define VW 8                /* doubles per vector */
#define CW (NV * VW)        /* columns per tile */
#define MAX_FUNCTIONS 8
#define MAX_TAPS 64         /* the largest filter size of the convolution loops */
#define TILE_GROUP 64       /* row tiles per pass over the column strips (256 rows: their factors fit L2) */

typedef double vec __attribute__((vector_size(VW * sizeof(double))));

/* One tile: x in xs (RB x CW), row factors interleaved lr[f][r * RB + a], column strip cs[f][r * CW + c]. */
static void tile(int64_t nf, double *const *lr, double *const *cs, const int64_t *nterms, const int64_t *spans,
                 const vec xs[RB][NV], vec res[][RB][NV])
{
    const int64_t *sp = spans;
    vec y2[RB][NV];  /* 2 y = 2 (2 x^2 - 1), the recurrence's factor, once per tile */
    for (int a = 0; a < RB; a++)
        for (int v = 0; v < NV; v++) y2[a][v] = 2.0 * (2.0 * xs[a][v] * xs[a][v] - 1.0);
    for (int64_t f = 0; f < nf; f++) {
        vec acc[RB][NV];
        for (int a = 0; a < RB; a++)
            for (int v = 0; v < NV; v++) acc[a][v] = (vec){0};
        const double *l = lr[f], *c = cs[f];
        for (int part = 0; part < 2; part++) {  /* 0: E(y), 1: x O(y) */
            int64_t terms = nterms[2 * f + part];
            const int64_t *s = sp;
            sp += 2 * terms;
            if (terms == 0) continue;
            vec b1[RB][NV], b2[RB][NV];  /* b_{k+1}, b_{k+2}; b2 receives b_k */
            for (int a = 0; a < RB; a++)
                for (int v = 0; v < NV; v++) { b1[a][v] = (vec){0}; b2[a][v] = (vec){0}; }
            for (int64_t k = terms - 1; k >= 0; k--) {
                double half = k > 0 ? 1.0 : 0.5;  /* 2y in the recurrence, y (exactly) in the last step */
                for (int a = 0; a < RB; a++)
                    for (int v = 0; v < NV; v++) b2[a][v] = (half * y2[a][v]) * b1[a][v] - b2[a][v];
                for (int64_t r = s[2 * k]; r < s[2 * k + 1]; r++) {
                    vec col[NV];
                    for (int v = 0; v < NV; v++) memcpy(&col[v], c + r * CW + v * VW, sizeof(vec));
                    for (int a = 0; a < RB; a++) {
                        double row = l[r * RB + a];
                        for (int v = 0; v < NV; v++) b2[a][v] = row * col[v] + b2[a][v];
                    }
                }
                for (int a = 0; a < RB; a++)
                    for (int v = 0; v < NV; v++) { vec t = b1[a][v]; b1[a][v] = b2[a][v]; b2[a][v] = t; }
            }
            for (int a = 0; a < RB; a++)
                for (int v = 0; v < NV; v++)
                    acc[a][v] = part ? xs[a][v] * b1[a][v] + acc[a][v] : acc[a][v] + b1[a][v];
        }
        for (int a = 0; a < RB; a++)
            for (int v = 0; v < NV; v++) res[f][a][v] = acc[a][v];
    }
}

/* outs[f]: (nb, nr, nc) contiguous, outs[0] holding x on entry; lrow[f]: (nb, nr, rtot[f]); lcolt[f]:
 * (nb, rtot[f], nc); nterms[2 f + part]: terms of part (0 even, 1 odd) of function f; spans: for every
 * function, part and term in that order, the (start, end) of its rank columns. Returns 0, or -1 when memory
 * for the tile buffers cannot be had (nothing written then). */
int clenshaw_eval(int64_t nb, int64_t nr, int64_t nc, int64_t nf, double *const *outs, const double *const *lrow,
                  const double *const *lcolt, const int64_t *rtot, const int64_t *nterms, const int64_t *spans)
{
    if (nf < 1 || nf > MAX_FUNCTIONS) return -1;
    double *strips[MAX_FUNCTIONS] = {0}, *rows[MAX_FUNCTIONS] = {0};
    int64_t ntiles = (nr + RB - 1) / RB, nstrips = (nc + CW - 1) / CW;
    int failed = 0;
    for (int64_t f = 0; f < nf; f++) {
        size_t n = (size_t)(rtot[f] > 0 ? rtot[f] : 1);
        strips[f] = aligned_alloc(64, (size_t)nstrips * n * CW * sizeof(double));
        rows[f] = aligned_alloc(64, (size_t)ntiles * n * RB * sizeof(double));
        failed |= strips[f] == NULL || rows[f] == NULL;
    }
    if (!failed) {
        vec xs[RB][NV], res[MAX_FUNCTIONS][RB][NV];
        double *xd = (double *)xs;
        double *tile_rows[MAX_FUNCTIONS], *strip[MAX_FUNCTIONS];
        for (int64_t b = 0; b < nb; b++) {
            /* the factors laid out once per matrix, zero-padded: every row tile's interleaved,
             * rows[f][(t * rtot + r) * RB + a], and every column strip's contiguous, strips[f][(j * rtot + r) * CW + c] */
            for (int64_t f = 0; f < nf; f++) {
                for (int64_t t = 0; t < ntiles; t++) {
                    const double *src = lrow[f] + (b * nr + t * RB) * rtot[f];
                    double *d = rows[f] + t * rtot[f] * RB;
                    int64_t m = nr - t * RB < RB ? nr - t * RB : RB;
                    for (int64_t a = 0; a < RB; a++)
                        for (int64_t r = 0; r < rtot[f]; r++) d[r * RB + a] = a < m ? src[a * rtot[f] + r] : 0.0;
                }
                for (int64_t j = 0; j < nstrips; j++) {
                    int64_t n = nc - j * CW < CW ? nc - j * CW : CW;
                    const double *src = lcolt[f] + (b * rtot[f]) * nc + j * CW;
                    for (int64_t r = 0; r < rtot[f]; r++) {
                        double *d = strips[f] + (j * rtot[f] + r) * CW;
                        memcpy(d, src + r * nc, (size_t)n * sizeof(double));
                        memset(d + n, 0, (size_t)(CW - n) * sizeof(double));
                    }
                }
            }
            /* row tiles in groups whose factors stay in L2 while every column strip passes over them */
            for (int64_t t0 = 0; t0 < ntiles; t0 += TILE_GROUP)
                for (int64_t j = 0; j < nstrips; j++) {
                    int64_t j0 = j * CW, n = nc - j0 < CW ? nc - j0 : CW;
                    for (int64_t f = 0; f < nf; f++) strip[f] = strips[f] + j * rtot[f] * CW;
                    for (int64_t t = t0; t < ntiles && t < t0 + TILE_GROUP; t++) {
                        int64_t i0 = t * RB, m = nr - i0 < RB ? nr - i0 : RB;
                        memset(xd, 0, sizeof(xs));
                        for (int64_t a = 0; a < m; a++)
                            memcpy(xd + a * CW, outs[0] + (b * nr + i0 + a) * nc + j0, (size_t)n * sizeof(double));
                        for (int64_t f = 0; f < nf; f++) tile_rows[f] = rows[f] + t * rtot[f] * RB;
                        tile(nf, tile_rows, strip, nterms, spans, (const vec(*)[NV])xs, res);
                        for (int64_t f = 0; f < nf; f++) {
                            const double *rd = (const double *)res[f];
                            for (int64_t a = 0; a < m; a++)
                                memcpy(outs[f] + (b * nr + i0 + a) * nc + j0, rd + a * CW, (size_t)n * sizeof(double));
                        }
                    }
                }
        }
    }
    for (int64_t f = 0; f < nf; f++) { free(strips[f]); free(rows[f]); }
    return failed ? -1 : 0;
}

/* ------------------------------------------------------------------------------------------------------------
 * The arc-cosine, branch-free so that loops over it vectorize: asin(s) = s + s z P(z), z = s^2, on |s| <= 1/2,
 * P(z) = (asin(sqrt z) / sqrt z - 1) / z as a degree-14 polynomial fitted at Chebyshev points of [0, 1/4]
 * (tests/data/acos_polynomial.py; relative error 2e-16 in P, so about 1e-17 in s z P), and
 *     acos(x) = pi/2 - asin(x)                        for |x| <= 1/2,
 *     acos(x) = 2 asin(sqrt((1 - x) / 2))             for x > 1/2,
 *     acos(x) = pi - 2 asin(sqrt((1 + x) / 2))        for x < -1/2
 * (the half-angle identities; 1 - |x| is exact there). */
static const double ASIN_P[15] = {
    0.16666666666666666, 0.0749999999999999, 0.04464285714288483, 0.030381944441216887, 0.022372159287575737,
    0.017352757223830194, 0.013965015221404711, 0.011549011895900822, 0.009793486386035298, 0.00813073858378954,
    0.008819738782820177, 0.00029837978129833786, 0.022733346235747326, -0.024251252161814167,
    0.030850913031892038};
static const double HALF_PI = 1.5707963267948966, PI = 3.141592653589793;

static inline double asin_small(double s)
{
    /* P(z) by Estrin's scheme (pairs, then powers z^2, z^4, z^8): a dependency chain of 5 steps instead of 14 */
    const double *c = ASIN_P;
    double z = s * s, z2 = z * z, z4 = z2 * z2, z8 = z4 * z4;
    double r0 = (c[0] + c[1] * z) + (c[2] + c[3] * z) * z2, r1 = (c[4] + c[5] * z) + (c[6] + c[7] * z) * z2;
    double r2 = (c[8] + c[9] * z) + (c[10] + c[11] * z) * z2, r3 = (c[12] + c[13] * z) + c[14] * z2;
    double p = (r0 + r1 * z4) + (r2 + r3 * z4) * z8;
    return s + s * z * p;
}

/* R(z) = (sqrt(1 - z) - 1) / z on [0, 1/4], degree 14 (tests/data/acos_polynomial.py; relative error 2e-16). */
static const double SQRT1M_P[15] = {
    -0.5, -0.1249999999999999, -0.06250000000002927, -0.03906249999658816, -0.027343750207903684,
    -0.020507804889059737, -0.0161134625368131, -0.013089092178226442, -0.010943740516805222, -0.008999006358373503,
    -0.00960302565247834, -0.0005035772405896988, -0.024179171040594173, 0.02558875764897536, -0.0327253850689262};

/* sqrt(1 - z) = 1 + z R(z) for z in [0, 1/4], by Estrin's scheme. */
static inline double sqrt_one_minus(double z)
{
    const double *c = SQRT1M_P;
    double z2 = z * z, z4 = z2 * z2, z8 = z4 * z4;
    double r0 = (c[0] + c[1] * z) + (c[2] + c[3] * z) * z2, r1 = (c[4] + c[5] * z) + (c[6] + c[7] * z) * z2;
    double r2 = (c[8] + c[9] * z) + (c[10] + c[11] * z) * z2, r3 = (c[12] + c[13] * z) + c[14] * z2;
    return 1.0 + z * ((r0 + r1 * z4) + (r2 + r3 * z4) * z8);
}

/* acos(r) and sin(acos(r)) = sqrt(1 - r^2) together, with one square root: with s = sqrt((1 - |r|) / 2) where
 * |r| > 1/2, acos as in acos_branchless and sqrt(1 - r^2) = 2 s sqrt(1 - s^2) (1 - r^2 = 4 s^2 (1 - s^2));
 * below, sqrt(1 - r^2) from its polynomial in r^2. Both exact at r = +-1 (s = 0). */
static inline void acos_and_sine(double r, double *angle, double *sine)
{
    double ar = r < 0 ? -r : r, half = 0.5 * (1.0 - ar), s = __builtin_sqrt(half);
    int big = ar > 0.5;
    double a = asin_small(big ? s : r), root = sqrt_one_minus(big ? half : r * r);
    *angle = big ? (r < 0 ? PI - 2.0 * a : 2.0 * a) : HALF_PI - a;
    *sine = big ? 2.0 * s * root : root;
}

/* acos(x) and sqrt(1 - x^2) of n values, by acos_and_sine (for tests). */
void acos_sine_values(int64_t n, const double *x, double *angle, double *sine)
{
    for (int64_t i = 0; i < n; i++) acos_and_sine(x[i], angle + i, sine + i);
}

static inline double acos_branchless(double x)
{
    double ax = x < 0 ? -x : x;
    int big = ax > 0.5;
    double s = big ? __builtin_sqrt(0.5 * (1.0 - ax)) : x;
    double a = asin_small(s);
    double far = x < 0 ? PI - 2.0 * a : 2.0 * a;
    return big ? far : HALF_PI - a;
}

/* asin on [-1, 1], branch-free: asin_small on |x| <= 1/2, pi/2 - 2 asin(sqrt((1 - |x|) / 2)) above, the sign
 * restored. */
static inline double asin_branchless(double x)
{
    double ax = x < 0 ? -x : x;
    int big = ax > 0.5;
    double s = big ? __builtin_sqrt(0.5 * (1.0 - ax)) : x;
    double a = asin_small(s);
    double far = HALF_PI - 2.0 * a;
    return big ? (x < 0 ? -far : far) : a;
}

/* The interpolant's variable at every entry of nb matrices (nr, nc): x = (2 / pi) asin(rho), rho = cov / (sdr sdc)
 * clamped to [-1, 1] (sdr pushed up 4 ulps by the caller: rounding never hides rho = 1), formed as
 * cov (1 / sdr) (1 / sdc) (a product instead of a division; the push covers the reciprocals' 2 ulps). One pass,
 * vectorized along the columns, in place of five tensor passes. Returns -1 when its buffer cannot be had. */
int interpolation_x(int64_t nb, int64_t nr, int64_t nc, const double *cov, const double *sdr, const double *sdc,
                    double *restrict x)
{
    double *inv = malloc((size_t)(nc > 0 ? nc : 1) * sizeof(double));
    if (inv == NULL) return -1;
    for (int64_t b = 0; b < nb; b++) {
        for (int64_t j = 0; j < nc; j++) inv[j] = 1.0 / sdc[b * nc + j];
        for (int64_t i = 0; i < nr; i++) {
            const double *restrict cv = cov + (b * nr + i) * nc, *restrict ic = inv;
            double *restrict xi = x + (b * nr + i) * nc, ir = 1.0 / sdr[b * nr + i];
            for (int64_t j = 0; j < nc; j++) {
                double r = cv[j] * ir * ic[j];
                r = r < -1.0 ? -1.0 : (r > 1.0 ? 1.0 : r);
                xi[j] = (2.0 / PI) * asin_branchless(r);
            }
        }
    }
    free(inv);
    return 0;
}

/* acos of n values (for tests). */
void acos_values(int64_t n, const double *x, double *out)
{
    for (int64_t i = 0; i < n; i++) out[i] = acos_branchless(x[i]);
}

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

/* The taps along H for one output row h1 of a padded pair (hp, wp, hp, wp): buf[w1 * flat + f] = sum over u of
 * slab[u][w1, f + u wp] (h1 and h2 move together), f < flat = h wp, in tap order; slab[u] the padded (wp, hp, wp)
 * slab of row h1 + u. */
static void taps_h(const double *const *slab, int64_t size, int64_t s1, int64_t wp, int64_t flat, double *buf)
{
    for (int64_t w1 = 0; w1 < wp; w1++) {
        double *dst = buf + w1 * flat;
        const double *row = slab[0] + w1 * s1;
        if (size == 3) {  /* the three taps in one pass: the same additions in the same order */
            const double *a = slab[1] + w1 * s1 + wp, *b = slab[2] + w1 * s1 + 2 * wp;
            for (int64_t f = 0; f < flat; f++) dst[f] = (row[f] + a[f]) + b[f];
            continue;
        }
        for (int64_t f = 0; f < flat; f++) dst[f] = row[f];
        for (int64_t u = 1; u < size; u++) {
            const double *shifted = slab[u] + w1 * s1 + u * wp;
            for (int64_t f = 0; f < flat; f++) dst[f] += shifted[f];
        }
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
    const double *first = buf + w1 * flat;
    if (size == 3) {  /* the three taps in one pass: the same additions in the same order */
        const double *a = buf + (w1 + 1) * flat + 1, *b = buf + (w1 + 2) * flat + 2;
        for (int64_t g = 0; g < inner; g++) dst[g] = (first[g] + a[g]) + b[g];
        return;
    }
    for (int64_t g = 0; g < inner; g++) dst[g] = first[g];
    for (int64_t t = 1; t < size; t++) {
        const double *shifted = buf + (w1 + t) * flat + t;
        for (int64_t g = 0; g < inner; g++) dst[g] += shifted[g];
    }
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
    if (work == NULL || inv1 == NULL || inv2 == NULL) {
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
                if (size == 3) {  /* the three taps in one pass each: the same additions in the same order */
                    for (int64_t f = 0; f < flat; f++) buf[f] = (src[f] + src[f + wp]) + src[f + 2 * wp];
                    for (int64_t g = 0; g < inner; g++) dst[g] = (buf[g] + buf[g + 1]) + buf[g + 2];
                    continue;
                }
                for (int64_t f = 0; f < flat; f++) buf[f] = src[f];
                for (int64_t u = 1; u < size; u++)
                    for (int64_t f = 0; f < flat; f++) buf[f] += src[f + u * wp];
                for (int64_t g = 0; g < inner; g++) dst[g] = buf[g];
                for (int64_t t = 1; t < size; t++)
                    for (int64_t g = 0; g < inner; g++) dst[g] += buf[g + t];
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

/* ------------------------------------------------------------------------------------------------------------
 * Closed-form activations on every entry of a tile, as in infinet/engine/closed_forms.py (the same formulas in
 * the same overflow-free forms; callers send only positive variances whose products are safe to form and, for
 * Erf, finite 2 b^2 var):
 *   kind 0, ABRelu (a, b): with rho = clamp((1 + 4 eps) cov / sqrt(v1 v2)) and angle = pi - acos(rho),
 *     nngp = (b - a)^2 sqrt(v1 v2) (sqrt(1 - rho^2) + angle rho) / (2 pi) + a b cov,
 *     kdot = (b - a)^2 angle / (2 pi) + a^2 + a (b - a)                    (Cho and Saul 2009, eq. 6);
 *   kind 1, Erf a erf(b x) + c: with e_i = 1 / (1 + 2 b^2 v_i), cov' = rho sqrt(v1 v2),
 *     r = 2 b^2 cov' sqrt(e1 e2), root = sqrt((1 - rho)(1 + rho) + rho^2 (e1 + e2 - e1 e2)),
 *     nngp = a^2 (2 / pi) atan2(r, root) + c^2,  kdot = a^2 b^2 (4 / pi) sqrt(e1 e2) / root   (Williams 1997);
 *   kind 2, GELU x Phi(x): with e_i = 1 / (1 + v_i), r = cov' sqrt(e1 e2), delta = root / sqrt(e1 e2),
 *     A = atan2(r, root), ratio = v1 e1 v2 e2,
 *     nngp = cov' / 4 + (cov' A + r^2 / delta + ratio delta) / (2 pi),
 *     kdot = 1/4 + A / (2 pi) + (cov' / delta) (1 / delta^2 + e1 e2 - ratio + 1) / (2 pi)  (Tsuchida et al. 2021).
 * The second output is kdot, or kdot x ntk when an NTK is given (Jacot et al. 2018).
 * ------------------------------------------------------------------------------------------------------------ */
/* atan2(y, x) for x >= 0 and y^2 + x^2 = 1 up to rounding: asin of the smaller of the two, so that the
 * argument is at most 1/sqrt(2) and its error is not amplified. */
static inline double atan2_unit(double y, double x)
{
    double ay = y < 0 ? -y : y;
    double small = asin_branchless(y);
    double other = HALF_PI - asin_branchless(x);
    return ay <= x ? small : (y < 0 ? -other : other);
}

/* shape: 4 sizes; cov, ntk (or NULL), out_nngp, out_second (or NULL): contiguous over shape; var1, var2 with
 * strides s1, s2 (4 each, in elements; 0 where the variance does not vary). */
int closed_form_pairs(int64_t kind, const int64_t *shape, const double *cov, const double *ntk, const double *var1,
                      const int64_t *s1, const double *var2, const int64_t *s2, double *out_nngp,
                      double *out_second, double a, double b, double c, double eps)
{
    const int64_t n3 = shape[3];
    double *row = malloc((size_t)(2 * (n3 > 0 ? n3 : 1)) * sizeof(double));
    if (row == NULL) return -1;
    double *r1 = row, *r2 = row + n3;
    const double inv_2pi = 1.0 / (2.0 * PI), c2 = inv_2pi * inv_2pi, up = 1.0 + 4.0 * eps;
    const double slope = (b - a) * (b - a), ab = a * b, kdot_shift = a * a + a * (b - a);
    const double b2 = b * b, erf_scale = a * a * (2.0 / PI), erf_kdot = a * a * b2 * (4.0 / PI), erf_c = c * c;
    int64_t at = 0;
    for (int64_t i0 = 0; i0 < shape[0]; i0++)
        for (int64_t i1 = 0; i1 < shape[1]; i1++)
            for (int64_t i2 = 0; i2 < shape[2]; i2++, at += n3) {
                const double *p1 = var1 + i0 * s1[0] + i1 * s1[1] + i2 * s1[2];
                const double *p2 = var2 + i0 * s2[0] + i1 * s2[1] + i2 * s2[2];
                for (int64_t g = 0; g < n3; g++) { r1[g] = p1[g * s1[3]]; r2[g] = p2[g * s2[3]]; }
                const double *cv = cov + at, *th = ntk != NULL ? ntk + at : NULL;
                double *on = out_nngp + at, *os = out_second != NULL ? out_second + at : NULL;
                if (kind == 0) {
                    for (int64_t g = 0; g < n3; g++) {
                        double norm = __builtin_sqrt(r1[g] * r2[g]);
                        double rho = cv[g] / norm * up;
                        rho = rho < -1.0 ? -1.0 : (rho > 1.0 ? 1.0 : rho);
                        double angle = acos_branchless(-rho);
                        double relu = (__builtin_sqrt(c2 - c2 * rho * rho) + inv_2pi * angle * rho) * norm;
                        on[g] = slope * relu + ab * cv[g];
                        if (os != NULL) {
                            double kdot = slope * (angle * inv_2pi) + kdot_shift;
                            os[g] = th != NULL ? kdot * th[g] : kdot;
                        }
                    }
                } else {
                    const double gain = kind == 1 ? 2.0 * b2 : 1.0;
                    for (int64_t g = 0; g < n3; g++) {
                        double norm = __builtin_sqrt(r1[g] * r2[g]);
                        double rho = cv[g] / norm * up;
                        rho = rho < -1.0 ? -1.0 : (rho > 1.0 ? 1.0 : rho);
                        double cb = rho * norm;
                        double e1 = 1.0 / (1.0 + gain * r1[g]), e2 = 1.0 / (1.0 + gain * r2[g]);
                        double root_e = __builtin_sqrt(e1) * __builtin_sqrt(e2);
                        double r = cb * __builtin_sqrt(e1) * __builtin_sqrt(e2) * gain;
                        r = r < -1.0 ? -1.0 : (r > 1.0 ? 1.0 : r);
                        double q = (1.0 - rho) * (1.0 + rho) + rho * rho * (e1 + e2 - e1 * e2);
                        double root = __builtin_sqrt(q > 0.0 ? q : 0.0);
                        double angle = atan2_unit(r, root);
                        double kdot;
                        if (kind == 1) {
                            on[g] = erf_scale * angle + erf_c;
                            kdot = erf_kdot * root_e / root;
                        } else {
                            double delta = root / root_e, ratio = (r1[g] * e1) * (r2[g] * e2);
                            on[g] = 0.25 * cb + (cb * angle + r * r / delta + ratio * delta) * inv_2pi;
                            kdot = 0.25 + angle * inv_2pi
                                   + (cb / delta) * (1.0 / (delta * delta) + e1 * e2 - ratio + 1.0) * inv_2pi;
                        }
                        if (os != NULL) os[g] = th != NULL ? kdot * th[g] : kdot;
                    }
                }
            }
    free(row);
    return 0;
}

/* atan2_unit of n pairs (for tests). */
void atan2_unit_values(int64_t n, const double *y, const double *x, double *out)
{
    for (int64_t i = 0; i < n; i++) out[i] = atan2_unit(y[i], x[i]);
}
