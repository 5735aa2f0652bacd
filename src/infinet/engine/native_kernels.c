/* Compiled CPU loops of infinet (see infinet/engine/native.py, which compiles this file with native_conv.c on first
 * use with the machine's C compiler and loads it with ctypes; without a compiler the same steps run in
 * TorchScript).
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

#include "native_math.h"

#define RB 4                /* rows per tile */
#define NV 2                /* vectors per row of a tile */
#define VW 8                /* doubles per vector */
#define CW (NV * VW)        /* columns per tile */
#define MAX_FUNCTIONS 8
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

/* acos(x) and sqrt(1 - x^2) of n values, by acos_and_sine (for tests). */
void acos_sine_values(int64_t n, const double *x, double *angle, double *sine)
{
    for (int64_t i = 0; i < n; i++) acos_and_sine(x[i], angle + i, sine + i);
}

/* ------------------------------------------------------------------------------------------------------------
 * Closed-form activations on every entry of a tile, as in infinet/engine/closed_forms.py (the same formulas in
 * the same overflow-free forms; callers send only positive variances whose products are safe to form and, for
 * Erf, finite 2 b^2 var):
 *   kind 0, ABRelu (a, b): with rho = clamp((1 + 4 eps) cov / (sqrt(v1) sqrt(v2))) and angle = pi - acos(rho),
 *     nngp = (b - a)^2 sqrt(v1) sqrt(v2) (sqrt(1 - rho^2) + angle rho) / (2 pi) + a b cov,
 *     kdot = (b - a)^2 angle / (2 pi) + a^2 + a (b - a)                    (Cho and Saul 2009, eq. 6);
 *   kind 1, Erf a erf(b x) + c: with e_i = 1 / (1 + 2 b^2 v_i), cov' = rho sqrt(v1 v2),
 *     r = 2 b^2 cov' sqrt(e1 e2), root = sqrt((1 - rho)(1 + rho) + rho^2 (e1 + e2 - e1 e2)),
 *     nngp = a^2 (2 / pi) atan2(r, root) + c^2,  kdot = a^2 b^2 (4 / pi) sqrt(e1 e2) / root   (Williams 1997);
 *   kind 2, GELU x Phi(x): with e_i = 1 / (1 + v_i), r = cov' sqrt(e1 e2), delta = root / sqrt(e1 e2),
 *     A = atan2(r, root), ratio = v1 e1 v2 e2,
 *     nngp = cov' / 4 + (cov' A + r^2 / delta + ratio delta) / (2 pi),
 *     kdot = 1/4 + A / (2 pi) + (cov' / delta) (1 / delta^2 + e1 + e2) / (2 pi)  (Tsuchida et al. 2021).
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

/* A Dense layer on one row of n entries (infinet/engine/dense_fusion.py): cov' = w2 cov + b2 and ntk' = p cov +
 * q cov' + w2 ntk + r, with aff = (w2, b2, p, q, r) (Dense's kernel transform: 'ntk' parameterization p = 0, q = 1,
 * r = 0; 'standard' p = fan-in, q = 0, r = 1 with a bias; frozen p = q = r = 0). theta NULL: the NNGP alone.
 * Without contraction, w2 cov + b2 rounds as the variances' w2 v + b2 do in torch: identical inputs keep
 * cov' = v' exactly. */
#if defined(__GNUC__) && !defined(__clang__)
__attribute__((optimize("fp-contract=off")))
#endif
static void affine_row(int64_t n, const double *restrict cov, const double *restrict theta, const double *aff,
                       double *restrict out_cov, double *restrict out_theta)
{
#ifdef __clang__
#pragma clang fp contract(off)
#endif
    const double w2 = aff[0], b2 = aff[1], p = aff[2], q = aff[3], r = aff[4];
    for (int64_t g = 0; g < n; g++) out_cov[g] = cov[g] * w2 + b2;
    if (theta != NULL)
        for (int64_t g = 0; g < n; g++) out_theta[g] = p * cov[g] + q * out_cov[g] + w2 * theta[g] + r;
}

/* n variances from p with stride (0: one value), with their square roots and the roots' reciprocals when root is
 * not NULL. */
static void variance_row(const double *p, int64_t stride, int64_t n, double *var, double *root, double *inv)
{
    if (stride == 0) {
        double v = p[0], sq = __builtin_sqrt(v), iv = 1.0 / sq;
        for (int64_t g = 0; g < n; g++) var[g] = v;
        if (root != NULL)
            for (int64_t g = 0; g < n; g++) { root[g] = sq; inv[g] = iv; }
        return;
    }
    for (int64_t g = 0; g < n; g++) var[g] = p[g * stride];
    if (root != NULL)
        for (int64_t g = 0; g < n; g++) { root[g] = __builtin_sqrt(var[g]); inv[g] = 1.0 / root[g]; }
}

/* One row of variances for the activation: var, and for kind 0 their roots and the roots' reciprocals. */
typedef struct {
    double *var, *root, *inv;
} side_row;

typedef struct {
    int64_t kind;
    double a, b, c, eps;
} activation;

/* The activation on one row of n entries: cv, th (or NULL) in, on, os (or NULL) out; s1, s2 the two members'
 * variances. Kind 0 forms norm = sqrt(v1) sqrt(v2) and r = -rho = -(cov (1 / sqrt(v1)) (1 / sqrt(v2))) (1 + 4 eps)
 * (products instead of a division and a root per entry; the 4-ulp push covers the reciprocals' 2 ulps, so rho =
 * +-1 stays exact), angle = acos(r) = pi - acos(rho) and sqrt(1 - r^2) from one root (acos_and_sine). */
static void activation_row(activation f, int64_t n, const double *restrict cv, const double *restrict th, side_row s1,
                           side_row s2, double *restrict on, double *restrict os)
{
    const double inv_2pi = 1.0 / (2.0 * PI), up = 1.0 + 4.0 * f.eps, a = f.a, b = f.b;
    if (f.kind == 0) {
        const double slope = (b - a) * (b - a), ab = a * b, kdot_shift = a * a + a * (b - a);
        const double *restrict q1 = s1.root, *restrict q2 = s2.root, *restrict i1 = s1.inv, *restrict i2 = s2.inv;
        for (int64_t g = 0; g < n; g++) {
            double norm = q1[g] * q2[g];
            double r = -(cv[g] * (i1[g] * i2[g])) * up;
            r = r < -1.0 ? -1.0 : (r > 1.0 ? 1.0 : r);
            double angle, sine;
            acos_and_sine(r, &angle, &sine);
            on[g] = slope * ((inv_2pi * sine - inv_2pi * angle * r) * norm) + ab * cv[g];
            if (os != NULL) {
                double kdot = slope * (angle * inv_2pi) + kdot_shift;
                os[g] = th != NULL ? kdot * th[g] : kdot;
            }
        }
        return;
    }
    const double b2 = b * b, erf_scale = a * a * (2.0 / PI), erf_kdot = a * a * b2 * (4.0 / PI), erf_c = f.c * f.c;
    const double gain = f.kind == 1 ? 2.0 * b2 : 1.0;
    const double *restrict r1 = s1.var, *restrict r2 = s2.var;
    for (int64_t g = 0; g < n; g++) {
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
        if (f.kind == 1) {
            on[g] = erf_scale * angle + erf_c;
            kdot = erf_kdot * root_e / root;
        } else {
            double delta = root / root_e, ratio = (r1[g] * e1) * (r2[g] * e2);
            on[g] = 0.25 * cb + (cb * angle + r * r / delta + ratio * delta) * inv_2pi;
            kdot = 0.25 + angle * inv_2pi + (cb / delta) * (1.0 / (delta * delta) + e1 + e2) * inv_2pi;
        }
        if (os != NULL) os[g] = th != NULL ? kdot * th[g] : kdot;
    }
}

/* shape: 4 sizes; cov, ntk (or NULL), out_nngp, out_second (or NULL): contiguous over shape; var1, var2 with
 * strides s1, s2 (4 each, in elements; 0 where the variance does not vary). A row of variances is read (and, for
 * kind 0, its roots formed) only when it differs from the previous row's. Returns -1 when its buffer cannot be
 * had. */
int closed_form_pairs(int64_t kind, const int64_t *shape, const double *cov, const double *ntk, const double *var1,
                      const int64_t *s1, const double *var2, const int64_t *s2, double *out_nngp,
                      double *out_second, double a, double b, double c, double eps)
{
    const int64_t n3 = shape[3], m = n3 > 0 ? n3 : 1;
    double *buf = malloc((size_t)(6 * m) * sizeof(double));
    if (buf == NULL) return -1;
    side_row one = {buf, buf + 2 * m, buf + 4 * m}, two = {buf + m, buf + 3 * m, buf + 5 * m};
    const activation f = {kind, a, b, c, eps};
    const double *last1 = NULL, *last2 = NULL;
    int64_t at = 0;
    for (int64_t i0 = 0; i0 < shape[0]; i0++)
        for (int64_t i1 = 0; i1 < shape[1]; i1++)
            for (int64_t i2 = 0; i2 < shape[2]; i2++, at += n3) {
                const double *p1 = var1 + i0 * s1[0] + i1 * s1[1] + i2 * s1[2];
                const double *p2 = var2 + i0 * s2[0] + i1 * s2[1] + i2 * s2[2];
                if (p1 != last1) variance_row(p1, s1[3], n3, one.var, kind == 0 ? one.root : NULL, one.inv);
                if (p2 != last2) variance_row(p2, s2[3], n3, two.var, kind == 0 ? two.root : NULL, two.inv);
                last1 = p1, last2 = p2;
                activation_row(f, n3, cov + at, ntk != NULL ? ntk + at : NULL, one, two, out_nngp + at,
                               out_second != NULL ? out_second + at : NULL);
            }
    free(buf);
    return 0;
}

/* ------------------------------------------------------------------------------------------------------------
 * A chain of fully-connected stages on an (n1, n2) tile of vectors (infinet/engine/dense_fusion.py), row by row
 * with the row in L1: stage l is a Dense layer (affine_row with affines[5 l ...]) and, for l < n_stages - 1 or
 * when the last kind is not -1, the activation kinds[l] with params[3 l ...] (activation_row). pre1, pre2
 * (n_stages x n1, n_stages x n2): each stage's variances after its Dense layer; post1: after its activation (the
 * next stage's input). symmetric (a tile on the diagonal, n1 = n2): entry (i, i) is pinned to pre1 after each
 * Dense layer and to post1 after each activation, as the layers one by one pin it. ntk and out_ntk NULL: the NNGP
 * alone. Returns -1 when its buffers cannot be had.
 * ------------------------------------------------------------------------------------------------------------ */
int closed_form_chain(int64_t n_stages, int64_t n1, int64_t n2, int64_t symmetric, const double *cov,
                      const double *ntk, const int64_t *kinds, const double *params, const double *affines,
                      const double *pre1, const double *pre2, const double *post1, double *out_nngp, double *out_ntk,
                      double eps)
{
    const int64_t m = n2 > 0 ? n2 : 1, m1 = n1 > 0 ? n1 : 1, stages = n_stages > 0 ? n_stages : 1;
    double *buf = malloc((size_t)(7 * m + 2 * stages * (m + m1)) * sizeof(double));
    if (buf == NULL) return -1;
    double *ca = buf, *ta = buf + m, *cb = buf + 2 * m, *tb = buf + 3 * m;  /* after a Dense layer; after an activation */
    side_row one = {buf + 4 * m, buf + 5 * m, buf + 6 * m};
    double *root2 = buf + 7 * m, *inv2 = root2 + stages * m, *root1 = inv2 + stages * m, *inv1 = root1 + stages * m1;
    for (int64_t l = 0; l < n_stages; l++) {
        for (int64_t g = 0; g < n2; g++) {
            root2[l * m + g] = __builtin_sqrt(pre2[l * n2 + g]);
            inv2[l * m + g] = 1.0 / root2[l * m + g];
        }
        for (int64_t i = 0; i < n1; i++) {
            root1[l * m1 + i] = __builtin_sqrt(pre1[l * n1 + i]);
            inv1[l * m1 + i] = 1.0 / root1[l * m1 + i];
        }
    }
    for (int64_t i = 0; i < n1; i++) {
        const double *c_in = cov + i * n2, *t_in = ntk != NULL ? ntk + i * n2 : NULL;
        const int pin = symmetric && i < n2;
        for (int64_t l = 0; l < n_stages; l++) {
            const int last = l == n_stages - 1;
            double *c_out = last ? out_nngp + i * n2 : cb, *t_out = t_in == NULL ? NULL : (last ? out_ntk + i * n2 : tb);
            if (kinds[l] < 0) {  /* a Dense layer alone (the last stage) */
                affine_row(n2, c_in, t_in, affines + 5 * l, c_out, t_out);
                if (pin) c_out[i] = pre1[l * n1 + i];
                break;
            }
            affine_row(n2, c_in, t_in, affines + 5 * l, ca, ta);
            if (pin) ca[i] = pre1[l * n1 + i];
            const double v1 = pre1[l * n1 + i], q1 = root1[l * m1 + i], iv1 = inv1[l * m1 + i];
            for (int64_t g = 0; g < n2; g++) { one.var[g] = v1; one.root[g] = q1; one.inv[g] = iv1; }
            const side_row two = {(double *)pre2 + l * n2, root2 + l * m, inv2 + l * m};
            const activation f = {kinds[l], params[3 * l], params[3 * l + 1], params[3 * l + 2], eps};
            activation_row(f, n2, ca, t_in == NULL ? NULL : ta, one, two, c_out, t_out);
            if (pin) c_out[i] = post1[l * n1 + i];
            c_in = c_out, t_in = t_out;
        }
    }
    free(buf);
    return 0;
}

/* atan2_unit of n pairs (for tests). */
void atan2_unit_values(int64_t n, const double *y, const double *x, double *out)
{
    for (int64_t i = 0; i < n; i++) out[i] = atan2_unit(y[i], x[i]);
}
