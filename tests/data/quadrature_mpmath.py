"""Reference values of E[phi(u) phi(v)] and E[phi'(u) phi'(v)] at unequal variances by mpmath (18 digits, nested
tanh-sinh quadrature split at the kinks of the integrand), for tests/test_variance_interpolation.py.

u = s1 z1, v = s2 (rho z1 + sqrt(1 - rho^2) z2), z1, z2 independent standard normal. Run:
    python tests/data/quadrature_mpmath.py [tanh sigmoid ...]   (rewrites their rows of quadrature_mpmath.json;
    about 40 minutes for all)
"""

import json
import pathlib
import sys

import mpmath as mp

mp.mp.dps = 18

ACTIVATIONS = {
    "tanh": (mp.tanh, lambda x: 1 / mp.cosh(x) ** 2),
    "sigmoid": (lambda x: 1 / (1 + mp.exp(-x)), lambda x: mp.exp(-x) / (1 + mp.exp(-x)) ** 2),
    "softplus": (lambda x: mp.log1p(mp.exp(x)), lambda x: 1 / (1 + mp.exp(-x))),
    "silu": (lambda x: x / (1 + mp.exp(-x)), lambda x: 1 / (1 + mp.exp(-x)) + x * mp.exp(-x) / (1 + mp.exp(-x)) ** 2),
}
#: (rho, var1, var2): unequal variances over a range of 125, correlations up to 0.999 (that one, slow in mpmath,
#: for tanh alone)
POINTS = [(0.9, 1.0, 4.0), (-0.7, 0.2, 1.5), (0.999, 3.0, 2.5), (0.6, 25.0, 0.8)]
SLOW = (0.999, 3.0, 2.5)


def expectation(f, rho, var1, var2):
    s1, s2 = mp.sqrt(var1), mp.sqrt(var2)
    sigma = mp.sqrt(1 - rho**2)
    pdf = lambda z: mp.exp(-z * z / 2) / mp.sqrt(2 * mp.pi)  # noqa: E731
    if rho == 1:
        return mp.quad(lambda z: pdf(z) * f(s1 * z) * f(s2 * z), [-mp.inf, 0, mp.inf])

    def inner(z1):  # split at the kink of phi and at the Gaussian's centre (tanh-sinh misses mass far inside)
        kink = -rho * z1 / sigma
        points = sorted({kink, mp.mpf(0)} | ({kink - 1, kink + 1} if abs(kink) < 12 else set()))
        return mp.quad(lambda z2: pdf(z2) * f(s2 * (rho * z1 + sigma * z2)), [-mp.inf, *points, mp.inf])

    # the inner integral turns on the scale sigma / rho around 0
    width = sigma / abs(rho) if rho else mp.mpf(1)
    points = sorted({mp.mpf(0)} | {w for w in (-width, width, -4 * width, 4 * width) if abs(w) < 12})
    return mp.quad(lambda z1: pdf(z1) * f(s1 * z1) * inner(z1), [-mp.inf, *points, mp.inf])


def main():
    """Rows for the activations named on the command line (all by default), merged into the stored file."""
    path = pathlib.Path(__file__).with_name("quadrature_mpmath.json")
    names = sys.argv[1:] or list(ACTIVATIONS)
    out = [row for row in (json.loads(path.read_text()) if path.exists() else []) if row["activation"] not in names]
    for name in names:
        phi, dphi = ACTIVATIONS[name]
        for rho, v1, v2 in POINTS:
            if (rho, v1, v2) == SLOW and name != "tanh":
                continue
            rho, v1, v2 = mp.mpf(rho), mp.mpf(v1), mp.mpf(v2)
            row = {"activation": name, "rho": float(rho), "var1": float(v1), "var2": float(v2)}
            for key, f in (("nngp", phi), ("kdot", dphi)):
                row[key] = mp.nstr(expectation(f, rho, v1, v2), 20)
                row[key + "_diag1"] = mp.nstr(expectation(f, 1, v1, v1), 20)
                row[key + "_diag2"] = mp.nstr(expectation(f, 1, v2, v2), 20)
            out.append(row)
            print(row, flush=True)
            path.write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
