"""The ``infinet`` command line: the demo, experiments with reports, and kernel matrices of data sets.

User errors (a bad spec, an unknown experiment or data set, an unreadable file) print one line
starting with ``error:`` on stderr and exit with status 2, without a traceback; ``--debug`` shows
the traceback instead.
"""

from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path
from typing import List, Optional

from ..core.extras import require

typer = require("typer", "the infinet command line")

#: the layers an --arch spec may name (tests/test_cli.py checks it against infinet.spec.constructors())
LAYERS_HELP = """Layers for --arch specs (see the README's Layers section):

\b
  dense and convolutional: Dense, Conv, ConvTranspose, ConvLocal (unshared weights)
  pooling and shape: AvgPool, SumPool, MaxPool, MinPool (sampled kernels), GlobalAvgPool, GlobalSumPool, Flatten,
    Index (e.g. Index(':, :, -1')), ImageResize, Interpolate (PyTorch's), AdaptiveAvgPool, DotGeneral,
    Scale (a fixed multiple, e.g. Scale(0.5))
  tokens: Embedding (reads token indices), Constant (a learned tensor: class token, positional embedding),
    ConcatPositions
  graphs: Aggregate (graph neural networks; in Python: net.kernel(x, pattern=A))
  sequences: Recurrent, GRU, LSTM (sampled NNGP and NTK), Reverse, bidirectional, GlobalSelfAttention,
    ScaledDotProductAttention / MultiheadAttention (softmax with 1/sqrt(d) logits, sampled), FlattenPositions
  normalization: LayerNorm, Dropout, BatchNorm (train mode, sampled kernel), ElementwiseAffine (their weight
    and bias)
  activations: Relu, LeakyRelu, ABRelu, Abs, Sign, Erf, Gelu, Sin, Cos, Gaussian, Exp,
    Monomial, RectifiedMonomial, Polynomial, Hermite, Rbf, Gabor, ExpNormalized,
    Tanh, Sigmoid, Softplus, Silu, Elu
  combinators: serial, parallel, repeat, FanOut, FanInSum, FanInConcat, FanInProd,
    Identity, Serial, Parallel, ValueGraph (each value read by any later layer)
  ready-made: myrtle, cntk, wide_resnet, wide_resnet_block, fully_connected
"""

app = typer.Typer(
    name="infinet",
    help="infinet: exact infinite-width kernels (NNGP, NTK) of neural networks, checked against finite networks.",
    epilog=LAYERS_HELP,
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
_state = {"debug": False}
EXIT_USER_ERROR = 2


@contextlib.contextmanager
def user_errors():
    """Turn the library's input errors into one line on stderr and exit status 2."""
    from ..engine.tiling import NonFiniteKernelError

    try:
        yield
    except (NonFiniteKernelError, ValueError, TypeError, OSError, FloatingPointError, LookupError) as e:
        if _state["debug"]:
            raise
        message = " ".join(str(e).split()) or type(e).__name__
        typer.echo(f"error: {message}", err=True)
        raise typer.Exit(EXIT_USER_ERROR) from None
    except (typer.Exit, typer.Abort, KeyboardInterrupt):
        raise
    except Exception as e:  # anything else still gets one line; --debug shows where it came from
        if _state["debug"]:
            raise
        message = " ".join(str(e).split())
        typer.echo(f"error: {type(e).__name__}{': ' + message if message else ''} (run with --debug for the "
                   "traceback)", err=True)
        raise typer.Exit(EXIT_USER_ERROR) from None


def _check_range(option: str, value, minimum: float | None = None, strict: bool = False) -> None:
    """A numeric command-line option: finite and >= minimum (> with ``strict``), else a ValueError."""
    import math

    if value is None:
        return
    if not math.isfinite(float(value)):
        raise ValueError(f"{option} must be a finite number, got {value!r}")
    if minimum is not None and (value < minimum or (strict and value == minimum)):
        raise ValueError(f"{option} must be {'>' if strict else '>='} {minimum:g}, got {value!r}")


@app.callback()
def main_options(
    debug: bool = typer.Option(False, "--debug", help="Show full tracebacks instead of one-line errors."),
) -> None:
    """infinet: exact infinite-width kernels (NNGP, NTK) of neural networks, checked against finite networks."""
    _state["debug"] = debug


def _parse_params(items: List[str]) -> dict:
    params = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--param expects key=value, got {item!r}")
        params[key.strip()] = value
    return params


def _run_and_print(name: str, out: Optional[Path], seed: int, params: dict, quick: bool) -> None:
    from .experiments import run_experiment

    result, path = run_experiment(name, out, seed=seed, params=params, quick=quick, progress=True)
    typer.echo(f"\n{result.title}\n")
    for table in result.tables.values():
        if table.caption:
            typer.echo(table.caption)
        typer.echo(table.to_text() + "\n")
    if result.summary:
        typer.echo(result.summary + "\n")
    typer.echo(f"report: {path}")


@app.command()
def demo(
    out: Path = typer.Option(Path("reports/demo"), "--out", "-o", help="Folder for the report."),
    seed: int = typer.Option(0, "--seed", help="Random seed; the same seed gives the same numbers."),
    quick: bool = typer.Option(False, "--quick", help="A smaller, faster variant."),
) -> None:
    """The main job: finite ReLU networks of widths 64-4096 trained on digits beside their exact NNGP and
    NTK predictions, and Monte Carlo kernel error against width. Prints a table and writes a report."""
    with user_errors():
        _check_seed(seed)
        _run_and_print("demo", out, seed, {}, quick)


@app.command("list")
def list_experiments() -> None:
    """List the experiments, with one-line descriptions."""
    from .experiments import registry

    table = registry()
    width = max(map(len, table), default=0)
    for name, exp in table.items():
        typer.echo(f"{name.ljust(width)}  {exp.description}")


def _check_seed(seed: int) -> None:
    _check_range("--seed", seed, 0)


@app.command()
def run(
    experiment: str = typer.Argument(..., help="Experiment name (see `infinet list`)."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Report folder (default reports/EXPERIMENT)."),
    seed: int = typer.Option(0, "--seed", help="Random seed; the same seed gives the same numbers."),
    param: List[str] = typer.Option([], "--param", "-p", help="Override a parameter: key=value (repeatable); lists as 64,256."),
    quick: bool = typer.Option(False, "--quick", help="The experiment's quick variant."),
    show_params: bool = typer.Option(False, "--show-params", help="Print the experiment's parameters and exit."),
    data: Optional[Path] = typer.Option(None, "--data", help="Data folder, for experiments that read one (uci)."),
) -> None:
    """Run an experiment and write results.json, CSV tables, PNG figures and report.html."""
    from .experiments import get

    with user_errors():
        _check_seed(seed)
        exp = get(experiment)
        params = _parse_params(param)
        if data is not None:
            if "data" not in exp.params:
                raise ValueError(f"--data: experiment {exp.name!r} reads no data folder")
            params["data"] = str(data)
        if show_params:
            typer.echo(f"{exp.name}: {exp.description}")
            for key, p in exp.params.items():
                typer.echo(f"  {key} = {p.default!r}  {p.help}")
            return
        _run_and_print(exp.name, out, seed, params, quick)


@app.command()
def data() -> None:
    """List the built-in data sets and the user-folder formats (nothing is ever downloaded)."""
    from .datasets import available

    table = available()
    width = max(map(len, table))
    for name, desc in table.items():
        typer.echo(f"{name.ljust(width)}  {desc}")
    typer.echo(f"{'PATH.npz'.ljust(width)}  arrays x, y (or x_train, y_train, x_test, y_test)")
    typer.echo(f"{'PATH.csv'.ljust(width)}  numeric columns, the last one the target (one header row allowed)")


@app.command()
def kernel(
    arch: str = typer.Option(..., "--arch", "-a", help='Architecture spec, e.g. "Dense(512, w_std=1.5) > Relu() > Dense(10)"; any layer of the README, '
                           'e.g. "Recurrent(Relu(), return_sequence=False) > Dense(10)" or '
                           '"Conv(64, 5) > Relu() > GlobalSelfAttention(64, 64, 64, 4) > GlobalAvgPool() > Dense(10)".'),
    data: str = typer.Option(..., "--data", "-d", help="Data set name, NAME:FOLDER, or a .npz/.csv path (see `infinet data`)."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Output .npz file (or use --store)."),
    get: str = typer.Option("auto", "--get", help="Comma-separated kernels: nngp, ntk; auto (default): both, or the "
                            "NNGP alone for architectures without an NTK (GRU, LSTM)."),
    n_train: Optional[int] = typer.Option(None, "--n-train", help="Training examples (default: the data set's split)."),
    n_test: Optional[int] = typer.Option(None, "--n-test", help="Test examples (default: the data set's split)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the train/test split."),
    dtype: str = typer.Option("float64", "--dtype", help="float64 or float32."),
    tile_size: Optional[int] = typer.Option(None, "--tile-size", help="Rows and columns per tile (default: from the memory budget)."),
    store: Optional[Path] = typer.Option(None, "--store", help="Write resumable zarr stores PATH/train and PATH/test (Dask tiles) instead of an .npz."),
    scheduler: Optional[str] = typer.Option(None, "--scheduler", help="Address of an existing Dask scheduler (with --store)."),
    workers: Optional[int] = typer.Option(None, "--workers", help="Local worker processes (with --store; 0: this process; default: all cores)."),
    mask_constant: Optional[float] = typer.Option(None, "--mask-constant", help="Padded sequences: positions whose "
                                                  "channels all equal this value are padding (neural-tangents' "
                                                  "convention). Sequence lengths and graphs come from a .npz data "
                                                  "file's arrays lengths / pattern (or NAME_train and NAME_test)."),
    device: str = typer.Option("auto", "--device", help="Where tiles are computed: auto (with --store: a worker's GPU if it has one; with --out: this process's GPU if it has one), cpu, cuda."),
) -> None:
    """Compute the kernel matrices of an architecture over a data set and save them to an .npz file:
    GET_train_train (N_train x N_train) and GET_test_train (N_test x N_train) for each kernel in --get,
    with the targets, labels and the spec. Saved atomically; if a kernel overflows, the tiles already
    finished are saved to FILE.partial.npz."""
    with user_errors():
        for option, value, low in (("--n-train", n_train, 1), ("--n-test", n_test, 1), ("--tile-size", tile_size, 1),
                                   ("--workers", workers, 0), ("--seed", seed, 0)):
            _check_range(option, value, low)
        if device not in ("auto", "cpu", "cuda"):
            raise ValueError(f"--device must be auto, cpu or cuda, got {device!r}")
        if (out is None) == (store is None):
            raise ValueError("give exactly one of --out FILE.npz and --store PATH")
        if device == "cuda" and scheduler is None:
            import torch

            if not torch.cuda.is_available():
                raise ValueError("--device cuda, but torch sees no CUDA device on this machine (use auto or cpu)")
        if store is not None:
            _kernel_store(arch, data, store, get, n_train, n_test, seed, dtype, tile_size, scheduler, workers, device,
                          mask_constant)
        else:
            _kernel(arch, data, out, get, n_train, n_test, seed, dtype, tile_size, device, mask_constant)


def _kernel_store(arch, data, store, get, n_train, n_test, seed, dtype, tile_size, scheduler, workers, device,
                  mask_constant=None) -> None:
    from .datasets import load
    from ..scale.store import kernel_to_store
    from ..engine.spec import parse_spec

    net = parse_spec(arch)
    names = _kernel_names(get, net)
    ds = _fit_input(net, load(data, n_train=n_train, n_test=n_test, seed=seed))
    store = Path(store)
    store.mkdir(parents=True, exist_ok=True)
    train = {"lengths": ds.side_train.get("lengths"), "pattern": ds.side_train.get("pattern")}
    sides = {"train": train, "test": {"lengths": ds.side_test.get("lengths"), "pattern": ds.side_test.get("pattern"),
                                      "lengths2": train["lengths"], "pattern2": train["pattern"]}}
    for split, (a, b) in {"train": (ds.x_train, None), "test": (ds.x_test, ds.x_train)}.items():
        typer.echo(f"{split}: {len(a)} x {len(ds.x_train)} into {store / split}", err=True)
        report = kernel_to_store(net, a, store / split, x2=b, get=names, dtype=dtype, tile_size=tile_size,
                                 scheduler=scheduler, workers=workers, device=device, progress=True,
                                 mask_constant=mask_constant, **sides[split])
        typer.echo(f"{split}: {report.tiles_computed} tiles computed, {report.tiles_skipped} already there, "
                   f"{report.seconds:.1f} s", err=True)
    targets = {"y_train": ds.y_train.numpy(), "y_test": ds.y_test.numpy()}
    if ds.labels_train is not None:
        targets.update(labels_train=ds.labels_train.numpy(), labels_test=ds.labels_test.numpy())
    _save(store / "targets.npz", targets)
    typer.echo(f"saved {store} (train, test, targets.npz); solve with: infinet solve --store {store}")


@app.command()
def solve(
    store: Path = typer.Option(..., "--store", help="A store written by `infinet kernel --store`."),
    kernel_name: str = typer.Option("nngp", "--kernel", help="nngp (GP posterior mean) or ntk (t = inf prediction)."),
    diag_reg: float = typer.Option(1e-4, "--diag-reg", help="Regularization relative to the mean kernel diagonal."),
    targets: Optional[Path] = typer.Option(None, "--targets", help="A .npy of training targets (default: STORE/targets.npz)."),
    tol: float = typer.Option(1e-10, "--tol", help="Relative residual of conjugate gradients."),
    max_iter: Optional[int] = typer.Option(None, "--max-iter", help="Most CG iterations (default: 10 N)."),
    preconditioner: str = typer.Option("nystrom", "--preconditioner", help="nystrom, pivoted-cholesky or none."),
    rank: int = typer.Option(100, "--rank", help="Rank of the preconditioner."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Save the test predictions to this .npz."),
    scheduler: Optional[str] = typer.Option(None, "--scheduler", help="Run the products on this Dask scheduler."),
    workers: int = typer.Option(0, "--workers", help="Run the products on N local worker processes (0: this process)."),
) -> None:
    """Kernel regression over a stored kernel by preconditioned conjugate gradients streaming the tiles
    (bounded memory), then predictions on the stored test points; prints the convergence report and the
    test accuracy / MSE when the targets are known."""
    with user_errors():
        import numpy as np
        import torch

        from ..scale.store import predict_from_store, solve_store

        _check_range("--diag-reg", diag_reg, 0.0)
        _check_range("--tol", tol, 0.0, strict=True)
        _check_range("--max-iter", max_iter, 1)
        _check_range("--rank", rank, 0)
        _check_range("--workers", workers, 0)
        store = Path(store)
        for part in ("train", "test"):
            if not (store / part).is_dir():
                raise FileNotFoundError(f"no kernel store at {store / part}; write one with "
                                        f"`infinet kernel --store {store} ...`")
        saved = np.load(store / "targets.npz") if (store / "targets.npz").exists() else None
        if targets is not None:
            y = np.load(targets)
        elif saved is not None:
            y = saved["y_train"]
        else:
            raise ValueError(f"no targets: {store / 'targets.npz'} is missing; pass --targets FILE.npy")
        client = None
        if scheduler is not None or workers > 0:
            from distributed import Client, LocalCluster

            client = Client(scheduler) if scheduler else Client(LocalCluster(
                n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None))
        try:
            alpha, report = solve_store(store / "train", torch.from_numpy(np.asarray(y, dtype=np.float64)),
                                        kernel=kernel_name, diag_reg=diag_reg, tol=tol, max_iter=max_iter,
                                        preconditioner=preconditioner, preconditioner_rank=rank, client=client,
                                        progress=True)
        finally:
            if client is not None:
                cluster = getattr(client, "cluster", None)
                client.close()
                if cluster is not None and scheduler is None:
                    cluster.close()
        typer.echo(f"conjugate gradients: {report.iterations} iterations, relative residual {report.residuals[-1]:.2e}, "
                   f"{'converged' if report.converged else 'NOT converged'} ({report.preconditioner} preconditioner of "
                   f"rank {report.preconditioner_rank}, {report.setup_seconds:.1f} s; iterations {report.seconds:.1f} s)")
        pred = predict_from_store(store / "test", alpha, kernel=kernel_name)
        if not bool(torch.isfinite(pred).all()):
            raise FloatingPointError("the test predictions contain NaN or inf; no accuracy is reported "
                                     "(check the stores with infinet.scale.check_store)")
        if saved is not None and "y_test" in saved:
            y_test = torch.from_numpy(saved["y_test"])
            line = f"test MSE {float(((pred - y_test) ** 2).mean()):.5f}"
            if "labels_test" in saved:
                acc = float((pred.argmax(1) == torch.from_numpy(saved["labels_test"])).double().mean())
                line += f", test accuracy {acc:.4f}"
            typer.echo(line)
        if out is not None:
            _save(Path(out), {"predictions": pred.numpy()})


def _split_kernels(net, ds, names, dtype, tile_size, where, mask_constant):
    """("train_train" | "test_train", a function computing that kernel), with the data set's sequence lengths
    and graphs (``ds.side_*``). Networks with BatchNorm normalize over one batch, and gated layers' batch
    estimator shares its errors across the batch: their kernel is computed once over the training and test
    examples together, and both blocks are cut from it (one draw, so the blocks are consistent)."""
    import torch

    from ..engine import sampling

    def side(d, suffix=""):
        return {f"lengths{suffix}": d.get("lengths"), f"pattern{suffix}": d.get("pattern")}

    def on(t):
        return None if t is None else t.to(where)

    common = dict(get=names, dtype=dtype, tile_size=tile_size, progress=True, mask_constant=mask_constant)
    if sampling.whole_batch(net) or sampling.shared_batch(net):
        both = {}
        n = len(ds.x_train)

        def joint():
            if not both:
                extra = {k: (None if v is None else torch.cat([v, ds.side_test[k]]).to(where))
                         for k, v in ds.side_train.items()}
                both["k"] = net.kernel(torch.cat([ds.x_train, ds.x_test]).to(where), lengths=extra.get("lengths"),
                                       pattern=extra.get("pattern"), **common)
            return both["k"]

        def block(rows, cols):
            return lambda: joint().block(rows, cols)

        return [("train_train", block(slice(0, n), slice(0, n))), ("test_train", block(slice(n, None), slice(0, n)))]
    train = {k: on(v) for k, v in side(ds.side_train).items()}
    test = {k: on(v) for k, v in side(ds.side_test).items()}
    second = {k: on(v) for k, v in side(ds.side_train, "2").items()}
    return [("train_train", lambda: net.kernel(ds.x_train.to(where), **train, **common)),
            ("test_train", lambda: net.kernel(ds.x_test.to(where), ds.x_train.to(where), **test, **second, **common))]


def _kernel(arch, data, out, get, n_train, n_test, seed, dtype, tile_size, device="auto", mask_constant=None) -> None:
    import numpy as np
    import torch

    from ..core import __version__
    from .datasets import load
    from ..engine.kernel import parse_get
    from ..engine.spec import format_spec, parse_spec
    from ..engine.tiling import NonFiniteKernelError

    dtypes = {"float64": torch.float64, "float32": torch.float32}
    if dtype not in dtypes:
        raise ValueError(f"--dtype must be float64 or float32, got {dtype!r}")
    out = Path(out)
    if out.suffix != ".npz":
        raise ValueError(f"--out must name a .npz file, got {str(out)!r}")
    if out.parent and not out.parent.exists():
        out.parent.mkdir(parents=True, exist_ok=True)
    net = parse_spec(arch)
    names = _kernel_names(get, net)
    ds = load(data, n_train=n_train, n_test=n_test, seed=seed)
    ds = _fit_input(net, ds)
    typer.echo(f"{ds!r}; architecture {format_spec(net)}", err=True)
    arrays = {"y_train": ds.y_train.numpy(), "y_test": ds.y_test.numpy(), "arch": np.array(format_spec(net)),
              "dataset": np.array(data), "infinet_version": np.array(__version__)}
    if ds.labels_train is not None:
        arrays.update(labels_train=ds.labels_train.numpy(), labels_test=ds.labels_test.numpy())
    where = "cuda" if device == "cuda" or (device == "auto" and torch.cuda.is_available()) else "cpu"
    for split, compute in _split_kernels(net, ds, names, dtypes[dtype], tile_size, where, mask_constant):
        try:
            k = compute()
        except NonFiniteKernelError as e:
            for name in names:
                part = getattr(e.partial, name, None)
                if part is not None:
                    arrays[f"{name}_{split}"] = part.cpu().numpy()
            _save(out.with_suffix(".partial.npz"), arrays)
            raise NonFiniteKernelError(f"{e} (finished tiles saved to {out.with_suffix('.partial.npz')})",
                                       e.partial) from None
        for name in names:
            arrays[f"{name}_{split}"] = getattr(k, name).cpu().numpy()
            if getattr(k, f"{name}_se", None) is not None:  # sampled layers: the standard errors too
                arrays[f"{name}_se_{split}"] = getattr(k, f"{name}_se").cpu().numpy()
    _save(out, arrays)
    shapes = ", ".join(f"{k} {v.shape}" for k, v in arrays.items() if k.startswith(tuple(names)))
    typer.echo(f"saved {out}: {shapes}")


def _kernel_names(get: str, net) -> tuple[str, ...]:
    """The kernels --get names; "auto": NNGP and NTK, or the NNGP alone where the architecture has no NTK."""
    from ..engine.apply import has_ntk
    from ..engine.kernel import parse_get

    if get.strip() == "auto":
        if has_ntk(net):
            return ("nngp", "ntk")
        typer.echo("--get auto: this architecture has no NTK (gated recurrent layers); computing the NNGP", err=True)
        return ("nngp",)
    return parse_get([g.strip() for g in get.split(",") if g.strip()])


def _fit_input(net, ds):
    """Flatten image inputs when the architecture takes vectors (e.g. a fully-connected network, whose
    Dense layers would otherwise act on each pixel's channels and leave an image at the output)."""
    if len(ds.input_shape) == 1:
        net.check(ds.input_shape)
        return ds
    from ..engine.tiling import require_vector_output

    try:
        require_vector_output(net.check(ds.input_shape))
        return ds
    except ValueError as image_error:
        flat = ds.flat()
        try:
            net.check(flat.input_shape)
        except ValueError:
            raise image_error from None
        typer.echo(f"note: inputs of shape {ds.input_shape} flattened to {flat.input_shape} for this architecture",
                   err=True)
        return flat


def _save(path: Path, arrays: dict) -> None:
    import numpy as np

    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        np.savez(f, **arrays)
    os.replace(tmp, path)


def main() -> None:
    """Entry point of the ``infinet`` console script."""
    app(prog_name="infinet")


if __name__ == "__main__":  # pragma: no cover
    main()
    sys.exit(0)
