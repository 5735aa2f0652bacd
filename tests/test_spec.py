"""The architecture-spec parser: valid specs build the same networks as Python; hostile ones fail cleanly."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import infinet as inf
from infinet.spec import MAX_DEPTH, SpecError, constructors, format_spec, parse_spec


def same_kernel(a, b, x):
    ka, kb = a.kernel(x), b.kernel(x)
    return torch.equal(ka.nngp, kb.nngp) and torch.equal(ka.ntk, kb.ntk)


def test_issue_example_equals_python():
    net = parse_spec("Dense(512, w_std=1.5, b_std=0.05) > Relu() > Dense(10)")
    ref = inf.serial(inf.Dense(512, w_std=1.5, b_std=0.05), inf.Relu(), inf.Dense(10))
    assert repr(net) == repr(ref)
    assert same_kernel(net, ref, torch.randn(5, 7))


NETWORKS = [
    inf.serial(inf.Dense(8, w_std=1.2, b_std=0.1, parameterization="standard"), inf.Erf(2.0, 0.5, 0.1)),
    inf.serial(inf.FanOut(2), inf.parallel(inf.Identity(), inf.serial(inf.Relu(), inf.Dense(16))), inf.FanInSum()),
    inf.serial(inf.Dense(4), inf.FanOut(3), inf.parallel(inf.Dense(3), inf.Dense(5), inf.Dense(2)), inf.FanInConcat()),
    inf.repeat(inf.serial(inf.Dense(6), inf.LeakyRelu(0.2)), 3),
    inf.serial(inf.Dense(3), inf.Polynomial([0.5, -1.0, 2.0]), inf.Dense(2), inf.RectifiedMonomial(2)),
    inf.serial(inf.Dense(3), inf.Sin(1.0, 2.0, 0.3), inf.Dense(3), inf.Cos(), inf.Dense(3), inf.Gaussian(1.0, -1.0)),
    inf.serial(inf.Dense(3), inf.Tanh(), inf.Dense(3), inf.Sigmoid(), inf.Dense(3), inf.Elu(0.5), inf.Dense(3),
               inf.Softplus(), inf.Dense(3), inf.Silu(), inf.Dense(3), inf.Gelu(), inf.Dense(3), inf.Abs(),
               inf.Dense(3), inf.ABRelu(-0.5, 1.0), inf.Dense(3), inf.Sign(), inf.Dense(3), inf.Exp(0.5, 0.2),
               inf.Dense(3), inf.Monomial(3)),
    inf.serial(inf.Dense(4), inf.FanOut(2), inf.parallel(inf.Dense(4), inf.Dense(4)), inf.FanInProd()),
    inf.serial(inf.Conv(8, (3, 2), stride=2, padding="CIRCULAR", dilation=(1, 2), w_std=1.3, b_std=0.1),
               inf.LayerNorm("channels_space"), inf.Relu(), inf.Dropout(0.2), inf.ConvTranspose(4, 3, padding="VALID"),
               inf.AvgPool(2, stride=1, padding="SAME"), inf.SumPool((2, 2)), inf.GlobalAvgPool(), inf.Dense(1)),
    inf.serial(inf.Conv(4, 3, parameterization="standard"), inf.Relu(), inf.GlobalSumPool(), inf.Flatten()),
    inf.myrtle(5, channels=8),
    inf.serial(inf.ConvLocal(4, 2, stride=2, padding="SAME", b_std=0.1), inf.Rbf(0.5), inf.Index(inf.Slice[:, :, 1:, ::-2]),
               inf.ImageResize((-1, -1, 5, -1), "cubic", antialias=False), inf.Dense(3), inf.Gabor(),
               inf.DotGeneral(rhs=[[1.0, -0.5], [0.25, 2.0]], dimension_numbers=(((2,), (0,)), ((), ()))),
               inf.Dense(3), inf.ExpNormalized(2.0, -0.5), inf.Dense(3), inf.Hermite(2), inf.GlobalAvgPool(), inf.Dense(1)),
    inf.serial(inf.Dense(4), inf.Aggregate(), inf.Relu(), inf.Dense(4), inf.Aggregate((2,), "SPARSE"), inf.Flatten()),
    inf.serial(inf.Conv(4), inf.Index(inf.Slice[..., 0]), inf.DotGeneral(lhs=2.0), inf.Flatten()),
]


@pytest.mark.parametrize("net", NETWORKS, ids=range(len(NETWORKS)))
def test_repr_round_trips(net):
    parsed = parse_spec(format_spec(net))
    assert repr(parsed) == repr(net)


def test_every_constructor_is_reachable_and_round_trips():
    names = set(constructors())
    assert {"Dense", "Relu", "Tanh", "FanOut", "FanInSum", "serial", "parallel", "repeat"} <= names
    assert "Elementwise" not in names and "Layer" not in names and "Activation" not in names


@pytest.mark.parametrize("text,expected", [
    ("(Dense(3) > Relu()) > Dense(2)", "serial(serial(Dense(3, w_std=1.0, b_std=None, parameterization='ntk'), Relu()), Dense(2, w_std=1.0, b_std=None, parameterization='ntk'))"),
    ("Dense(3, b_std=1e-2,)", "Dense(3, w_std=1.0, b_std=0.01, parameterization='ntk')"),
    ('Dense(3, parameterization="standard")', "Dense(3, w_std=1.0, b_std=None, parameterization='standard')"),
    ("LeakyRelu(-.5)", "LeakyRelu(-0.5)"),
    ("Dense(2, w_std=1.2345678901234567)", "Dense(2, w_std=1.2345678901234567, b_std=None, parameterization='ntk')"),
    ("Polynomial((1, 2))", "Polynomial([1.0, 2.0])"),
    ("  Relu( )  ", "Relu()"),
    ("repeat(Dense(2) > Relu(), 2)", "repeat(serial(Dense(2, w_std=1.0, b_std=None, parameterization='ntk'), Relu()), 2)"),
])
def test_valid_forms(text, expected):
    assert repr(parse_spec(text)) == expected


@pytest.mark.parametrize("text,column,fragment", [
    ("Dens(5)", 1, "did you mean 'Dense'"),
    ("Dense(5) > Relu() >", 20, "end of the spec"),
    ("Dense(5) Relu()", 10, "expected '>'"),
    ("__import__('os').system('ls')", 1, "unknown layer '__import__'"),
    ("Dense(5).__class__", 9, "unexpected character '.'"),
    ("Dense(5); import os", 9, "unexpected character ';'"),
    ("Dense(-1)", 1, "positive integer"),
    ("Dense(5, foo=1)", 1, "unexpected keyword argument 'foo'"),
    ("Dense(5, w_std=1, w_std=2)", 19, "given twice"),
    ("Dense(w_std=1, 5)", 16, "positional argument may not follow"),
    ("Relu", 5, "must be called"),
    ("Dense(5, w_std='1\\'')", 16, "unexpected character"),
    ("Dense(5,,)", 9, "expected a value"),
    ("Dense(1e400)", 1, "positive integer"),
    ("Dense(2, w_std=1e200)", 1, "at most 1e150"),
    ("Dense(5, w_std=-1)", 1, "w_std"),
    ("Dense(5))", 9, "expected '>'"),
    ("Dense(5", 8, "expected ',' or ')'"),
    ("Elementwise(1)", 1, "Python function"),
    ("Activation()", 1, "abstract"),
    ("repeat(Relu(), 100000)", 1, "limit"),
    ("repeat(Relu(), -1)", 1, "repeat count"),
    ("", 1, "empty"),
    (">", 1, "expected a layer"),
    ("Dense(nan)", 7, "unknown layer 'nan'"),
    ("Dense(5, w_std=[1, 2)", 21, "expected ',' or ']'"),
])
def test_errors_point_at_the_token(text, column, fragment):
    with pytest.raises(SpecError) as info:
        parse_spec(text)
    err = info.value
    assert fragment in str(err)
    if column is not None:
        assert err.column == column, str(err)
        assert err.pointer().splitlines()[1].index("^") == column - 1


def test_architecture_errors_are_value_errors_not_spec_errors():
    net = parse_spec("Dense(3) > FanInSum()")  # grammatical; invalid only as a network
    with pytest.raises(ValueError, match="joins branches"):
        net.check((4,))


def test_nesting_and_length_limits():
    deep = "(" * (MAX_DEPTH + 5) + "Relu()" + ")" * (MAX_DEPTH + 5)
    with pytest.raises(SpecError, match="nesting"):
        parse_spec(deep)
    with pytest.raises(SpecError, match="longer than"):
        parse_spec("Relu() > " * 5000 + "Relu()")
    with pytest.raises(TypeError):
        parse_spec(None)


@settings(max_examples=300, deadline=None, derandomize=True, database=None)
@given(st.text(alphabet=st.sampled_from(list("DenseRluFaOt()[],=>'\"0123456789.-_ abcxyz;:")), max_size=60))
def test_fuzz_only_spec_errors(text):
    """Any string either parses to a layer or raises SpecError; nothing else escapes."""
    try:
        layer = parse_spec(text)
    except SpecError:
        return
    assert isinstance(layer, inf.Layer)


@settings(max_examples=100, deadline=None, derandomize=True, database=None)
@given(st.lists(st.sampled_from(["Relu()", "Dense(3)", "Tanh()", "Dense(2, b_std=0.1)", "Erf()"]), min_size=1, max_size=6))
def test_fuzz_pipelines_round_trip(parts):
    net = parse_spec(" > ".join(parts))
    assert repr(parse_spec(repr(net))) == repr(net)
