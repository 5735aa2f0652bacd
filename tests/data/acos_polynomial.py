"""The polynomial coefficients of src/infinet/engine/native_math.h, each interpolated at 200 Chebyshev points of
the first kind in t = 8 z - 1 on z in [0, 1/4] in 50-digit arithmetic (mpmath), the series truncated at degree 14
and converted to powers of z:

  ASIN_P   P(z) = (asin(sqrt z) / sqrt z - 1) / z, so that asin(s) = s + s z P(z) for |s| <= 1/2;
  SQRT1M_P R(z) = (sqrt(1 - z) - 1) / z, so that sqrt(1 - z) = 1 + z R(z) (and sqrt(1 - r^2) = 1 + r^2 R(r^2)
           for |r| <= 1/2, 2 s (1 + s^2 R(s^2)) with s^2 = (1 - |r|) / 2 above).

Prints the coefficients, each series' last Chebyshev coefficient and the largest relative error of the
double-precision polynomial (Horner) against mpmath on a grid of [0, 1/4].

    python tests/data/acos_polynomial.py
"""

import mpmath
import numpy as np

mpmath.mp.dps = 50
DEGREE, POINTS = 14, 200


def asin_p(z):
    z = mpmath.mpf(z)
    if z == 0:
        return mpmath.mpf(1) / 6
    s = mpmath.sqrt(z)
    return (mpmath.asin(s) / s - 1) / z


def sqrt1m_r(z):
    z = mpmath.mpf(z)
    if z == 0:
        return mpmath.mpf(-1) / 2
    return (mpmath.sqrt(1 - z) - 1) / z


def power_coefficients(f) -> tuple[list, float]:
    """f's Chebyshev interpolant on [0, 1/4], truncated at DEGREE, in powers of z; and its last coefficient."""
    angles = [mpmath.pi * (k + mpmath.mpf(1) / 2) / POINTS for k in range(POINTS)]
    values = [f((mpmath.cos(a) + 1) / 8) for a in angles]
    cheb = []
    for j in range(DEGREE + 1):
        s = sum(v * mpmath.cos(j * a) for a, v in zip(angles, values)) * 2 / POINTS
        cheb.append(s / 2 if j == 0 else s)
    # T_j(8 z - 1) in powers of z: T_0 = 1, T_1 = 8 z - 1, T_j = 2 (8 z - 1) T_{j-1} - T_{j-2}
    basis = [[mpmath.mpf(1)], [mpmath.mpf(-1), mpmath.mpf(8)]]
    for j in range(2, DEGREE + 1):
        nxt = [mpmath.mpf(0)] * (j + 1)
        for i, a in enumerate(basis[-1]):
            nxt[i] -= 2 * a
            nxt[i + 1] += 16 * a
        for i, a in enumerate(basis[-2]):
            nxt[i] -= a
        basis.append(nxt)
    power = [mpmath.mpf(0)] * (DEGREE + 1)
    for j in range(DEGREE + 1):
        for i, a in enumerate(basis[j]):
            power[i] += cheb[j] * a
    return [float(c) for c in power], float(abs(cheb[-1]))


def main() -> None:
    grid = np.linspace(0.0, 0.25, 2001)
    for name, f in (("ASIN_P", asin_p), ("SQRT1M_P", sqrt1m_r)):
        coefficients, last = power_coefficients(f)
        value = np.zeros_like(grid)
        for c in reversed(coefficients):
            value = value * grid + c
        reference = np.array([float(f(z)) for z in grid])
        print(name, "=", ", ".join(repr(c) for c in coefficients))
        print("  last Chebyshev coefficient", last, "max relative error", np.max(np.abs(value / reference - 1)))


if __name__ == "__main__":
    main()
