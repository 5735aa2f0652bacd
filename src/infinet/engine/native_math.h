/* Branch-free elementary functions shared by the compiled loops (native_kernels.c, native_conv.c), written so that
 * loops over them vectorize. */
#ifndef INFINET_NATIVE_MATH_H
#define INFINET_NATIVE_MATH_H

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

#endif
